"""DistIL: distributional DAgger from a blackbox expert, with its baselines, on Ray Train.

    python -m pipelines.distil [--set objective=reverse_kl expert.kind=hf expert.model=DIR ...] [--resume]

Recipe:
1. The student: `student_init`, or the tiny model SFT-ed briefly on arithmetic by the `sft`
   pipeline (a child MLflow run), cached by its config and seed under `storage_path`.
2. The expert, behind expert-query actors (`actors.experts`) that cache its labels: the oracle
   (default), the recovering oracle, any local HF model (`expert.model`), an OpenAI-compatible
   endpoint with `prompt_logprobs`, or, for `expert.kind=hf` without a model, the tiny model
   trained here (a second `sft` child) on privileged feedback the student never sees
   (`expert.feedback`: the answer, for python the tests; or the whole solution) before each
   prompt, so its labels are a real softmax that uses that feedback.
3. On Ray Train, per iteration: the student samples `samples_per_prompt` completions for
   `prompts_per_iteration` training problems of the task (`workloads.tasks`: arithmetic, or
   `task.kind=python`, programs that the sandboxed verifier actor runs against the problem's
   tests to decide Pass@k and the rlvr reward) -> the experts label every visited state with
   top-k + tail (seeing the feedback when `expert.privileged`) -> the student takes
   `updates_per_iteration` steps on `objective` (distil = forward CE with its sequence-level
   gradient, `credit=sequence`: later disagreement is credited to earlier decisions; reverse_kl, jsd) or, for
   `rlvr`, GRPO steps with the 0/1 answer check as reward, or, for `self_distil`, forward CE
   against the student's own distribution when it is shown the privileged feedback (the
   self-distillation baseline: no outside expert) -> Pass@1 / Pass@N on held-out
   problems every `eval_every` iterations. `level=step` labels every line start of the
   student's completions with K candidate next lines and their expert log-probs instead, and
   trains forward CE over those candidates.
4. MLflow: per-iteration metrics, Pass@1 and Pass@N against student samples (plot), student
   outputs with the expert's annotations, the config, the final student.

An expert that fails (down, slow, malformed answers) costs that iteration's update
(`expert_failures`); `max_expert_failures` in a row stop the run with a clear error after its
last checkpoint, which `--resume` continues from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.distributed as dist

from pipelines import sft
from pipelines.checkpoints import (
    latest_checkpoint,
    report_with_checkpoint,
    restore_optimizer,
)
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
    storage_path,
    train_run_config,
    train_worker_context,
    worker_device,
)
from workloads import tracking
from workloads.caching import cached_directory, committed_entry, stable_hash
from workloads.config import ConfigError, from_dict, require, to_dict
from workloads.dagger import (
    distillation_loss,
    label_statistics,
    pass_at_k,
    states_from_rollouts,
    step_candidate_loss,
    step_states,
)
from workloads.distill import OBJECTIVES
from workloads.distributed import any_rank, gather_objects
from workloads.experts import ExpertConfig, HFExpert
from workloads.grpo import GRPOConfig, frozen_reference, grpo_step
from workloads.lm import (
    TinyLMConfig,
    format_prompt,
    greedy_complete,
    load_lm,
    sample_groups,
)
from workloads.plots import plot_curves
from workloads.sft import batch_indices
from workloads.tasks import TaskConfig, completion_budget, privileged_feedback, task_for

PIPELINE = "distil"
REGISTERED_MODEL = "rayworks-distil"
KEY_METRIC = "pass_at_1"
# What `rayworks compare` on this pipeline cannot control (printed with every comparison).
THREATS = (
    'one synthetic task family per run, whose checker and reference solutions come from the same generator',
    "the expert's privileged access (the reference answer, the verifier's feedback) is part of the design: "
    "a result says what this expert teaches, not what any expert would",
)
QUICKSTART: list[str] = []
ALL_OBJECTIVES = (*OBJECTIVES, "rlvr", "self_distil")
WITHOUT_EXPERT = ("rlvr", "self_distil")  # objectives that query no expert actor


@dataclasses.dataclass
class Config(RunFields):
    # distil (forward CE), reverse_kl, jsd, rlvr (GRPO, no expert) or self_distil (forward CE to the
    # student itself shown the privileged feedback, no outside expert)
    objective: Literal["distil", "reverse_kl", "jsd", "rlvr", "self_distil"] = "distil"
    # token: the expert's top-k + tail at every position; step: K = expert.top_k candidate next
    # lines with the expert's log-probs at every line start, forward CE over them
    level: Literal["token", "step"] = "token"
    jsd_beta: float = 0.5  # beta of the generalised JSD
    average: Literal["token", "sequence"] = "token"  # loss average: per labelled token or per sequence
    # sequence: the forward CE's full gradient over the student's rollouts, the per-state term plus
    # the score-function term that credits later expert-student disagreement to earlier decisions;
    # state: the per-state term only (the ablation). Forward-CE objectives (distil, self_distil) at
    # the token level; the others, and level=step, always use the per-state form (`credit_used`)
    credit: Literal["sequence", "state"] = "sequence"
    student_init: str = ""  # a model directory or hub id; empty: the tiny student, SFT-ed briefly
    student_sft_steps: int = 300  # SFT steps of the default student (cached)
    # expert.kind=hf without expert.model: SFT steps of the privileged expert (the tiny model trained
    # on expert.feedback + prompt -> solution, cached); it never sees a held-out problem
    expert_sft_steps: int = 600
    # arithmetic: share of the expert's training examples that start from a slip and continue correctly
    # from it, so that it labels the states the student reaches after its mistakes, not only the reference's
    expert_recovery: float = 0.5
    iterations: int = 30  # DAgger iterations
    prompts_per_iteration: int = 48  # training problems per worker per iteration
    samples_per_prompt: int = 4  # also GRPO's group size for rlvr
    updates_per_iteration: int = 2  # optimiser steps per iteration
    lr: float = 2e-4  # a fresh Adam on an SFT-ed student: larger steps (1e-3) undo the SFT
    warmup_iterations: int = 3  # iterations of linear learning-rate warm-up
    temperature: float = 1.0  # the student's sampling temperature (rollouts and Pass@k)
    max_new_tokens: int = 0  # 0: the task's longest reference solution, its eos and some slack
    eval_problems: int = 100  # held-out problems for Pass@k
    eval_samples: int = 8  # N of Pass@N
    eval_every: int = 10  # iterations between evaluations
    max_expert_failures: int = 3  # expert failures in a row that stop the run
    kl_coef: float = 0.0  # rlvr: k3 KL to the initial student (0: no reference model, as the papers)
    register_model: bool = True  # register the final student in MLflow's registry
    num_samples_logged: int = 8  # annotated student samples logged
    model: TinyLMConfig = dataclasses.field(default_factory=TinyLMConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    expert: ExpertConfig = dataclasses.field(default_factory=ExpertConfig)
    train: Workers = dataclasses.field(default_factory=Workers)

    section: ClassVar[str] = "distil"

    def validate(self) -> None:
        require(self.objective in ALL_OBJECTIVES, "objective", f"expected one of {list(ALL_OBJECTIVES)}")
        require(self.level in ("token", "step"), "level", "expected token or step")
        require(self.level == "token" or self.objective == "distil", "level",
                f"level=step trains forward CE over candidates (objective=distil), not {self.objective}")
        require(self.level == "token" or self.expert.alignment == "tokens", "level",
                "level=step needs expert.alignment=tokens (candidates are student token ids)")
        require(0.0 < self.jsd_beta < 1.0, "jsd_beta", "must be in (0, 1)")
        require(self.average in ("token", "sequence"), "average", "expected token or sequence")
        require(self.credit in ("sequence", "state"), "credit", "expected sequence or state")
        require(bool(self.student_init) or self.student_sft_steps >= 1, "student_sft_steps", "the tiny student needs SFT steps (or set student_init)")
        require(self.expert_sft_steps >= 1, "expert_sft_steps", "the privileged expert needs SFT steps (or set expert.model)")
        require(self.expert.kind != "hf" or bool(self.expert.model) or self.expert.privileged, "expert.privileged",
                "the expert trained here learns to use the privileged feedback: set expert.privileged=true or give expert.model")
        require(0.0 <= self.expert_recovery <= 1.0, "expert_recovery", "must be in [0, 1]")
        require(self.iterations >= 0, "iterations", "must be >= 0")
        require(self.prompts_per_iteration >= 1, "prompts_per_iteration", "must be >= 1")
        require(self.samples_per_prompt >= 2 or self.objective != "rlvr", "samples_per_prompt", "rlvr needs >= 2 (GRPO groups)")
        require(self.samples_per_prompt >= 1 and self.updates_per_iteration >= 1, "samples_per_prompt",
                "samples_per_prompt and updates_per_iteration must be >= 1")
        require(self.lr > 0 and self.warmup_iterations >= 0, "lr", "need lr > 0 and warmup_iterations >= 0")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0 (0: fit the task)")
        require(self.eval_problems >= 1 and self.eval_samples >= 1, "eval_samples", "eval_problems and eval_samples must be >= 1")
        require(self.eval_every >= 1, "eval_every", "must be >= 1")
        require(self.max_expert_failures >= 1, "max_expert_failures", "must be >= 1")
        require(self.kl_coef >= 0, "kl_coef", "must be >= 0")


def credit_used(config: Config) -> str:
    """The credit the loss applies: the sequence-level term exists for forward CE at the token level."""
    forward_ce = config.objective in ("distil", "self_distil") and config.level == "token"
    return config.credit if forward_ce else "state"


def step_budget(config: Config) -> tuple[int, int]:
    """(steps, evaluation interval) as Tune's scheduler sees them: DAgger iterations."""
    return config.iterations, config.eval_every


