"""Errors shared by both sides of the wire.

::

    CorralError                      root of every error Corral raises on purpose
    ├── RetryableError               try again later (capacity, transport)
    │   └── CapacityError
    └── PermanentError               retrying the same input fails the same way
        ├── InvalidArgumentError
        ├── QuotaExceededError       an account limit; waiting does not help, raising it does
        ├── NotFoundError
        │   ├── SandboxNotFoundError
        │   ├── TemplateNotFoundError
        │   └── FileNotFoundInSandboxError
        ├── SandboxNotRunningError
        ├── CommandTimeoutError
        └── EnvelopeRejectedError    a job the agent refused (carries RejectReason)

Each error carries a stable :class:`ErrorCode`, which is what crosses the wire.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Closed set of error codes that cross the wire (results, HTTP bodies)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    TEMPLATE_NOT_FOUND = "template_not_found"
    FILE_NOT_FOUND = "file_not_found"
    SANDBOX_NOT_RUNNING = "sandbox_not_running"
    TIMEOUT = "timeout"
    CAPACITY = "capacity"
    QUOTA_EXCEEDED = "quota_exceeded"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    REJECTED = "rejected"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"


class RejectReason(StrEnum):
    """Why the agent refused a job. A small closed set: these become log fields and metrics."""

    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KID = "unknown_kid"
    REVOKED_KID = "revoked_kid"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_TENANT = "wrong_tenant"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    SEQ_NOT_INCREASING = "seq_not_increasing"
    UNKNOWN_SCHEMA = "unknown_schema"
    MISSING_COSIGNATURE = "missing_cosignature"


class CorralError(Exception):
    """Root of every error Corral raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, **fields: str | int | None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = {k: v for k, v in fields.items() if v is not None}

    def __str__(self) -> str:
        return self.message


class RetryableError(CorralError):
    """The same request may succeed later."""

    retryable = True
    code = ErrorCode.UNAVAILABLE


class CapacityError(RetryableError):
    """No agent or host has room for the request right now."""

    code = ErrorCode.CAPACITY


class PermanentError(CorralError):
    """Retrying the same input fails the same way."""


class InvalidArgumentError(PermanentError):
    code = ErrorCode.INVALID_ARGUMENT


class QuotaExceededError(PermanentError):
    """An account limit (a cloud's instance or vCPU quota) stops the request.

    Permanent, unlike ``capacity``: the same request fails until someone raises the quota
    or frees some of it.
    """

    code = ErrorCode.QUOTA_EXCEEDED


class NotFoundError(PermanentError):
    code = ErrorCode.NOT_FOUND


class SandboxNotFoundError(NotFoundError):
    pass


class TemplateNotFoundError(NotFoundError):
    code = ErrorCode.TEMPLATE_NOT_FOUND


class FileNotFoundInSandboxError(NotFoundError):
    code = ErrorCode.FILE_NOT_FOUND


class SandboxNotRunningError(PermanentError):
    code = ErrorCode.SANDBOX_NOT_RUNNING


class CommandTimeoutError(PermanentError):
    code = ErrorCode.TIMEOUT


class EnvelopeRejectedError(PermanentError):
    """A signed envelope failed verification; nothing was executed."""

    code = ErrorCode.REJECTED

    def __init__(self, reason: RejectReason, message: str, **fields: str | int | None) -> None:
        super().__init__(f"{reason.value}: {message}", **fields)
        self.reason = reason


_BY_CODE: dict[ErrorCode, type[CorralError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgumentError,
    ErrorCode.NOT_FOUND: NotFoundError,
    ErrorCode.TEMPLATE_NOT_FOUND: TemplateNotFoundError,
    ErrorCode.FILE_NOT_FOUND: FileNotFoundInSandboxError,
    ErrorCode.SANDBOX_NOT_RUNNING: SandboxNotRunningError,
    ErrorCode.TIMEOUT: CommandTimeoutError,
    ErrorCode.CAPACITY: CapacityError,
    ErrorCode.QUOTA_EXCEEDED: QuotaExceededError,
    ErrorCode.UNAVAILABLE: RetryableError,
}


def error_from_code(code: str, message: str) -> CorralError:
    """Rebuild a typed error from its wire code (unknown codes become a plain CorralError)."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except (ValueError, KeyError):
        return CorralError(message)
    return cls(message)


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TEMPLATE_NOT_FOUND: 404,
    ErrorCode.FILE_NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.SANDBOX_NOT_RUNNING: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.REJECTED: 502,
    ErrorCode.CAPACITY: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


def http_status(error: CorralError) -> int:
    """The HTTP status for an error: its own ``http_status`` if it has one, else by code."""
    override = getattr(error, "http_status", None)
    if isinstance(override, int):
        return override
    return HTTP_STATUS.get(error.code, 500)
