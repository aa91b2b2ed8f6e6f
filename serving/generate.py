"""Serve app `generate`: text completion from a causal LM checkpoint.

    POST /generate {"prompt": str, "max_new_tokens": int}  ->  {"completion": str, ...}
         (the prompt is formatted as the pipelines format it: through the model's chat template
         when its tokenizer has one, with BOS only where the tokenizer has one)
    POST /v1/completions   OpenAI-compatible: raw text or token ids, `n`, `stop`, `seed`, `logprobs`,
         `echo`, `stream` (server-sent events); with vLLM's `prompt_logprobs` (DistIL's endpoint expert)
    POST /v1/chat/completions   OpenAI-compatible chat through the tokenizer's chat template:
         `n`, `stop`, `seed`, `logprobs` + `top_logprobs`, `stream`
    GET  /v1/models
    GET  /healthz

The real `openai` client works against it (`OpenAI(base_url="http://host:8000/v1", api_key="-")`).

The checkpoint is any local model directory or hub id; with none given, the newest version of
the `rayworks-sft` model in the MLflow registry; with none registered, the untrained tiny
default (and a warning in every response). Start it with `rayworks serve generate` or
`serve run serving/generate.yaml`.
"""

# No `from __future__ import annotations` here: FastAPI must see the real request model type
# on the ingress methods to read it from the JSON body.
import logging
import tempfile
import time
from typing import Annotated, Literal, Optional, Union

import torch
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt
from ray import serve

from serving.http import Utf8Str, error_response, json_api
from workloads import tracking

logger = logging.getLogger("ray.serve")

MAX_PROMPT_CHARS = 4096
MAX_NEW_TOKENS = 512
MAX_CHOICES = 16  # n: samples per prompt
REGISTERED_MODEL = "rayworks-sft"

api = json_api("rayworks generate")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[Utf8Str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    max_new_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_NEW_TOKENS)] = 32


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False


class CompletionRequest(BaseModel):
    """The part of OpenAI's completions request this app implements, and vLLM's `prompt_logprobs`."""

    model_config = ConfigDict(extra="forbid")

    model: Optional[Utf8Str] = None
    prompt: Union[Utf8Str, list[StrictInt], list[Utf8Str], list[list[StrictInt]]]
    max_tokens: Optional[Annotated[StrictInt, Field(ge=0, le=MAX_NEW_TOKENS)]] = 16
    temperature: Optional[Annotated[Union[StrictFloat, StrictInt], Field(ge=0, le=2)]] = 1.0
    stop: Union[Utf8Str, list[Utf8Str], None] = None
    seed: Optional[StrictInt] = None
    prompt_logprobs: Optional[Annotated[StrictInt, Field(ge=0, le=20)]] = None
    logprobs: Optional[Annotated[StrictInt, Field(ge=0, le=20)]] = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_CHOICES)] = 1
    echo: StrictBool = False
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[Utf8Str] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: Annotated[Utf8Str, Field(max_length=MAX_PROMPT_CHARS)]
    name: Optional[Utf8Str] = None


class ChatRequest(BaseModel):
    """The part of OpenAI's chat completions request this app implements."""

    model_config = ConfigDict(extra="forbid")

    model: Optional[Utf8Str] = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Optional[Annotated[StrictInt, Field(ge=0, le=MAX_NEW_TOKENS)]] = None
    max_completion_tokens: Optional[Annotated[StrictInt, Field(ge=0, le=MAX_NEW_TOKENS)]] = None
    temperature: Optional[Annotated[Union[StrictFloat, StrictInt], Field(ge=0, le=2)]] = 1.0
    stop: Union[Utf8Str, list[Utf8Str], None] = None
    seed: Optional[StrictInt] = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_CHOICES)] = 1
    logprobs: StrictBool = False
    top_logprobs: Optional[Annotated[StrictInt, Field(ge=0, le=20)]] = None
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[Utf8Str] = None


def stop_list(stop) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def event_stream(chunks) -> StreamingResponse:
    from workloads.completions import server_sent_events

    return StreamingResponse(server_sent_events(chunks), media_type="text/event-stream")


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
        self.created = int(time.time())

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

    @api.get("/v1/models")
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.source, "object": "model", "created": self.created,
                                            "owned_by": "rayworks", "root": self.source}]}

    @api.post("/v1/completions")
    def completions(self, request: CompletionRequest):
        from workloads.completions import PromptError, completion_response, encode_prompts, stream_chunks

        try:
            sequences = encode_prompts(self.tokenizer, request.prompt, self.model.config.vocab_size,
                                       self.model.config.max_position_embeddings)
        except PromptError as exc:
            return error_response(422, [str(exc)], openai_shape=True)
        max_tokens = 16 if request.max_tokens is None else request.max_tokens
        temperature = 1.0 if request.temperature is None else float(request.temperature)
        if request.stream:
            if request.logprobs is not None or request.prompt_logprobs is not None:
                return error_response(422, ["stream: not supported with logprobs or prompt_logprobs"], openai_shape=True)
            return event_stream(stream_chunks(self.model, self.tokenizer, self.source, sequences, request.n, max_tokens,
                                              temperature, stop_list(request.stop), request.seed, chat=False,
                                              echo=request.echo))
        return completion_response(self.model, self.tokenizer, self.source, sequences, max_tokens, temperature,
                                   stop_list(request.stop), request.seed, request.prompt_logprobs, request.n,
                                   request.logprobs, request.echo)

    @api.post("/v1/chat/completions")
    def chat_completions(self, request: ChatRequest):
        from workloads.completions import PromptError, chat_response, encode_chat, stream_chunks

        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            sequence = encode_chat(self.tokenizer, messages, self.model.config.vocab_size,
                                   self.model.config.max_position_embeddings)
        except PromptError as exc:
            return error_response(422, [str(exc)], openai_shape=True)
        limit = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        max_tokens = MAX_NEW_TOKENS // 4 if limit is None else limit
        temperature = 1.0 if request.temperature is None else float(request.temperature)
        if request.top_logprobs is not None and not request.logprobs:
            return error_response(422, ["top_logprobs: needs logprobs=true"], openai_shape=True)
        if request.stream:
            if request.logprobs:
                return error_response(422, ["stream: not supported with logprobs"], openai_shape=True)
            return event_stream(stream_chunks(self.model, self.tokenizer, self.source, [sequence], request.n, max_tokens,
                                              temperature, stop_list(request.stop), request.seed, chat=True))
        top = (request.top_logprobs or 0) if request.logprobs else None
        return chat_response(self.model, self.tokenizer, self.source, sequence, max_tokens, temperature,
                             stop_list(request.stop), request.seed, request.n, top)


def build_app(args: dict | None = None):
    """Application builder for `serve run serving.generate:build_app checkpoint=...` and YAML configs."""
    args = dict(args or {})
    unknown = set(args) - {"checkpoint", "tracking_uri"}
    if unknown:
        raise ValueError(f"generate app: unknown argument(s) {sorted(unknown)}; known: checkpoint, tracking_uri")
    return Generator.bind(args.get("checkpoint"), args.get("tracking_uri") or tracking.tracking_uri())
