"""HANDOFF: one G1 controller distilled from the specialists by multi-teacher KL DAgger.

    python -m pipelines.handoff [--set student=dense num_experts=6 mixing.start=0.8 ...] [--resume]

Recipe:
1. Teachers: one trained policy per task (`teachers`: a `policy.pt` path, its directory or a
   registered model name; by default the specialists committed in `data/handoff/teachers/`),
   each checked against its task's observation and action sizes, each behind an expert-query
   actor (`actors.handoff.PolicyTeacher`).
2. Student: a mixture of experts whose gate reads the command and whether the robot is down
   (`workloads.handoff.student`), or the dense ablation of the same size (`student=dense`).
3. On Ray Train, per iteration: DAgger workers run every task of the mixture with the student
   acting (the teacher's action instead with a decaying probability, `mixing`); the task's
   teacher labels every visited state with its Gaussian; the labelled states join an aggregate
   of the last `buffer_iterations` iterations; the student minimises KL(teacher || student) over
   it. Checkpoints every `eval_every` iterations (`--resume` continues from the last one).
4. Evaluation, on episodes seeded apart from collection: the student and each specialist on the
   specialist's own task (velocity-tracking error, recovery success, hand-tracking error and
   reachable workspace, falls), their ratios, KL(teacher || student) on the states the student
   visits before and after training, and the gate's mean weights per task (a plot).
5. MLflow: the config, per-iteration losses and KLs, the evaluation, the student as a policy
   artifact registered as `rayworks-handoff-student`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
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
    say,
    train_run_config,
    train_worker_context,
)
from workloads import tracking
from workloads.caching import stable_hash
from workloads.config import ConfigError, from_dict, require, to_dict
from workloads.distributed import average_in_place, gather_objects
from workloads.handoff.student import STUDENTS, Context, MixingSchedule, distillation_loss, student_specs

PIPELINE = "handoff"
KEY_METRIC = "eval_kl"  # KL(teacher || student) on the states the student visits, mean over tasks
TUNE_MODE = "min"
REGISTERED = "rayworks-handoff-student"
STUDENT_KIND = "rayworks.handoff.student"
TEACHER_DIR = Path(__file__).resolve().parents[1] / "data" / "handoff" / "teachers"
THREATS = (
    "the teachers are short PPO runs: a student matching them inherits their limits (see data/handoff/teachers/README.md)",
    "one simulator (MuJoCo) with its own contact model: no claim transfers to hardware",
)
QUICKSTART = ["train.num_workers=2", "eval_every=16"]
# What each task is judged on, and which way is better.
TASK_METRICS = {"velocity": ("velocity_error", "min"), "recovery": ("success_rate", "max"), "motion": ("hand_error", "min")}


@dataclasses.dataclass
class Config(RunFields):
    modes: list[str] = dataclasses.field(default_factory=lambda: ["velocity", "recovery", "motion"])  # the mixture of tasks
    teachers: dict[str, str] = dataclasses.field(default_factory=dict)  # mode -> policy.pt / directory / registered name; default: committed
    student: str = "moe"  # moe (gated expert heads) or dense (the same parameter count, no gate)
    num_experts: int = 4  # expert heads of the mixture
    hidden: list[int] = dataclasses.field(default_factory=lambda: [128, 128])  # each expert head's layers
    gate_hidden: int = 64  # the gate's hidden layer
    iterations: int = 16  # DAgger iterations (collect, label, aggregate, update)
    steps_per_iteration: int = 20  # control steps of every environment per iteration
    envs_per_task: int = 8  # environments of each task in each DAgger worker
    dagger_workers: int = 1  # DAgger workers per learner
    mixing: MixingSchedule = dataclasses.field(default_factory=MixingSchedule)  # DAgger's teacher-action probability per iteration
    buffer_iterations: int = 10  # the aggregate keeps the labelled states of this many recent iterations
    lr: float = 1e-3  # Adam learning rate of the student
    epochs: int = 2  # passes over the aggregate per iteration
    minibatches: int = 4  # minibatches per pass
    max_grad_norm: float = 1.0  # gradient clipping norm
    eval_every: int = 8  # report (Tune), checkpoint
    eval_steps: int = 150  # control steps of each evaluation (a whole recovery episode)
    # mode -> that task's knobs; recovery episodes of 3 s (the student's success is read at their end)
    env_params: dict[str, dict] = dataclasses.field(default_factory=lambda: {"recovery": {"episode_steps": 150}})
    pin_threads: bool = True  # pin each DAgger worker to one core
    register_model: bool = True  # register the student as rayworks-handoff-student
    render: bool = True  # log a GIF of the student switching tasks (walk, track a motion, get up after a push)
    render_steps: int = 150  # control steps in the GIF
    train: Workers = dataclasses.field(default_factory=lambda: Workers(cpus_per_worker=0))

    section: ClassVar[str] = "handoff"

    def validate(self) -> None:
        import envs
        from envs.g1 import MODE_ENVS
        from workloads.config import build_section

        require(bool(self.modes) and len(set(self.modes)) == len(self.modes), "modes", "a non-empty list without repeats")
        for mode in self.modes:
            require(mode in MODE_ENVS, "modes", f"unknown task {mode!r}; known: {', '.join(MODE_ENVS)}")
        for mode, params in self.env_params.items():  # knobs of a task outside the mixture are kept, unused
            require(mode in MODE_ENVS, "env_params", f"unknown task {mode!r}; known: {', '.join(MODE_ENVS)}")
            build_section(envs.TASKS[MODE_ENVS[mode]].Params, params, f"env_params.{mode}")
        for mode in self.teachers:
            require(mode in self.modes, "teachers", f"a teacher for {mode!r}, which is not one of the modes {self.modes}")
        require(self.student in STUDENTS, "student", f"expected one of {STUDENTS}, got {self.student!r}")
        require(self.num_experts >= 1, "num_experts", "must be >= 1")
        require(bool(self.hidden) and all(h >= 1 for h in self.hidden), "hidden", "a non-empty list of positive sizes")
        require(self.iterations >= 1 and self.steps_per_iteration >= 1, "iterations", "iterations and steps_per_iteration must be >= 1")
        require(self.envs_per_task >= 1 and self.dagger_workers >= 1, "envs_per_task", "envs_per_task and dagger_workers must be >= 1")
        require(0.0 <= self.mixing.start <= 1.0 and 0.0 <= self.mixing.decay <= 1.0, "mixing", "start and decay in [0, 1]")
        require(self.buffer_iterations >= 1 and self.epochs >= 1 and self.minibatches >= 1, "buffer_iterations",
                "buffer_iterations, epochs and minibatches must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.eval_every >= 1 and self.eval_steps >= 1, "eval_every", "eval_every and eval_steps must be >= 1")


def step_budget(config: Config) -> tuple[int, int]:
    """(steps, evaluation interval) as Tune's scheduler sees them: DAgger iterations."""
    return config.iterations, config.eval_every


