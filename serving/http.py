"""What every Serve app's HTTP API shares: FastAPI with request errors that name the field."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON; 422 whose `error` names each offending field."""
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        return JSONResponse(status_code=400, content={"error": "body: not valid JSON", "fields": ["body"]})
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        problems.append(f"{'.'.join(location) or 'body'}: {error.get('msg', 'invalid')}")
    return JSONResponse(status_code=422, content={"error": "; ".join(problems), "fields": problems})


def json_api(title: str) -> FastAPI:
    api = FastAPI(title=title)

    @api.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc)

    return api
