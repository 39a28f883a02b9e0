"""Sandbox runtimes, registered by name. Only runtimes whose binaries exist are offered."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.runtimes.base import Runtime


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Per-runtime settings beyond the state and templates directories.

    ``disk_mb`` and ``pids_max`` are gVisor's per-sandbox host limits (0: none; see
    GVisorRuntime); ``microvm_cache`` and ``microvm_accel`` are the QEMU runtime's. A
    sandbox's egress allow-list comes with its spec (the agent checks it against its
    ceiling, ``byoc_agent/egress.py``), not from here.
    """

    microvm_cache: Path | None = None
    microvm_accel: str = "auto"
    disk_mb: int | None = None
    pids_max: int | None = None
    # Firecracker's guest kernel: an uncompressed vmlinux (or a bzImage to extract it from).
    firecracker_kernel: Path | None = None


def _gvisor(state_dir: Path, templates_root: Path, options: RuntimeOptions) -> Runtime:
    from byoc_agent.runtimes.gvisor import DEFAULT_DISK_MB, DEFAULT_PIDS_MAX, GVisorRuntime

    return GVisorRuntime(
        state_dir=state_dir / "gvisor",
        templates_root=templates_root,
        disk_mb=DEFAULT_DISK_MB if options.disk_mb is None else options.disk_mb,
        pids_max=DEFAULT_PIDS_MAX if options.pids_max is None else options.pids_max,
    )


def _qemu_microvm(state_dir: Path, templates_root: Path, options: RuntimeOptions) -> Runtime:
    from byoc_agent.runtimes.qemu_microvm import QemuMicrovmRuntime

    return QemuMicrovmRuntime(
        state_dir=state_dir / "microvm",
        templates_root=templates_root,
        cache_dir=options.microvm_cache,
        accel=options.microvm_accel,
    )


def _firecracker(state_dir: Path, templates_root: Path, options: RuntimeOptions) -> Runtime:
    from byoc_agent.runtimes.firecracker import FirecrackerRuntime

    return FirecrackerRuntime(
        state_dir=state_dir / "firecracker",
        templates_root=templates_root,
        kernel=options.firecracker_kernel,
        cache_dir=options.microvm_cache,
    )


def _memory(state_dir: Path, templates_root: Path, options: RuntimeOptions) -> Runtime:
    from byoc_agent.runtimes.memory import InMemoryRuntime

    return InMemoryRuntime()


_FACTORIES: dict[str, tuple[Callable[[Path, Path, RuntimeOptions], Runtime], str | None]] = {
    "gvisor": (_gvisor, "runsc"),
    "qemu-microvm": (_qemu_microvm, "qemu-system-x86_64"),
    "firecracker": (_firecracker, "firecracker"),
    "memory": (_memory, None),
}


def available() -> list[str]:
    """Runtime names whose binaries are present on this host."""
    return [n for n, (_, binary) in _FACTORIES.items() if binary is None or shutil.which(binary)]


def build_runtime(
    name: str,
    *,
    state_dir: Path,
    templates_root: Path,
    options: RuntimeOptions | None = None,
) -> Runtime:
    """One runtime, or several (``gvisor,qemu-microvm``) behind a RuntimeSet."""
    opts = options or RuntimeOptions()
    names = [n.strip() for n in name.split(",") if n.strip()]
    if len(names) > 1:
        from byoc_agent.runtimes.multi import RuntimeSet

        return RuntimeSet([_build_one(n, state_dir, templates_root, opts) for n in names])
    return _build_one(name.strip(), state_dir, templates_root, opts)


def _build_one(name: str, state_dir: Path, templates_root: Path, opts: RuntimeOptions) -> Runtime:
    try:
        factory, binary = _FACTORIES[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown runtime {name!r}; choose one of {', '.join(sorted(_FACTORIES))}"
        ) from None
    if binary is not None and shutil.which(binary) is None:
        raise InvalidArgumentError(f"runtime {name!r} needs {binary!r} on PATH")
    return factory(state_dir, templates_root, opts)
