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

from byoc_agent.hostd.client import RemoteRuntime
from byoc_agent.hostd.testing import LocalHostd
from byoc_agent.runtimes.base import Runtime, SandboxHandle, SandboxSpec
from byoc_agent.runtimes.firecracker import FirecrackerRuntime
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
    # Called after each test: stop whatever ``make`` started (processes), leave nothing.
    cleanup: Callable[[], None] = lambda: None


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

# Firecracker's guest kernel for the real-binary run: an uncompressed vmlinux with virtio-mmio,
# virtio-blk, vsock and ext4 built in (see docs/microvm-firecracker.md).
FIRECRACKER_KERNEL = Path(
    os.environ.get("CORRAL_TEST_FIRECRACKER_KERNEL", REPO / ".corral" / "firecracker" / "vmlinux")
)
_KVM_GET_API_VERSION = 0xAE00


def _kvm_problem() -> str | None:
    """Why KVM cannot run Firecracker guests here, or None."""
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as e:
        return f"/dev/kvm cannot be opened ({e.strerror})"
    try:
        if fcntl.ioctl(fd, _KVM_GET_API_VERSION) != 12:
            return "/dev/kvm does not speak KVM API version 12"
    except OSError as e:
        return f"/dev/kvm does not answer KVM_GET_API_VERSION ({e.strerror})"
    finally:
        os.close(fd)
    try:
        modules = Path("/proc/modules").read_text()
    except OSError:
        modules = ""
    if any(line.startswith("kvm_pvm ") for line in modules.splitlines()):
        return "KVM here is the nested PVM hypervisor (kvm_pvm), on which stock guest kernels hang"
    return None


def _firecracker_unavailable() -> str | None:
    for binary in ("firecracker", "jailer"):
        if shutil.which(binary) is None:
            return (
                f"no `{binary}` on PATH (Firecracker's release tarball; it is not packaged for "
                "Debian, PyPI or npm) — the runtime is checked against the API stand-in instead"
            )
    if os.geteuid() != 0:
        return "the jailer needs root (chroot, cgroups, mknod, setuid)"
    problem = _kvm_problem()
    if problem is not None:
        return f"no working KVM: {problem}"
    if not FIRECRACKER_KERNEL.is_file():
        return (
            f"no guest kernel at {FIRECRACKER_KERNEL} (set CORRAL_TEST_FIRECRACKER_KERNEL to a "
            "vmlinux, e.g. one of Firecracker's CI kernels)"
        )
    for binary, package in (
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debootstrap", "debootstrap"),
    ):
        if shutil.which(binary) is None:
            return f"{binary} is not on PATH (Debian package {package})"
    return None


def _firecracker_make(state_dir: Path, templates_root: Path) -> Runtime:
    return FirecrackerRuntime(
        state_dir, templates_root, kernel=FIRECRACKER_KERNEL, cache_dir=MICROVM_CACHE
    )


def _firecracker_leftovers(runtime: Runtime, sandbox_id: str) -> list[str]:
    assert isinstance(runtime, FirecrackerRuntime)
    jail = runtime.jail(sandbox_id)
    found = [
        f"{what} {d}"
        for what, d in (("state dir", runtime.sandbox_dir(sandbox_id)), ("jail", jail.dir))
        if d.exists()
    ]
    for cgroup in (Path("/sys/fs/cgroup") / jail.exec_name / jail.id,):
        if cgroup.exists():
            found.append(f"cgroup {cgroup}")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if jail.id.encode() in cmdline:
                found.append(f"process {proc.name}")
    return found


FIRECRACKER = RuntimeFactory(
    name="firecracker",
    mark=pytest.mark.firecracker,  # not a must-run marker: it needs a real KVM host
    unavailable=_firecracker_unavailable,
    make=_firecracker_make,
    leftovers=_firecracker_leftovers,
)

class HostdGVisor:
    """gVisor behind a real hostd process, reached over TLS with the pinned certificate and
    the bearer secret: the Runtime the manager agent uses for a host's sandboxes.

    ``make`` starts one hostd per state dir on a free loopback port; called again for the
    same state dir (the suite's "agent restart"), it restarts that hostd on the same port,
    so the restart of hostd itself is what ``recover`` is checked against.
    """

    def __init__(self) -> None:
        self._running: dict[Path, LocalHostd] = {}

    def make(self, state_dir: Path, templates_root: Path) -> Runtime:
        hostd = self._running.get(state_dir)
        if hostd is None:
            hostd = LocalHostd(state_dir, templates_dir=templates_root)
            self._running[state_dir] = hostd
            hostd.start()
        else:
            hostd.restart()
        # Named after the host's one runtime, as its handles are (isolation_of works).
        return hostd.client(name="gvisor")

    def _local(self, hostd: LocalHostd) -> GVisorRuntime:
        """The host's gVisor runtime, seen from this process (same machine, same dirs)."""
        return GVisorRuntime(hostd.config.runtime_dir / "gvisor", hostd.config.templates_dir)

    def leftovers(self, runtime: Runtime, sandbox_id: str) -> list[str]:
        assert isinstance(runtime, RemoteRuntime)
        hostd = next(h for h in self._running.values() if h.base_url == runtime.base_url)
        return _gvisor_leftovers(self._local(hostd), sandbox_id)

    def cleanup(self) -> None:
        """Stop every hostd started, then destroy any sandbox a failed test left behind."""
        running, self._running = list(self._running.values()), {}
        for hostd in running:
            hostd.stop()
            hostd.destroy_leftovers()


_HOSTD = HostdGVisor()
HOSTD_GVISOR = RuntimeFactory(
    name="hostd-gvisor",
    mark=pytest.mark.gvisor,
    unavailable=_gvisor_unavailable,
    make=_HOSTD.make,
    leftovers=_HOSTD.leftovers,
    cleanup=_HOSTD.cleanup,
)

RUNTIMES: list[RuntimeFactory] = [GVISOR, MICROVM, FIRECRACKER, HOSTD_GVISOR]


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