# ---------------------------------------------------------------- teachers
def resolve_teacher(mode: str, source: str | None) -> Path:
    """A teacher's `policy.pt`: the given path (or its directory), a registered model's newest
    version, or the committed specialist of the task."""
    if not source:
        return TEACHER_DIR / mode / "policy.pt"
    path = Path(source)
    if path.exists():
        return path
    if "/" in source or source.endswith(".pt"):
        raise ConfigError(f"teachers.{mode}: {source} does not exist")
    newest = tracking.newest_registered_model(source)
    if newest is None:
        raise ConfigError(f"teachers.{mode}: {source!r} is neither a file nor a registered model")
    return newest


def check_teachers(config: Config) -> dict[str, str]:
    """Every task's teacher, loaded and checked against its environment: a teacher whose
    observation or action size does not match is refused with both sizes named."""
    import envs
    from envs.g1 import MODE_ENVS
    from workloads.policies import KINDS, PolicyArtifactError, load_policy

    resolved = {}
    for mode in config.modes:
        path = resolve_teacher(mode, config.teachers.get(mode))
        try:
            _, specs = load_policy(path)
        except PolicyArtifactError as exc:
            raise ConfigError(f"teachers.{mode}: {exc}") from None
        if KINDS[specs["kind"]].gaussian is None:
            raise ConfigError(f"teachers.{mode}: a {specs['kind']} policy has no action distribution to distil")
        task = envs.TASKS[MODE_ENVS[mode]](1, 0, **config.env_params.get(mode, {}))
        expected = (task.observation_dim, task.action_dim)
        task.close()
        if (specs["observation_dim"], specs["action_dim"]) != expected:
            raise ConfigError(f"teachers.{mode}: {path} acts on {specs['observation_dim']} observations and "
                              f"{specs['action_dim']} actions; the {mode} task has {expected[0]} and {expected[1]}")
        resolved[mode] = str(path)
    return resolved


