"""TempoVLA: speed-controllable Franka pick-and-carry, trained on demonstrations re-timed by VSTA.

    python -m pipelines.tempovla [--config FILE] [--set key=value ...]
    rayworks compare tempovla --vary augment=vsta,none --seeds 3

Recipe:
1. demonstrations: the scripted expert (`workloads.tempovla.expert`) drives PandaPickCube in
   end-effector mode (or joint-velocity mode: `demos.action_type`); Ray tasks, one batch of
   environments each, run until `demos.episodes` successful episodes exist (with
   `demos.image_size`, the front camera's frames too, as video); written in LeRobot's v3.0
   layout (`workloads.tempovla.demos`) and cached by the settings that made them. `dataset=`
   reads any directory in that layout.
2. training (Ray Train, `train.num_workers` ranks, DDP): behaviour cloning of the speed-
   conditioned policy (`workloads.tempovla.policy`; `policy.inputs=image` reads the camera,
   `policy.chunk` > 1 predicts chunks of actions) on examples re-timed online by VSTA at
   `speeds` (augment=vsta), or on the 1x demonstrations alone (augment=none: the baseline,
   whose speed is imposed at run time by scaling its motion). Held-out demonstrations give
   the validation loss at every speed.
3. evaluation in MuJoCo through the rollout workers (`actors.rollout`), one deterministic
   episode per environment, at each of `eval_speeds`: success rate, realised speed ratio
   (mean successful episode length at 1x / at c), the controller's tracking gap; then the
   dynamic schedule (fast in transit, slow within `schedule.near` of the cube) against
   constant fast and constant slow.
4. MLflow: metrics, the success-per-speed plot, rendered rollouts at the slowest and fastest
   speed (where OpenGL is available), the policy and its registered model.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from pipelines.launch import (
    ProgressLines,
    RunFailed,
    RunFields,
    RunSummary,
    Workers,
    check_ranks_in_sync,
    ending_run,
    main_for,
    open_run,
    remote_task,
    say,
    storage_path,
    train_run_config,
    train_worker_context,
)
from workloads import tracking
from workloads.caching import cached_directory, stable_hash
from workloads.config import ConfigError, from_dict, require, to_dict
from workloads.tempovla.demos import DemoConfig
from workloads.tempovla.policy import PolicyConfig

PIPELINE = "tempovla"
ENV_ID = "rayworks/PandaPickCube-v0"
REGISTERED = "rayworks-tempovla-policy"
KEY_METRIC = "success_rate"  # mean over the evaluated speeds
TUNE_METRIC, TUNE_MODE = "val_motion_mse", "min"  # searches select on held-out demonstrations, never on the evaluation
RENDERING = {"env_vars": {"MUJOCO_GL": "egl"}}  # MuJoCo picks its OpenGL platform at import: headless processes need EGL
THREATS = (
    "one task (pick and carry) and one scripted expert: demonstrations share its style",
    "the default policy is state-based (the speed-invariant state chosen by hand); images are an option (policy.inputs=image)",
)
# Two ranks that must end identical; fewer demonstrations, steps and evaluation episodes.
QUICKSTART = ["train.num_workers=2", "demos.episodes=48", "train.steps=1500", "eval_envs_per_worker=12"]


@dataclasses.dataclass
class TrainConfig(Workers):
    """Ray Train workers and behaviour cloning."""

    steps: int = 3000  # optimizer steps
    batch_size: int = 256  # examples per worker per step (each rank draws its own)
    lr: float = 1e-3  # peak learning rate (cosine decay)
    weight_decay: float = 1e-4  # AdamW's
    held_out: float = 0.1  # fraction of demonstrations kept for the validation loss

    section: ClassVar[str] = "train"

    def validate(self) -> None:
        super().validate()
        require(self.steps >= 1, "steps", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 < self.held_out < 0.5, "held_out", "must be in (0, 0.5)")


@dataclasses.dataclass
class ScheduleConfig:
    """Dynamic speed: `fast` in transit, `slow` near contact (within `near` metres of the cube while it rests on the table)."""

    fast: float = 2.0  # speed in transit
    slow: float = 0.5  # speed near contact
    near: float = 0.05  # metres from the cube (while it rests on the table) that count as near contact

    section: ClassVar[str] = "schedule"


@dataclasses.dataclass
class Config(RunFields):
    augment: str = "vsta"  # vsta (re-timed examples at `speeds`) or none (1x only; speed imposed by scaling actions)
    dataset: str = ""  # a LeRobot v3.0 dataset of PandaPickCube demonstrations (ee_delta or joint_velocity actions); empty: generated (and cached)
    speeds: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])  # trained speeds (the range commands may take)
    eval_speeds: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])  # must include 1.0
    out_of_range: str = "refuse"  # a speed outside `speeds`' range: refuse, or clamp (with a warning)
    episode_steps: int = 400  # time limit at 1x (ceil(this / c) at speed c)
    turn_degrees: float = 60.0  # VSTA: a turn in the direction of motion larger than this ends a chunk
    eval_workers: int = 2  # rollout-worker actors for evaluation
    eval_envs_per_worker: int = 16  # environments each steps (one episode each per speed)
    render: bool = True  # log rendered rollouts at the slowest and fastest evaluated speed
    register_model: bool = True  # register the policy in MLflow's model registry
    demos: DemoConfig = dataclasses.field(default_factory=DemoConfig)
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)

    section: ClassVar[str] = "tempovla"

    def validate(self) -> None:
        require(self.augment in ("vsta", "none"), "augment", f"expected vsta or none, got {self.augment!r}")
        require(self.policy.inputs != "image" or bool(self.dataset) or self.demos.image_size > 0, "policy.inputs",
                "image needs camera frames: set demos.image_size (e.g. 64) or a dataset= with a video feature")
        require(bool(self.speeds) and all(c > 0 for c in self.speeds), "speeds", "a non-empty list of speeds > 0")
        require(1.0 in self.eval_speeds, "eval_speeds", "must include 1.0 (the realised speed ratio is measured against it)")
        require(self.out_of_range in ("refuse", "clamp"), "out_of_range", f"expected refuse or clamp, got {self.out_of_range!r}")
        require(self.episode_steps >= 10, "episode_steps", "must be >= 10")
        require(self.eval_workers >= 1 and self.eval_envs_per_worker >= 1, "eval_workers", "eval_workers and eval_envs_per_worker must be >= 1")
        require(self.demos.episodes >= 4, "demos.episodes", "must be >= 4 (some are held out)")
        low, high = min(self.speeds), max(self.speeds)
        commanded = [("eval_speeds", c) for c in self.eval_speeds] + [("schedule.fast", self.schedule.fast), ("schedule.slow", self.schedule.slow)]
        for name, value in commanded:
            if not low <= value <= high and self.out_of_range == "refuse":
                raise ConfigError(f"{name}: speed {value} is outside the trained range [{low}, {high}] (set out_of_range=clamp to clamp it)")


def command_speed(config: Config, speed: float) -> float:
    """A commanded speed inside the trained range (clamped with a warning when allowed)."""
    low, high = min(config.speeds), max(config.speeds)
    if low <= speed <= high:
        return speed
    warnings.warn(f"speed {speed} is outside the trained range [{low}, {high}]; clamped", stacklevel=2)
    return min(max(speed, low), high)


# --- 1. demonstrations (Ray tasks, cached) -----------------------------------------------------------


def record_batch_task(demo_config: dict, seed: int) -> tuple[list, int]:
    from actors.rollout import limit_threads
    from workloads.tempovla.demos import record_batch

    limit_threads()
    return record_batch(from_dict(DemoConfig, demo_config), seed, {})


def generate_demos(demo_config: DemoConfig, seed: int, target: Path, parallel: int = 2, say_line=print) -> Path:
    """Batches of the expert's episodes as Ray tasks (`parallel` at a time) until enough
    succeeded, written as one LeRobot v3.0 dataset at `target`; a complete copy is reused."""
    import ray

    from envs.panda import PandaTask
    from workloads.tempovla.demos import write_dataset

    def build(directory: Path) -> None:
        task = remote_task(record_batch_task, num_cpus=1, runtime_env=RENDERING if demo_config.image_size else None)
        kept, failed, batch, started = [], 0, 0, time.perf_counter()
        while len(kept) < demo_config.episodes:
            refs = [task.remote(to_dict(demo_config), seed * 100_003 + batch + i) for i in range(parallel)]
            batch += parallel
            for episodes, failures in ray.get(refs):
                kept.extend(episodes)
                failed += failures
        kept = kept[: demo_config.episodes]
        frames = sum(len(e.actions) for e in kept)
        seconds = time.perf_counter() - started
        say_line(f"[tempovla] {len(kept)} demonstrations ({frames} frames) in {seconds:.1f} s; the expert failed {failed} times")
        write_dataset(directory, kept, round(1 / PandaTask.ctrl_dt), {},
                      {"expert_failures": failed, "expert_success_rate": (batch * demo_config.envs_per_batch - failed) /
                       (batch * demo_config.envs_per_batch), "demos": to_dict(demo_config), "seed": seed},
                      action_type=demo_config.action_type)

    return cached_directory(target, build)


def dataset_action_type(info: dict) -> str:
    return info.get("rayworks", {}).get("action_type", "unknown")


def dataset_for(config: Config, say_line=print) -> Path:
    from workloads.tempovla.demos import ACTION_TYPES, VIDEO_KEY, read_info

    if config.dataset:
        info = read_info(Path(config.dataset))  # a clear error for another layout
        action_type = dataset_action_type(info)
        if config.augment == "vsta":
            from workloads.tempovla.vsta import check_composable

            try:
                check_composable(action_type)
            except ValueError as exc:
                raise ConfigError(f"dataset: {exc}") from None
        if action_type not in ACTION_TYPES:
            raise ConfigError(f"dataset: action type {action_type!r} cannot be played in PandaPickCube; playable: {', '.join(ACTION_TYPES)}")
        if config.policy.inputs == "image" and VIDEO_KEY not in info["features"]:
            raise ConfigError(f"dataset: {config.dataset} has no {VIDEO_KEY!r} video feature, which policy.inputs=image reads")
        return Path(config.dataset)
    key = stable_hash([to_dict(config.demos), config.seed])
    return generate_demos(config.demos, config.seed, Path(storage_path(config.storage_path)) / "tempovla-demos" / key,
                          say_line=say_line)


def split_demos(demos: list, held_out: float, seed: int) -> tuple[list, list]:
    order = np.random.default_rng(seed).permutation(len(demos))
    cut = max(1, round(held_out * len(demos)))
    return [demos[i] for i in order[cut:]], [demos[i] for i in order[:cut]]


# --- 2. training (Ray Train) -----------------------------------------------------------------------


def validation_loss(policy, sampler, speeds: list[float], scale_actions: bool, horizon: int = 1, examples: int = 2048) -> dict[str, float]:
    """Motion error on held-out demonstrations re-timed to each speed (fixed draws; over the
    chunk's steps that exist), the policy asked as it is at run time (the baseline at 1x, its
    motion scaled by c)."""
    out = {}
    with torch.no_grad():
        for c in speeds:
            sampler.rng = np.random.default_rng(17)
            sampler.speeds = np.array([c])
            batch = {k: torch.from_numpy(v) for k, v in sampler.sample(examples, horizon).items()}
            asked = torch.ones_like(batch["speed"]) if scale_actions else batch["speed"]
            motion, _ = policy(batch["state"], asked, image=batch.get("image"))
            if scale_actions:
                motion = motion * batch["speed"][:, None, None]
            valid = batch["valid"].float()
            out[f"val_motion_mse/{c:g}"] = float((((motion - batch["motion"]) ** 2).mean(-1) * valid).sum() / valid.sum())
    out["val_motion_mse"] = float(np.mean(list(out.values())))
    return out


def train_loop_per_worker(payload: dict) -> None:
    import ray.train

    from actors.rollout import limit_threads
    from workloads.tempovla.demos import load_demonstrations
    from workloads.tempovla.policy import SpeedPolicy, bc_loss, policy_state, random_shift
    from workloads.tempovla.vsta import Demonstration, VSTASampler

    limit_threads()
    config: Config = from_dict(Config, payload["config"])
    rank, world_size, run = train_worker_context(payload)
    t = config.train
    demos, info = load_demonstrations(Path(payload["dataset"]))
    action_type, horizon = dataset_action_type(info), config.policy.chunk
    image_size = demos[0].images.shape[1] if config.policy.inputs == "image" else 0  # dataset_for checked the frames exist
    demos = [Demonstration(policy_state(d.states, config.policy.inputs), d.motion, d.gripper, d.images if image_size else None)
             for d in demos]
    train_demos, held_out = split_demos(demos, t.held_out, config.seed)
    speeds = config.speeds if config.augment == "vsta" else [1.0]
    sampler = VSTASampler(train_demos, tuple(speeds), action_type, config.turn_degrees, seed=config.seed * 1000 + rank)
    validation = VSTASampler(held_out, tuple(config.speeds), action_type, config.turn_degrees)
    states = np.concatenate([d.states for d in train_demos])
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    policy = SpeedPolicy(states.shape[1], config.policy.hidden, config.policy.conditioning, states.mean(0), states.std(0),
                         motion_dim=demos[0].motion.shape[1], chunk=horizon, image_size=image_size)
    engine = t.engine(policy, lambda params: torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
                      schedule=lambda step: 0.5 * (1 + np.cos(np.pi * min(step, t.steps) / t.steps)))
    log_every = max(1, t.steps // 10)
    for step in range(1, t.steps + 1):
        batch = {k: torch.from_numpy(v) for k, v in sampler.sample(t.batch_size, horizon).items()
                 if k in ("state", "speed", "motion", "gripper", "valid", "image")}
        if "image" in batch:
            batch["image"] = random_shift(batch["image"], config.policy.image_shift)
        loss, stats = bc_loss(engine.module, batch)
        engine.step(loss)
        if rank == 0 and (step % log_every == 0 or step == t.steps):
            run.log_metrics({"train_loss": float(loss.detach()), **stats, "lr": engine.lr}, step=step)
            say(payload, f"[tempovla] step {step}/{t.steps}  loss {float(loss):.4f}  motion mse {stats['motion_mse']:.4f}")
    check_ranks_in_sync(policy, run, t.steps)
    metrics = validation_loss(policy, validation, config.speeds, config.augment == "none", horizon)
    if rank == 0:
        run.log_metrics(metrics, step=t.steps)
        with tempfile.TemporaryDirectory() as directory:
            torch.save({"state_dict": policy.state_dict(), "state_dim": states.shape[1], "action_type": action_type,
                        "image_size": image_size},
                       Path(directory) / "policy.pt")
            ray.train.report({**metrics, "step": t.steps}, checkpoint=ray.train.Checkpoint.from_directory(directory))
    else:
        ray.train.report({**metrics, "step": t.steps})


@dataclasses.dataclass
class TrainedPolicy:
    """What training hands on: the weights and the shapes and action type they were trained for."""

    weights: dict
    state_dim: int
    action_type: str
    image_size: int = 0  # > 0: the policy reads camera frames of this size

    @property
    def motion_dim(self) -> int:
        from workloads.tempovla.demos import ACTION_TYPES

        return len(ACTION_TYPES[self.action_type][1]) - 1

    @property
    def action_mode(self) -> str:
        from workloads.tempovla.demos import ACTION_TYPES

        return ACTION_TYPES[self.action_type][0]

    def actor_spec(self, config: Config, command):
        from workloads.tempovla.policy import SpeedActorSpec

        return SpeedActorSpec(self.state_dim, config.policy.hidden, config.policy.conditioning, command, self.motion_dim,
                              config.policy.chunk, config.policy.execute, config.policy.inputs, self.image_size)


def train_policy(config: Config, dataset: Path, run_record: tracking.Run, run_name: str, train_callbacks) -> tuple[TrainedPolicy, dict]:
    from ray.train.torch import TorchTrainer

    with ProgressLines() as lines:
        result = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": to_dict(config), "dataset": str(dataset), "progress": lines.queue,
                               "mlflow_run_id": run_record.run_id, "mlflow_uri": run_record.uri},
            scaling_config=config.train.scaling_config(),
            run_config=train_run_config(config, run_name, train_callbacks),
        ).fit()
    if result.checkpoint is None:
        raise RunFailed("training reported no checkpoint (see the Ray Train worker logs)")
    with result.checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / "policy.pt", weights_only=False)
    return TrainedPolicy(saved["state_dict"], saved["state_dim"], saved["action_type"], saved["image_size"]), dict(result.metrics)


def step_budget(config: Config) -> tuple[int, int]:
    """What Tune's scheduler counts: one report at the end of training."""
    return 1, 1


