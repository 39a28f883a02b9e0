"""The one place the SDK talks HTTP: requests, streams, and turning failures into errors.

Every ``httpx`` exception and every error status is converted here into a typed
:mod:`corral.errors` exception whose message says what to do next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from corral._wire import ErrorBodyWire
from corral.errors import (
    APIError,
    AuthenticationError,
    CapacityError,
    CommandTimeoutError,
    ConflictError,
    CorralError,
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxTimeoutError,
    ServiceUnavailableError,
    TemplateNotFoundError,
)

USER_AGENT = "corral-python/0.1.0"
MAX_SERVER_MESSAGE = 300

Plane = Literal["control", "data"]
Resource = Literal["sandbox", "file", "other"]
RequestContent = bytes | Iterable[bytes]
QueryParams = Mapping[str, str | int]
JsonBody = Mapping[str, object]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class About:
    """What a request is about, so that an error can name it and say what to do."""

    plane: Plane
    credential_env: str = "CORRAL_API_KEY"
    resource: Resource = "other"
    sandbox_id: str | None = None
    path: str | None = None


class _Common(TypedDict):
    status_code: int | None
    code: str | None
    request_id: str | None
    sandbox_id: str | None


@dataclass(frozen=True, slots=True)
class _ErrorBody:
    code: str | None
    message: str
    field: str | None


def _read_error_body(response: httpx.Response) -> _ErrorBody:
    try:
        wire = ErrorBodyWire.model_validate_json(response.content)
    except ValidationError:
        text = response.text.strip().replace("\n", " ")
        return _ErrorBody(None, text[:MAX_SERVER_MESSAGE] or response.reason_phrase, None)
    detail = wire.error
    return _ErrorBody(detail.code, detail.message[:MAX_SERVER_MESSAGE], detail.field)


_STATUS_BY_CODE: dict[str, int] = {
    "invalid_argument": 400,
    "payload_too_large": 413,
    "rate_limited": 429,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "capacity": 503,
    "unavailable": 503,
}


def error_from_response(response: httpx.Response, about: About) -> CorralError:
    """Turn an error response into the typed exception a caller can act on."""
    body = _read_error_body(response)
    error = _build_error(
        response.status_code,
        body,
        about,
        request_id=response.headers.get("x-request-id"),
        url=str(response.request.url),
    )
    if isinstance(error, RateLimitedError):
        try:
            error.retry_after_s = float(response.headers.get("retry-after", ""))
        except ValueError:
            error.retry_after_s = None
    return error


def error_from_event(code: str, message: str, about: About) -> CorralError:
    """Turn an ``error`` event from an exec stream into a typed exception."""
    status = _STATUS_BY_CODE.get(code, 500)
    error = _build_error(
        status, _ErrorBody(code, message[:MAX_SERVER_MESSAGE], None), about, request_id=None, url=""
    )
    error.status_code = None
    return error


def _build_error(
    status: int, body: _ErrorBody, about: About, *, request_id: str | None, url: str
) -> CorralError:
    sid = about.sandbox_id
    msg = body.message
    code = body.code
    common: _Common = {
        "status_code": status,
        "code": code,
        "request_id": request_id,
        "sandbox_id": sid,
    }
    where = "data plane" if about.plane == "data" else "control plane"
    if code == "template_not_found":
        return TemplateNotFoundError(
            f"Template not found: {msg}. Ask your operator which templates the agents "
            "offer (`corral admin agents`).",
            **common,
        )
    file_missing = status == 404 and about.resource == "file" and code != "not_found"
    if code == "file_not_found" or file_missing:
        return FileNotFoundInSandboxError(
            f"No such file or directory in sandbox {sid}: {about.path or msg}",
            path=about.path,
            status_code=status,
            code=code,
            request_id=request_id,
            sandbox_id=sid,
        )
    if code == "sandbox_not_running":
        return SandboxNotRunningError(
            f"Sandbox {sid} is not running ({msg}): it was killed, timed out or failed. "
            "Create a new sandbox.",
            **common,
        )
    if code == "capacity":
        return CapacityError(
            f"No agent has capacity for this right now ({msg}). Retry later, ask for fewer "
            "CPUs or less memory, or ask your operator to add capacity.",
            **common,
        )
    if code == "timeout" and (about.plane == "data" or status != 504):
        if about.plane == "data":
            return CommandTimeoutError(
                f"Timed out in sandbox {sid}: {msg}", sandbox_id=sid, code=code
            )
        return SandboxTimeoutError(f"Timed out: {msg}", **common)
    if code == "rate_limited" or status == 429:
        return RateLimitedError(f"Rate limited: {msg}. Retry in a moment.", **common)
    if status in (400, 413, 422):
        what = f" for '{body.field}'" if body.field else ""
        hint = "Send less data per request." if status == 413 else "Fix it and try again."
        return InvalidArgumentError(
            f"Invalid request{what}: {msg}. {hint}", field=body.field, **common
        )
    if status == 401:
        if about.plane == "data":
            return AuthenticationError(
                f"The data plane rejected the access token for sandbox {sid} ({msg}), even "
                "after a refresh. Reconnect with Sandbox.connect(id).",
                **common,
            )
        return AuthenticationError(
            f"The control plane rejected the credentials ({msg}). Check "
            f"{about.credential_env}: it may be mistyped or revoked.",
            **common,
        )
    if status == 403:
        return PermissionDeniedError(
            f"Permission denied ({msg}): the credential in {about.credential_env} may not do "
            "this. Operator actions need CORRAL_ADMIN_TOKEN.",
            **common,
        )
    if status == 404:
        if about.resource in ("sandbox", "file"):
            return SandboxNotFoundError(
                f"Sandbox {sid} not found: it was killed or timed out, or belongs to another "
                "tenant. `corral sandbox ls` lists yours.",
                **common,
            )
        return NotFoundError(f"Not found: {msg}", **common)
    if status == 409:
        return ConflictError(f"Conflict: {msg}", **common)
    if status == 503:
        return ServiceUnavailableError(
            f"The {where} is unavailable ({msg}). Retry in a moment.", **common
        )
    if status == 504:
        return ServiceUnavailableError(
            f"The agent did not answer in time ({msg}). The request may still complete: "
            "check `corral sandbox ls` before retrying.",
            **common,
        )
    if status == 502:
        return ServiceUnavailableError(
            f"Bad gateway in front of the {where} ({msg}). Retry in a moment.", **common
        )
    at = f" at {url}" if url else ""
    return APIError(f"Unexpected HTTP {status} from the {where}{at}: {msg}", **common)


def error_from_transport(exc: httpx.HTTPError, about: About, url: str) -> CorralError:
    """Turn an ``httpx`` exception (no response) into a typed, actionable error."""
    sid = about.sandbox_id
    if about.plane == "data":
        where = f"the data plane of sandbox {sid} at {url}"
        hint = (
            "The data plane listens inside the customer network: run this from where it "
            "is reachable."
        )
    else:
        where = f"the Corral API at {url}"
        hint = "Check CORRAL_API_URL and that the control plane is running."
    if isinstance(exc, httpx.TimeoutException):
        return ServiceUnavailableError(
            f"Timed out talking to {where} ({type(exc).__name__}). {hint}", sandbox_id=sid
        )
    if isinstance(exc, httpx.TransportError):
        return ServiceUnavailableError(f"Cannot reach {where}: {exc}. {hint}", sandbox_id=sid)
    return APIError(f"HTTP error talking to {where}: {exc}", sandbox_id=sid)


def parse(model: type[M], response: httpx.Response, about: About) -> M:
    """Validate a JSON response body, or raise APIError naming the endpoint."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as e:
        raise APIError(
            f"Unexpected response from {response.request.method} {response.request.url.path}: "
            f"{e.error_count()} field(s) did not match ({e.errors()[0]['loc']}). Is the SDK "
            "version compatible with the server?",
            status_code=response.status_code,
            request_id=response.headers.get("x-request-id"),
            sandbox_id=about.sandbox_id,
        ) from e


