"""The shape every MuJoCo task shares, and its two Gymnasium faces.

A `MujocoTask` is written once, vectorised over N environments in numpy: it maps actions to
controls, computes observations (the policy's and the critic's privileged one), weighted
reward terms, terminations and a success flag. Time-outs (`truncated`) and terminations are
kept apart. Episode statistics (return, length, every reward term's sum) come back in
`info["episode"]` for the environments that finished.

- `BatchedEnv`: a `gymnasium.vector.VectorEnv` over one task (same-step autoreset: the final
  observations of finished environments are in `info["final_obs"]` / `info["final_critic_obs"]`
  for bootstrapping, and the returned observation is the new episode's first).
- `SingleEnv`: a plain `gymnasium.Env` (N = 1, no autoreset), what `gymnasium.make` returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.mujoco_batch import MujocoBatch


class MujocoTask:
    """Subclasses set the class fields and implement the `_` methods below."""

    name: ClassVar[str]
    ctrl_dt: ClassVar[float]
    Params: ClassVar[type]  # a dataclass of the task's knobs (reward scales, ranges, ...)

    def __init__(self, num_envs: int = 1, seed: int | None = None, **params: Any):
        unknown = set(params) - {f.name for f in dataclasses.fields(self.Params)}
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter {sorted(unknown)[0]!r}; known: "
                            f"{', '.join(f.name for f in dataclasses.fields(self.Params))}")
        self.params = self.Params(**params)
        self.num_envs = num_envs
        self.rng = np.random.default_rng(seed)
        self.sim: MujocoBatch = self._build_sim()
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self.last_action = np.zeros((num_envs, self.action_dim), dtype=np.float32)
        self.episode_return = np.zeros(num_envs)
        self.episode_terms: dict[str, np.ndarray] = {}
        self.episode_metrics: dict[str, np.ndarray] = {}
        self.reset()

    # ---------------------------------------------------------------- what a task defines
    action_dim: int
    episode_steps: int

    def _build_sim(self) -> MujocoBatch: ...
    def _reset_envs(self, envs: np.ndarray) -> None: ...  # new episodes in `envs` (physics and task state)
    def _control(self, actions: np.ndarray) -> np.ndarray: ...  # (N, A) in [-1, 1] -> (N, nu) ctrl
    def _after_physics(self) -> None: ...  # task bookkeeping after a control step (timers, pushes)
    def observe(self) -> np.ndarray: ...  # (N, obs_dim) float32, what the policy sees
    def critic_observe(self) -> np.ndarray: ...  # (N, critic_dim) float32, privileged
    def reward_terms(self, actions: np.ndarray) -> dict[str, np.ndarray]: ...  # weighted, (N,) each
    def terminated(self) -> np.ndarray: ...
    def success(self) -> np.ndarray: ...

    def step_metrics(self) -> dict[str, np.ndarray]:
        """(N,) per-step measurements that are not rewards (e.g. a controller's tracking gap); an
        episode reports each one's mean over its steps as `metrics/<name>`."""
        return {}

    def combine(self, terms: dict[str, np.ndarray]) -> np.ndarray:
        return sum(terms.values())

    def show_in_render(self, data, env: int) -> None:
        """Place markers (e.g. a target) into `data` before a frame is rendered."""

    # ---------------------------------------------------------------- shared mechanics
    def reset(self, envs: np.ndarray | None = None) -> None:
        envs = np.arange(self.num_envs) if envs is None else np.asarray(envs)
        self.steps[envs] = 0
        self.last_action[envs] = 0.0
        self.episode_return[envs] = 0.0
        for total in (*self.episode_terms.values(), *self.episode_metrics.values()):
            total[envs] = 0.0
        self._reset_envs(envs)

    def step(self, actions: np.ndarray):
        """Advance every environment one control step (no reset here)."""
        actions = np.clip(np.asarray(actions, dtype=np.float32).reshape(self.num_envs, self.action_dim), -1.0, 1.0)
        self.sim.step(self._control(actions))
        self.steps += 1
        self._after_physics()
        terms = self.reward_terms(actions)
        reward = self.combine(terms)
        self.last_action[:] = actions
        terminated = self.terminated()
        truncated = (self.steps >= self.episode_steps) & ~terminated
        self.episode_return += reward
        for key, value in terms.items():
            self.episode_terms.setdefault(key, np.zeros(self.num_envs))[:] += value
        for key, value in self.step_metrics().items():
            self.episode_metrics.setdefault(key, np.zeros(self.num_envs))[:] += value
        done = terminated | truncated
        info: dict[str, Any] = {"success": self.success(), "reward_terms": terms}
        if done.any():
            info["episode"] = {"return": self.episode_return[done].copy(), "length": self.steps[done].copy(),
                               "success": info["success"][done].copy(), "done": done.copy(),
                               **{f"terms/{k}": v[done].copy() for k, v in self.episode_terms.items()},
                               **{f"metrics/{k}": v[done] / self.steps[done] for k, v in self.episode_metrics.items()}}
        return self.observe(), reward.astype(np.float32), terminated, truncated, info

    @property
    def observation_dim(self) -> int:
        return self.observe().shape[1]

    @property
    def critic_dim(self) -> int:
        return self.critic_observe().shape[1]

    def make_renderer(self):
        """A 320x240 renderer without shadows and reflections: under software OpenGL (llvmpipe, what
        a headless machine has) they cost four fifths of every frame."""
        import mujoco

        renderer = mujoco.Renderer(self.sim.model, 240, 320)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return renderer

    def render(self, env: int = 0, renderer=None, camera: int | str = -1):
        """An RGB frame of environment `env` (needs an OpenGL context: MUJOCO_GL=egl/osmesa/glfw)."""
        import mujoco

        model, data = self.sim.models[env], self.sim.data
        mujoco.mj_setState(model, data, self.sim.state[env], mujoco.mjtState.mjSTATE_FULLPHYSICS)
        self.show_in_render(data, env)
        mujoco.mj_forward(model, data)
        renderer = renderer or self.make_renderer()
        renderer.update_scene(data, camera=camera)
        return renderer.render()

    def close(self) -> None:
        self.sim.close()


def observation_box(dim: int) -> gymnasium.spaces.Box:
    return gymnasium.spaces.Box(-np.inf, np.inf, (dim,), np.float32)


class BatchedEnv(VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"]}

    def __init__(self, task_cls: type[MujocoTask], num_envs: int = 1, seed: int | None = None, **params):
        self.task = task_cls(num_envs, seed, **params)
        self.num_envs = num_envs
        self.single_observation_space = observation_box(self.task.observation_dim)
        self.single_action_space = gymnasium.spaces.Box(-1.0, 1.0, (self.task.action_dim,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.task.rng = np.random.default_rng(seed)
            self.action_space.seed(seed)
        self.task.reset()
        return self.task.observe(), {"critic_obs": self.task.critic_observe()}

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.task.step(actions)
        done = terminated | truncated
        info["critic_obs"] = self.task.critic_observe()
        if done.any():
            info["final_obs"], info["final_critic_obs"], info["_final_obs"] = obs.copy(), info["critic_obs"].copy(), done
            self.task.reset(np.flatnonzero(done))
            obs, info["critic_obs"] = self.task.observe(), self.task.critic_observe()
        return obs, reward, terminated, truncated, info

    def close_extras(self, **kwargs) -> None:
        self.task.close()


class SingleEnv(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, task_cls: type[MujocoTask], render_mode: str | None = None, **params):
        self.task = task_cls(1, None, **params)
        self.render_mode = render_mode
        self.observation_space = observation_box(self.task.observation_dim)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (self.task.action_dim,), np.float32)
        self.metadata = {**self.metadata, "render_fps": round(1 / task_cls.ctrl_dt)}
        self._renderer = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.task.rng = self.np_random
        self.task.reset()
        return self.task.observe()[0], {"critic_obs": self.task.critic_observe()[0]}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.task.step(np.asarray(action)[None])
        info = {"success": bool(info["success"][0]), "critic_obs": self.task.critic_observe()[0],
                "reward_terms": {k: float(v[0]) for k, v in info["reward_terms"].items()}}
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        self._renderer = self._renderer or self.task.make_renderer()
        return self.task.render(0, self._renderer)

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
        self.task.close()
