"""What every pipeline's `main` shares: argument parsing, config loading before Ray starts,
reaching Ray, MLflow run bookkeeping and the closing summary.

`python -m pipelines.<name> [--config FILE] [--set key=value ...] [--resume] [--address ADDR]`
is the same entry point that `rayworks run` and `ray job submit` use.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

from cluster.connect import (
    AuthTokenMissing,
    BadLocalRaySetting,
    RayUnreachable,
    connect,
    ray_job_submission_id,
)
from workloads import tracking
from workloads.config import ConfigError, load_config, require, to_dict

RUN_NAME_TAG = "rayworks.run_name"
PIPELINE_TAG = "rayworks.pipeline"

# Exit codes of `rayworks` and `python -m pipelines.<name>`.
EXIT_RUN_FAILED, EXIT_CONFIG_ERROR, EXIT_NO_RAY = 1, 2, 3


class RunFailed(RuntimeError):
    """The run started and failed (an expert that stayed down, workers that kept dying): not a
    config error; what it kept (its last checkpoint) is said in the message."""


@dataclasses.dataclass
class RunFields:
    """The fields every pipeline's Config starts with."""

    seed: int = 0  # seeds data splits, initial weights and sampling
    run_name: str = ""  # empty: a fresh timestamped name
    experiment: str = ""  # empty: rayworks-<pipeline>
    storage_path: str = "./ray_results"  # checkpoints and caches (a shared filesystem or s3:// on a cluster)


@dataclasses.dataclass
class Workers:
    """The Ray Train workers of a training pipeline and how they split the model
    (`--set train.num_workers=4 train.use_gpu=true train.strategy=deepspeed train.zero_stage=3`)."""

    num_workers: int = 1  # data-parallel Ray Train workers (ranks)
    use_gpu: bool = False  # one GPU per worker; models and batches follow it
    cpus_per_worker: int = 1  # CPUs Ray reserves for each worker
    strategy: str = "ddp"  # ddp (whole replicas), fsdp (FSDP2 shards) or deepspeed (ZeRO, stage below)
    zero_stage: int = 2  # deepspeed only: 1 shards optimizer state, 2 also gradients, 3 also parameters
    offload: bool = False  # fsdp/deepspeed: keep optimizer state (and shards) in CPU memory

    section: ClassVar[str] = "train"

    def validate(self) -> None:
        from workloads.strategies import STRATEGIES, ZERO_STAGES

        require(self.num_workers >= 1, "num_workers", "must be >= 1")
        require(self.cpus_per_worker >= 0, "cpus_per_worker", "must be >= 0")
        require(self.strategy in STRATEGIES, "strategy", f"expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        require(self.zero_stage in ZERO_STAGES, "zero_stage", f"expected one of {ZERO_STAGES}, got {self.zero_stage}")
        require(not self.offload or self.strategy != "ddp", "offload", "needs strategy fsdp or deepspeed (ddp keeps whole replicas)")

    def scaling_config(self, **resources):
        """Ray Train's ScalingConfig: these workers, each with its CPUs (and `resources`)."""
        import ray.train

        return ray.train.ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu,
                                       resources_per_worker={"CPU": self.cpus_per_worker, **resources})

    def engine(self, model, make_optimizer, *, schedule=None, max_grad_norm: float = 1.0):
        """Inside a Ray Train worker: `model` under this strategy (`workloads.strategies`), on
        this worker's device, with the optimizer `make_optimizer(parameters)` and `schedule`."""
        from workloads.strategies import build_engine

        return build_engine(self.strategy, model, make_optimizer, schedule=schedule, max_grad_norm=max_grad_norm,
                            device=worker_device(self), zero_stage=self.zero_stage, offload=self.offload)

    def prepare_driver(self) -> None:
        """On the driver, before the workers start: DeepSpeed's CPU op compiled once here."""
        if self.strategy == "deepspeed" and not self.use_gpu:
            from workloads.strategies import prebuild_deepspeed_ops

            prebuild_deepspeed_ops()


def worker_device(workers: Workers):
    """The torch device of this Ray Train worker: its GPU when `use_gpu`, the CPU otherwise."""
    import ray.train.torch
    import torch

    return ray.train.torch.get_device() if workers.use_gpu else torch.device("cpu")