class HttpClient:
    """One ``httpx.Client`` with error conversion; owned by one Sandbox or AdminClient."""

    def __init__(self, timeout: float, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(
            timeout=timeout, transport=transport, headers={"user-agent": USER_AGENT}
        )
        self.timeout = timeout

    @property
    def closed(self) -> bool:
        return self._client.is_closed

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        url: str,
        about: About,
        *,
        token: str,
        json: JsonBody | None = None,
        params: QueryParams | None = None,
        content: RequestContent | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> httpx.Response:
        """Send a request and read the whole response; raise a typed error on failure."""
        response = self.open(
            method,
            url,
            about,
            token=token,
            json=json,
            params=params,
            content=content,
            timeout=timeout,
        )
        try:
            with converted(about, url):
                response.read()
        finally:
            response.close()
        return response

    def open(
        self,
        method: str,
        url: str,
        about: About,
        *,
        token: str,
        json: JsonBody | None = None,
        params: QueryParams | None = None,
        content: RequestContent | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> httpx.Response:
        """Send a request and return the open, successful response; the caller closes it."""
        if self._client.is_closed:
            raise CorralError(
                "This client is closed (the sandbox was killed or closed); "
                "use Sandbox.connect(id) to reach the sandbox again.",
                sandbox_id=about.sandbox_id,
            )
        request = self._client.build_request(
            method,
            url,
            headers={"authorization": f"Bearer {token}"},
            json=json,
            params=params,
            content=content,
            timeout=self.timeout if timeout is None else timeout,
        )
        with converted(about, url):
            response = self._client.send(request, stream=True)
        if response.is_error:
            try:
                with converted(about, url):
                    response.read()
            finally:
                response.close()
            raise error_from_response(response, about)
        return response


@contextlib.contextmanager
def converted(about: About, url: str) -> Iterator[None]:
    """Re-raise any ``httpx`` exception in the block as a typed Corral error."""
    try:
        yield
    except httpx.HTTPError as e:
        raise error_from_transport(e, about, url) from e
