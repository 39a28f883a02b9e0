"""The console as a FastAPI sub-application mounted at ``/console`` on the control plane.

Its own error handlers render styled HTML pages (401 → the login page, 403, 404, 400 with
the field, 500); the API's JSON errors are untouched. Every response carries the strict
CSP from :mod:`control_plane.console.web`; assets are served from ``static/``, nothing
from another origin, and there is no JavaScript.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from byoc_agent.protocol.errors import CorralError, ErrorCode
from control_plane.api.services import Services
from control_plane.console.pages import router
from control_plane.console.web import (
    PREFIX,
    STATIC,
    LoginRequired,
    SecurityHeaders,
    Viewer,
    render,
)
from control_plane.errors import http_status

_HEADINGS = {
    400: "That request was not valid",
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    409: "Conflict",
}


def _error_page(request: Request, status: int, message: str) -> Response:
    viewer = getattr(request.state, "viewer", None)
    return render(
        request,
        "error.html",
        viewer if isinstance(viewer, Viewer) else None,
        status_code=status,
        status=status,
        heading=_HEADINGS.get(status, "Something went wrong"),
        message=message,
    )


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    query = urlencode({"next": exc.next_path})
    return RedirectResponse(f"{PREFIX}/login?{query}", status_code=303)


async def _corral(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CorralError)
    status = http_status(exc)
    if exc.code == ErrorCode.UNAUTHENTICATED:
        return await _login_required(request, LoginRequired(PREFIX + "/"))
    message = exc.message
    if status >= 500:
        message = f"{exc.message} ({exc.code.value})"
    return _error_page(request, status, message)


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return _error_page(request, 404, "There is no console page at this address.")
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    return _error_page(request, exc.status_code, detail)


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    where = ".".join(str(p) for p in errors[0].get("loc", ())[1:]) if errors else "request"
    return _error_page(request, 400, f"{where or 'request'}: {errors[0]['msg'] if errors else ''}")


def create_console(services: Services) -> FastAPI:
    console = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    console.state.services = services
    console.add_exception_handler(LoginRequired, _login_required)
    console.add_exception_handler(CorralError, _corral)
    console.add_exception_handler(StarletteHTTPException, _http)
    console.add_exception_handler(RequestValidationError, _validation)
    console.add_middleware(SecurityHeaders)
    console.mount("/static", StaticFiles(directory=STATIC), name="static")
    console.include_router(router)
    return console