def make_student_specs(config: Config) -> dict:
    from envs.g1 import COMMAND_SLICES, MODES, OBSERVATION_DIM, OBSERVATION_SLICES, NUM_JOINTS

    command, gravity = OBSERVATION_SLICES["command"], OBSERVATION_SLICES["gravity"]
    layout = {name: [command.start + s.start, command.start + s.stop] for name, s in COMMAND_SLICES.items()}
    return student_specs(config.student, OBSERVATION_DIM, NUM_JOINTS, Context((command.start, command.stop), (gravity.start, gravity.stop)),
                         layout, list(MODES), config.num_experts, config.hidden, config.gate_hidden)


# ---------------------------------------------------------------- training (on every Ray Train worker)
def update_student(student, optimizer, buffer: dict[str, torch.Tensor], config: Config, generator, average) -> float:
    """`epochs` passes of `minibatches` KL steps over the aggregate; the same number of steps on
    every rank (their aggregates have the same size), gradients averaged across ranks."""
    size, losses = buffer["obs"].shape[0], []
    for _ in range(config.epochs):
        for chunk in torch.randperm(size, generator=generator).chunk(config.minibatches):
            loss = distillation_loss(student, buffer["obs"][chunk], buffer["mean"][chunk], buffer["log_std"][chunk])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if average:
                average([p.grad for p in student.parameters() if p.grad is not None])
            torch.nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    return float(np.mean(losses))


def per_mode_kl(student, block: dict, modes: list[str]) -> dict[str, float]:
    with torch.no_grad():
        return {f"kl/{mode}": float(distillation_loss(student, block["obs"][block["mode"] == i],
                                                      block["mean"][block["mode"] == i], block["log_std"][block["mode"] == i]))
                for i, mode in enumerate(modes) if (block["mode"] == i).any()}


def flatten_report(report: dict, prefix: str) -> dict[str, float]:
    return {f"{prefix}/{mode}/{key}": value for mode, values in report.items() for key, value in values.items() if key != "gate"}


