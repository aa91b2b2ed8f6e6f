"""What every Serve app's HTTP API shares: FastAPI with request errors that name the field, and
a cap on request bodies (413 past `MAX_BODY_BYTES`).

Errors are `{"error": "<field>: <problem>", "fields": [...]}`; under OpenAI-compatible routes
(`/v1/...`) they take OpenAI's shape instead, `{"error": {"message", "type", "param", "code"}}`,
which the `openai` client reads into its exceptions."""

import json
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pydantic import AfterValidator, StrictStr

MAX_BODY_BYTES = 8 * 1024 * 1024


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (\\ud800-\\udfff), which is not text") from None
    return text


# A JSON string that is real text: JSON may escape lone surrogates, which tokenizers cannot encode.
Utf8Str = Annotated[StrictStr, AfterValidator(_utf8)]


def error_response(status: int, problems: list[str], openai_shape: bool = False) -> JSONResponse:
    """`problems` are "<field>: <what is wrong>" strings."""
    message = "; ".join(problems)
    if openai_shape:
        param = problems[0].split(":", 1)[0] if problems else None
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": "invalid_request_error",
                                                                   "param": param, "code": status}})
    return JSONResponse(status_code=status, content={"error": message, "fields": problems})


def validation_error_response(exc: RequestValidationError, openai_shape: bool = False) -> JSONResponse:
    """400 for a body that is not JSON; 422 whose error names each offending field."""
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        return error_response(400, ["body: not valid JSON"], openai_shape)
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        problems.append(f"{'.'.join(location) or 'body'}: {error.get('msg', 'invalid')}")
    return error_response(422, problems, openai_shape)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` is a 413 naming the limit, read no further
    (by its Content-Length when it has one, else as it streams in)."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send, status: int, problem: str) -> None:
        body = json.dumps({"error": problem, "fields": [problem]}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._refuse(send, 400, "content-length: not a number")
            if int(declared) > self.max_bytes:
                return await self._refuse(send, 413, f"body: larger than {self.max_bytes} bytes")
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, 413, f"body: larger than {self.max_bytes} bytes")


def json_api(title: str, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    api = FastAPI(title=title)
    api.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @api.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc, openai_shape=request.url.path.startswith("/v1/"))

    @api.exception_handler(HTTPException)
    async def _on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body it cannot parse, an unknown path or method) in our shape
        where = "path" if exc.status_code in (404, 405) else "body"
        return error_response(exc.status_code, [f"{where}: {exc.detail}"], request.url.path.startswith("/v1/"))

    return api


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS picks it)."""
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def direct_ingress_environment(host: str, port: int) -> dict[str, str]:
    """Environment for Serve's direct ingress: an app's replica serves HTTP itself on `port` (the
    first of a few, one per replica), with no hop through Serve's proxy, which on a small machine
    costs more than a small policy does (measured in `benchmarks.policy_serving`). It is Ray's
    throughput-optimised mode (`RAY_SERVE_THROUGHPUT_OPTIMIZED`: also gRPC between replicas,
    user code on the replica's main thread). Serve's controller and replicas read it when they
    start, so it must be in the environment of the processes that start Ray. A replica drains for
    2 s when stopped (Serve's default, 30 s, waits for a load balancer that is not there)."""
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DEFAULT_HTTP_HOST": host,
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port), "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 4),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def given_or_registered(given, registered: str, tracking_uri, pipeline: str) -> str:
    """`given` (a path or id) when there is one, else the newest version of the registered model
    `registered` downloaded from MLflow; a clear error naming both when neither exists."""
    from workloads import tracking

    if given:
        return given
    newest = tracking.newest_registered_model(registered, tracking_uri)
    if newest is None:
        raise ValueError(f"no model given and no '{registered}' model registered in MLflow ({tracking_uri}): "
                         f"run `rayworks run {pipeline}` first")
    return str(newest)

