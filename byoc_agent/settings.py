"""The agent's settings: one frozen object, read from ``CORRAL_AGENT_*`` variables in main."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AgentSettings:
    home: Path
    control_plane_url: str
    nats_url: str | None = None
    enrollment_token: str | None = None
    name: str = "agent"
    dataplane_host: str = "127.0.0.1"
    dataplane_port: int = 8788
    dataplane_public_url: str | None = None
    runtime: str = "gvisor"
    templates_dir: Path | None = None
    # microVMs: where the guest kernel, initramfs and disk images are cached; kvm|tcg|auto.
    microvm_cache_dir: Path | None = None
    microvm_accel: str = "auto"
    cpu_total: int = 2
    memory_mb_total: int = 4096
    heartbeat_interval_s: float = 5.0
    key_refresh_interval_s: float = 30.0
    reaper_interval_s: float = 0.5
    usage_interval_s: float = 60.0
    # Warm pools (ADR 0025): "template:cpu:memory_mb:isolation=N,..."; empty = off.
    warm_pool: str = ""

    @property
    def state_db(self) -> Path:
        return self.home / "agent-state.db"

    @property
    def key_file(self) -> Path:
        return self.home / "agent-key.pem"

    @property
    def runtime_dir(self) -> Path:
        return self.home / "runtime"

    @property
    def warm_pool_ledger(self) -> Path:
        return self.home / "warm-pool.json"

    @property
    def microvm_cache(self) -> Path:
        return self.microvm_cache_dir or (self.home / "microvm")

    @property
    def templates_root(self) -> Path:
        return self.templates_dir or (self.home / "templates")

    @property
    def advertised_dataplane_url(self) -> str:
        return self.dataplane_public_url or f"http://{self.dataplane_host}:{self.dataplane_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        e = os.environ if env is None else env
        p = "CORRAL_AGENT_"
        home = Path(e.get(p + "HOME", ".corral/agent"))
        templates = e.get(p + "TEMPLATES_DIR")
        return cls(
            home=home,
            control_plane_url=e.get(p + "CONTROL_PLANE_URL", "http://127.0.0.1:8080"),
            nats_url=e.get(p + "NATS_URL") or None,
            enrollment_token=e.get(p + "ENROLLMENT_TOKEN") or None,
            name=e.get(p + "NAME", "agent"),
            dataplane_host=e.get(p + "DATAPLANE_HOST", "127.0.0.1"),
            dataplane_port=int(e.get(p + "DATAPLANE_PORT", "8788")),
            dataplane_public_url=e.get(p + "DATAPLANE_PUBLIC_URL") or None,
            runtime=e.get(p + "RUNTIME", "gvisor"),
            templates_dir=Path(templates) if templates else None,
            microvm_cache_dir=Path(e[p + "MICROVM_CACHE"]) if e.get(p + "MICROVM_CACHE") else None,
            microvm_accel=e.get(p + "MICROVM_ACCEL", "auto"),
            cpu_total=int(e.get(p + "CPU_TOTAL", str(os.cpu_count() or 2))),
            memory_mb_total=int(e.get(p + "MEMORY_MB_TOTAL", "4096")),
            heartbeat_interval_s=float(e.get(p + "HEARTBEAT_INTERVAL_S", "5")),
            key_refresh_interval_s=float(e.get(p + "KEY_REFRESH_INTERVAL_S", "30")),
            reaper_interval_s=float(e.get(p + "REAPER_INTERVAL_S", "0.5")),
            usage_interval_s=float(e.get(p + "USAGE_INTERVAL_S", "60")),
            warm_pool=e.get(p + "WARM_POOL", ""),
        )
