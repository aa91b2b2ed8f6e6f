"""Peak memory per worker and speed of LM training under each `train.strategy`.

    python -m benchmarks.train_memory [--steps 4] [--batch-size 4] [--seq-len 128]

A ~100M-parameter Qwen2 from the tiny-model factory (large enough that weights, gradients and
AdamW's moments, not the runtime, dominate a worker's memory) trains for `--steps` timed steps
after one warm-up step, with 2 Ray Train workers over gloo, one CPU thread each, under DDP,
FSDP2, DeepSpeed ZeRO-2 and ZeRO-3, each in fresh worker processes (`workloads.strategies`,
the engines the pipelines use). Each worker reports its peak resident memory (`ru_maxrss` of
its process, start-up included) and the run its steps/s. The baseline is DDP, what a user
runs without a sharding strategy; ratio = DDP's per-worker peak / the best sharded
strategy's (target >= 1.4).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import torch

MODEL = dict(hidden_size=768, num_layers=14, num_heads=12, num_kv_heads=12, intermediate_size=2048, max_positions=512)
RUNS = [("DDP", "ddp", 2), ("FSDP2", "fsdp", 2), ("DeepSpeed ZeRO-2", "deepspeed", 2), ("DeepSpeed ZeRO-3", "deepspeed", 3)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train_worker(config: dict) -> None:
    import ray.train

    from pipelines.launch import Workers
    from workloads.distributed import gather_objects
    from workloads.lm import TinyLMConfig, tiny_lm

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    at_start = _peak_rss_mb()
    model, _ = tiny_lm(TinyLMConfig(**MODEL), seed=0)
    parameters = sum(p.numel() for p in model.parameters())
    workers = Workers(num_workers=2, strategy=config["strategy"], zero_stage=config["zero_stage"])
    engine = workers.engine(model, lambda ps: torch.optim.AdamW(ps, lr=1e-4), max_grad_norm=1.0)
    generator = torch.Generator().manual_seed(rank)

    def step() -> None:
        ids = torch.randint(3, 259, (config["batch_size"], config["seq_len"]), generator=generator)
        engine.step(engine.module(input_ids=ids, labels=ids).loss)

    step()  # warm-up: optimizer state allocated, buffers sized
    started = time.perf_counter()
    for _ in range(config["steps"]):
        step()
    steps_per_s = config["steps"] / (time.perf_counter() - started)
    peaks = gather_objects((at_start, _peak_rss_mb()))
    with tempfile.TemporaryDirectory() as directory:  # Ray Train v2 keeps the metrics of checkpointed reports
        ray.train.report({"steps_per_s": steps_per_s, "parameters": parameters,
                          "start_rss_mb": max(p[0] for p in peaks), "peak_rss_mb": max(p[1] for p in peaks)},
                         checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None)


def measure(strategy: str, zero_stage: int, args) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as storage:
        result = TorchTrainer(
            train_worker,
            train_loop_config={"strategy": strategy, "zero_stage": zero_stage, "steps": args.steps,
                               "batch_size": args.batch_size, "seq_len": args.seq_len},
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name=f"train-memory-{strategy}{zero_stage}", storage_path=storage),
        ).fit()
    return result.metrics


def main(argv: list[str] | None = None) -> None:
    from cluster.connect import connect
    from workloads.strategies import prebuild_deepspeed_ops

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args(argv)

    prebuild_deepspeed_ops()
    connect(None, log_to_driver=False)
    measured = {name: measure(strategy, stage, args) for name, strategy, stage in RUNS}

    ddp = measured["DDP"]["peak_rss_mb"]
    best_name = min((name for name in measured if name != "DDP"), key=lambda name: measured[name]["peak_rss_mb"])
    best = measured[best_name]["peak_rss_mb"]
    ratio = ddp / best
    millions = measured["DDP"]["parameters"] / 1e6
    print(f"train_memory: {millions:.0f}M-parameter Qwen2, 2 workers (gloo, 1 thread each), AdamW fp32, "
          f"batch {args.batch_size} x {args.seq_len} tokens per worker, {args.steps} timed steps")
    print(f"  {'strategy':<18} {'peak RSS / worker':>18} {'RSS at start':>13} {'steps/s':>8}")
    for name, metrics in measured.items():
        print(f"  {name:<18} {metrics['peak_rss_mb']:>15.0f} MB {metrics['start_rss_mb']:>10.0f} MB {metrics['steps_per_s']:>8.3f}")
    print(f"  ratio DDP peak / {best_name} peak: {ratio:.2f} (target >= 1.4)")
    print(json.dumps({"benchmark": "train_memory", "value": round(best, 1), "baseline": round(ddp, 1),
                      "ratio": round(ratio, 3), "unit": "MB peak RSS per worker"}))


if __name__ == "__main__":
    from benchmarks.train_memory import main as importable_main  # Ray pickles by reference

    importable_main()
