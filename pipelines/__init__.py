"""Pipelines: one module each, runnable as `python -m pipelines.<name>`.

The registry maps a pipeline's name to its module. A pipeline module exposes:
`Config` (its typed config), `run(config, resume=..., parent_run_id=..., train_callbacks=...)`
returning a `RunSummary`, `main(argv)`, and `QUICKSTART` (the `--set` overrides of its
smallest embedded default).
"""

from __future__ import annotations

import importlib
from types import ModuleType

PIPELINES: dict[str, str] = {
    "sft": "pipelines.sft",
    "distil": "pipelines.distil",
    "longtrace_data": "pipelines.longtrace_data",
    "longtrace": "pipelines.longtrace",
    "ppo": "pipelines.ppo",
    "code2lora_data": "pipelines.code2lora_data",
    "code2lora": "pipelines.code2lora",
    "tri": "pipelines.tri",
    "streamma": "pipelines.streamma",
    "tempovla": "pipelines.tempovla",
    "handoff": "pipelines.handoff",
}


class UnknownPipeline(KeyError):
    def __str__(self) -> str:
        return f"unknown pipeline {self.args[0]!r}; known pipelines: {', '.join(sorted(PIPELINES))}"


def get_pipeline(name: str) -> ModuleType:
    if name not in PIPELINES:
        raise UnknownPipeline(name)
    return importlib.import_module(PIPELINES[name])
