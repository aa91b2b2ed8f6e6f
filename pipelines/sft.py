"""SFT: supervised fine-tuning of a causal LM on a verifiable task, on Ray Train.

    python -m pipelines.sft [--config FILE] [--set key=value ...] [--resume]

Recipe: config -> MLflow run -> TorchTrainer (one process per worker over gloo on CPU, NCCL on
GPU; `train.strategy` ddp, fsdp or deepspeed, `workloads.strategies`) -> evaluation and checkpoints through `ray.train.report` -> final model logged,
plotted and registered in MLflow. The task (`workloads.tasks`) is multi-step arithmetic by
default; `task.kind=python` trains on Python programs, and the held-out evaluation runs the
student's programs in the sandboxed verifier actor (`actors.verifiers.TaskChecker`).

Why a plain torch loop instead of TRL's SFTTrainer: the HF Trainer owns checkpointing,
resumption and its own process group, which would compete with Ray Train's. A 30-line loop
keeps Ray Train the single owner of checkpoints, makes the data position a pure function of
the global step (exact resume), and is what `benchmarks.train_overhead` measures against.
TRL is used where it adds an algorithm (DPO, GRPO), not a loop.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import ClassVar

import torch

from pipelines.checkpoints import (
    latest_checkpoint,
    report_with_checkpoint,
    restore_optimizer,
)
from pipelines.launch import (
    ProgressLines,
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
    worker_device,
)
from workloads import tracking
from workloads.caching import stable_hash
from workloads.config import from_dict, require, to_dict
from workloads.lm import TinyLMConfig, format_prompt, greedy_complete, load_lm, tiny_lm
from workloads.plots import plot_curves
from workloads.sft import (
    batch_at,
    batch_indices,
    tokenize_examples,
    train_step,
    warmup_cosine,
)
from workloads.tasks import TaskConfig, completion_budget, task_for

PIPELINE = "sft"
REGISTERED_MODEL = "rayworks-sft"
KEY_METRIC = "eval_accuracy"
QUICKSTART = ["train.max_steps=400", "train.eval_every=100", "train.checkpoint_every=200"]


@dataclasses.dataclass
class TrainConfig(Workers):
    """Ray Train workers and the SFT optimisation."""

    batch_size: int = 32  # examples per worker per step
    lr: float = 3e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 30  # linear warm-up, then cosine decay
    max_steps: int = 500  # optimiser steps
    max_grad_norm: float = 1.0  # gradient clipping norm
    max_length: int = 0  # tokens per example; 0: the longest example
    log_every: int = 10  # steps between logged losses
    eval_every: int = 100  # steps between held-out evaluations
    checkpoint_every: int = 100  # steps between checkpoints
    eval_max_new_tokens: int = 0  # 0: the task's longest reference solution, its eos and some slack

    section: ClassVar[str] = "train"

    def validate(self) -> None:
        super().validate()
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.max_steps >= 1, "max_steps", "must be >= 1")
        require(self.max_length >= 0 and self.eval_max_new_tokens >= 0, "max_length",
                "max_length and eval_max_new_tokens must be >= 0 (0: fit the task)")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            require(getattr(self, name) >= 1, name, "must be >= 1")


@dataclasses.dataclass
class Config(RunFields):
    # A saved model directory or hub id to start from; empty: build the tiny default.
    model_init: str = ""
    register_model: bool = True  # register the final model in MLflow's registry
    num_samples_logged: int = 20  # held-out completions logged as samples.jsonl
    model: TinyLMConfig = dataclasses.field(default_factory=TinyLMConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    section: ClassVar[str] = "sft"


def initial_model(config: Config):
    """(model, tokenizer) to start from: `model_init` (a directory or hub id) or the tiny default.

    Built in memory on every worker (same seed, same weights): with DDP, transformers saves
    only on rank 0, so a save/load round trip would leave other ranks without files."""
    if config.model_init:
        return load_lm(config.model_init)
    return tiny_lm(config.model, seed=config.seed)


def evaluate(model, tokenizer, problems, max_new_tokens: int, checker) -> tuple[float, list[str], list[bool]]:
    """Greedy accuracy on `problems`, with the completions and their verdicts."""
    completions = greedy_complete(model, tokenizer, [format_prompt(tokenizer, p.prompt) for p in problems], max_new_tokens)
    correct = checker(problems, completions)
    return sum(correct) / len(problems), completions, correct


def train_loop_per_worker(payload: dict) -> None:
    """Runs on every Ray Train worker; rank 0 evaluates, logs and writes checkpoints."""
    import ray.train

    config: Config = from_dict(Config, payload["config"])
    rank, world_size, run = train_worker_context(payload)
    torch.manual_seed(config.seed)

    model, tokenizer = initial_model(config)
    train_problems, eval_problems = task_for(config.task).splits(config.seed)
    data = tokenize_examples(tokenizer, [format_prompt(tokenizer, p.prompt) for p in train_problems],
                             [p.solution for p in train_problems], config.train.max_length)
    checker = payload["checker"]
    eval_tokens = config.train.eval_max_new_tokens or completion_budget(train_problems + eval_problems, tokenizer)
    train = config.train

    restored = latest_checkpoint()
    if restored:
        model.load_state_dict(restored.model_state)
    engine = train.engine(model, lambda parameters: torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay),
                          schedule=warmup_cosine(train.warmup_steps, train.max_steps), max_grad_norm=train.max_grad_norm)
    start_step = restored.trainer_state["step"] if restored else 0
    if restored:
        restore_optimizer(engine, restored, run, payload)
    device = worker_device(train)

    def evaluate_on_rank0() -> float:  # every rank gathers the weights; rank 0 evaluates them
        eval_model = engine.full_model()
        return evaluate(eval_model, tokenizer, eval_problems, eval_tokens, checker)[0] if rank == 0 else float("nan")

    eval_accuracy = evaluate_on_rank0()
    if rank == 0:
        run.log_metrics({"eval_accuracy": eval_accuracy, "resumed_from_step": start_step}, step=start_step)

    for step in range(start_step, train.max_steps):
        indices = batch_indices(step, train.batch_size, world_size, rank, len(data), config.seed)
        batch = {k: v.to(device) for k, v in batch_at(data, indices).items()}
        loss = train_step(engine, batch)
        global_step = step + 1
        last = global_step == train.max_steps
        metrics = {"train_loss": loss, "lr": engine.lr, "step": global_step,
                   "samples_seen": global_step * train.batch_size * world_size, "eval_accuracy": eval_accuracy}
        evaluating = global_step % train.eval_every == 0 or last
        if evaluating:
            eval_accuracy = metrics["eval_accuracy"] = evaluate_on_rank0()
            if rank == 0:
                say(payload, f"[sft] step {global_step}/{train.max_steps}  loss {loss:.4f}  eval_accuracy {eval_accuracy:.3f}")
        if rank == 0 and (global_step % train.log_every == 0 or evaluating):
            run.log_metrics(metrics, step=global_step)  # per-step curves go straight to MLflow
        # Ray Train hears only at eval and checkpoint steps: a report waits for the controller
        # to collect the previous one (it polls every ~2 s), so frequent reports stall training.
        if global_step % train.checkpoint_every == 0 or last:
            report_with_checkpoint(metrics, engine, tokenizer, {"step": global_step})
        elif evaluating:
            ray.train.report(metrics)
    check_ranks_in_sync(engine, run, train.max_steps)


def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    from ray.train.torch import TorchTrainer

    from actors.verifiers import TaskChecker

    train_problems, _ = task_for(config.task).splits(config.seed)
    data_hash = stable_hash(p.key for p in train_problems)
    run_record, run_name = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id, data_hash=data_hash)
    with ending_run(run_record):
        checker = TaskChecker(config.task)
        config.train.prepare_driver()
        with ProgressLines() as lines:
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"config": to_dict(config), "checker": checker, "progress": lines.queue,
                                   "mlflow_run_id": run_record.run_id, "mlflow_uri": run_record.uri},
                scaling_config=config.train.scaling_config(),
                run_config=train_run_config(config, run_name, train_callbacks),
            )
            result = trainer.fit()
        summary = log_outcome(config, run_record, result.checkpoint, checker)
    return summary


def log_outcome(config: Config, run_record: tracking.Run, checkpoint, checker) -> RunSummary:
    """Final model, learning-curve plot and sample outputs to MLflow; register the model."""
    train_problems, eval_problems = task_for(config.task).splits(config.seed)
    with checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(directory) / "model"
        run_record.log_artifact(model_dir, "model")
        model, tokenizer = load_lm(model_dir)
        shown = eval_problems[: config.num_samples_logged]
        eval_tokens = config.train.eval_max_new_tokens or completion_budget(train_problems + eval_problems, tokenizer)
        _, completions, correct = evaluate(model, tokenizer, shown, eval_tokens, checker)
        samples = [{"prompt": p.prompt, "completion": c, "reference": p.solution, "correct": ok}
                   for p, c, ok in zip(shown, completions, correct)]
        run_record.log_text("\n".join(json.dumps(s) for s in samples) + "\n", "samples.jsonl")
        history = {key: run_record.metric_history(key) for key in ("train_loss", "eval_accuracy")}
        plot = plot_curves({"train loss": {"train": history["train_loss"]},
                            "held-out exact match": {"eval": history["eval_accuracy"]}},
                           Path(scratch) / "learning_curve.png", f"sft {run_record.run_id[:8]}")
        run_record.log_artifact(plot)
    final_accuracy = history["eval_accuracy"][-1][1]
    untrained_accuracy = history["eval_accuracy"][0][1]
    run_record.log_metrics({"final_eval_accuracy": final_accuracy}, step=config.train.max_steps)
    version = tracking.register_model(run_record, "model", REGISTERED_MODEL) if config.register_model else None
    return RunSummary(
        pipeline=PIPELINE,
        metric="eval_accuracy",
        value=final_accuracy,
        run_id=run_record.run_id,
        artifacts=run_record.artifact_uri,
        extra={"untrained_accuracy": untrained_accuracy, "registered_version": version},
        before=untrained_accuracy,
    )


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    # Re-import by module name so Ray pickles `train_loop_per_worker` and `Config` by reference.
    from pipelines.sft import main as importable_main

    sys.exit(importable_main())