# --- 3. evaluation (rollout workers) -----------------------------------------------------------------


def evaluate(config: Config, trained: TrainedPolicy) -> tuple[dict[str, float], dict[str, dict]]:
    """Success, time and tracking per constant speed and for the dynamic schedule: (metrics, per-setting summaries)."""
    from actors.rollout import RolloutGroup
    from envs.panda import PandaTask
    from workloads.tempovla.policy import SpeedCommand, episode_steps_at

    actor_weights = {f"policy.{k}": v for k, v in trained.weights.items()}
    scale = config.augment == "none"

    def spec(command: SpeedCommand):
        return trained.actor_spec(config, command)

    def env_params(slowest: float) -> dict:
        return {"action_mode": trained.action_mode, "stop_on_success": True, "image_size": trained.image_size, "episode_steps": episode_steps_at(slowest, config.episode_steps)}

    settings = {f"{c:g}x": (SpeedCommand(speed=command_speed(config, c), scale_actions=scale), c) for c in config.eval_speeds}
    s = config.schedule
    fast, slow = command_speed(config, s.fast), command_speed(config, s.slow)
    settings.update({
        "constant_fast": (SpeedCommand(speed=fast, scale_actions=scale), fast),
        "constant_slow": (SpeedCommand(speed=slow, scale_actions=scale), slow),
        "scheduled": (SpeedCommand(fast=fast, slow=slow, near=s.near, scale_actions=scale), slow),  # its time limit: the slow one's
    })
    first_command, _ = next(iter(settings.values()))
    # A worker that renders every frame (software OpenGL: tens of frames a second) may take far
    # longer than the default stall timeout over the longest episodes; allow a quarter second a frame.
    longest = episode_steps_at(min(limit for _, limit in settings.values()), config.episode_steps)
    timeout_s = 300.0 + (0.25 * longest * config.eval_envs_per_worker if trained.image_size else 0.0)
    group = RolloutGroup(ENV_ID, config.eval_workers, config.eval_envs_per_worker, config.seed + 7, env_params(1.0), spec(first_command),
                         pin_threads=False, runtime_env=RENDERING if trained.image_size else None, timeout_s=timeout_s)
    summaries = {}
    try:
        for name, (command, limit_speed) in settings.items():
            params = env_params(limit_speed)
            episodes = group.evaluate(actor_weights, params["episode_steps"] + 1, spec(command), params)
            success = np.asarray(episodes["success"], dtype=bool)
            lengths = np.asarray(episodes["length"], dtype=float)
            summaries[name] = {"success_rate": float(success.mean()), "episodes": int(len(success)),
                               "steps_to_success": float(lengths[success].mean()) if success.any() else float("nan"),
                               "tracking_gap_mm": float(np.mean(episodes["metrics/tracking_gap_mm"]))}
    finally:
        group.shutdown()
    metrics = {}
    base = summaries["1x"]["steps_to_success"]
    for c in config.eval_speeds:
        summary = summaries[f"{c:g}x"]
        metrics[f"success_rate/{c:g}"] = summary["success_rate"]
        metrics[f"speed_ratio/{c:g}"] = base / summary["steps_to_success"]
        metrics[f"tracking_gap_mm/{c:g}"] = summary["tracking_gap_mm"]
    for name in ("constant_fast", "constant_slow", "scheduled"):
        metrics[f"{name}/success_rate"] = summaries[name]["success_rate"]
        metrics[f"{name}/seconds_to_success"] = summaries[name]["steps_to_success"] * PandaTask.ctrl_dt
    metrics[KEY_METRIC] = float(np.mean([metrics[f"success_rate/{c:g}"] for c in config.eval_speeds]))
    return {k: v for k, v in metrics.items() if v == v}, summaries


