"""HANDOFF's actors: expert-query actors that wrap trained policies, and DAgger workers that
run the student on a mixture of tasks while the teachers label every state it visits.

    teachers = {mode: PolicyTeacher.remote(path) for mode, path in sources.items()}
    group = DaggerGroup(modes, teachers, student_specs, workers=1, envs_per_task=8, seed=0)
    block = group.collect(student_state, steps=25, mixing=0.3)   # (obs, teacher mean, log-std, mode)
    report = group.evaluate(student_state, steps=150, actor="student", seed=1)

A worker owns `envs_per_task` environments of every task in the mixture. At each control step
it sends every task's observations to that task's teacher (all at once), acts with the student
(or, with probability `mixing` per environment, with the teacher: DAgger's mixing), and keeps
each visited state with the teacher's Gaussian as its label.
"""

from __future__ import annotations

import os
import time

import numpy as np
import ray

from actors.rollout import limit_threads
from workloads.config import ConfigError
from workloads.handoff.metrics import reachable_workspace


class PolicyTeacher:
    """A trained policy (a `policy.pt` of any kind with a Gaussian, `workloads.policies`) answering
    with its action distribution."""

    def __init__(self, source: str):
        limit_threads()
        from workloads.policies import load_policy

        self.policy, self.specs = load_policy(source)

    def describe(self) -> dict:
        return self.specs

    def label(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, log_std), each (n, action_dim), of the policy's Gaussian at each observation."""
        import torch

        from workloads.policies import gaussian

        mean, log_std = gaussian(self.policy, self.specs, torch.from_numpy(observations))
        return mean.numpy(), log_std.expand_as(mean).numpy().copy()


