"""Control-plane errors, rooted in the shared :class:`CorralError` tree.

::

    CorralError (byoc_agent.protocol.errors)
    ├── RetryableError
    │   ├── CapacityError            no online agent with room            → 503
    │   ├── AgentTimeoutError        the agent did not answer in time     → 504
    │   └── PublishError             NATS did not accept the job          → 503
    └── PermanentError
        ├── InvalidArgumentError     names the ``field``                  → 400
        ├── NotFoundError            unknown or another tenant's resource → 404
        ├── UnauthenticatedError     bad, expired or revoked credential   → 401
        ├── ForbiddenError           right credential, wrong role         → 403
        ├── ConflictError            state does not allow the request     → 409
        ├── JobRejectedError         the agent refused the signed job     → 502
        └── AgentFailedError         the agent failed with no usable code → 502

HTTP statuses are assigned in one place, :data:`HTTP_STATUS`, from the error's code.
"""

from __future__ import annotations

from byoc_agent.protocol.errors import CorralError, ErrorCode, PermanentError, RetryableError


class UnauthenticatedError(PermanentError):
    code = ErrorCode.UNAUTHENTICATED


class ForbiddenError(PermanentError):
    code = ErrorCode.FORBIDDEN


class ConflictError(PermanentError):
    code = ErrorCode.CONFLICT


class JobRejectedError(PermanentError):
    code = ErrorCode.REJECTED


class AgentFailedError(PermanentError):
    """The agent answered with an error code the API has no better status for."""

    code = ErrorCode.INTERNAL
    http_status = 502


class AgentTimeoutError(RetryableError):
    code = ErrorCode.TIMEOUT


class PublishError(RetryableError):
    code = ErrorCode.UNAVAILABLE


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
    ErrorCode.INTERNAL: 500,
    ErrorCode.REJECTED: 502,
    ErrorCode.CAPACITY: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


def http_status(error: CorralError) -> int:
    override = getattr(error, "http_status", None)
    if isinstance(override, int):
        return override
    return HTTP_STATUS.get(error.code, 500)