# --- 4. rendering (its own process: MuJoCo reads MUJOCO_GL at import) ----------------------------------


def render_rollout(config_dict: dict, trained: TrainedPolicy, speed: float) -> tuple[bytes, str]:
    """A GIF of the policy at `speed`: (its bytes, '') or (b'', why it could not render)."""
    try:
        from PIL import Image

        from envs.panda import PandaPickCube
        from workloads.tempovla.policy import SpeedCommand, episode_steps_at

        config = from_dict(Config, config_dict)
        actor = trained.actor_spec(config, SpeedCommand(speed=speed, scale_actions=config.augment == "none")).build()
        actor.load_state_dict({f"policy.{k}": v for k, v in trained.weights.items()})
        task = PandaPickCube(1, config.seed, action_mode=trained.action_mode, image_size=trained.image_size,
                             episode_steps=episode_steps_at(speed, config.episode_steps))
        renderer, frames = task.make_renderer(), []
        for _ in range(episode_steps_at(speed, config.episode_steps)):
            actions, _ = actor.act(torch.from_numpy(task.observe()))
            task.step(actions.numpy())
            frames.append(Image.fromarray(task.render(0, renderer)))
            if task.success()[0]:
                break
        renderer.close()
        from workloads.plots import gif_bytes

        return gif_bytes(frames, task.ctrl_dt), ""
    except Exception as exc:  # no GL platform on this machine: the run goes on without a video
        return b"", f"{type(exc).__name__}: {exc}"


