"""Every error the Corral SDK raises on purpose.

::

    CorralError                        root; carries status_code, code, message, request_id
    ├── AuthenticationError            401, or no API key / admin token configured
    ├── PermissionDeniedError          403: the key is valid but its role may not do this
    ├── NotFoundError                  404: unknown, or another tenant's, resource
    │   ├── SandboxNotFoundError
    │   ├── TemplateNotFoundError
    │   └── FileNotFoundInSandboxError (also a builtin FileNotFoundError)
    ├── InvalidArgumentError           400 / 413; ``.field`` names the offending input
    ├── ConflictError                  409
    ├── CosignatureRequiredError       the agent's rules need the customer's cosignature first
    ├── SandboxNotRunningError         the sandbox was killed, timed out or failed
    ├── SandboxTimeoutError            the sandbox (or a wait for it) ran out of time
    │   └── CommandTimeoutError        a command passed its ``timeout``
    ├── CommandExitError               ``CommandResult.check()`` on a non-zero exit
    ├── CapacityError                  503 capacity: no agent has room right now   (retryable)
    ├── RateLimitedError               429: too many requests; ``.retry_after_s``   (retryable)
    ├── ServiceUnavailableError        503/502/504, or the API could not be reached (retryable)
    └── APIError                       any other status, or a response the SDK cannot read

``retryable`` says whether the same call may succeed later unchanged. The SDK converts
every ``httpx`` exception into one of these (``raise X(...) from e``), so callers need
catch only :class:`CorralError`.
"""

from __future__ import annotations

import builtins


class CorralError(Exception):
    """Root of every error the Corral SDK raises on purpose."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        sandbox_id: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.sandbox_id = sandbox_id
        self.field = field

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request id {self.request_id})"
        return self.message


class AuthenticationError(CorralError):
    """The API key, admin token or sandbox token is missing, wrong or revoked."""


class PermissionDeniedError(CorralError):
    """The credentials are valid, but their role may not do this."""


class NotFoundError(CorralError):
    """The resource does not exist, or belongs to another tenant."""


class SandboxNotFoundError(NotFoundError):
    """No sandbox with this id exists for this tenant (it may have been killed or timed out)."""


class TemplateNotFoundError(NotFoundError):
    """No agent offers the requested template."""


class FileNotFoundInSandboxError(NotFoundError, builtins.FileNotFoundError):
    """A path inside the sandbox does not exist."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        sandbox_id: str | None = None,
    ) -> None:
        super().__init__(
            message,
            status_code=status_code,
            code=code,
            request_id=request_id,
            sandbox_id=sandbox_id,
        )
        self.path = path
        self.filename = path


class InvalidArgumentError(CorralError):
    """The request was rejected as invalid; ``field`` names the input when the server said."""


class ConflictError(CorralError):
    """The request conflicts with the resource's current state."""


class CosignatureRequiredError(CorralError):
    """The sandbox waits, pending, until the customer co-signs its job: ``corral cosign
    sign <cosign_request_id> --key FILE``, then ``Sandbox.connect(sandbox_id)``."""

    def __init__(self, message: str, *, sandbox_id: str, cosign_request_id: str) -> None:
        super().__init__(message, sandbox_id=sandbox_id, code="cosignature_required")
        self.cosign_request_id = cosign_request_id


class SandboxNotRunningError(CorralError):
    """The sandbox is no longer running (killed, timed out or failed)."""


class SandboxTimeoutError(CorralError):
    """The sandbox, or a wait on it, ran out of time."""


class CommandTimeoutError(SandboxTimeoutError):
    """A command ran past its timeout; ``stdout``/``stderr`` hold what it printed before."""

    def __init__(
        self,
        message: str,
        *,
        stdout: str = "",
        stderr: str = "",
        sandbox_id: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, sandbox_id=sandbox_id, code=code)
        self.stdout = stdout
        self.stderr = stderr


class CommandExitError(CorralError):
    """A command exited non-zero and the caller asked for that to be an error."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int,
        stdout: str,
        stderr: str,
        sandbox_id: str | None = None,
    ) -> None:
        super().__init__(message, sandbox_id=sandbox_id)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class CapacityError(CorralError):
    """No agent has capacity for the request right now."""

    retryable = True


class RateLimitedError(CorralError):
    """The tenant sent too many requests of this kind; retry after ``retry_after_s``."""

    retryable = True
    retry_after_s: float | None = None


class ServiceUnavailableError(CorralError):
    """The API could not be reached or did not answer in time."""

    retryable = True


class APIError(CorralError):
    """An unexpected status or a response the SDK cannot read."""


__all__ = [
    "APIError",
    "AuthenticationError",
    "CapacityError",
    "CommandExitError",
    "CommandTimeoutError",
    "ConflictError",
    "CorralError",
    "FileNotFoundInSandboxError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxTimeoutError",
    "ServiceUnavailableError",
    "TemplateNotFoundError",
]
