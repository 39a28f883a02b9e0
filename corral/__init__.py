"""Corral client SDK: sandboxes for AI coding agents, run inside your own cloud.

::

    from corral import Sandbox

    with Sandbox.create() as sb:
        print(sb.commands.run("echo hello").stdout)

The public names live in small private modules and are re-exported here.
"""

from corral._admin import (
    AdminClient,
    AgentInfo,
    ApiKey,
    EnrollmentToken,
    NewApiKey,
    NewTenant,
    Tenant,
)
from corral._commands import CommandResult, Commands
from corral._config import ConnectionConfig
from corral._files import EntryInfo, Files, FileType
from corral.errors import (
    APIError,
    AuthenticationError,
    CapacityError,
    CommandExitError,
    CommandTimeoutError,
    ConflictError,
    CorralError,
    CosignatureRequiredError,
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
from corral.sandbox import Sandbox, SandboxInfo, SandboxState

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AdminClient",
    "AgentInfo",
    "ApiKey",
    "AuthenticationError",
    "CapacityError",
    "CommandExitError",
    "CommandResult",
    "CommandTimeoutError",
    "Commands",
    "ConflictError",
    "ConnectionConfig",
    "CorralError",
    "CosignatureRequiredError",
    "EnrollmentToken",
    "EntryInfo",
    "FileNotFoundInSandboxError",
    "FileType",
    "Files",
    "InvalidArgumentError",
    "NewApiKey",
    "NewTenant",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "Sandbox",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxState",
    "SandboxTimeoutError",
    "ServiceUnavailableError",
    "TemplateNotFoundError",
    "Tenant",
    "__version__",
]
