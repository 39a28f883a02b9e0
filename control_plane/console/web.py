"""Console plumbing: templates, sessions and CSRF, form bodies, security headers, errors.

Sessions are server-side (:mod:`control_plane.store.console_users`); the cookie holds a
random token, is ``HttpOnly`` and ``SameSite=Strict``, and ``Secure`` when the request came
over HTTPS. Every form carries the session's CSRF token (the login form a double-submit
token from its own cookie) and every POST checks it before doing anything.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
import structlog
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from byoc_agent.protocol.errors import InvalidArgumentError
from control_plane.api.services import Services
from control_plane.console.roles import Permission, allowed
from control_plane.errors import ForbiddenError
from control_plane.store import console_users
from control_plane.store.console_users import SessionRecord

log = structlog.get_logger("control_plane.console")

PREFIX = "/console"
SESSION_COOKIE = "corral_console"
LOGIN_COOKIE = "corral_console_login"
SESSION_TTL_S = 12 * 3600
MAX_FORM_BYTES = 64 * 1024
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


class LoginRequired(Exception):
    """No live session: the handler redirects to the login page, then to ``next_path``
    (the full path, ``/console/...``, with its query)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: Decimal | int | float, places: int = 2) -> str:
    return f"{Decimal(value):,.{places}f}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["num"] = _num
    return env


_env = _environment()


def services_of(request: Request) -> Services:
    found = request.app.state.services
    if not isinstance(found, Services):
        raise RuntimeError("console app.state.services is not set")
    return found


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in user of this request, and what the pages need to know about them."""

    session: SessionRecord

    @property
    def role(self) -> str:
        return self.session.user.role

    @property
    def username(self) -> str:
        return self.session.user.username

    @property
    def csrf(self) -> str:
        return self.session.csrf_token

    def can(self, permission: Permission) -> bool:
        return allowed(self.role, permission)

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise ForbiddenError(f"the {self.role} role may not do this ({permission.value})")


def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    body = _env.get_template(template).render(
        viewer=viewer,
        Permission=Permission,
        path=request.url.path,
        prefix=PREFIX,
        **context,
    )
    return HTMLResponse(body, status_code=status_code, headers={"cache-control": "no-store"})


def see_other(path: str, **query: str) -> RedirectResponse:
    target = PREFIX + path
    if query:
        target += "?" + urlencode(query)
    return RedirectResponse(target, status_code=303)


async def viewer_of(request: Request, permission: Permission | None = None) -> Viewer:
    """The request's session, or :class:`LoginRequired`; checks ``permission`` when given."""
    token = request.cookies.get(SESSION_COOKIE, "")
    found = None
    if token:
        found = await services_of(request).db.run(lambda s: console_users.find_session(s, token))
    if found is None:
        query = request.url.query
        raise LoginRequired(request.url.path + (f"?{query}" if query else ""))
    viewer = Viewer(found)
    if permission is not None:
        viewer.require(permission)
    return viewer


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as single values (last one wins)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidArgumentError("expected a form submission", field="body")
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidArgumentError("form is too large", field="body")
    try:
        parsed = parse_qs(raw.decode(), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgumentError("form is not valid", field="body") from None
    return {k: v[-1] for k, v in parsed.items()}


def check_csrf(expected: str, form: Mapping[str, str]) -> None:
    given = form.get("csrf_token", "")
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ForbiddenError("the form's security token is missing or stale; reload the page")


async def posted(request: Request, permission: Permission) -> tuple[Viewer, dict[str, str]]:
    """A POST from a signed-in user with ``permission`` and a valid CSRF token."""
    viewer = await viewer_of(request)
    form = await read_form(request)
    check_csrf(viewer.csrf, form)
    viewer.require(permission)
    return viewer, form


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_TTL_S,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )


def login_token(request: Request) -> tuple[str, bool]:
    """The login form's double-submit token: the cookie's, or a new one (True = set it)."""
    existing = request.cookies.get(LOGIN_COOKIE, "")
    if 20 <= len(existing) <= 64:
        return existing, False
    return secrets.token_urlsafe(24), True


def set_login_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )


class SecurityHeaders:
    """Adds the CSP and friends to every console response, and turns any unexpected
    exception into the styled 500 page (logged, never a stack trace to the browser)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"server"
                ]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            log.error(
                "console_unhandled_error",
                path=scope.get("path"),
                error=type(exc).__name__,
                exc_info=exc,
            )
            if started:
                raise
            request = Request(scope)
            response = render(
                request,
                "error.html",
                None,
                status_code=500,
                status=500,
                heading="Something went wrong",
                message="The console hit an unexpected error. It has been logged.",
            )
            await response(scope, receive, send_with_headers)
