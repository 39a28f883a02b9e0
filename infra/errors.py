"""Errors of the installer. ``InstallError`` is the root; all are permanent (bad input
or a missing tool) — retrying the same command will not help.

    CorralError (corral.errors)
    └── InstallError
        ├── InstallConfigError     a value in the install's configuration is invalid
        ├── PolicyViolationError   the program would create something insecure
        └── PulumiNotFoundError    `pulumi up` was asked for but no Pulumi CLI is on PATH
"""

from __future__ import annotations

from corral.errors import CorralError


class InstallError(CorralError):
    pass


class InstallConfigError(InstallError):
    pass


class PolicyViolationError(InstallError):
    pass


class PulumiNotFoundError(InstallError):
    pass
