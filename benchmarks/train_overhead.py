"""What Ray Train costs: the same tiny SFT steps in a plain torch loop and under TorchTrainer.

    python -m benchmarks.train_overhead [--steps 300]

Both sides run identical steps (same model, data order, batch size, one thread) and time only
the training loop; under TorchTrainer the loop also calls `ray.train.report` every 100 steps
as the `sft` pipeline does at its default eval interval. Worker start-up is reported on its own line, not in the ratio.
The plain loop runs before and after the Ray run and its mean is the baseline, so drift in
machine load hits both sides. Target: ratio >= 0.87 (Ray Train costs at most 15%).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from workloads.arithmetic import generate_splits
from workloads.lm import TinyLMConfig, build_tiny_lm, load_lm
from workloads.sft import (
    batch_at,
    batch_indices,
    tokenize_examples,
    train_step,
    warmup_cosine,
)
from workloads.strategies import DDPEngine, LocalEngine
from workloads.tasks import TaskConfig

REPORT_EVERY = 100  # the sft pipeline reports to Ray Train at eval/checkpoint steps (default 100)
WARMUP_STEPS = 10


def timed_steps(num_steps: int, report=None) -> float:
    """Run `num_steps` SFT steps after a short warm-up; return steps per second."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        model, tokenizer = load_lm(build_tiny_lm(TinyLMConfig(), directory, seed=0))
    # Inside Ray Train: the pipelines' DDP engine (one worker: no wrapper, as Ray's prepare_model).
    engine = (DDPEngine if report is not None else LocalEngine)(
        model, lambda parameters: torch.optim.AdamW(parameters, lr=3e-3), schedule=warmup_cosine(30, num_steps))
    train, _ = generate_splits(TaskConfig(), seed=0)
    data = tokenize_examples(tokenizer, [p.prompt for p in train], [p.solution for p in train], 64)
    for step in range(WARMUP_STEPS):
        train_step(engine, batch_at(data, batch_indices(step, 32, 1, 0, len(data), 0)))
    started = time.perf_counter()
    for step in range(WARMUP_STEPS, WARMUP_STEPS + num_steps):
        loss = train_step(engine, batch_at(data, batch_indices(step, 32, 1, 0, len(data), 0)))
        if report is not None and (step + 1) % REPORT_EVERY == 0:
            report({"train_loss": loss, "step": step + 1})
    return num_steps / (time.perf_counter() - started)


def train_worker(config: dict) -> None:
    import ray.train

    steps_per_s = timed_steps(config["steps"], report=ray.train.report)
    # Ray Train v2 keeps the metrics of checkpointed reports in the Result.
    with tempfile.TemporaryDirectory() as directory:
        ray.train.report({"steps_per_s": steps_per_s}, checkpoint=ray.train.Checkpoint.from_directory(directory))


def under_torch_trainer(num_steps: int) -> tuple[float, float]:
    """(loop steps/s inside the worker, wall seconds of the whole fit)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as storage:
        started = time.perf_counter()
        result = TorchTrainer(
            train_worker,
            train_loop_config={"steps": num_steps},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name="train-overhead", storage_path=storage),
        ).fit()
        wall = time.perf_counter() - started
    return result.metrics["steps_per_s"], wall


def main(argv: list[str] | None = None) -> None:
    from cluster.connect import connect

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    plain_before = timed_steps(args.steps)
    connect(None, log_to_driver=False)
    ray_steps_per_s, ray_wall = under_torch_trainer(args.steps)
    plain_after = timed_steps(args.steps)
    plain = (plain_before + plain_after) / 2
    ratio = ray_steps_per_s / plain

    rows = [
        ("plain torch loop (before)", f"{plain_before:.1f} steps/s"),
        ("TorchTrainer, 1 worker", f"{ray_steps_per_s:.1f} steps/s"),
        ("plain torch loop (after)", f"{plain_after:.1f} steps/s"),
        ("TorchTrainer fit() wall time", f"{ray_wall:.1f} s for {args.steps + WARMUP_STEPS} steps (incl. start-up)"),
        ("ratio TorchTrainer / plain", f"{ratio:.3f} (target >= 0.87)"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"train_overhead: {args.steps} timed SFT steps, batch 32, tiny Qwen2, 1 thread")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    print(json.dumps({"benchmark": "train_overhead", "value": round(ray_steps_per_s, 3), "baseline": round(plain, 3),
                      "ratio": round(ratio, 4), "unit": "steps/s"}))


if __name__ == "__main__":
    from benchmarks.train_overhead import (
        main as importable_main,  # Ray pickles by reference
    )

    importable_main()