# ---------------------------------------------------------------- the student and the expert
def sft_child(config: Config, parent_run_id: str, steps: int, cache_name: str, privileged: str = "",
              recovery: float = 0.0) -> str:
    """A model SFT-ed on the task by the `sft` pipeline (a child MLflow run), cached by what it
    learns from (not where runs are stored); `privileged` and `recovery` as in `sft.Config` (the
    expert's training). The embedded default's student is committed in `data/distil-students/`."""
    child = sft.Config(seed=config.seed, run_name="", experiment=config.experiment or f"rayworks-{PIPELINE}",
                       storage_path=config.storage_path, privileged=privileged, recovery=recovery,
                       register_model=False, num_samples_logged=4, model=config.model, task=config.task,
                       train=sft.TrainConfig(max_steps=steps, eval_every=steps, checkpoint_every=steps))
    key = stable_hash([to_dict(dataclasses.replace(child, experiment="", storage_path=""))])
    if committed := committed_entry(cache_name, key):
        return str(committed / "model")
    cache = Path(storage_path(config.storage_path)) / cache_name / key

    def train(directory: Path) -> None:
        import mlflow.artifacts

        summary = sft.run(child, parent_run_id=parent_run_id)
        mlflow.artifacts.download_artifacts(run_id=summary.run_id, artifact_path="model", dst_path=str(directory),
                                            tracking_uri=tracking.tracking_uri())

    return str(cached_directory(cache, train) / "model")