class DaggerWorker:
    def __init__(self, modes: list[str], teachers: dict, student_specs: dict, envs_per_task: int, seed: int,
                 env_params: dict[str, dict], index: int = 0, env_seed: int = 0, pin_cpu: int | None = None):
        limit_threads()
        if pin_cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {pin_cpu % os.cpu_count()})
        import envs
        from envs.g1 import MODE_ENVS
        from workloads.policies import KINDS

        self.modes, self.teachers, self.seed, self.index = list(modes), teachers, seed, index
        # `env_seed` fixes the randomised models (friction, masses), the same on every rank, so
        # evaluations on different ranks see the same worlds; `seed` drives collection
        self.envs = {mode: envs.make_batched(MODE_ENVS[mode], envs_per_task, env_seed + 7 * index + i, **env_params.get(mode, {}))
                     for i, mode in enumerate(self.modes)}
        self.obs = {mode: env.reset(seed=seed + i)[0] for i, (mode, env) in enumerate(self.envs.items())}
        self.student = KINDS["rayworks.handoff.student"].build(student_specs).eval()
        self.rng = np.random.default_rng(seed)
        # the student's sampled actions draw on torch's global generator: seeded here, as the
        # process may be a reused Ray worker whose generator has already moved
        import torch

        torch.manual_seed(seed)

    def ready(self) -> int:
        return os.getpid()

    def _labels(self, observations: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        refs = {mode: self.teachers[mode].label.remote(obs) for mode, obs in observations.items()}
        return dict(zip(refs, ray.get(list(refs.values()))))

    def collect(self, student_state: dict, steps: int, mixing: float) -> dict:
        """`steps` control steps of every task: the visited observations with the teacher's
        Gaussian at each, the mode index of each row, and the episodes that ended."""
        import torch

        self.student.load_state_dict(student_state)
        rows: dict[str, list] = {"obs": [], "mean": [], "log_std": [], "mode": []}
        episodes: dict[str, list] = {}
        teacher_steps = total_steps = 0
        started = time.perf_counter()
        for _ in range(steps):
            labels = self._labels(self.obs)
            for index, mode in enumerate(self.modes):
                obs, (mean, log_std) = self.obs[mode], labels[mode]
                student_actions, _ = self.student.act(torch.from_numpy(obs))
                teacher_actions = mean + np.exp(log_std) * self.rng.standard_normal(mean.shape).astype(np.float32)
                use_teacher = self.rng.random(len(obs)) < mixing
                actions = np.where(use_teacher[:, None], teacher_actions, student_actions.numpy())
                teacher_steps, total_steps = teacher_steps + int(use_teacher.sum()), total_steps + len(obs)
                rows["obs"].append(obs)
                rows["mean"].append(mean)
                rows["log_std"].append(log_std)
                rows["mode"].append(np.full(len(obs), index))
                self.obs[mode], _, _, _, info = self.envs[mode].step(actions)
                if "episode" in info:
                    for key in ("return", "length", "success"):
                        episodes.setdefault(f"{mode}/{key}", []).extend(np.asarray(info["episode"][key]).tolist())
        block = {key: np.concatenate(value) for key, value in rows.items()}
        block.update(episodes=episodes, teacher_fraction=teacher_steps / max(total_steps, 1),
                     seconds=time.perf_counter() - started)
        return block

    def evaluate(self, student_state: dict, steps: int, actor: str, seed: int, modes: list[str] | None = None) -> dict:
        """Every task (or those in `modes`) from fresh episodes for `steps` steps, acting deterministically with the
        `student` or the `teacher` of each task; episodes drawn from `seed` (and this worker's
        index), so the student before and after training and the teachers meet the same starts,
        whichever rank evaluates. Per task: the task's `step_metrics` (velocity_error,
        hand_error, ...) averaged over the steps, each environment's first episode outcome
        (return, success), falls, KL(teacher || student) on the visited states, and for the
        student the gate's mean weights and the palms' reachable workspace in the motion task."""
        import torch

        from envs.g1 import COMMAND_SLICES
        from workloads.handoff.student import distillation_loss

        self.student.load_state_dict(student_state)
        report = {}
        for index, mode in enumerate(self.modes):
            if modes is not None and mode not in modes:
                continue
            env = self.envs[mode]
            obs, _ = env.reset(seed=seed + 7919 * (index + 1) + 131 * self.index)
            n = len(obs)
            sums: dict[str, float] = {}
            kl_sum, gate_sum, falls = 0.0, None, 0
            first: dict[str, list] = {}
            finished = np.zeros(n, dtype=bool)
            palms, palm_errors = [], []
            for _ in range(steps):
                mean, log_std = ray.get(self.teachers[mode].label.remote(obs))
                obs_t = torch.from_numpy(obs)
                with torch.no_grad():
                    kl_sum += float(distillation_loss(self.student, obs_t, torch.from_numpy(mean), torch.from_numpy(log_std)))
                    if hasattr(self.student, "gate_weights"):
                        weights = self.student.gate_weights(obs_t).mean(0).numpy()
                        gate_sum = weights if gate_sum is None else gate_sum + weights
                actions = mean if actor == "teacher" else self.student.act(obs_t, deterministic=True)[0].numpy()
                obs, _, terminated, _, info = env.step(actions)
                falls += int(terminated.sum())
                for key, value in env.task.step_metrics().items():  # e.g. velocity_error, hand_error
                    sums[key] = sums.get(key, 0.0) + float(value.mean())
                if mode == "motion":
                    task = env.task
                    hands = task.hand_positions().reshape(-1, 3)
                    targets = np.concatenate([task.command[:, COMMAND_SLICES["left_hand"]],
                                              task.command[:, COMMAND_SLICES["right_hand"]]], axis=1).reshape(-1, 3)
                    palms.append(hands)
                    palm_errors.append(np.linalg.norm(hands - targets, axis=1))
                if "episode" in info:
                    ended = np.flatnonzero(info["episode"]["done"])
                    new = ~finished[ended]
                    for key in ("return", "success"):
                        first.setdefault(key, []).extend(np.asarray(info["episode"][key])[new].tolist())
                    finished[ended] = True
            result = {key: value / steps for key, value in sums.items()}
            result.update(kl=kl_sum / steps, falls_per_env=falls / n, episodes=len(first.get("success", [])),
                          success_rate=float(np.mean(first["success"])) if first.get("success") else float("nan"),
                          episode_return=float(np.mean(first["return"])) if first.get("return") else float("nan"))
            if gate_sum is not None:
                result["gate"] = (gate_sum / steps).tolist()
            if palms:
                result["workspace_m3"] = reachable_workspace(np.concatenate(palms), np.concatenate(palm_errors))
            report[mode] = result
            self.obs[mode], _ = env.reset(seed=self.seed + 104729 * (index + 1))  # collection goes on from fresh episodes
        return report

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


class DaggerGroup:
    """`workers` DAgger workers; `collect` concatenates their blocks; `evaluate` averages their reports."""

    def __init__(self, modes: list[str], teachers: dict, student_specs: dict, workers: int, envs_per_task: int,
                 seed: int, env_params: dict[str, dict], *, env_seed: int = 0, pin_threads: bool = True,
                 timeout_s: float = 600.0):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor = ray.remote(DaggerWorker).options(num_cpus=1, max_restarts=1,
                                                 scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
        self.timeout_s = timeout_s
        self.workers = [actor.remote(modes, teachers, student_specs, envs_per_task, seed * 1000 + i, env_params,
                                     i, env_seed, i if pin_threads else None) for i in range(workers)]
        try:
            ray.get([w.ready.remote() for w in self.workers], timeout=timeout_s)
        except ray.exceptions.RayActorError as exc:
            raise ConfigError(f"env_params: the DAgger workers could not build their environments: {exc}") from None

    def collect(self, student_state: dict, steps: int, mixing: float) -> dict:
        weights = ray.put(student_state)
        parts = ray.get([w.collect.remote(weights, steps, mixing) for w in self.workers], timeout=self.timeout_s)
        merged = {key: np.concatenate([p[key] for p in parts]) for key in ("obs", "mean", "log_std", "mode")}
        episodes: dict[str, list] = {}
        for part in parts:
            for key, value in part["episodes"].items():
                episodes.setdefault(key, []).extend(value)
        merged.update(episodes=episodes, teacher_fraction=float(np.mean([p["teacher_fraction"] for p in parts])),
                      seconds=max(p["seconds"] for p in parts))
        return merged

    def evaluate(self, student_state: dict, steps: int, actor: str, seed: int, modes: list[str] | None = None) -> dict:
        weights = ray.put(student_state)
        parts = ray.get([w.evaluate.remote(weights, steps, actor, seed, modes) for w in self.workers], timeout=self.timeout_s)
        report = {}
        for mode in parts[0]:
            report[mode] = {}
            for key in parts[0][mode]:
                values = [p[mode][key] for p in parts]
                report[mode][key] = np.mean(values, axis=0).tolist() if key == "gate" else float(np.nanmean(values))
        return report

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
