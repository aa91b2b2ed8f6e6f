"""Rollout workers: each actor owns N environments and the actor network, and returns (T, N, ...)
blocks of experience; a group replaces a worker that dies and re-collects its share.

The policy's weights reach the workers once per iteration through the object store (one
`ray.put`, every worker reads the same object). Workers run torch on one thread and can pin
themselves to a core, so two workers on two cores do not fight over them.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import ray

from workloads.config import ConfigError
from workloads.ppo import RolloutBatch


@dataclasses.dataclass
class PolicySpec:
    """The PPO actor-critic. A rollout worker takes any spec whose `build()` returns a module with
    `act(obs, deterministic) -> (actions, log_probs)` whose weights `load_state_dict` accepts
    (`ArtifactSpec` for any saved policy; `workloads.tempovla.policy.SpeedActorSpec`)."""

    obs_dim: int
    critic_dim: int
    action_dim: int
    hidden: tuple[int, ...]

    def build(self):
        from workloads.ppo import ActorCritic

        return ActorCritic(self.obs_dim, self.critic_dim, self.action_dim, self.hidden)


@dataclasses.dataclass
class ArtifactSpec:
    """Any policy in the shared artifact format (`workloads.policies`: a PPO specialist, a HANDOFF
    student, ...), built from its kind and specs; a rollout worker runs it as it runs the PPO
    actor-critic (every kind's module has `act(obs, deterministic)`)."""

    kind: str
    specs: dict

    def build(self):
        from workloads.policies import KINDS

        return KINDS[self.kind].build(self.specs)

    @classmethod
    def read(cls, path) -> tuple["ArtifactSpec", dict]:
        """(the spec, the weights) of a `policy.pt` or its directory."""
        from workloads.policies import read_policy

        saved = read_policy(path)
        return cls(saved["kind"], {k: v for k, v in saved.items() if k != "state_dict"}), saved["state_dict"]


@dataclasses.dataclass
class Collected:
    """What rollout workers return for one iteration: the experience, the episodes that ended in
    it (per-episode lists: return, length, success, terms/...), the mean reward terms per step,
    and where the time went."""

    batch: RolloutBatch
    episodes: dict[str, list]
    reward_terms: dict[str, float]
    seconds: float  # wall time of the collection (the slowest worker)
    policy_seconds: float  # spent in the policy, summed over workers
    worker_seconds: float  # summed over workers

    @classmethod
    def merge(cls, parts: list["Collected"]) -> "Collected":
        """Workers' collections side by side along the environment axis; episode lists concatenated."""
        keys = sorted(set().union(*(p.episodes for p in parts)))
        return cls(RolloutBatch.concat([p.batch for p in parts]),
                   {k: [x for p in parts for x in p.episodes.get(k, [])] for k in keys},
                   {k: float(np.mean([p.reward_terms[k] for p in parts])) for k in parts[0].reward_terms},
                   max(p.seconds for p in parts), sum(p.policy_seconds for p in parts), sum(p.worker_seconds for p in parts))


def limit_threads() -> None:
    """numpy/torch/MuJoCo on one thread per worker (oversubscribed cores halve MuJoCo's throughput)."""
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"
    import torch

    torch.set_num_threads(1)


class RolloutWorker:
    def __init__(self, env_id: str, num_envs: int, seed: int, env_params: dict, spec: PolicySpec, pin_cpu: int | None = None):
        limit_threads()
        if pin_cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {pin_cpu % os.cpu_count()})
        import envs

        self.env_id, self.num_envs = env_id, num_envs
        self.env = envs.make_batched(env_id, num_envs, seed, **env_params)
        self.obs, info = self.env.reset(seed=seed)
        self.critic_obs = info["critic_obs"]
        self.policy = spec.build().eval()
        self.generator_seed = seed

    def ready(self) -> int:
        return os.getpid()

    def collect(self, policy_state: dict, steps: int, deterministic: bool = False) -> Collected:
        """Step every environment `steps` times with the given weights; the environments carry
        on from where the previous call left them (episodes span iterations)."""
        import torch

        self.policy.load_state_dict(policy_state)
        torch.manual_seed(self.generator_seed)
        self.generator_seed += 1
        env, n = self.env, self.env.num_envs
        block = RolloutBatch.zeros(steps, n, self.obs.shape[1], self.critic_obs.shape[1], env.task.action_dim)
        episodes: dict[str, list] = {}
        term_sums: dict[str, float] = {}
        started, policy_seconds = time.perf_counter(), 0.0
        for t in range(steps):
            block.obs[t], block.critic_obs[t] = self.obs, self.critic_obs
            tick = time.perf_counter()
            actions, log_probs = self.policy.act(torch.from_numpy(self.obs), deterministic)
            policy_seconds += time.perf_counter() - tick
            actions = actions.numpy()
            self.obs, reward, terminated, truncated, info = env.step(actions)
            self.critic_obs = info["critic_obs"]
            block.actions[t], block.log_probs[t] = actions, log_probs.numpy()
            block.rewards[t], block.terminated[t], block.truncated[t] = reward, terminated, truncated
            for key, value in info["reward_terms"].items():
                term_sums[key] = term_sums.get(key, 0.0) + float(value.sum())
            if "final_critic_obs" in info:
                done = info["_final_obs"]
                block.final_critic_obs[t][done] = info["final_critic_obs"][done]
                for key, value in info["episode"].items():
                    if key != "done":
                        episodes.setdefault(key, []).extend(np.asarray(value).tolist())
        block.last_critic_obs = self.critic_obs.copy()
        seconds = time.perf_counter() - started
        return Collected(block, episodes, {key: value / (steps * n) for key, value in term_sums.items()},
                         seconds, policy_seconds, seconds)


    def evaluate(self, policy_state: dict, max_steps: int, spec=None, env_params: dict | None = None) -> dict[str, list]:
        """Each environment's next whole episode from a fresh reset, acting deterministically:
        per-episode lists (return, length, success, terms/..., metrics/...), one entry per
        environment (its first episode only, so quick episodes are not over-counted). `spec`
        and `env_params`, when given, replace this worker's policy and environments first (one
        group of workers evaluates several settings without restarting)."""
        import torch

        import envs

        if spec is not None:
            self.policy = spec.build().eval()
        if env_params is not None:
            self.env.close()
            self.env = envs.make_batched(self.env_id, self.num_envs, self.generator_seed, **env_params)
        self.policy.load_state_dict(policy_state)
        env, n = self.env, self.env.num_envs
        obs, _ = env.reset(seed=self.generator_seed)
        self.generator_seed += 1
        finished, episodes = np.zeros(n, dtype=bool), {}
        for _ in range(max_steps):
            actions, _ = self.policy.act(torch.from_numpy(obs), True)
            obs, _, _, _, info = env.step(actions.numpy())
            if "episode" in info:
                ended = np.flatnonzero(info["episode"]["done"])
                first = ~finished[ended]
                for key, value in info["episode"].items():
                    if key != "done":
                        episodes.setdefault(key, []).extend(np.asarray(value)[first].tolist())
                finished[ended] = True
            if finished.all():
                break
        self.obs, info = env.reset(seed=self.generator_seed)  # collection goes on from fresh episodes
        self.critic_obs = info["critic_obs"]
        return episodes