def ensure_student(config: Config, parent_run_id: str) -> str:
    """`student_init`, or the tiny student SFT-ed briefly on the task."""
    return config.student_init or sft_child(config, parent_run_id, config.student_sft_steps, "distil-students")


def ensure_expert(config: Config, parent_run_id: str) -> ExpertConfig:
    """The expert config with a model: for kind=hf without one, the tiny model trained here on
    `expert.feedback` + prompt -> solution, and from slips to their correct continuations
    (`expert_recovery`), on its seed's training split, never the held-out problems: its labels
    are a real softmax that uses what the student never sees, on and off the reference's path."""
    if config.expert.kind != "hf" or config.expert.model:
        return config.expert
    recovery = config.expert_recovery if config.task.kind == "arithmetic" else 0.0
    expert = sft_child(config, parent_run_id, config.expert_sft_steps, "distil-experts", config.expert.feedback, recovery)
    return dataclasses.replace(config.expert, model=expert)


# ---------------------------------------------------------------- evaluation
def evaluate(config: Config, model, tokenizer, problems, seed: int, checker, max_new_tokens: int) -> dict[str, float]:
    """Pass@1 and Pass@N (N = eval_samples, unbiased estimators) and greedy accuracy; a
    collective, every rank calls it. The ranks that hold a whole model (`model` not None: all of
    them under DDP, rank 0 under a sharded strategy) split the problems, each sampling every
    holder-count-th one with its own draws, and the counts are summed, so every rank returns the
    same figures (one rank evaluating alone left the others idle)."""
    holders = gather_objects(model is not None)
    rank = dist.get_rank() if dist.is_initialized() else 0
    index, count, n = sum(holders[:rank]), sum(holders), config.eval_samples
    mine = problems[index::count] if model is not None else []
    sums = [0.0, 0.0, 0.0]  # pass@1, pass@N, greedy, summed over this rank's problems
    if mine:
        prompts = [format_prompt(tokenizer, p.prompt) for p in mine]
        rollouts = sample_groups(model, tokenizer, prompts, n, max_new_tokens, config.temperature,
                                 generator_seed=seed * 1009 + index)
        verdicts = checker([p for p in mine for _ in range(n)], rollouts.texts)
        correct = [sum(verdicts[i * n : (i + 1) * n]) for i in range(len(mine))]
        greedy = greedy_complete(model, tokenizer, prompts, max_new_tokens)
        sums = [sum(pass_at_k(n, c, 1) for c in correct), sum(pass_at_k(n, c, n) for c in correct), sum(checker(mine, greedy))]
    totals = [sum(column) for column in zip(*gather_objects(sums))]
    return {"pass_at_1": totals[0] / len(problems), "pass_at_n": totals[1] / len(problems),
            "greedy_accuracy": totals[2] / len(problems)}


