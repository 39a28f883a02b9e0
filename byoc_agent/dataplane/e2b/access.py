"""Who may touch which sandbox: E2B's headers mapped onto Corral's sandbox tokens.

``X-Access-Token`` is the ``envdAccessToken`` the control plane's E2B API handed out: a
Corral sandbox token. ``E2b-Sandbox-Id`` names the sandbox; without it the token's own
sandbox is meant. A sandbox that is not running here answers like E2B's edge does
("... was not found", HTTP 502 / Connect ``unavailable``), which the SDKs turn into
their "sandbox is not running" error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from byoc_agent.dataplane.server import HTTPError, SandboxAccess, verify_sandbox_token
from byoc_agent.protocol import messages
from byoc_agent.protocol.errors import CorralError, ErrorCode
from byoc_agent.runtimes.base import SandboxHandle

TOKEN_HEADER = "x-access-token"  # noqa: S105 # a header name, not a secret
SANDBOX_HEADER = "e2b-sandbox-id"

_CONNECT_CODES: dict[int, Code] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    409: Code.ALREADY_EXISTS,
    413: Code.RESOURCE_EXHAUSTED,
    502: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}

_HTTP_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.SANDBOX_NOT_RUNNING: 502,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
}


@dataclass(frozen=True, slots=True)
class EnvdError(Exception):
    """An error in envd's terms: an HTTP status for ``/files``, a Connect code for RPCs."""

    status: int
    message: str

    def __str__(self) -> str:
        return self.message

    def connect(self) -> ConnectError:
        return ConnectError(_CONNECT_CODES.get(self.status, Code.INTERNAL), self.message)


def not_found_sandbox(sandbox_id: str) -> EnvdError:
    return EnvdError(502, f"The sandbox {sandbox_id} was not found")


def from_corral(e: CorralError, sandbox_id: str) -> EnvdError:
    """A runtime error as envd would report it."""
    if e.code == ErrorCode.SANDBOX_NOT_RUNNING:
        return not_found_sandbox(sandbox_id)
    if e.code == ErrorCode.FILE_NOT_FOUND:
        return EnvdError(404, e.message)
    return EnvdError(_HTTP_BY_CODE.get(e.code, 500), e.message)


@dataclass(frozen=True, slots=True)
class Caller:
    sandbox_id: str
    handle: SandboxHandle


def resolve(access: SandboxAccess, headers: Mapping[str, str], scope: messages.Scope) -> Caller:
    """The running sandbox the request is for, or :class:`EnvdError`."""
    raw = (headers.get(TOKEN_HEADER) or "").strip()
    if not raw:
        raise EnvdError(401, "missing X-Access-Token (the sandbox's envdAccessToken)")
    wanted = (headers.get(SANDBOX_HEADER) or "").strip() or None
    try:
        token = verify_sandbox_token(
            access, raw.encode("ascii", errors="replace"), wanted, scope
        )
    except HTTPError as e:
        if e.status == 404:
            raise EnvdError(401, f"the access token is not for sandbox {wanted}") from e
        raise EnvdError(e.status, e.message) from e
    try:
        handle = access.running_handle(token.sandbox_id)
    except CorralError as e:
        raise not_found_sandbox(token.sandbox_id) from e
    return Caller(sandbox_id=token.sandbox_id, handle=handle)