def train_loop_per_worker(payload: dict) -> None:
    import ray.train

    from actors.handoff import DaggerGroup
    from actors.rollout import limit_threads
    from workloads.policies import KINDS

    limit_threads()
    config: Config = from_dict(Config, payload["config"])
    specs, teachers = payload["student_specs"], payload["teachers"]
    rank, world_size, run = train_worker_context(payload)
    torch.manual_seed(config.seed)
    student = KINDS[STUDENT_KIND].build(specs)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
    start, buffer, history = 0, [], {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "trainer_state.pt", weights_only=False)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        start, buffer, history = state["iteration"], state["buffer"], state["history"]
    average = average_in_place if world_size > 1 else None
    generator = torch.Generator().manual_seed(config.seed * 7 + start)
    group = DaggerGroup(config.modes, teachers, specs, config.dagger_workers, config.envs_per_task,
                        config.seed * 10_007 + rank + 1000 * start, config.env_params, env_seed=config.seed,
                        pin_threads=config.pin_threads)
    weights = lambda: {k: v.detach().clone() for k, v in student.state_dict().items()}  # noqa: E731
    eval_seed = 1_000_003 + config.seed  # evaluation episodes: the same for every evaluation, apart from collection's
    try:
        if start == 0:  # the untrained student and the specialists, each evaluated by one rank
            jobs = {"before": "student", "teacher": "teacher"}
            mine = {name: group.evaluate(weights(), config.eval_steps, actor, eval_seed)
                    for i, (name, actor) in enumerate(jobs.items()) if i % world_size == rank}
            for part in gather_objects(mine):
                history.update(part)
        for iteration in range(start, config.iterations):
            tick = time.perf_counter()
            mixing = config.mixing.probability(iteration)
            block = group.collect(weights(), config.steps_per_iteration, mixing)
            tensors = {k: torch.as_tensor(block[k]) for k in ("obs", "mean", "log_std", "mode")}
            student.obs_norm.update(tensors["obs"])
            if average:
                average([student.obs_norm.mean, student.obs_norm.var])
            buffer = [*buffer, tensors][-config.buffer_iterations:]
            aggregate = {k: torch.cat([b[k] for b in buffer]) for k in ("obs", "mean", "log_std")}
            kl_before = per_mode_kl(student, tensors, config.modes)  # on the states this iteration visited, before learning from them
            loss = update_student(student, optimizer, aggregate, config, generator, average)
            done = iteration + 1
            metrics = {"loss": loss, "mixing": mixing, "teacher_fraction": block["teacher_fraction"], "iteration": done,
                       "aggregate_states": aggregate["obs"].shape[0], "collect_seconds": block["seconds"],
                       "iteration_seconds": time.perf_counter() - tick, **kl_before}
            for key, values in block["episodes"].items():
                if values:
                    metrics[f"episode/{key}"] = float(np.mean(values))
            if rank == 0:
                run.log_metrics(metrics, step=done)
            if done % config.eval_every == 0 or done == config.iterations:
                report = {"iteration": done}
                # each rank evaluates its share of the tasks (the same episodes whichever rank runs them)
                evaluation = {}
                for part in gather_objects(group.evaluate(weights(), config.eval_steps, "student", eval_seed,
                                                          modes=config.modes[rank::world_size])):
                    evaluation.update(part)
                if rank == 0:
                    history[f"iteration_{done}"] = {mode: evaluation[mode] for mode in config.modes}
                    report[KEY_METRIC] = float(np.mean([evaluation[m]["kl"] for m in config.modes]))
                    run.log_metrics({KEY_METRIC: report[KEY_METRIC], **flatten_report(evaluation, "eval")}, step=done)
                    say(payload, f"[handoff] {config.student} iteration {done}/{config.iterations}  loss {loss:.3f}  "
                                 f"eval KL {report[KEY_METRIC]:.3f}  mixing {mixing:.2f}")
                report_state(report, rank, student, optimizer, done, buffer, history)
        check_ranks_in_sync(student, run, config.iterations)
    finally:
        group.shutdown()


def report_state(metrics: dict, rank: int, student, optimizer, iteration: int, buffer: list, history: dict) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
                        "buffer": buffer, "history": history}, Path(directory) / "trainer_state.pt")
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


# ---------------------------------------------------------------- rendering (its own process: MuJoCo reads MUJOCO_GL at import)
FRAME_EVERY = 2  # a GIF frame every other control step (25 fps): software OpenGL takes ~70 ms a frame


