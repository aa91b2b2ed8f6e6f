"""PPO specialists in MuJoCo: rollout-worker actors collect, a Ray Train learner updates.

    python -m pipelines.ppo [--set env=rayworks/G1Recovery-v0 iterations=200 ppo.lr=3e-4 ...] [--resume]

Recipe:
1. `num_rollout_workers` actors (`actors.rollout`) each own `envs_per_worker` environments of
   `env` (built with `env_params`) and the actor network.
2. On Ray Train, per iteration: the policy's weights go to the workers once (object store) ->
   each returns a (T, N) block -> GAE with time-out bootstrapping -> clipped PPO epochs with
   the adaptive-KL learning rate (`workloads.ppo`) -> the observation normalisers update.
3. MLflow: episode returns and lengths, success rate, every reward term, PPO statistics per
   iteration; a checkpoint every `eval_every` iterations (`--resume` continues from it);
   the final policy, a returns plot and a rendered rollout (a GIF; skipped with the reason
   logged where no OpenGL context can be made).

The learner takes no CPU of its own: collection and updates alternate, so the rollout
workers' cores are free while it updates.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from pipelines.launch import (
    RunFailed,
    RunFields,
    RunSummary,
    Workers,
    check_ranks_in_sync,
    ProgressLines,
    ending_run,
    main_for,
    open_run,
    say,
    train_run_config,
    train_worker_context,
    worker_device,
)
from workloads import tracking
from workloads.caching import stable_hash
from workloads.config import build_section, from_dict, require, to_dict
from workloads.distributed import average_in_place
from workloads.plots import plot_curves
from workloads.policies import save_policy
from workloads.ppo import PPOConfig, ppo_update

PIPELINE = "ppo"
KEY_METRIC = "episode_return"
# What `rayworks compare` on this pipeline cannot control (printed with every comparison).
THREATS = (
    'one simulator (MuJoCo) with its own contact model: no claim transfers to hardware',
    'episode return mixes reward terms: an arm can gain on one term and lose on another',
)
QUICKSTART = ["iterations=20"]
LEARNER_MEMORY = 1024**3


@dataclasses.dataclass
class Config(RunFields):
    env: str = "rayworks/PandaReach-v0"  # a registered rayworks environment id
    env_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # the task's knobs, e.g. episode_steps
    iterations: int = 40  # PPO iterations (collect, then update)
    steps_per_iteration: int = 50  # T of each (T, N) block
    num_rollout_workers: int = 2  # rollout-worker actors per learner
    envs_per_worker: int = 32  # environments each worker steps
    hidden: list[int] = dataclasses.field(default_factory=lambda: [128, 128])  # actor and critic layer sizes
    init_std: float = 0.5  # initial action standard deviation
    eval_every: int = 10  # report (Tune), checkpoint, and the window of episodes a reported return averages
    pin_threads: bool = True  # pin each rollout worker to one core
    worker_timeout_s: float = 300.0  # a worker silent this long is replaced
    max_worker_replacements: int = 3  # replacements before the run fails
    render: bool = True  # log a rendered rollout GIF
    render_steps: int = 150  # control steps in the GIF
    register_model: bool = True  # register the policy in MLflow's model registry (`registered_name(env)`)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    # The learners (each with its own rollout workers); train.use_gpu puts them on GPUs, the
    # rollout workers stay on CPUs. A learner asks for no CPU: it alternates with its workers.
    train: Workers = dataclasses.field(default_factory=lambda: Workers(cpus_per_worker=0))

    section: ClassVar[str] = "ppo"

    def validate(self) -> None:
        import envs

        require(self.env in envs.TASKS, "env", f"unknown environment {self.env!r}; known: {', '.join(envs.TASKS)}")
        build_section(envs.TASKS[self.env].Params, self.env_params, "env_params")  # names a wrong or mistyped field
        require(self.iterations >= 1, "iterations", "must be >= 1")
        require(self.steps_per_iteration >= 1, "steps_per_iteration", "must be >= 1")
        require(self.num_rollout_workers >= 1 and self.envs_per_worker >= 1, "num_rollout_workers",
                "num_rollout_workers and envs_per_worker must be >= 1")
        require(bool(self.hidden) and all(h >= 1 for h in self.hidden), "hidden", "a non-empty list of positive layer sizes")
        require(self.init_std > 0, "init_std", "must be > 0")
        require(self.eval_every >= 1, "eval_every", "must be >= 1")
        p = self.ppo
        require(p.lr > 0 and p.clip > 0 and p.epochs >= 1 and p.minibatches >= 1, "ppo",
                "lr and clip must be > 0, epochs and minibatches >= 1")
        require(0 < p.gamma <= 1 and 0 <= p.lam <= 1, "ppo.gamma", "gamma in (0, 1], lam in [0, 1]")
        require(p.entropy_coef >= 0, "ppo.entropy_coef", "must be >= 0")
        require(self.steps_per_iteration * self.num_rollout_workers * self.envs_per_worker >= p.minibatches,
                "ppo.minibatches", "more minibatches than samples per iteration")


def step_budget(config: Config) -> tuple[int, int]:
    """(steps, evaluation interval) as Tune's scheduler sees them: PPO iterations."""
    return config.iterations, config.eval_every


