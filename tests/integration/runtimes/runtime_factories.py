"""The runtimes the contract suite runs against, and its sandbox bookkeeping.

To run the suite against another runtime, append its :class:`RuntimeFactory` to
``RUNTIMES`` — nothing else changes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from byoc_agent.runtimes.base import Runtime, SandboxHandle, SandboxSpec
from byoc_agent.runtimes.gvisor import GVisorRuntime
from byoc_agent.runtimes.qemu_microvm import QemuMicrovmRuntime

REPO = Path(__file__).resolve().parents[3]
TEMPLATES_ROOT = REPO / ".corral" / "templates"  # gitignored; reused while its stamp is current
MICROVM_CACHE = REPO / ".corral" / "microvm"  # guest kernel, initramfs, disk images


@dataclass(frozen=True, slots=True)
class RuntimeFactory:
    """How the contract suite gets, checks and inspects one runtime."""

    name: str
    mark: pytest.MarkDecorator
    # Why this runtime cannot run on this machine, or None when it can.
    unavailable: Callable[[], str | None]
    # (state_dir, templates_root) -> a runtime; called again to simulate an agent restart.
    make: Callable[[Path, Path], Runtime]
    # Host resources a destroyed sandbox still holds (dirs, mounts, cgroups): should be [].
    leftovers: Callable[[Runtime, str], list[str]]


def _gvisor_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "gVisor contract tests need root (runsc run, overlay mounts, cgroups)"
    if shutil.which("runsc") is None:
        return "runsc is not on PATH (Debian package: runsc)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not on PATH (needed to build the base template)"
    return None


def _gvisor_make(state_dir: Path, templates_root: Path) -> Runtime:
    return GVisorRuntime(state_dir, templates_root)


def _gvisor_leftovers(runtime: Runtime, sandbox_id: str) -> list[str]:
    assert isinstance(runtime, GVisorRuntime)
    found: list[str] = []
    sandbox_dir = runtime.sandbox_dir(sandbox_id)
    if sandbox_dir.exists():
        found.append(f"state dir {sandbox_dir}")
    found += [f"cgroup {d}" for d in runtime.cgroup_dirs(sandbox_id) if d.exists()]
    with open("/proc/self/mountinfo") as fh:
        found += [f"mount {line.split()[4]}" for line in fh if str(sandbox_dir) in line]
    return found


GVISOR = RuntimeFactory(
    name="gvisor",
    mark=pytest.mark.gvisor,
    unavailable=_gvisor_unavailable,
    make=_gvisor_make,
    leftovers=_gvisor_leftovers,
)


def _microvm_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "microVM contract tests need root (the guest kernel comes from apt)"
    for binary, package in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debootstrap", "debootstrap"),
    ):
        if shutil.which(binary) is None:
            return f"{binary} is not on PATH (Debian package {package})"
    return None


def _microvm_make(state_dir: Path, templates_root: Path) -> Runtime:
    # Tests pin TCG: the KVM probe is exercised by its own test, not on every sandbox.
    return QemuMicrovmRuntime(state_dir, templates_root, cache_dir=MICROVM_CACHE, accel="tcg")


def _microvm_leftovers(runtime: Runtime, sandbox_id: str) -> list[str]:
    assert isinstance(runtime, QemuMicrovmRuntime)
    found = [
        f"{what} {d}"
        for what, d in (
            ("state dir", runtime.sandbox_dir(sandbox_id)),
            ("socket dir", runtime.socket_dir(sandbox_id)),
        )
        if d.exists()
    ]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(runtime.sandbox_dir(sandbox_id)).encode() in cmdline:
                found.append(f"process {proc.name}")
    return found


MICROVM = RuntimeFactory(
    name="microvm",
    mark=pytest.mark.microvm,
    unavailable=_microvm_unavailable,
    make=_microvm_make,
    leftovers=_microvm_leftovers,
)

RUNTIMES: list[RuntimeFactory] = [GVISOR, MICROVM]


class Sandboxes:
    """Creates sandboxes for one test and destroys every one of them afterwards."""

    def __init__(self, runtime: Runtime, test_name: str) -> None:
        self.runtime = runtime
        self._prefix = "".join(c if c.isalnum() else "-" for c in test_name)[:40].strip("-")
        self._handles: list[SandboxHandle] = []

    async def create(
        self,
        *,
        template: str = "base",
        cpu: int = 1,
        memory_mb: int = 256,
        env: dict[str, str] | None = None,
    ) -> SandboxHandle:
        spec = SandboxSpec(
            sandbox_id=f"{self._prefix}-{len(self._handles)}-{os.getpid()}",
            tenant_id="tenant-contract",
            template=template,
            cpu=cpu,
            memory_mb=memory_mb,
            timeout_s=300,
            env=env or {},
        )
        handle = await self.runtime.create(spec)
        self._handles.append(handle)
        return handle

    def adopt(self, handle: SandboxHandle) -> None:
        """Destroy this sandbox too at the end (one made another way, e.g. restored)."""
        self._handles.append(handle)

    async def destroy_all(self) -> None:
        for handle in self._handles:
            await self.runtime.destroy(handle)