# --- the run ---------------------------------------------------------------------------------------


def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    dataset = dataset_for(config)
    run_record, run_name = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id,
                                    data_hash=stable_hash([str(dataset.name)]))
    with ending_run(run_record):
        started = time.monotonic()
        trained, train_metrics = train_policy(config, dataset, run_record, run_name, train_callbacks)
        print(f"[tempovla] policy trained after {time.monotonic() - started:.0f} s", flush=True)
        metrics, summaries = evaluate(config, trained)
        print(f"[tempovla] evaluated after {time.monotonic() - started:.0f} s", flush=True)
        summary = log_outcome(config, run_record, dataset, trained, metrics, summaries, train_metrics)
    return summary


def log_outcome(config: Config, run_record: tracking.Run, dataset: Path, trained: TrainedPolicy, metrics: dict,
                summaries: dict, train_metrics: dict) -> RunSummary:
    import json

    import ray

    from workloads.plots import plot_curves
    from workloads.tempovla.demos import read_info
    from workloads.tempovla.policy import policy_specs, save_policy_artifact

    info = read_info(dataset)
    metrics["demo_frames"] = info["total_frames"]
    metrics["demo_episodes"] = info["total_episodes"]
    run_record.log_metrics(metrics, step=config.train.steps)
    run_record.log_text(json.dumps(summaries, indent=2) + "\n", "evaluation.json")
    run_record.log_text(json.dumps(info, indent=2) + "\n", "dataset_info.json")
    with tempfile.TemporaryDirectory() as scratch:
        plot = plot_curves({"success rate by commanded speed": {config.augment: [(c, metrics.get(f"success_rate/{c:g}", 0.0))
                                                                                 for c in config.eval_speeds]},
                            "realised speed ratio (1x length / length at c)": {
                                config.augment: [(c, metrics[f"speed_ratio/{c:g}"]) for c in config.eval_speeds
                                                 if f"speed_ratio/{c:g}" in metrics],
                                "ideal": [(c, c) for c in config.eval_speeds]}},
                           Path(scratch) / "success_per_speed.png", f"tempovla ({config.augment})", xlabel="commanded speed")
        run_record.log_artifact(plot)
        save_policy_artifact(Path(scratch) / "policy.pt", trained.weights, policy_specs(
            trained.state_dim, config.policy, config.speeds, config.augment, trained.action_type, trained.image_size))
        run_record.log_artifact(Path(scratch) / "policy.pt", "policy")
        if config.render:
            task = ray.remote(num_cpus=0, runtime_env=RENDERING)(render_rollout)
            for speed in (min(config.eval_speeds), max(config.eval_speeds)):
                gif, reason = ray.get(task.remote(to_dict(config), trained, command_speed(config, speed)))
                if reason:
                    run_record.set_tags({"render_skipped": reason[:250]})
                    break
                (Path(scratch) / f"rollout_{speed:g}x.gif").write_bytes(gif)
                run_record.log_artifact(Path(scratch) / f"rollout_{speed:g}x.gif")
    version = tracking.register_model(run_record, "policy", REGISTERED) if config.register_model else ""
    per_speed = "  ".join(f"{c:g}x {metrics.get(f'success_rate/{c:g}', 0):.2f}" for c in config.eval_speeds)
    print(f"[tempovla] {config.augment}: success by speed {per_speed}; speed ratio at {max(config.eval_speeds):g}x "
          f"{metrics.get(f'speed_ratio/{max(config.eval_speeds):g}', float('nan')):.2f}; scheduled "
          f"{metrics.get('scheduled/success_rate', 0):.2f} in {metrics.get('scheduled/seconds_to_success', float('nan')):.2f} s "
          f"(fast {metrics.get('constant_fast/success_rate', 0):.2f}, slow {metrics.get('constant_slow/success_rate', 0):.2f})",
          flush=True)
    extra = {**{k: round(float(v), 4) for k, v in metrics.items()}, **{k: round(float(v), 5) for k, v in train_metrics.items()
                                                                        if k.startswith("val_")}, "registered_version": version}
    return RunSummary(PIPELINE, KEY_METRIC, metrics[KEY_METRIC], run_record.run_id, run_record.artifact_uri, extra=extra)


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    from pipelines.tempovla import main as importable_main  # pickled by module name on the workers

    sys.exit(importable_main())
