"""Checkpoints that every training strategy writes and loads, through Ray Train.

A checkpoint directory holds:
- `model/`: the whole weights and the tokenizer as `save_pretrained` writes them (the portable
  form: `load_lm` reads it, under any strategy, on any number of workers, or outside Ray);
- `optimizer.pt`: the whole optimizer state keyed by parameter name, with the strategy that
  wrote it and the learning-rate schedule's position (`workloads.strategies`);
- `trainer_state.pt`: the pipeline's own position (its step, iteration, ...).

Resuming under the strategy that wrote the checkpoint restores the optimizer at any worker
count. Under another strategy the optimizer starts fresh and the schedule keeps its position;
that is said on the console and in MLflow (tag `rayworks.optimizer_reset`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from pipelines.launch import say
from workloads import tracking

MODEL_DIR, OPTIMIZER_FILE, TRAINER_STATE_FILE = "model", "optimizer.pt", "trainer_state.pt"
OPTIMIZER_RESET_TAG = "rayworks.optimizer_reset"


def report_with_checkpoint(metrics: dict, engine, tokenizer, trainer_state: dict | None = None) -> None:
    """`ray.train.report` with a checkpoint of `engine` (a `workloads.strategies.Engine`), written
    by rank 0 from the gathered weights and optimizer state. Every rank must call it."""
    import ray.train

    model = engine.full_model()
    optimizer_state = engine.optimizer_state()
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if engine.rank == 0:
            model.save_pretrained(Path(directory) / MODEL_DIR)
            tokenizer.save_pretrained(Path(directory) / MODEL_DIR)
            torch.save(optimizer_state, Path(directory) / OPTIMIZER_FILE)
            torch.save(trainer_state or {}, Path(directory) / TRAINER_STATE_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


@dataclasses.dataclass
class Restored:
    """A checkpoint read into memory: load `model_state` before building the engine, then
    `restore_optimizer` after."""

    model_state: dict[str, torch.Tensor]
    optimizer: dict | None
    trainer_state: dict


def latest_checkpoint() -> Restored | None:
    """The run's latest checkpoint (Ray Train's, when resuming), or None for a fresh run."""
    import ray.train

    from workloads.lm import load_lm

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        directory = Path(directory)
        model_state = load_lm(directory / MODEL_DIR)[0].state_dict()
        optimizer = torch.load(directory / OPTIMIZER_FILE, weights_only=False) if (directory / OPTIMIZER_FILE).exists() else None
        trainer_state = torch.load(directory / TRAINER_STATE_FILE, weights_only=False) if (directory / TRAINER_STATE_FILE).exists() else {}
    return Restored(model_state, optimizer, trainer_state)


def restore_optimizer(engine, restored: Restored, run: tracking.Run | None, payload: dict) -> bool:
    """Load the checkpoint's optimizer into `engine` when it was written under the same strategy
    (True); otherwise keep the fresh optimizer, move the schedule to the saved position and say
    so (False). Every rank must call it."""
    saved = restored.optimizer
    if saved is None:
        return False
    if saved["strategy"] == engine.name:
        engine.load_optimizer_state(saved)
        return True
    engine.load_schedule_only(saved)
    message = (f"the checkpoint was written under strategy {saved['strategy']!r} and this run trains under "
               f"{engine.name!r}: the optimizer starts fresh (its moments resume only under the strategy that "
               "wrote them); the weights and the learning-rate schedule resume")
    if engine.rank == 0:
        say(payload, f"note: {message}")
        if run is not None:
            run.set_tags({OPTIMIZER_RESET_TAG: message})
    return False
