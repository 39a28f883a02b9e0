"""Sandbox runtimes, registered by name. Only runtimes whose binaries exist are offered."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.runtimes.base import Runtime


def _gvisor(state_dir: Path, templates_root: Path, **limits: int) -> Runtime:
    """``limits``: ``disk_mb`` and ``pids_max`` per sandbox (see GVisorRuntime)."""
    from byoc_agent.runtimes.gvisor import DEFAULT_DISK_MB, DEFAULT_PIDS_MAX, GVisorRuntime

    return GVisorRuntime(
        state_dir=state_dir / "gvisor",
        templates_root=templates_root,
        disk_mb=limits.get("disk_mb", DEFAULT_DISK_MB),
        pids_max=limits.get("pids_max", DEFAULT_PIDS_MAX),
    )


def _memory(state_dir: Path, templates_root: Path, **_limits: int) -> Runtime:
    from byoc_agent.runtimes.memory import InMemoryRuntime

    return InMemoryRuntime()


_FACTORIES: dict[str, tuple[Callable[..., Runtime], str | None]] = {
    "gvisor": (_gvisor, "runsc"),
    "memory": (_memory, None),
}


def available() -> list[str]:
    """Runtime names whose binaries are present on this host."""
    return [n for n, (_, binary) in _FACTORIES.items() if binary is None or shutil.which(binary)]


def build_runtime(name: str, *, state_dir: Path, templates_root: Path, **limits: int) -> Runtime:
    """The runtime ``name``; ``limits`` are per-sandbox limits a runtime may apply."""
    try:
        factory, binary = _FACTORIES[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown runtime {name!r}; choose one of {', '.join(sorted(_FACTORIES))}"
        ) from None
    if binary is not None and shutil.which(binary) is None:
        raise InvalidArgumentError(f"runtime {name!r} needs {binary!r} on PATH")
    return factory(state_dir, templates_root, **limits)