def check_ranks_in_sync(model, run: tracking.Run | None, step: int) -> list[str]:
    """Every rank's fingerprint of the whole weights it trains (`workloads.distributed.
    parameter_fingerprint`; of the gathered weights under a sharded strategy), in rank order,
    logged by rank 0 as the tag `rayworks.rank_fingerprints` and the metric `ranks_in_sync`
    (1 when all are equal). `model`: a module or a `workloads.strategies.Engine`. A collective."""
    from workloads.distributed import gather_objects, parameter_fingerprint

    state = model.whole_state(everywhere=True) if hasattr(model, "whole_state") else model
    fingerprints = gather_objects(parameter_fingerprint(state))
    if run is not None:
        in_sync = len(set(fingerprints)) == 1
        run.set_tags({"rayworks.rank_fingerprints": json.dumps(fingerprints)})
        run.log_metrics({"ranks_in_sync": float(in_sync)}, step=step)
        if not in_sync:
            print(f"warning: the {len(fingerprints)} training ranks ended with different parameters", file=sys.stderr)
    return fingerprints


@contextlib.contextmanager
def ending_run(run: tracking.Run):
    """End the pipeline's MLflow run with the block: FINISHED, KILLED on Ctrl-C, FAILED otherwise."""
    try:
        yield run
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")


def train_run_config(config: RunFields, run_name: str, callbacks=(), keep_best: str | None = None):
    """Ray Train's RunConfig for a pipeline run: named like the MLflow run, two checkpoints kept:
    the last two, or with `keep_best` (a reported metric, higher is better) the best two by it."""
    import ray.train

    return ray.train.RunConfig(name=run_name, storage_path=storage_path(config.storage_path),
                               checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=keep_best),
                               callbacks=list(callbacks))


def train_worker_context(payload: dict) -> tuple[int, int, tracking.Run | None]:
    """Inside a Ray Train worker: (rank, world size, the pipeline's MLflow run on rank 0 else None)."""
    import ray.train

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    return rank, world_size, tracking.Run(payload["mlflow_run_id"], payload["mlflow_uri"]) if rank == 0 else None


