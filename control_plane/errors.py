"""Control-plane errors, rooted in the shared :class:`CorralError` tree.

::

    CorralError (byoc_agent.protocol.errors)
    ├── RetryableError
    │   ├── CapacityError            no online agent with room            → 503
    │   ├── AgentTimeoutError        the agent did not answer in time     → 504
    │   ├── RateLimitedError         the tenant's bucket is empty         → 429 + Retry-After
    │   └── PublishError             NATS did not accept the job          → 503
    └── PermanentError
        ├── InvalidArgumentError     names the ``field``                  → 400
        ├── NotFoundError            unknown or another tenant's resource → 404
        ├── UnauthenticatedError     bad, expired or revoked credential   → 401
        ├── ForbiddenError           right credential, wrong role         → 403
        ├── ConflictError            state does not allow the request     → 409
        ├── JobRejectedError         the agent refused the signed job     → 502
        └── AgentFailedError         the agent failed with no usable code → 502

HTTP statuses are assigned in one place for both HTTP servers (control plane and the agent's
data plane): :data:`byoc_agent.protocol.errors.HTTP_STATUS`, from the error's code.
"""

from __future__ import annotations

from byoc_agent.protocol.errors import (
    HTTP_STATUS,
    ErrorCode,
    PermanentError,
    RetryableError,
    http_status,
)


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


class RateLimitedError(RetryableError):
    """Too many requests of one kind from one tenant; ``retry_after_s`` says when to retry."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, *, retry_after_s: int, **fields: str | int | None) -> None:
        super().__init__(message, **fields)
        self.retry_after_s = retry_after_s


class PublishError(RetryableError):
    code = ErrorCode.UNAVAILABLE


__all__ = ["HTTP_STATUS", "http_status"]