def policy_spec(config: Config):
    import envs
    from actors.rollout import PolicySpec

    task = envs.TASKS[config.env](1, 0, **config.env_params)
    spec = PolicySpec(task.observation_dim, task.critic_dim, task.action_dim, tuple(config.hidden))
    task.close()
    return spec


POLICY_KIND = "rayworks.ppo.actor_critic"


def registered_name(env: str) -> str:
    """The registered model of a specialist: one name per environment (`rayworks-ppo-PandaReach-v0`)."""
    return "rayworks-ppo-" + env.split("/")[-1]


def policy_specs(config: Config, spec) -> dict:
    """What `policy.pt` holds besides the weights (`workloads.policies`): the actor-critic's shape
    and the environment it acts in. A specialist's task lives in its observation: no command."""
    import envs

    task = envs.TASKS[config.env](1, 0, **config.env_params)
    action_mode = getattr(getattr(task, "params", None), "action_mode", "joint")  # the Panda's knob; joint targets otherwise
    task.close()
    return {"observation_dim": spec.obs_dim, "critic_dim": spec.critic_dim, "action_dim": spec.action_dim,
            "hidden": list(spec.hidden), "action_mode": action_mode, "command": {}, "env": config.env,
            "env_params": dict(config.env_params)}


def build_policy(config: Config, spec):
    from workloads.ppo import ActorCritic

    return ActorCritic(spec.obs_dim, spec.critic_dim, spec.action_dim, tuple(config.hidden), config.init_std)


def iteration_metrics(collected, seconds: float) -> dict[str, float]:
    episodes, batch = collected.episodes, collected.batch
    metrics = {"reward_per_step": float(batch.rewards.mean()), "steps_per_second": batch.num_steps / seconds,
               "collect_seconds": collected.seconds,
               "policy_fraction": collected.policy_seconds / max(collected.worker_seconds, 1e-9),
               "terminations": float(batch.terminated.sum()), "timeouts": float(batch.truncated.sum())}
    metrics.update({f"reward/{key}": value for key, value in collected.reward_terms.items()})
    if episodes.get("return"):
        metrics.update({"episodes": len(episodes["return"]), "episode_length": float(np.mean(episodes["length"])),
                        "success_rate": float(np.mean(episodes["success"]))})
        metrics.update({f"episode_{key.replace('/', '_')}": float(np.mean(v)) for key, v in episodes.items()
                        if key.startswith("terms/")})
    return metrics


# ---------------------------------------------------------------- training (on every Ray Train worker)
def train_loop_per_worker(payload: dict) -> None:
    import ray.train
    import ray.train.torch

    from actors.rollout import RolloutGroup, limit_threads

    limit_threads()
    config: Config = from_dict(Config, payload["config"])
    spec = payload["spec"]
    rank, world_size, run = train_worker_context(payload)
    torch.manual_seed(config.seed)
    device = worker_device(config.train)
    policy = build_policy(config, spec).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.ppo.lr)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "trainer_state.pt", weights_only=False, map_location=device)
            policy.load_state_dict(state["policy"])
            optimizer.load_state_dict(state["optimizer"])
            start = state["iteration"]
    average = average_in_place if world_size > 1 else None
    generator = torch.Generator().manual_seed(config.seed)
    group = RolloutGroup(config.env, config.num_rollout_workers, config.envs_per_worker,
                         config.seed * 10_007 + rank + 1000 * start, config.env_params, spec,
                         timeout_s=config.worker_timeout_s, max_replacements=config.max_worker_replacements,
                         pin_threads=config.pin_threads, say=lambda line: say(payload, line))
    window: list[float] = []
    try:
        for iteration in range(start, config.iterations):
            tick = time.perf_counter()
            collected = group.collect({k: v.cpu() for k, v in policy.state_dict().items()}, config.steps_per_iteration)
            collected_at = time.perf_counter()
            stats = ppo_update(policy, optimizer, collected.batch.to_torch(device), config.ppo, generator, average)
            done = iteration + 1
            metrics = {**iteration_metrics(collected, collected_at - tick), **stats, "iteration": done,
                       "update_seconds": time.perf_counter() - collected_at, "worker_replacements": group.replacements}
            window.extend(collected.episodes.get("return", []))
            if collected.episodes.get("return"):
                metrics["iteration_return"] = float(np.mean(collected.episodes["return"]))
            if rank == 0:
                run.log_metrics(metrics, step=done)
            if done % config.eval_every == 0 or done == config.iterations:
                report = {"iteration": done, KEY_METRIC: float(np.mean(window)) if window else float("nan"),
                          "episodes_in_window": len(window)}
                if rank == 0:
                    run.log_metrics({KEY_METRIC: report[KEY_METRIC], "episodes_in_window": len(window)}, step=done)
                    say(payload, f"[ppo] {config.env} iteration {done}/{config.iterations}  return {report[KEY_METRIC]:.3f} "
                                 f"({len(window)} episodes)  {metrics['steps_per_second']:.0f} steps/s")
                window = []
                report_policy(report, rank, policy, optimizer, done)
        check_ranks_in_sync(policy, run, config.iterations)
    finally:
        group.shutdown()