def remote_task(fn, **options):
    """`fn` as a Ray task that runs outside any placement group its caller is in: a Tune trial's
    bundle holds only the trial driver's memory, so a task captured into it could never start."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return ray.remote(fn).options(scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None), **options)


class ProgressLines:
    """Progress lines from the training workers to the console of the driver that started them.

    Ray forwards every worker's whole output to the driver (its own internals, library
    warnings, each line once per process that prints it); by default the CLI turns that off
    (`--verbose` turns it back on) and the workers send just their progress lines here,
    through a Ray queue that a thread of the driver prints from. Use as a context manager
    around the run; put `lines.queue` in the workers' payload and call `say(payload, line)`."""

    def __enter__(self) -> "ProgressLines":
        import threading

        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # Outside the placement group a Tune trial runs in (its bundle has no room for actors).
        self.queue = Queue(actor_options={"num_cpus": 0,
                                          "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=None)})
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._print_lines, daemon=True)
        self.thread.start()
        return self

    def _print_lines(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                print(self.queue.get(timeout=0.5), flush=True)
            except Empty:
                if self.done.is_set():
                    return
            except Exception:  # the queue's actor is gone (Ray shut down)
                return

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=10)
        self.queue.shutdown(force=True)


def say(payload: dict, line: str) -> None:
    """A progress line for the driver's console (see `ProgressLines`); printed here without one."""
    queue = payload.get("progress")
    if queue is None:
        print(line, flush=True)
        return
    try:
        queue.put_nowait(line)
    except Exception:  # a full or vanished queue must not stop training
        print(line, flush=True)


@dataclasses.dataclass
class RunSummary:
    pipeline: str
    metric: str
    value: float  # the key metric after training
    run_id: str
    artifacts: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    before: float | None = None  # the key metric before training (None: nothing is trained)


def parser(pipeline: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m pipelines.{pipeline}", description=f"Run the {pipeline} pipeline.")
    add_run_arguments(p)
    return p


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. --set train.lr=1e-3 train.max_steps=200")
    p.add_argument("--resume", action="store_true", help="continue run_name (or the newest run) from its last checkpoint")
    p.add_argument("--address", help="Ray address (host:6379, ray://host:10001, auto); default: local Ray or RAY_ADDRESS")
    add_local_ray_arguments(p)


def add_local_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray this command starts (default: RAYWORKS_NUM_CPUS, else every core)")
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's worker logs, library messages and the traceback of a failed run")


def quiet_libraries(verbose: bool) -> None:
    """Keep the driver's console to progress lines and results: Ray Data's progress bars and
    Ray's and MLflow's informational logs only with `--verbose`."""
    import logging

    if verbose:
        return
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "mlflow", "mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def report_failure(exc: BaseException, verbose: bool) -> int:
    """Print what went wrong, once and plainly, and return the exit code for it."""
    if isinstance(exc, (ConfigError, BadLocalRaySetting)):
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if isinstance(exc, (RayUnreachable, AuthTokenMissing)):
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_RAY
    if verbose:
        import traceback

        traceback.print_exception(exc)
    detail = str(exc) if isinstance(exc, RunFailed) else f"{type(exc).__name__}: {exc}"
    print(f"run failed: {detail}" + ("" if verbose else " (--verbose shows the traceback)"), file=sys.stderr)
    return EXIT_RUN_FAILED


def main_for(pipeline: str, config_cls: type, run: Callable[..., RunSummary], argv: list[str] | None = None) -> int:
    args = parser(pipeline).parse_args(argv)
    try:
        config = load_config(config_cls, args.config, args.overrides)
        quiet_libraries(args.verbose)
        connect(args.address, args.num_cpus, log_to_driver=args.verbose)
        summary = run(config, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return report_failure(exc, args.verbose)
    print_summaries([summary])
    return 0


def print_summaries(summaries: list[RunSummary]) -> None:
    rows = [("pipeline", "metric", "before", "after", "MLflow run", "artifacts")]
    rows += [(s.pipeline, s.metric, "-" if s.before is None else f"{s.before:.4f}", f"{s.value:.4f}", s.run_id, s.artifacts)
             for s in summaries]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    for s in summaries:
        print("RESULT " + json.dumps(dataclasses.asdict(s)))


def open_run(pipeline: str, config, *, resume: bool, parent_run_id: str | None, data_hash: str) -> tuple[tracking.Run, str]:
    """Start (or, with resume, reopen) the pipeline's MLflow run; return it and its run name.

    The run name is also the Ray Train run name: Ray Train resumes a run that already has
    checkpoints under (storage_path, name), so a fresh run must never reuse a name.
    """
    experiment = config.experiment or f"rayworks-{pipeline}"
    existing = _runs_named(experiment, config.run_name) if config.run_name else []
    if resume:
        if config.run_name and not existing:
            raise ConfigError(f"run_name: no {pipeline} run named {config.run_name!r} to resume in experiment {experiment!r}")
        candidates = existing or _runs_named(experiment, None)
        if not candidates:
            raise ConfigError(f"--resume: experiment {experiment!r} has no {pipeline} run to resume")
        previous = candidates[0]
        run = tracking.start_run(experiment, previous.info.run_name, resume_run_id=previous.info.run_id)
        run.set_tags({"rayworks.resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return run, previous.data.tags[RUN_NAME_TAG]
    if existing:
        raise ConfigError(f"run_name: a {pipeline} run named {config.run_name!r} exists; pass --resume to continue it or pick a new name")
    run_name = config.run_name or f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"
    run = tracking.start_run(
        experiment,
        run_name,
        parent_run_id=parent_run_id,
        tags={
            RUN_NAME_TAG: run_name,
            PIPELINE_TAG: pipeline,
            "git_revision": tracking.git_revision(),
            "ray_job_id": ray_job_submission_id() or _ray_job_id(),
            "ray_cluster_cpus": _ray_cluster_cpus(),
            "data_hash": data_hash,
        },
    )
    run.log_params(to_dict(config))
    run.log_yaml(to_dict(config), "config.yaml")
    return run, run_name


def _ray_job_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None


def _ray_cluster_cpus() -> str:
    import ray

    return str(int(ray.cluster_resources().get("CPU", 0))) if ray.is_initialized() else ""


def _runs_named(experiment: str, run_name: str | None):
    mlflow_client = tracking.client()
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    query = f"tags.`{RUN_NAME_TAG}` = '{run_name}'" if run_name else f"tags.`{RUN_NAME_TAG}` != ''"
    return mlflow_client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])


def storage_path(path: str) -> str:
    """Local paths become absolute (Ray Train requires it); URIs (s3://, gs://) pass through."""
    return path if "://" in path else str(Path(path).expanduser().resolve())
