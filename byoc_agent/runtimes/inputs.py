"""Checks on what callers hand a runtime: sandbox ids, environment variables, sandbox paths.

Every runtime applies the same rules, so a request that one backend refuses is refused by all
of them with the same :class:`~byoc_agent.protocol.errors.InvalidArgumentError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from byoc_agent.protocol.errors import InvalidArgumentError

SANDBOX_HOME = "/root"  # HOME inside every sandbox; relative sandbox paths start here
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_PATH = 4096


def check_sandbox_id(sandbox_id: str) -> None:
    """Refuse an id that could not name a directory, a cgroup or a jail safely."""
    if not _ID_RE.fullmatch(sandbox_id):
        raise InvalidArgumentError(
            "sandbox_id must be 1-63 characters of [A-Za-z0-9_.-], starting alphanumeric",
            sandbox_id=sandbox_id,
        )


def validate_env(env: Mapping[str, str]) -> None:
    """Refuse a variable whose name is not a shell identifier or whose value holds a NUL."""
    for key, value in env.items():
        if not _ENV_KEY_RE.fullmatch(key) or "\0" in value:
            raise InvalidArgumentError(f"invalid environment variable name or value: {key!r}")


def sandbox_path(path: str) -> str:
    """Validate a sandbox path; relative paths are relative to ``/root``."""
    if not path or "\0" in path or len(path) > _MAX_PATH:
        raise InvalidArgumentError(f"path must be 1-{_MAX_PATH} characters without NUL")
    return path if path.startswith("/") else f"{SANDBOX_HOME}/{path}"
