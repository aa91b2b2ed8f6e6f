"""TRI's actors: the step verifier (the first failing step of any trace), and the three stages
of the repair loop as Ray Data callables, each run in its own actor pool (`map_batches` with
`compute=ActorPoolStrategy`): `Drafter` (the draft model: first drafts and regenerated suffixes), `Infiller`
(the TRI model: bridges to a milestone) and `RoundVerifier` (verify, ExtractMilestone, and the
next action). The loop itself is `workloads.tri.repair`; these only load models and move
batches. A batch is a pandas frame whose rows are `Attempt` fields.
"""

from __future__ import annotations

import dataclasses
import os

import ray

from workloads.tri.repair import (
    Attempt,
    apply_infill,
    apply_regeneration,
    generate_for,
    infill_prompt,
    model_generator,
    regenerate_prompt,
    set_draft,
    verify_round,
)
from workloads.tri.traces import STEP_TASKS, TraceConfig, verify_trace


@ray.remote(num_cpus=0.5)
class StepVerifier:
    def verify(self, task: str, problem, text: str) -> dict:
        """{steps, verified, first_failure, solved} of `text` for `problem` of task family `task`."""
        if task not in STEP_TASKS:
            raise ValueError(f"task: expected one of {', '.join(STEP_TASKS)}, got {task!r}")
        return dataclasses.asdict(verify_trace(STEP_TASKS[task], problem, text))


def _attempts(batch) -> list[Attempt]:
    return [Attempt(**row) for row in batch.to_dict("records")]


def _frame(attempts: list[Attempt]):
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(a) for a in attempts])


class _ModelStage:
    """Loads a saved model once per actor; generates for the rows whose `action` is this stage's."""

    action = ""

    def __init__(self, model_dir: str, max_new_tokens: int, temperature: float, seed: int):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        from workloads.lm import load_lm

        torch.set_num_threads(1)
        model, tokenizer = load_lm(model_dir)
        self.generate = model_generator(model, tokenizer, max_new_tokens, temperature, seed)

    def prompt(self, attempt: Attempt) -> str:
        raise NotImplementedError

    def apply(self, attempt: Attempt, text: str, generated: int, prompt_tokens: int) -> None:
        raise NotImplementedError

    def __call__(self, batch):
        attempts = _attempts(batch)
        generate_for(self.generate, [a for a in attempts if a.action == self.action], self.prompt, self.apply)
        return _frame(attempts)


class Drafter(_ModelStage):
    """The draft model: a first draft (action "draft"), or the suffix after the verified prefix
    (action "regenerate": the baseline's every round, TRI's fallback)."""

    def __init__(self, model_dir: str, max_new_tokens: int, temperature: float, seed: int, action: str = "regenerate"):
        super().__init__(model_dir, max_new_tokens, temperature, seed)
        self.action = action

    def prompt(self, attempt: Attempt) -> str:
        return attempt.question if self.action == "draft" else regenerate_prompt(attempt)

    def apply(self, attempt: Attempt, text: str, generated: int, prompt_tokens: int) -> None:
        if self.action == "draft":
            set_draft(attempt, text, generated, prompt_tokens)
        else:
            apply_regeneration(attempt, text, generated, prompt_tokens)


class Infiller(_ModelStage):
    """The TRI model: the bridge from the verified prefix to the milestone."""

    action = "infill"

    def prompt(self, attempt: Attempt) -> str:
        return infill_prompt(attempt)

    def apply(self, attempt: Attempt, text: str, generated: int, prompt_tokens: int) -> None:
        apply_infill(attempt, text, generated, prompt_tokens)


class RoundVerifier:
    """Verify every row, find its milestone within `window`, set its next action (by the row's
    method); with `first`, also record whether the draft itself was right."""

    def __init__(self, traces: dict, seed: int, window: int, first: bool = False):
        from workloads.config import from_dict

        config = from_dict(TraceConfig, traces)
        self.task = STEP_TASKS[config.task]
        train, held_out = self.task.splits(config, seed)
        self.problems = {p.key: p for p in [*train, *held_out]}
        self.window, self.first = window, first

    def __call__(self, batch):
        attempts = _attempts(batch)
        verify_round(self.task, self.problems, attempts, self.window)
        if self.first:
            for attempt in attempts:
                attempt.draft_solved = attempt.solved
        return _frame(attempts)