def render_switching(specs: dict, student_state: dict, steps: int, seed: int) -> tuple[bytes, str]:
    """A GIF of one robot under the student while its command changes: walk forward for the first
    third, track a reaching / waving / turning motion for the second, then a hard sideways push
    and, once down, the recovery mode. (GIF bytes, '') or (b'', why it could not render)."""
    try:
        from PIL import Image

        from envs.g1 import COMMAND_SLICES, MODES, G1Motion, G1Velocity
        from workloads.policies import KINDS

        student = KINDS[STUDENT_KIND].build(specs)
        student.load_state_dict(student_state)
        robot = G1Velocity(1, seed, pushes=False, randomize=False)
        motion = G1Motion(1, seed, pushes=False, randomize=False)  # the source of the motion's targets
        renderer, frames, third = robot.make_renderer(), [], steps // 3
        for step in range(steps):
            command = np.zeros_like(robot.command)
            if step < third:
                mode, command[:, COMMAND_SLICES["velocity"]] = "velocity", [0.5, 0.0, 0.0]
            elif step < 2 * third:
                mode = "motion"
                motion.steps[:] = step - third
                motion._update_targets(np.arange(1))
                command[:] = motion.command
            else:
                if step == 2 * third:
                    robot.sim.qvel[0, 1] += 3.0  # pushed over
                mode = "recovery" if robot.fallen()[0] or step > 2 * third + 25 else "motion"
                if mode == "motion":
                    command[:] = motion.command
            command[:, COMMAND_SLICES["mode"]] = np.eye(len(MODES))[MODES.index(mode)]
            robot.command[:] = command
            actions, _ = student.act(torch.from_numpy(robot.observe()), deterministic=True)
            robot.step(actions.numpy())
            if step % FRAME_EVERY == 0:
                frames.append(Image.fromarray(robot.render(0, renderer)))
        renderer.close()
        from workloads.plots import gif_bytes

        return gif_bytes(frames, robot.ctrl_dt * FRAME_EVERY), ""
    except Exception as exc:  # no GL platform on this machine: the run goes on without a video
        return b"", f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- the driver
def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    import ray
    from ray.train.torch import TorchTrainer

    from actors.handoff import PolicyTeacher

    sources = check_teachers(config)  # a missing or mismatched teacher fails before any run opens
    specs = make_student_specs(config)
    run_record, run_name = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id,
                                    data_hash=stable_hash([sorted(sources.items()), sorted(config.env_params.items())]))
    with ending_run(run_record):
        run_record.log_text(json.dumps(sources, indent=2) + "\n", "teachers.json")
        # One expert-query actor per teacher, shared by every rank's DAgger workers.
        teacher_actor = ray.remote(PolicyTeacher).options(num_cpus=0)
        teachers = {mode: teacher_actor.remote(source) for mode, source in sources.items()}
        try:
            with ProgressLines() as lines:
                trainer = TorchTrainer(
                    train_loop_per_worker,
                    train_loop_config={"config": to_dict(config), "student_specs": specs, "teachers": teachers,
                                       "progress": lines.queue, "mlflow_run_id": run_record.run_id, "mlflow_uri": run_record.uri},
                    scaling_config=config.train.scaling_config(memory=1024**3),
                    run_config=train_run_config(config, run_name, train_callbacks),
                )
                result = trainer.fit()
        finally:
            for teacher in teachers.values():
                ray.kill(teacher)
        summary = log_outcome(config, run_record, result.checkpoint, specs)
    return summary


