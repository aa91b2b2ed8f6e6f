"""Serve app `generate`: text completion from a causal LM checkpoint.

    POST /generate {"prompt": str, "max_new_tokens": int}  ->  {"completion": str, ...}
         (the prompt is formatted as the pipelines format it: through the model's chat template
         when its tokenizer has one, with BOS only where the tokenizer has one)
    POST /v1/completions   OpenAI-compatible raw text or token ids; with vLLM's `prompt_logprobs`
         (DistIL's endpoint expert)
    GET  /healthz

The checkpoint is any local model directory or hub id; with none given, the newest version of
the `rayworks-sft` model in the MLflow registry; with none registered, the untrained tiny
default (and a warning in every response). Start it with `rayworks serve generate` or
`serve run serving/generate.yaml`.
"""

# No `from __future__ import annotations` here: FastAPI must see the real request model type
# on the ingress methods to read it from the JSON body.
import logging
import tempfile
from typing import Annotated, Literal, Optional, Union

import torch
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from ray import serve

from serving.http import json_api
from workloads import tracking

logger = logging.getLogger("ray.serve")

MAX_PROMPT_CHARS = 4096
MAX_NEW_TOKENS = 512
MAX_CHOICES = 16  # n: samples per prompt
REGISTERED_MODEL = "rayworks-sft"

api = json_api("rayworks generate")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    max_new_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_NEW_TOKENS)] = 32


class CompletionRequest(BaseModel):
    """The subset of OpenAI's completions request this app implements (no streaming, no echo)."""

    model_config = ConfigDict(extra="forbid")

    model: Optional[StrictStr] = None
    prompt: Union[StrictStr, list[StrictInt], list[StrictStr], list[list[StrictInt]]]
    max_tokens: Annotated[StrictInt, Field(ge=0, le=MAX_NEW_TOKENS)] = 16
    temperature: Annotated[Union[StrictFloat, StrictInt], Field(ge=0, le=2)] = 1.0
    stop: Union[StrictStr, list[StrictStr], None] = None
    seed: Optional[StrictInt] = None
    prompt_logprobs: Optional[Annotated[StrictInt, Field(ge=0, le=20)]] = None
    logprobs: Optional[StrictInt] = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_CHOICES)] = 1
    echo: Literal[False] = False
    stream: Literal[False] = False
    user: Optional[StrictStr] = None


def resolve_checkpoint(checkpoint: str | None, tracking_uri: str | None) -> tuple[str, str | None]:
    """(model path or id, warning or None) following the order in the module docstring."""
    if checkpoint:
        return checkpoint, None
    registered = tracking.newest_registered_model(REGISTERED_MODEL, tracking_uri)
    if registered is not None:
        return str(registered), None
    from workloads.lm import TinyLMConfig, build_tiny_lm

    path = build_tiny_lm(TinyLMConfig(), tempfile.mkdtemp(prefix="rayworks-untrained-"))
    return str(path), (f"no checkpoint given and no '{REGISTERED_MODEL}' model registered in MLflow: "
                       "serving the UNTRAINED tiny default model")


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
@serve.ingress(api)
class Generator:
    def __init__(self, checkpoint: str | None = None, tracking_uri: str | None = None):
        from workloads.lm import load_lm

        torch.set_num_threads(1)
        self.source, self.warning = resolve_checkpoint(checkpoint, tracking_uri)
        if self.warning:
            logger.warning(self.warning)
        self.model, self.tokenizer = load_lm(self.source)
        self.model.eval()

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model": self.source, "warning": self.warning}

    @api.post("/generate")
    def generate(self, request: GenerateRequest) -> dict:
        from workloads.lm import format_prompt, greedy_complete

        prompt = format_prompt(self.tokenizer, request.prompt)
        completion = greedy_complete(self.model, self.tokenizer, [prompt], request.max_new_tokens)[0]
        body = {"completion": completion, "model": self.source}
        if self.warning:
            body["warning"] = self.warning
        return body

    @api.post("/v1/completions")
    def completions(self, request: CompletionRequest):
        from workloads.completions import PromptError, completion_response, encode_prompts

        if request.logprobs:
            return JSONResponse(status_code=422, content={"error": "logprobs: not supported (use prompt_logprobs)"})
        try:
            sequences = encode_prompts(self.tokenizer, request.prompt, self.model.config.vocab_size,
                                       self.model.config.max_position_embeddings)
        except PromptError as exc:
            return JSONResponse(status_code=422, content={"error": str(exc)})
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        return completion_response(self.model, self.tokenizer, self.source, sequences, request.max_tokens,
                                   float(request.temperature), stop, request.seed, request.prompt_logprobs, request.n)


def build_app(args: dict | None = None):
    """Application builder for `serve run serving.generate:build_app checkpoint=...` and YAML configs."""
    args = dict(args or {})
    unknown = set(args) - {"checkpoint", "tracking_uri"}
    if unknown:
        raise ValueError(f"generate app: unknown argument(s) {sorted(unknown)}; known: checkpoint, tracking_uri")
    return Generator.bind(args.get("checkpoint"), args.get("tracking_uri") or tracking.tracking_uri())
