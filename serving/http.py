"""What every Serve app's HTTP API shares: FastAPI with request errors that name the field.

Errors are `{"error": "<field>: <problem>", "fields": [...]}`; under OpenAI-compatible routes
(`/v1/...`) they take OpenAI's shape instead, `{"error": {"message", "type", "param", "code"}}`,
which the `openai` client reads into its exceptions."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


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


def json_api(title: str) -> FastAPI:
    api = FastAPI(title=title)

    @api.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc, openai_shape=request.url.path.startswith("/v1/"))

    return api
