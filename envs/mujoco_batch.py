"""Many copies of one MuJoCo model stepped together, their state kept as numpy arrays.

`MujocoBatch` holds the full physics state of N environments as one (N, nstate) array and
advances all of them with `mujoco.rollout` (the stepping loop runs in C, not Python, so a
batch steps at the raw `mj_step` speed). Observations and rewards are then numpy over the
batch: `qpos`, `qvel` and `sensordata` are (N, ...) arrays. Like Playground's MJX envs,
each control step starts from the state alone (no solver warm start carried across steps).

Domain randomisation: pass `variants` (models with the same sizes but different friction,
masses, ...) and choose a variant per environment with `assign_variants`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mujoco
import numpy as np
from mujoco import rollout

FULL_PHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS


def load_model(path, sensors: Sequence[tuple[str, str, str]] = ()) -> mujoco.MjModel:
    """Compile a scene, adding (name, sensor type, site) sensors such as
    ("left_foot_pos", "framepos", "left_foot") that the task reads from `sensordata`."""
    spec = mujoco.MjSpec.from_file(str(path))
    for name, kind, site in sensors:
        spec.add_sensor(name=name, type=getattr(mujoco.mjtSensor, f"mjSENS_{kind.upper()}"),
                        objtype=mujoco.mjtObj.mjOBJ_SITE, objname=site)
    return spec.compile()


class MujocoBatch:
    def __init__(self, model: mujoco.MjModel, num_envs: int, substeps: int,
                 variants: Sequence[mujoco.MjModel] | None = None):
        self.model, self.num_envs, self.substeps = model, num_envs, substeps
        self.variants = list(variants) if variants else [model]
        self.models = [self.variants[0]] * num_envs
        self.data = mujoco.MjData(model)  # scratch for rollouts and resets
        nstate = mujoco.mj_stateSize(model, FULL_PHYSICS)
        self.state = np.zeros((num_envs, nstate))
        self.sensordata = np.zeros((num_envs, model.nsensordata))
        self._state_out = np.zeros((num_envs, substeps, nstate))
        self._sensor_out = np.zeros((num_envs, substeps, model.nsensordata))
        self._ctrl = np.zeros((num_envs, substeps, model.nu))  # held over the substeps
        self._rollout = rollout.Rollout(nthread=0)  # this process's one thread; parallelism is across workers
        # Layout of FULLPHYSICS: time, qpos, qvel, act, ... (views stay valid: state is updated in place)
        self.time = self.state[:, 0]
        self.qpos = self.state[:, 1 : 1 + model.nq]
        self.qvel = self.state[:, 1 + model.nq : 1 + model.nq + model.nv]
        self._sensor_slices = {model.sensor(i).name: slice(model.sensor_adr[i], model.sensor_adr[i] + model.sensor_dim[i])
                               for i in range(model.nsensor)}

    def sensor(self, name: str) -> np.ndarray:
        """(N, dim) readings of a named sensor, as of the last substep."""
        return self.sensordata[:, self._sensor_slices[name]]

    def assign_variants(self, envs: np.ndarray, variant_index: np.ndarray) -> None:
        for env, variant in zip(envs.tolist(), variant_index.tolist()):
            self.models[env] = self.variants[variant]

    def step(self, ctrl: np.ndarray) -> None:
        """Hold `ctrl` (N, nu) for `substeps` physics steps in every environment."""
        self._ctrl[:] = ctrl[:, None, :]
        self._rollout.rollout(self.models, [self.data], self.state, self._ctrl, nstep=self.substeps,
                              state=self._state_out, sensordata=self._sensor_out, skip_checks=True)
        self.state[:] = self._state_out[:, -1]
        self.sensordata[:] = self._sensor_out[:, -1]

    def set_state(self, envs: np.ndarray, qpos: np.ndarray, qvel: np.ndarray,
                  settle: Callable[[mujoco.MjModel, mujoco.MjData], None] | None = None) -> None:
        """Reset environments `envs` to (qpos, qvel) rows; `settle(model, data)` may simulate
        further (e.g. let a dropped robot come to rest). Sensors are recomputed."""
        data = self.data
        for row, env in enumerate(envs.tolist()):
            model = self.models[env]
            mujoco.mj_resetData(model, data)
            data.qpos[:], data.qvel[:] = qpos[row], qvel[row]
            if settle is not None:
                settle(model, data)
            mujoco.mj_forward(model, data)
            mujoco.mj_getState(model, data, self.state[env], FULL_PHYSICS)
            self.sensordata[env] = data.sensordata

    def close(self) -> None:
        self._rollout.close()


# ---------------------------------------------------------------- batched rigid-body helpers
def rotate_inverse(quat: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """World vectors (N, 3) (or one (3,)) expressed in the frames of unit quaternions (N, 4), wxyz."""
    w, u = quat[:, :1], -quat[:, 1:]  # the conjugate rotates world -> body
    v = np.broadcast_to(vectors, u.shape)
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def yaw_quaternion(yaw: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], axis=1)


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a.T
    bw, bx, by, bz = b.T
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], axis=1)


def random_quaternion(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform random rotations (Shoemake)."""
    u1, u2, u3 = rng.random((3, n))
    return np.stack([np.sqrt(1 - u1) * np.sin(2 * np.pi * u2), np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
                     np.sqrt(u1) * np.sin(2 * np.pi * u3), np.sqrt(u1) * np.cos(2 * np.pi * u3)], axis=1)
