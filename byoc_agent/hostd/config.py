"""hostd's settings: one JSON file (``corral-hostd --config /etc/corral/hostd.json``).

::

    {
      "listen_host": "0.0.0.0", "listen_port": 7443,
      "cert_file": "/etc/corral/hostd/cert.pem",
      "key_file": "/etc/corral/hostd/key.pem",        mode 0600 or stricter
      "secret_file": "/etc/corral/hostd/secret",      mode 0600 or stricter
      "data_dir": "/var/lib/corral/hostd",            runtime state, snapshots
      "templates_dir": "/var/lib/corral/templates",
      "runtimes": ["gvisor"],                         or ["gvisor", "qemu-microvm"]
      "agent_id": "...", "tenant_id": "...",          the manager's, for log lines only
      "microvm_accel": "auto", "sandbox_disk_mb": null, "sandbox_pids_max": null,
      "warm_pool": "base:1:512:gvisor=2"             pre-started sandboxes (ADR 0025); "" off
    }

Unknown keys are refused, so a typo is an error at start, not a silent default.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from byoc_agent import runtimes
from byoc_agent.protocol.errors import CorralError, InvalidArgumentError
from byoc_agent.runtimes.base import Runtime
from byoc_agent.warm_pool import parse_pool_sizes

from .credentials import HostCredentials

DEFAULT_PORT = 7443


@dataclass(frozen=True, slots=True)
class HostdConfig:
    cert_file: Path
    key_file: Path
    secret_file: Path
    data_dir: Path
    templates_dir: Path
    listen_host: str = "0.0.0.0"  # noqa: S104 - the host's firewall decides who reaches it
    listen_port: int = DEFAULT_PORT
    runtimes: tuple[str, ...] = ("gvisor",)
    agent_id: str = ""
    tenant_id: str = ""
    microvm_accel: str = "auto"
    sandbox_disk_mb: int | None = None
    sandbox_pids_max: int | None = None
    warm_pool: str = ""

    @property
    def runtime_dir(self) -> Path:
        return self.data_dir / "runtime"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    def to_json(self) -> str:
        return _ConfigFile(
            **{f: getattr(self, f) for f in _ConfigFile.model_fields}
        ).model_dump_json(indent=2)


class _ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: Path
    key_file: Path
    secret_file: Path
    data_dir: Path
    templates_dir: Path
    listen_host: str = "0.0.0.0"  # noqa: S104
    listen_port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_PORT
    runtimes: Annotated[tuple[str, ...], Field(min_length=1, max_length=4)] = ("gvisor",)
    agent_id: Annotated[str, Field(max_length=128)] = ""
    tenant_id: Annotated[str, Field(max_length=128)] = ""
    microvm_accel: Annotated[str, Field(pattern="^(auto|kvm|tcg)$")] = "auto"
    sandbox_disk_mb: Annotated[int, Field(ge=0)] | None = None
    sandbox_pids_max: Annotated[int, Field(ge=0)] | None = None
    warm_pool: Annotated[str, Field(max_length=1024)] = ""


def parse_config(text: str) -> HostdConfig:
    """Raises InvalidArgumentError naming the first bad field."""
    try:
        raw = _ConfigFile.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise InvalidArgumentError(f"hostd config: {where}: {first['msg']}") from None
    try:
        parse_pool_sizes(raw.warm_pool)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"hostd config: warm_pool: {e.message}") from None
    return HostdConfig(**raw.model_dump())


def load_config(path: Path) -> HostdConfig:
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read hostd config {path}: {e.strerror}") from None
    return parse_config(text)


def check_private(path: Path) -> None:
    """Refuse a key or secret file that anyone but its owner can read or write."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise CorralError(f"cannot read {path}: {e.strerror}") from None
    if mode & 0o077:
        raise CorralError(
            f"{path} has mode {mode:04o}: group or others may read it; hostd refuses to start "
            f"until only its owner can (chmod 600 {path})"
        )


def load_credentials(config: HostdConfig) -> HostCredentials:
    """The host's certificate, key and secret; refuses group/world-readable key or secret."""
    check_private(config.key_file)
    check_private(config.secret_file)
    try:
        secret = config.secret_file.read_text().strip()
        return HostCredentials(
            secret=secret,
            cert_pem=config.cert_file.read_bytes(),
            key_pem=config.key_file.read_bytes(),
        )
    except OSError as e:
        raise CorralError(f"cannot read {e.filename}: {e.strerror}") from None


def build_host_runtime(config: HostdConfig) -> Runtime:
    """The host's runtimes, built as the agent builds its own (:func:`runtimes.build_runtime`)."""
    return runtimes.build_runtime(
        ",".join(config.runtimes),
        state_dir=config.runtime_dir,
        templates_root=config.templates_dir,
        options=runtimes.RuntimeOptions(
            microvm_cache=config.data_dir / "microvm",
            microvm_accel=config.microvm_accel,
            disk_mb=config.sandbox_disk_mb,
            pids_max=config.sandbox_pids_max,
        ),
    )
