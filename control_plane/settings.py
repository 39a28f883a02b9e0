"""One frozen settings object per process, read once in ``main`` from ``CORRAL_`` variables.

Nothing else in the control plane reads ``os.environ``: :func:`load_settings` takes the
environment as a mapping so tests build settings without touching the process.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

MASTER_KEY_BYTES = 32
_N = TypeVar("_N", int, float)


class SettingsError(ValueError):
    """A ``CORRAL_`` variable is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a tenant may ask for one sandbox."""

    cpu_max: int = 8
    memory_mb_min: int = 128
    memory_mb_max: int = 16384
    timeout_s_min: int = 1
    timeout_s_max: int = 86400
    metadata_max_keys: int = 64


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the control plane is configured with. ``master_key`` is never logged."""

    home: Path
    database_url: str
    nats_url: str
    public_nats_url: str
    admin_token: str
    master_key: bytes = field(repr=False)
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    limits: Limits = field(default_factory=Limits)
    job_timeout_s: float = 60.0
    heartbeat_offline_s: float = 15.0
    sandbox_token_ttl_s: int = 900
    job_ttl_s: int = 300
    max_body_bytes: int = 1024 * 1024
    enrollment_token_max_ttl_s: int = 7 * 86400
    # Per-tenant token bucket for POST /v1/sandboxes (0 disables): rate per second, burst.
    sandbox_create_rate_per_s: float = 5.0
    sandbox_create_burst: int = 50
    # E2B-compatible API (control_plane/e2b): sizes E2B's create does not carry, and the
    # lifetime of the envdAccessToken (the SDK never refreshes it; see docs/e2b-compat.md)
    e2b_cpu: int = 1
    e2b_memory_mb: int = 512
    e2b_access_token_ttl_s: int = 86400
    # "jwt": nats-server runs in operator mode trusting this control plane's NATS
    # authority (python -m control_plane.nats_auth server-config); each agent gets its own
    # NATS user at enrollment. "none": NATS without auth (tests that do not need it).
    nats_auth: str = "none"

    def __repr__(self) -> str:
        return (
            f"Settings(home={self.home!s}, database_url=<set>, nats_url={self.nats_url!r}, "
            f"listen={self.listen_host}:{self.listen_port})"
        )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number") from None


def decode_master_key(text: str, source: str) -> bytes:
    """A master key is 32 bytes written as base64url (padding optional)."""
    cleaned = text.strip()
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raise SettingsError(f"{source} is not base64url") from None
    if len(raw) != MASTER_KEY_BYTES:
        raise SettingsError(f"{source} must decode to {MASTER_KEY_BYTES} bytes")
    return raw


def generate_master_key_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode().rstrip("=")


def _master_key(env: Mapping[str, str], home: Path) -> bytes:
    inline = env.get("CORRAL_MASTER_KEY")
    if inline:
        return decode_master_key(inline, "CORRAL_MASTER_KEY")
    path_text = env.get("CORRAL_MASTER_KEY_FILE")
    path = Path(path_text) if path_text else home / "master.key"
    if not path.exists():
        if path_text:
            raise SettingsError(f"CORRAL_MASTER_KEY_FILE {path} does not exist")
        # Development default: a key file created once under CORRAL_HOME, owner-only.
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_master_key_text() + "\n")
    return decode_master_key(path.read_text(), f"master key file {path}")


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build settings from ``CORRAL_`` variables; creates a dev master key file if needed."""
    home = Path(env.get("CORRAL_HOME") or ".corral")
    admin_token = env.get("CORRAL_ADMIN_TOKEN", "")
    if len(admin_token) < 16:
        raise SettingsError("CORRAL_ADMIN_TOKEN must be set (at least 16 characters)")
    nats_url = env.get("CORRAL_NATS_URL") or "nats://127.0.0.1:4222"
    limits = Limits(
        cpu_max=_int(env, "CORRAL_LIMIT_CPU_MAX", 8),
        memory_mb_min=_int(env, "CORRAL_LIMIT_MEMORY_MB_MIN", 128),
        memory_mb_max=_int(env, "CORRAL_LIMIT_MEMORY_MB_MAX", 16384),
        timeout_s_min=_int(env, "CORRAL_LIMIT_TIMEOUT_S_MIN", 1),
        timeout_s_max=_int(env, "CORRAL_LIMIT_TIMEOUT_S_MAX", 86400),
        metadata_max_keys=_int(env, "CORRAL_LIMIT_METADATA_MAX_KEYS", 64),
    )
    nats_auth = env.get("CORRAL_NATS_AUTH") or "jwt"
    if nats_auth not in ("jwt", "none"):
        raise SettingsError("CORRAL_NATS_AUTH must be 'jwt' or 'none'")
    return Settings(
        home=home,
        nats_auth=nats_auth,
        database_url=env.get("CORRAL_DATABASE_URL") or f"sqlite:///{home / 'control-plane.db'}",
        nats_url=nats_url,
        public_nats_url=env.get("CORRAL_PUBLIC_NATS_URL") or nats_url,
        admin_token=admin_token,
        master_key=_master_key(env, home),
        listen_host=env.get("CORRAL_LISTEN_HOST") or "127.0.0.1",
        listen_port=_int(env, "CORRAL_LISTEN_PORT", 8080),
        limits=limits,
        job_timeout_s=_float(env, "CORRAL_JOB_TIMEOUT_S", 60.0),
        heartbeat_offline_s=_float(env, "CORRAL_HEARTBEAT_OFFLINE_S", 15.0),
        sandbox_token_ttl_s=_int(env, "CORRAL_SANDBOX_TOKEN_TTL_S", 900),
        sandbox_create_rate_per_s=_non_negative(
            _float(env, "CORRAL_SANDBOX_CREATE_RATE_PER_S", 5.0), "CORRAL_SANDBOX_CREATE_RATE_PER_S"
        ),
        sandbox_create_burst=_non_negative(
            _int(env, "CORRAL_SANDBOX_CREATE_BURST", 50), "CORRAL_SANDBOX_CREATE_BURST"
        ),
        e2b_cpu=_int(env, "CORRAL_E2B_CPU", 1),
        e2b_memory_mb=_int(env, "CORRAL_E2B_MEMORY_MB", 512),
        e2b_access_token_ttl_s=_int(env, "CORRAL_E2B_ACCESS_TOKEN_TTL_S", 86400),
    )


def _non_negative(value: _N, name: str) -> _N:
    if value < 0:
        raise SettingsError(f"{name} must not be negative")
    return value