def annotated_samples(tokenizer, states, labels, problems, texts, correct, limit: int) -> list[dict]:
    """Student outputs with the expert's view of each position (its top 3 and the student's token)."""
    samples = []
    for state, label, problem, text, ok in list(zip(states, labels, problems, texts, correct))[:limit]:
        positions = []
        for j, token in enumerate(state.completion_ids):
            top = [(tokenizer.decode([int(t)]), round(math.exp(float(v)), 3))
                   for t, v in zip(label.token_ids[j][:3], label.logprobs[j][:3])] if label.valid[j] else None
            positions.append({"student": tokenizer.decode([token]), "expert_top3": top})
        samples.append({"prompt": problem.prompt, "completion": text, "correct": bool(ok),
                        "positions": positions})
    return samples


# ---------------------------------------------------------------- training (on every Ray Train worker)
def train_loop_per_worker(payload: dict) -> None:
    from actors.experts import ExpertUnavailable

    config: Config = from_dict(Config, payload["config"])
    experts, checker = payload["experts"], payload["checker"]
    rank, world_size, run = train_worker_context(payload)
    torch.manual_seed(config.seed)

    model, tokenizer = load_lm(payload["student"])
    train_problems, eval_problems = task_for(config.task).splits(config.seed)
    max_new_tokens = config.max_new_tokens or completion_budget(train_problems + eval_problems, tokenizer)
    eval_problems = eval_problems[: config.eval_problems]
    grpo = GRPOConfig(group_size=config.samples_per_prompt, lr=config.lr, updates_per_batch=config.updates_per_iteration,
                      temperature=config.temperature, max_new_tokens=max_new_tokens, kl_coef=config.kl_coef)
    restored = latest_checkpoint()
    if restored:
        model.load_state_dict(restored.model_state)
    # A whole frozen copy on every rank, taken before the strategy shards the model.
    reference = (frozen_reference(model).to(worker_device(config.train))
                 if config.objective == "rlvr" and config.kl_coef > 0 else None)
    warmup = max(1, config.warmup_iterations * config.updates_per_iteration)
    engine = config.train.engine(model, lambda parameters: torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0),
                                 schedule=lambda step: min(1.0, (step + 1) / warmup), max_grad_norm=grpo.max_grad_norm)
    start, failures_in_a_row, stopped = 0, 0, ""
    if restored:
        restore_optimizer(engine, restored, run, payload)
        start = restored.trainer_state["iteration"]
    per_iteration = config.prompts_per_iteration * config.samples_per_prompt * world_size
    eval_seed = config.seed * 7919 + 1  # the same Pass@k draws at every evaluation

    def evaluate_on_all_ranks() -> dict[str, float]:  # every rank holding whole weights takes its share
        model_here = engine.full_model() if engine.sharded else engine.model
        return evaluate(config, model_here, tokenizer, eval_problems, eval_seed, checker, max_new_tokens)

    before = evaluate_on_all_ranks()
    if rank == 0:
        run.log_metrics({**before, "student_samples": start * per_iteration}, step=start)
        say(payload, f"[distil] {config.objective}: pass@1 {before['pass_at_1']:.3f} pass@{config.eval_samples} "
                     f"{before['pass_at_n']:.3f} before iteration {start + 1}")

    for iteration in range(start, config.iterations):
        indices = batch_indices(iteration, config.prompts_per_iteration, world_size, rank, len(train_problems), config.seed)
        problems = [train_problems[i] for i in indices.tolist() for _ in range(config.samples_per_prompt)]
        started = time.perf_counter()
        rollouts = sample_groups(engine.model, tokenizer, [format_prompt(tokenizer, p.prompt) for p in problems[:: config.samples_per_prompt]],
                                 config.samples_per_prompt, max_new_tokens, config.temperature,
                                 generator_seed=(config.seed * 100_003 + iteration) * world_size + rank, synced=engine.sharded)
        rewards = torch.tensor(checker(problems, rollouts.texts), dtype=torch.float32)
        done = iteration + 1
        metrics = {"iteration": done, "student_samples": done * per_iteration, "rollout_accuracy": float(rewards.mean()),
                   "timing/rollouts_s": time.perf_counter() - started}
        started = time.perf_counter()
        if config.objective == "rlvr":
            metrics.update(grpo_step(engine, rollouts, rewards, grpo, reference))
        else:
            privileged = [privileged_feedback(p, config.expert.feedback_kind) if config.expert.privileged else "" for p in problems]
            states = states_from_rollouts(rollouts, privileged)
            failure: Exception | None = None
            try:
                if config.level == "step":
                    states = step_states(states, tokenizer)
                    labels = experts.candidates(states, config.expert.top_k)
                elif config.objective == "self_distil":  # the student, shown the feedback, is its own expert
                    engine.module.eval()
                    labels = HFExpert.from_model(engine.model, tokenizer, config.expert.top_k,
                                                 config.expert.temperature).label(states)
                else:
                    labels = experts.label(states)
            except (ExpertUnavailable, ConfigError) as exc:
                failure = exc
            # Agreed across ranks: an expert failure on any rank skips the update on every rank.
            if any_rank(failure is not None):
                failures_in_a_row += 1
                metrics["expert_failures"] = failures_in_a_row
                reason = next(r for r in gather_objects(str(failure) if failure is not None else "") if r)
                if rank == 0:
                    say(payload, f"[distil] iteration {done}: expert failed ({reason}); update skipped")
                labels = None
                if any_rank(isinstance(failure, ConfigError)) or failures_in_a_row >= config.max_expert_failures:
                    stopped = f"expert.{'endpoint' if config.expert.kind == 'openai' else 'kind'}: {reason}"
            else:
                failures_in_a_row = 0
            metrics["timing/labels_s"] = time.perf_counter() - started
            started = time.perf_counter()
            if labels is not None:
                metrics.update(label_statistics(labels))
                engine.module.train()
                for _ in range(config.updates_per_iteration):
                    if config.level == "step":
                        loss, labelled = step_candidate_loss(engine.module, states, labels, tokenizer.pad_token_id)
                    else:
                        objective = "distil" if config.objective == "self_distil" else config.objective
                        loss, labelled = distillation_loss(engine.module, rollouts, labels, objective,
                                                           config.jsd_beta, config.average, credit_used(config))
                    # No rank has a labelled state (empty rollouts, an expert that abstained
                    # everywhere): all skip. A rank without one steps on its zero loss otherwise.
                    if not any_rank(labelled > 0):
                        break
                    engine.step(loss)
                metrics.update({"loss": float(loss.detach()), "labelled_states": labelled,
                                "timing/updates_s": time.perf_counter() - started})
                if rank == 0 and done == config.iterations and config.level == "token":
                    samples = annotated_samples(tokenizer, states, labels, problems, rollouts.texts, rewards.tolist(),
                                                config.num_samples_logged)
                    run.log_text("\n".join(json.dumps(s) for s in samples) + "\n", "samples_annotated.jsonl")
        if rank == 0:
            run.log_metrics(metrics, step=done)
        if stopped or done % config.eval_every == 0 or done == config.iterations:
            evaluation = evaluate_on_all_ranks()
            if rank == 0:
                metrics.update(evaluation)
                run.log_metrics(evaluation, step=done)
                say(payload, f"[distil] iteration {done}/{config.iterations}  pass@1 {evaluation['pass_at_1']:.3f}  "
                      f"pass@{config.eval_samples} {evaluation['pass_at_n']:.3f}")
            if stopped:
                metrics["stopped"] = stopped
            report_with_checkpoint(metrics, engine, tokenizer, {"iteration": done})
        if stopped:
            return
    if config.iterations == 0 or start >= config.iterations:
        report_with_checkpoint({"iteration": start}, engine, tokenizer, {"iteration": start})
    check_ranks_in_sync(engine, run, config.iterations)