class WorkerFailed(RuntimeError):
    """Rollout workers kept dying (more replacements than allowed)."""


class RolloutGroup:
    """`num_workers` rollout workers; `collect` returns one block with all their environments
    side by side (N = num_workers * envs_per_worker). A worker that dies or stalls past
    `timeout_s` is replaced by a fresh one (new seed) that collects its share again."""

    def __init__(self, env_id: str, num_workers: int, envs_per_worker: int, seed: int, env_params: dict,
                 spec: PolicySpec, *, timeout_s: float = 300.0, max_replacements: int = 3, pin_threads: bool = True,
                 cpus_per_worker: float = 1.0, runtime_env: dict | None = None, say=print):
        self.env_id, self.envs_per_worker, self.seed, self.env_params, self.spec = env_id, envs_per_worker, seed, env_params, spec
        self.timeout_s, self.max_replacements, self.pin_threads, self.say = timeout_s, max_replacements, pin_threads, say
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # Outside any placement group the caller runs in (a Ray Train worker inside a Tune trial
        # would otherwise capture the workers into its CPU-less bundle).
        self.actor_cls = ray.remote(RolloutWorker).options(
            num_cpus=cpus_per_worker, max_restarts=0, runtime_env=runtime_env,  # e.g. MUJOCO_GL for environments that render
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
        self.replacements = 0
        self.workers = [self._start(index, generation=0) for index in range(num_workers)]
        try:
            ray.get([w.ready.remote() for w in self.workers], timeout=timeout_s)
        except ray.exceptions.RayActorError as exc:
            raise ConfigError(f"env: the rollout workers could not build {env_id!r}: {exc}") from None

    def _start(self, index: int, generation: int):
        return self.actor_cls.remote(self.env_id, self.envs_per_worker, self.seed * 1000 + index + 100_000 * generation,
                                     self.env_params, self.spec, index if self.pin_threads else None)

    def collect(self, policy_state: dict, steps: int, deterministic: bool = False) -> Collected:
        weights = ray.put(policy_state)  # once per iteration, shared by every worker
        pending = {w.collect.remote(weights, steps, deterministic): i for i, w in enumerate(self.workers)}
        blocks: list[Collected | None] = [None] * len(self.workers)
        deadline = time.monotonic() + self.timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:  # stalled workers: replace all that are still out
                for ref in list(pending):
                    new_ref, index = self._replace(pending.pop(ref), "timed out", weights, steps, deterministic)
                    pending[new_ref] = index
                deadline = time.monotonic() + self.timeout_s
                continue
            ref = ready[0]
            index = pending.pop(ref)
            try:
                blocks[index] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                new_ref, index = self._replace(index, type(exc).__name__, weights, steps, deterministic)
                pending[new_ref] = index
        return Collected.merge(blocks)

    def _replace(self, index: int, reason: str, weights, steps: int, deterministic: bool):
        self.replacements += 1
        if self.replacements > self.max_replacements:
            raise WorkerFailed(f"rollout worker {index} failed ({reason}); {self.max_replacements} replacements "
                               "already used; see the Ray logs of the rollout workers")
        self.say(f"[rollout] worker {index} failed ({reason}); starting a replacement")
        ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self._start(index, generation=self.replacements)
        return self.workers[index].collect.remote(weights, steps, deterministic), index

    def evaluate(self, policy_state: dict, max_steps: int, spec=None, env_params: dict | None = None) -> dict[str, list]:
        """One deterministic episode per environment of every worker (`RolloutWorker.evaluate`), merged."""
        weights = ray.put(policy_state)
        try:
            parts = ray.get([w.evaluate.remote(weights, max_steps, spec, env_params) for w in self.workers], timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            raise WorkerFailed(f"a rollout worker failed during evaluation ({type(exc).__name__}); see its Ray logs") from None
        return {k: [x for p in parts for x in p.get(k, [])] for k in sorted(set().union(*parts))}

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
