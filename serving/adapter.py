"""Serve app `adapter`: Code2LoRA adapters for repositories on demand, and completions with them.

    POST /adapt     {"repo": "/path/to/bundle-or-checkout"}
                    -> {"adapter": "<name>@<head>", "repo": name, "head": sha, "cached": bool}
                    (encodes the repository's non-test Python files at HEAD and runs the
                    hypernetwork once; cached by (repository, head): an unchanged repository is
                    not encoded again)
    POST /complete  {"adapter": id, "prefix": str, "max_new_tokens": int (optional)}
                    -> {"completion": str, "first_line": str, "adapter": id}
    GET  /healthz

The hypernetwork is a `code2lora` run's `generator` directory (`--checkpoint DIR`) or, with
none given, the newest version of the `rayworks-code2lora` model in the MLflow registry. The
repository path is read on the replica's filesystem (a bundle or a git checkout, as the
pipeline's `repos=`). Start it with `rayworks serve adapter`.
"""

# No `from __future__ import annotations` here: FastAPI must see the real request model type.
import logging
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from ray import serve

from serving.http import Utf8Str, error_response, given_or_registered, json_api
from workloads import tracking

logger = logging.getLogger("ray.serve")

REGISTERED_MODEL = "rayworks-code2lora"
MAX_PREFIX_CHARS = 65536
MAX_NEW_TOKENS = 128
MAX_ADAPTERS = 64  # adapters kept in memory, least recently used dropped first

api = json_api("rayworks adapter")


class AdaptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: Annotated[Utf8Str, Field(min_length=1, max_length=4096)]


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: Annotated[Utf8Str, Field(min_length=1, max_length=512)]
    prefix: Annotated[Utf8Str, Field(min_length=1, max_length=MAX_PREFIX_CHARS)]
    max_new_tokens: Optional[Annotated[StrictInt, Field(ge=1, le=MAX_NEW_TOKENS)]] = None


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
@serve.ingress(api)
class AdapterServer:
    def __init__(self, checkpoint: Optional[str] = None, tracking_uri: Optional[str] = None):
        from workloads.code2lora.arms import load_generator
        from workloads.code2lora.base import load_encoder

        torch.set_num_threads(1)
        self.source = given_or_registered(checkpoint, REGISTERED_MODEL, tracking_uri, "code2lora")
        self.trainee, self.tokenizer, self.settings = load_generator(self.source)
        # The repository encoder the generator was trained with: the frozen base itself (None), or its
        # first `encoder_layers` layers, or an embedding model.
        layers = self.settings.get("encoder_layers", 0)
        self.encoder = (load_encoder(self.settings.get("encoder", ""), str(Path(self.source) / "base"), layers)
                        if self.settings.get("encoder") or layers else None)
        self.adapters: "OrderedDict[str, dict]" = OrderedDict()
        self.scratch = tempfile.mkdtemp(prefix="rayworks-adapter-repos-")
        # One model, one set of LoRA slots: loading an adapter and generating with it is one step.
        self.lock = threading.Lock()

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "generator": self.source, "adapters": len(self.adapters)}

    @api.post("/adapt")
    def adapt(self, request: AdaptRequest):
        from workloads.code2lora.base import encode_repository, encoder_sources
        from workloads.code2lora.repos import RepositoryError, open_repository

        try:
            repo = open_repository(request.repo, self.scratch)
            head = repo.head()
        except RepositoryError as exc:
            return error_response(422, [f"repo: {exc}"])
        except (OSError, ValueError) as exc:  # e.g. a path the filesystem cannot name
            return error_response(422, [f"repo: {request.repo!r} cannot be opened ({type(exc).__name__}: {exc})"])
        adapter_id = f"{repo.name}@{head}"
        if adapter_id in self.adapters:
            self.adapters.move_to_end(adapter_id)
            return {"adapter": adapter_id, "repo": repo.name, "head": head, "cached": True}
        texts = list(encoder_sources(repo, head).values())
        if not texts:
            return error_response(422, [f"repo: {request.repo} has no non-test Python file at HEAD to encode"])
        with self.lock:
            if self.encoder is not None:  # the generator's own embedding model
                vector = encode_repository(*self.encoder, texts, self.settings["encoder_chunk_tokens"])
            else:
                with self.trainee.model.disable_adapter():  # the encoder is the base alone, not the last adapter loaded
                    vector = encode_repository(self.trainee.model, self.tokenizer, texts, self.settings["encoder_chunk_tokens"])
            self.adapters[adapter_id] = self.trainee.adapter(vector)
        while len(self.adapters) > MAX_ADAPTERS:
            self.adapters.popitem(last=False)
        return {"adapter": adapter_id, "repo": repo.name, "head": head, "cached": False}

    @api.post("/complete")
    def complete(self, request: CompleteRequest):
        from workloads.code2lora.arms import complete
        from workloads.code2lora.mining import normalise

        adapter = self.adapters.get(request.adapter)
        if adapter is None:
            return error_response(404, [f"adapter: unknown adapter {request.adapter!r}; POST /adapt returns one"])
        max_new_tokens = request.max_new_tokens or self.settings["max_new_tokens"]
        with self.lock:
            completion = complete(self.trainee.model, self.tokenizer, adapter, [request.prefix], max_new_tokens,
                                  self.settings["prompt_tokens"])[0]
        return {"completion": completion, "first_line": normalise(completion), "adapter": request.adapter}


def build_app(args: Optional[dict] = None):
    """Application builder for `serve run serving.adapter:build_app checkpoint=...`."""
    args = dict(args or {})
    unknown = set(args) - {"checkpoint", "tracking_uri"}
    if unknown:
        raise ValueError(f"adapter app: unknown argument(s) {sorted(unknown)}; known: checkpoint, tracking_uri")
    uri = args.get("tracking_uri") or tracking.tracking_uri()
    checkpoint = given_or_registered(args.get("checkpoint"), REGISTERED_MODEL, uri, "code2lora")  # fail before Serve starts, naming what is missing
    return AdapterServer.bind(checkpoint, uri)