def outcome_metrics(config: Config, history: dict) -> dict[str, float]:
    """The final evaluation against the specialists: each task's metric for the student, for the
    teacher and their ratio; falls; KL before and after; the reachable workspace's ratio."""
    final = history[f"iteration_{config.iterations}"]
    before, teacher = history["before"], history["teacher"]
    metrics = {KEY_METRIC: float(np.mean([final[m]["kl"] for m in config.modes])),
               f"{KEY_METRIC}_before": float(np.mean([before[m]["kl"] for m in config.modes]))}
    for mode in config.modes:
        name, _ = TASK_METRICS[mode]
        metrics[f"student/{mode}/{name}"] = final[mode][name]
        metrics[f"teacher/{mode}/{name}"] = teacher[mode][name]
        metrics[f"untrained/{mode}/{name}"] = before[mode][name]
        metrics[f"ratio/{mode}/{name}"] = final[mode][name] / teacher[mode][name] if teacher[mode][name] else float("nan")
        metrics[f"student/{mode}/falls_per_env"] = final[mode]["falls_per_env"]
        metrics[f"teacher/{mode}/falls_per_env"] = teacher[mode]["falls_per_env"]
        metrics[f"kl/{mode}"], metrics[f"kl_before/{mode}"] = final[mode]["kl"], before[mode]["kl"]
        if "workspace_m3" in final[mode]:
            metrics[f"student/{mode}/workspace_m3"] = final[mode]["workspace_m3"]
            metrics[f"teacher/{mode}/workspace_m3"] = teacher[mode]["workspace_m3"]
    return metrics


def plot_gate_usage(config: Config, history: dict, path: Path) -> Path:
    """Mean gate weight of each expert head on each task's visited states: a bar group per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = history[f"iteration_{config.iterations}"]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / config.num_experts
    for expert in range(config.num_experts):
        axis.bar([i + expert * width for i in range(len(config.modes))], [final[m]["gate"][expert] for m in config.modes],
                 width, label=f"expert {expert}")
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(config.modes))], config.modes)
    axis.set_ylabel("mean gate weight")
    axis.set_title("HANDOFF gate usage per task")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def log_outcome(config: Config, run_record: tracking.Run, checkpoint, specs: dict) -> RunSummary:
    from workloads.policies import save_policy

    if checkpoint is None:
        raise RunFailed("the run reported no checkpoint (see the Ray Train worker logs)")
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / "trainer_state.pt", weights_only=False)
    history = state["history"]
    metrics = outcome_metrics(config, history)
    run_record.log_metrics(metrics, step=config.iterations)
    run_record.log_text(json.dumps(history, indent=2) + "\n", "evaluation.json")
    with tempfile.TemporaryDirectory() as scratch:
        save_policy(Path(scratch) / "policy.pt", STUDENT_KIND, state["student"], specs)
        run_record.log_artifact(Path(scratch) / "policy.pt", "policy")
        if config.student == "moe":
            run_record.log_artifact(plot_gate_usage(config, history, Path(scratch) / "gate_usage.png"))
        if config.render:
            import ray

            task = ray.remote(num_cpus=0, runtime_env={"env_vars": {"MUJOCO_GL": "egl"}})(render_switching)
            gif, reason = ray.get(task.remote(specs, state["student"], config.render_steps, config.seed))
            if reason:
                run_record.set_tags({"render_skipped": reason[:250]})
            else:
                (Path(scratch) / "switching.gif").write_bytes(gif)
                run_record.log_artifact(Path(scratch) / "switching.gif")
    version = tracking.register_model(run_record, "policy", REGISTERED) if config.register_model else ""
    lines = [f"{mode}: {TASK_METRICS[mode][0]} student {metrics[f'student/{mode}/{TASK_METRICS[mode][0]}']:.3f}, "
             f"specialist {metrics[f'teacher/{mode}/{TASK_METRICS[mode][0]}']:.3f}" for mode in config.modes]
    print(f"[handoff] {config.student}: KL {metrics[f'{KEY_METRIC}_before']:.3f} -> {metrics[KEY_METRIC]:.3f}; " + "; ".join(lines), flush=True)
    extra = {key: round(float(value), 4) for key, value in metrics.items()}
    extra.update(registered_version=version, student=config.student,
                 gate={mode: history[f"iteration_{config.iterations}"][mode].get("gate") for mode in config.modes})
    return RunSummary(PIPELINE, KEY_METRIC, metrics[KEY_METRIC], run_record.run_id, run_record.artifact_uri,
                      extra=extra, before=metrics[f"{KEY_METRIC}_before"])


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    from pipelines.handoff import main as importable_main  # Ray pickles by reference

    sys.exit(importable_main())
