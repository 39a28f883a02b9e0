"""Errors a :class:`~byoc_agent.providers.base.HostProvider` raises.

::

    CorralError
    ├── RetryableError                     (also: the cloud API was unreachable or throttled)
    │   └── CapacityError
    │       └── CapacityUnavailableError   the cloud or the inventory has no such host free now
    └── PermanentError
        ├── QuotaExceededError             an account limit; needs a quota increase (wire
        │                                  code ``quota_exceeded``)
        ├── ProviderAuthError              credentials missing, wrong or lacking a permission
        ├── InvalidArgumentError
        │   └── UnknownInstanceTypeError   the provider does not offer that instance type
        └── NotFoundError
            └── HostNotFoundError          no host with that id (or not one Corral launched)

Adapters convert SDK exceptions into these inside the adapter (``raise X(...) from e``);
messages say what happened and what a person can do about it. ``docs/providers.md`` lists
which cloud error becomes which of these.
"""

from __future__ import annotations

from byoc_agent.protocol.errors import (
    CapacityError,
    ErrorCode,
    InvalidArgumentError,
    NotFoundError,
    PermanentError,
    QuotaExceededError,
)

__all__ = [
    "CapacityUnavailableError",
    "HostNotFoundError",
    "ProviderAuthError",
    "QuotaExceededError",
    "UnknownInstanceTypeError",
]


class CapacityUnavailableError(CapacityError):
    """No host of the requested type is free right now; the same request may succeed later."""


class ProviderAuthError(PermanentError):
    """The provider refused our credentials or a permission is missing."""

    code = ErrorCode.FORBIDDEN


class UnknownInstanceTypeError(InvalidArgumentError):
    """The provider does not offer the requested instance type."""


class HostNotFoundError(NotFoundError):
    """No host with that id exists (or it was never ours)."""