# ---------------------------------------------------------------- the driver
def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    from ray.train.torch import TorchTrainer

    from actors.experts import ExpertPool, lm_expert_builder
    from actors.verifiers import TaskChecker

    train_problems, _ = task_for(config.task).splits(config.seed)  # a bad task config fails before any run opens
    run_record, run_name = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id,
                                    data_hash=stable_hash(p.key for p in train_problems))
    with ending_run(run_record):
        student = ensure_student(config, run_record.run_id)
        run_record.set_tags({"student": student, "credit": credit_used(config)})
        experts = None
        if config.objective not in WITHOUT_EXPERT:
            expert = ensure_expert(config, run_record.run_id)
            if expert.model:
                run_record.set_tags({"expert": expert.model})
            experts = ExpertPool(expert, lm_expert_builder(expert, student))
        checker = TaskChecker(config.task)
        config.train.prepare_driver()
        with ProgressLines() as lines:
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"config": to_dict(config), "student": student, "experts": experts, "checker": checker,
                                   "progress": lines.queue, "mlflow_run_id": run_record.run_id, "mlflow_uri": run_record.uri},
                scaling_config=config.train.scaling_config(),
                run_config=train_run_config(config, run_name, train_callbacks),
            )
            result = trainer.fit()
        totals = {**(experts.stats() if experts is not None else {}), **checker.stats()}
        if totals:
            run_record.log_metrics({f"total_{k}": v for k, v in totals.items()}, step=config.iterations)
        if result.metrics and result.metrics.get("stopped"):
            raise RunFailed(f"{result.metrics['stopped']} (stopped after iteration {result.metrics['iteration']}; "
                              "its checkpoint is kept: fix the expert and pass --resume)")
        summary = log_outcome(config, run_record, result.checkpoint, student)
    return summary