def report_policy(metrics: dict, rank: int, policy, optimizer, iteration: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            torch.save({"policy": {k: v.cpu() for k, v in policy.state_dict().items()}, "optimizer": optimizer.state_dict(),
                        "iteration": iteration},
                       Path(directory) / "trainer_state.pt")
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


# ---------------------------------------------------------------- rendering (its own process: MuJoCo reads MUJOCO_GL at import)
def render_rollout(config_dict: dict, policy_state: dict, spec) -> tuple[bytes, str]:
    """A GIF of the trained policy acting deterministically: (its bytes, '') or (b'', why it could not render)."""
    try:
        from PIL import Image

        import envs

        config = from_dict(Config, config_dict)
        policy = build_policy(config, spec)
        policy.load_state_dict(policy_state)
        task = envs.TASKS[config.env](1, config.seed, **config.env_params)
        renderer = task.make_renderer()
        frames = []
        for _ in range(config.render_steps):
            actions, _ = policy.act(torch.from_numpy(task.observe()), deterministic=True)
            task.step(actions.numpy())
            frames.append(Image.fromarray(task.render(0, renderer)))
        renderer.close()
        from workloads.plots import gif_bytes

        return gif_bytes(frames, task.ctrl_dt), ""
    except Exception as exc:  # no GL platform on this machine: the run goes on without a video
        return b"", f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- the driver
def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    from ray.train.torch import TorchTrainer

    spec = policy_spec(config)  # a missing asset package or a bad env_params fails before any run opens
    run_record, run_name = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id,
                                    data_hash=stable_hash([config.env, repr(sorted(config.env_params.items()))]))
    with ending_run(run_record):
        with ProgressLines() as lines:
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"config": to_dict(config), "spec": spec, "progress": lines.queue,
                                   "mlflow_run_id": run_record.run_id, "mlflow_uri": run_record.uri},
                # The learner asks for memory, not CPUs: it alternates with the rollout workers, which hold the cores.
                scaling_config=config.train.scaling_config(memory=LEARNER_MEMORY),
                run_config=train_run_config(config, run_name, train_callbacks),
            )
            result = trainer.fit()
        summary = log_outcome(config, run_record, result.checkpoint, spec)
    return summary


def log_outcome(config: Config, run_record: tracking.Run, checkpoint, spec) -> RunSummary:
    import ray

    if checkpoint is None:
        raise RunFailed("the run reported no checkpoint (see the Ray Train worker logs)")
    with checkpoint.as_directory() as directory:
        policy_state = torch.load(Path(directory) / "trainer_state.pt", weights_only=False)["policy"]
    history = run_record.metric_history(KEY_METRIC)
    returns = [(step, value) for step, value in history if np.isfinite(value)]
    with tempfile.TemporaryDirectory() as scratch:
        save_policy(Path(scratch) / "policy.pt", POLICY_KIND, policy_state, policy_specs(config, spec))
        run_record.log_artifact(Path(scratch) / "policy.pt", "policy")
        lengths = run_record.metric_history("episode_length")
        plot = plot_curves({"episode return (window mean)": {"return": returns},
                            "episode length": {"length": lengths}},
                           Path(scratch) / "returns.png", f"ppo {config.env} {run_record.run_id[:8]}")
        run_record.log_artifact(plot)
        if config.render:
            task = ray.remote(num_cpus=0, runtime_env={"env_vars": {"MUJOCO_GL": "egl"}})(render_rollout)
            gif, reason = ray.get(task.remote(to_dict(config), policy_state, spec))
            if reason:
                run_record.set_tags({"render_skipped": reason[:250]})
                run_record.log_text(reason + "\n", "render_skipped.txt")
            else:
                (Path(scratch) / "rollout.gif").write_bytes(gif)
                run_record.log_artifact(Path(scratch) / "rollout.gif")
    version = tracking.register_model(run_record, "policy", registered_name(config.env)) if config.register_model else ""
    start, final = (returns[0][1], returns[-1][1]) if returns else (float("nan"), float("nan"))
    run_record.log_metrics({"initial_return": start, "final_return": final, "return_gain": final - start}, step=config.iterations)
    return RunSummary(PIPELINE, KEY_METRIC, final, run_record.run_id, run_record.artifact_uri,
                      extra={"env": config.env, "initial_return": start, "return_gain": final - start,
                             "registered_version": version}, before=start)


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    from pipelines.ppo import main as importable_main  # Ray pickles by reference

    sys.exit(importable_main())
