"""Every error leaves the API as ``{"error": {"code", "message", "field"}}``; never a stack."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from byoc_agent.protocol.errors import CorralError, ErrorCode
from control_plane.api.schemas import ErrorResponse
from control_plane.errors import RateLimitedError, http_status

log = structlog.get_logger("control_plane.api")

_BY_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_ARGUMENT,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_ARGUMENT,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.INVALID_ARGUMENT,
    422: ErrorCode.INVALID_ARGUMENT,
}


def error_response(
    status: int, code: ErrorCode | str, message: str, field: str | None = None
) -> JSONResponse:
    body: dict[str, str | None] = {"code": str(code), "message": message, "field": field}
    return JSONResponse({"error": body}, status_code=status)


def field_of(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """``("body", "env", "FOO")`` → ``env.FOO``; a body-level error → ``body``."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header") and len(parts) > 1:
        parts = parts[1:]
    if parts and parts[0] in ("0",):
        return "body"
    return ".".join(parts) or "body"


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(400, ErrorCode.INVALID_ARGUMENT, "invalid request", "body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return error_response(400, ErrorCode.INVALID_ARGUMENT, "body is not valid JSON", "body")
    field = field_of(tuple(first.get("loc", ())))
    message = f"{field}: {first.get('msg', 'invalid value')}"
    return error_response(400, ErrorCode.INVALID_ARGUMENT, message, field)


async def _corral(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CorralError)
    status = http_status(exc)
    field = exc.fields.get("field")
    if status >= 500:
        log.warning(
            "request_failed",
            path=request.url.path,
            status=status,
            code=exc.code.value,
            **{k: v for k, v in exc.fields.items() if k.endswith("_id")},
        )
    response = error_response(status, exc.code, exc.message, str(field) if field else None)
    if isinstance(exc, RateLimitedError):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _BY_STATUS.get(exc.status_code, ErrorCode.INTERNAL)
    status = 400 if exc.status_code == 422 else exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    response = error_response(status, code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error", path=request.url.path, error=type(exc).__name__, exc_info=exc)
    return error_response(500, ErrorCode.INTERNAL, "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(CorralError, _corral)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, with the error body's schema."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


_DESCRIPTIONS = {
    400: "Invalid input; `error.field` names it",
    401: "Missing, unknown or revoked credential",
    403: "The credential's role may not do this",
    404: "Unknown, or another tenant's, resource",
    409: "The resource's state does not allow this",
    413: "Request body over the limit",
    429: "Rate limited; see the Retry-After header",
    502: "The agent refused or failed the job",
    503: "No agent online or with capacity, or NATS unavailable",
    504: "The agent did not answer in time",
}
COMMON_ERRORS = documented(400, 401, 403, 404, 413)
"""Every route can answer these (auth, validation, body limit): documented once, in OpenAPI."""
AGENT_ERRORS = documented(409, 502, 503, 504)
"""Routes that wait for an agent's signed answer to a job."""
RATE_LIMITED = documented(429)