def log_outcome(config: Config, run_record: tracking.Run, checkpoint, student: str) -> RunSummary:
    with checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as scratch:
        run_record.log_artifact(Path(directory) / "model", "model")
        history = {key: run_record.metric_history(key) for key in ("pass_at_1", "pass_at_n", "student_samples", "loss")}
        samples_at = dict(history["student_samples"])
        against_samples = lambda key: [(samples_at.get(step, step), value) for step, value in history[key]]
        plot = plot_curves({f"Pass@1 / Pass@{config.eval_samples} vs student samples":
                            {"Pass@1": against_samples("pass_at_1"), f"Pass@{config.eval_samples}": against_samples("pass_at_n")},
                            f"{config.objective} loss": {"loss": history["loss"]}},
                           Path(scratch) / "pass_at_k.png", f"distil {config.objective} {run_record.run_id[:8]}")
        run_record.log_artifact(plot)
    start, final = history["pass_at_1"][0][1], history["pass_at_1"][-1][1]
    run_record.log_metrics({"final_pass_at_1": final, "pass_at_1_gain": final - start,
                            "pass_at_n_gain": history["pass_at_n"][-1][1] - history["pass_at_n"][0][1]}, step=config.iterations)
    version = tracking.register_model(run_record, "model", REGISTERED_MODEL) if config.register_model else None
    return RunSummary(PIPELINE, KEY_METRIC, final, run_record.run_id, run_record.artifact_uri,
                      extra={"objective": config.objective, "student": student, "pass_at_1_before": start,
                             "pass_at_n_before": history["pass_at_n"][0][1], "pass_at_n": history["pass_at_n"][-1][1],
                             "registered_version": version}, before=start)


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    from pipelines.distil import main as importable_main  # Ray pickles by reference

    sys.exit(importable_main())
