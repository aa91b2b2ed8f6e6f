"""Ray Serve applications. The registry maps an app name to its application builder."""

from __future__ import annotations

import importlib
from typing import Callable

APPS: dict[str, str] = {
    "adapter": "serving.adapter:build_app",
    "generate": "serving.generate:build_app",
    "policy": "serving.policy:build_app",
    "repair": "serving.repair:build_app",
    "streamma": "serving.streamma:build_app",
    "verifier": "serving.verifier:build_app",
}


class UnknownApp(KeyError):
    def __str__(self) -> str:
        return f"unknown Serve app {self.args[0]!r}; known apps: {', '.join(sorted(APPS))}"


def get_app_builder(name: str) -> Callable:
    if name not in APPS:
        raise UnknownApp(name)
    module, _, attribute = APPS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
