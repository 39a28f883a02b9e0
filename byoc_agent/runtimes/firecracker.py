"""The Firecracker runtime: a microVM per sandbox on KVM hosts, launched through the jailer.

Each sandbox is one Firecracker process started by Firecracker's ``jailer``, which copies the
binary into a chroot of its own, puts it in a cgroup with the sandbox's CPU and memory limits,
drops to an unprivileged uid/gid and execs Firecracker under its default seccomp filter. The
runtime lays the chroot out beforehand::

    <chroot_base>/firecracker/<jail id>/root/
        vmlinux         the guest kernel (uncompressed ELF), hard-linked from the cache
        initrd.cpio     Corral's initramfs (guest/image.py), hard-linked
        rootfs.ext4     this sandbox's copy-on-write copy of the template's ext4 image
        api.sock        Firecracker's REST API (created by Firecracker)
        v.sock          the guest's vsock, proxied to a unix socket (created by Firecracker)
        paused/         a paused sandbox's saved VM (vm.state + memory.bin)

It then configures the VM over the API socket (boot source, root drive, machine config,
vsock; a network interface only when egress is asked) and starts it. The guest daemon
(``guest/guestd.py``, told ``corral.channel=vsock:<port>`` on the kernel command line) is
reached through Firecracker's vsock proxy: connect to ``v.sock``, write ``CONNECT <port>``.

Paths given to Firecracker are inside its chroot, so a snapshot made in one jail loads
unchanged in another: a restored VM finds its drive at ``/rootfs.ext4`` and recreates its
vsock at ``/v.sock`` in its own chroot.

The guest kernel must be an uncompressed ``vmlinux`` with virtio-mmio, virtio-blk, vsock and
ext4 built in (Firecracker's CI kernels are); a bzImage is accepted and its vmlinux extracted
(:func:`extract_vmlinux`). See docs/microvm-firecracker.md.
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog

from byoc_agent.protocol.errors import (
    CorralError,
    InvalidArgumentError,
    SandboxNotRunningError,
)
from byoc_agent.runtimes import processes
from byoc_agent.runtimes.base import (
    SNAPSHOT_META,
    Liveness,
    SandboxHandle,
    SandboxSpec,
    read_snapshot_meta,
)
from byoc_agent.runtimes.guest.channel import ChannelClosed, GuestChannel
from byoc_agent.runtimes.guest.image import ensure_disk, ensure_initrd
from byoc_agent.runtimes.guest.ops import GuestOps
from byoc_agent.runtimes.inputs import check_sandbox_id, validate_env

log = structlog.get_logger(__name__)

_MIN_MEMORY_MB = 128
_MAX_VCPUS = 32  # Firecracker's limit
VSOCK_PORT = 1024  # the guest daemon's vsock port
GUEST_CID = 3  # every VM has its own vsock device, so all can use the first free CID
MEMORY_OVERHEAD_MB = 64  # the VMM's own memory on top of the guest's, in the cgroup limit
CPU_PERIOD_US = 100_000
_API_TIMEOUT_S = 10.0
_MAX_UDS = 107  # sun_path holds 108 bytes with the terminating NUL

# Names inside the chroot (Firecracker sees them as /<name>).
KERNEL = "vmlinux"
INITRD = "initrd.cpio"
ROOTFS = "rootfs.ext4"
API_SOCK = "api.sock"
VSOCK = "v.sock"
PAUSED = "paused"
STATE = "vm.state"
MEMORY = "memory.bin"


class FirecrackerError(CorralError):
    """Firecracker refused a request; the message carries its ``fault_message``."""


def jail_id(sandbox_id: str) -> str:
    """The jailer's ``--id`` for a sandbox: letters, digits and hyphens, at most 64."""
    readable = re.sub(r"[^A-Za-z0-9-]", "-", sandbox_id)[:40].strip("-") or "sandbox"
    return f"{readable}-{hashlib.sha256(sandbox_id.encode()).hexdigest()[:12]}"


# ---- the guest kernel ------------------------------------------------------------------

_ELF_MAGIC = b"\x7fELF"
_COMPRESSED: tuple[tuple[bytes, str], ...] = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b\x08", "gzip"),
    (b"BZh", "bzip2"),
)


def extract_vmlinux(image: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage (what the kernel's ``extract-vmlinux``
    does): find each compressed stream's magic, decompress, keep the first ELF result.

    Raises InvalidArgumentError when the image holds no kernel these codecs can unpack
    (zstd and lz4 kernels: use ``scripts/extract-vmlinux`` or a Firecracker CI kernel).
    """
    if image.startswith(_ELF_MAGIC):
        return image
    for magic, codec in _COMPRESSED:
        at = image.find(magic)
        while at >= 0:
            with contextlib.suppress(OSError, EOFError, lzma.LZMAError, zlib.error, ValueError):
                data = _decompress(codec, image[at:])
                if data.startswith(_ELF_MAGIC):
                    return data
            at = image.find(magic, at + 1)
    raise InvalidArgumentError(
        "the guest kernel is neither an ELF vmlinux nor a bzImage with an xz, gzip or bzip2 "
        "payload; Firecracker needs an uncompressed vmlinux"
    )


def _decompress(codec: str, data: bytes) -> bytes:
    if codec == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if codec == "gzip":  # one gzip member; what follows it is not the kernel's
        return zlib.decompressobj(wbits=31).decompress(data)
    return bz2.BZ2Decompressor().decompress(data)


def ensure_kernel_dir(cache: Path, kernel: Path) -> Path:
    """A kernel directory in the layout ``guest/image.py`` builds initramfs from: the vmlinux
    (as ``vmlinuz``, the name that module expects) and no modules (all built in)."""
    if not kernel.is_file():
        raise InvalidArgumentError(f"guest kernel {kernel} is not a file")
    raw = kernel.read_bytes()
    kdir = cache / "firecracker" / f"kernel-{hashlib.sha256(raw).hexdigest()[:16]}"
    if (kdir / "modules.order").exists():
        return kdir
    vmlinux = extract_vmlinux(raw)
    tmp = kdir.with_name(kdir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "modules").mkdir(parents=True)
    (tmp / "vmlinuz").write_bytes(vmlinux)
    (tmp / "modules.order").write_text("")
    try:
        tmp.rename(kdir)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return kdir


# ---- the API client ------------------------------------------------------------------


class FirecrackerApi:
    """Firecracker's REST API on its unix socket. Every error becomes a FirecrackerError
    carrying Firecracker's ``fault_message``."""

    def __init__(
        self, socket_path: Path, *, sandbox_id: str = "", timeout_s: float = _API_TIMEOUT_S
    ):
        if len(str(socket_path)) > _MAX_UDS:
            raise InvalidArgumentError(
                f"Firecracker's API socket path is {len(str(socket_path))} bytes, over the "
                f"{_MAX_UDS}-byte limit of unix sockets; use a shorter chroot base dir"
            )
        self.socket_path = socket_path
        self._sandbox_id = sandbox_id
        self._timeout_s = timeout_s

    async def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://localhost", timeout=self._timeout_s
            ) as client:
                response = await client.request(
                    method, path, json=dict(body) if body is not None else None
                )
        except httpx.HTTPError as e:
            raise FirecrackerError(
                f"Firecracker API {method} {path} failed: {e!r}", sandbox_id=self._sandbox_id
            ) from None
        if response.status_code >= 300:
            try:
                fault = response.json().get("fault_message") or response.text
            except (ValueError, AttributeError):
                fault = response.text
            raise FirecrackerError(
                f"Firecracker refused {method} {path} ({response.status_code}): {fault}",
                sandbox_id=self._sandbox_id,
            )
        return response.json() if response.content else None

    async def put(self, path: str, body: Mapping[str, Any]) -> None:
        await self.request("PUT", path, body)

    async def patch(self, path: str, body: Mapping[str, Any]) -> None:
        await self.request("PATCH", path, body)


# ---- the jail ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Jail:
    """Where one sandbox's Firecracker lives: its chroot, as the jailer lays it out."""

    base: Path
    exec_name: str
    id: str

    @property
    def dir(self) -> Path:
        return self.base / self.exec_name / self.id

    @property
    def root(self) -> Path:
        return self.dir / "root"

    def inside(self, name: str) -> str:
        """A path as the jailed Firecracker sees it."""
        return "/" + name


@dataclass(frozen=True, slots=True)
class Limits:
    cpu: int
    memory_mb: int


def cgroup_args(version: str, limits: Limits) -> list[str]:
    """The jailer's ``--cgroup`` options for a VM's CPU and memory."""
    quota = limits.cpu * CPU_PERIOD_US
    memory = (limits.memory_mb + MEMORY_OVERHEAD_MB) << 20
    if version == "2":
        pairs = [f"cpu.max={quota} {CPU_PERIOD_US}", f"memory.max={memory}"]
    else:
        pairs = [
            f"cpu.cfs_period_us={CPU_PERIOD_US}",
            f"cpu.cfs_quota_us={quota}",
            f"memory.limit_in_bytes={memory}",
        ]
    args = ["--cgroup-version", version]
    for pair in pairs:
        args += ["--cgroup", pair]
    return args


def jailer_argv(
    *,
    jailer: str,
    firecracker: str,
    jail: Jail,
    uid: int,
    gid: int,
    cgroup_version: str,
    limits: Limits,
) -> list[str]:
    """The jailer's command line; Firecracker's own arguments follow ``--``."""
    return [
        jailer,
        "--id", jail.id,
        "--exec-file", firecracker,
        "--uid", str(uid),
        "--gid", str(gid),
        "--chroot-base-dir", str(jail.base),
        *cgroup_args(cgroup_version, limits),
        "--",
        "--api-sock", jail.inside(API_SOCK),
    ]  # fmt: skip


def detect_cgroup_version() -> str:
    return "2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "1"


@dataclass(frozen=True, slots=True)
class Network:
    """An egress interface: a tap device on the host (made and filtered by the caller)."""

    tap: str
    guest_mac: str | None = None


# ---- the runtime ---------------------------------------------------------------------


class FirecrackerRuntime(GuestOps):
    """The :class:`~byoc_agent.runtimes.base.Runtime` backed by Firecracker + its jailer."""

    name = "firecracker"

    def __init__(
        self,
        state_dir: Path,
        templates_root: Path,
        *,
        kernel: Path | None = None,
        cache_dir: Path | None = None,
        firecracker: str | None = None,
        jailer: str | None = None,
        chroot_base: Path | None = None,
        uid: int = 64_000,
        gid: int = 64_000,
        cgroup_version: str = "auto",
        network: Network | None = None,
        boot_timeout_s: float = 30.0,
    ) -> None:
        fc = firecracker if firecracker is not None else shutil.which("firecracker")
        jl = jailer if jailer is not None else shutil.which("jailer")
        if fc is None or jl is None:
            raise InvalidArgumentError(
                "the firecracker runtime needs `firecracker` and `jailer` on PATH (from "
                "Firecracker's release tarball)"
            )
        if "firecracker" not in Path(fc).name:
            raise InvalidArgumentError("the jailer only execs a file whose name has 'firecracker'")
        if cgroup_version not in ("auto", "1", "2"):
            raise InvalidArgumentError(
                f"cgroup_version must be auto, 1 or 2, not {cgroup_version!r}"
            )
        self._firecracker = str(Path(fc).resolve())
        self._jailer = jl
        self._state_dir = state_dir.resolve()
        self._sandboxes = self._state_dir / "sandboxes"
        self._templates_root = templates_root
        self._kernel = kernel
        self._cache = (cache_dir or self._state_dir / "images").resolve()
        digest = hashlib.sha256(str(self._state_dir).encode()).hexdigest()[:12]
        self._chroot_base = (chroot_base or Path("/srv/jailer") / f"corral-{digest}").resolve()
        self._uid, self._gid = uid, gid
        self._cgroup_version = (
            detect_cgroup_version() if cgroup_version == "auto" else cgroup_version
        )
        self._network = network
        self._boot_timeout_s = boot_timeout_s
        self._channels: dict[str, GuestChannel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reapers: set[asyncio.Task[int]] = set()

    # ---- paths -------------------------------------------------------------------

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self._sandboxes / sandbox_id

    def jail(self, sandbox_id: str) -> Jail:
        check_sandbox_id(sandbox_id)
        return Jail(self._chroot_base, Path(self._firecracker).name, jail_id(sandbox_id))

    def _pidfile(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "firecracker.pid"

    def _console(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "console.log"

    def _record_path(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "spec.json"

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _api(self, sandbox_id: str) -> FirecrackerApi:
        return FirecrackerApi(self.jail(sandbox_id).root / API_SOCK, sandbox_id=sandbox_id)

    def _pid(self, sandbox_id: str) -> int | None:
        try:
            return int(self._pidfile(sandbox_id).read_text().strip())
        except (OSError, ValueError):
            return None

    def _running(self, sandbox_id: str) -> bool:
        pid = self._pid(sandbox_id)
        return pid is not None and processes.pid_alive(pid, self.jail(sandbox_id).id)

    def _paused(self, sandbox_id: str) -> bool:
        return (self.jail(sandbox_id).root / PAUSED / STATE).exists()

    # ---- create ------------------------------------------------------------------

    @staticmethod
    def _validate(spec: SandboxSpec) -> None:
        if not 1 <= spec.cpu <= _MAX_VCPUS:
            raise InvalidArgumentError(
                f"cpu must be 1-{_MAX_VCPUS} for a Firecracker microVM", sandbox_id=spec.sandbox_id
            )
        if spec.memory_mb < _MIN_MEMORY_MB:
            raise InvalidArgumentError(
                f"memory_mb must be at least {_MIN_MEMORY_MB} for a microVM",
                sandbox_id=spec.sandbox_id,
            )
        validate_env(spec.env)
        if spec.egress:  # refused, not ignored: a sandbox must not silently lose its network
            raise InvalidArgumentError(
                "egress: the firecracker runtime has no per-sandbox allow-list yet; an agent "
                "with the qemu-microvm runtime provides one (docs/microvm.md)",
                sandbox_id=spec.sandbox_id,
            )

    def _boot_files(self, template: str) -> tuple[Path, Path, Path]:
        """(vmlinux, initrd, template disk), built once and cached (blocking)."""
        if self._kernel is None:
            raise InvalidArgumentError(
                "the firecracker runtime needs a guest kernel (an uncompressed vmlinux): set "
                "CORRAL_AGENT_FIRECRACKER_KERNEL; see docs/microvm-firecracker.md"
            )
        self._cache.mkdir(parents=True, exist_ok=True)
        disk = ensure_disk(self._cache, self._templates_root, template)
        kdir = ensure_kernel_dir(self._cache, self._kernel)
        return kdir / "vmlinuz", ensure_initrd(self._cache, kdir), disk

    @staticmethod
    def boot_args(hostname: str) -> str:
        return (
            "console=ttyS0 reboot=k panic=1 pci=off quiet "
            f"corral.hostname={hostname} corral.channel=vsock:{VSOCK_PORT}"
        )

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        """Lay out the jail, start Firecracker through the jailer, configure and boot the VM,
        return once the guest daemon answers over vsock."""
        jail = self.jail(spec.sandbox_id)
        self._validate(spec)
        kernel, initrd, disk = await asyncio.to_thread(self._boot_files, spec.template)
        bound = log.bind(sandbox_id=spec.sandbox_id, tenant_id=spec.tenant_id)
        started = time.monotonic()
        async with self._lock(spec.sandbox_id):
            if self.sandbox_dir(spec.sandbox_id).exists() or jail.dir.exists():
                raise InvalidArgumentError(
                    f"sandbox {spec.sandbox_id} already exists", sandbox_id=spec.sandbox_id
                )
            record: dict[str, Any] = {
                "template": spec.template,
                "cpu": spec.cpu,
                "memory_mb": spec.memory_mb,
                "env": dict(spec.env),
                "tenant_id": spec.tenant_id,
                "jail_id": jail.id,
                "boot_args": self.boot_args(spec.sandbox_id),
            }
            try:
                await asyncio.to_thread(
                    self._prepare, spec.sandbox_id, jail, record, kernel, initrd, disk
                )
                await self._launch(spec.sandbox_id, jail, Limits(spec.cpu, spec.memory_mb))
                await self._configure_and_start(spec.sandbox_id, jail, record)
                await self._connect(spec.sandbox_id)
            except BaseException:
                bound.warning("sandbox_create_failed")
                await asyncio.shield(self._teardown(spec.sandbox_id))
                raise
        bound.info("sandbox_created", ms=round((time.monotonic() - started) * 1000))
        return self._handle(spec.sandbox_id, spec.template)

    def _handle(self, sandbox_id: str, template: str) -> SandboxHandle:
        return SandboxHandle(
            sandbox_id=sandbox_id,
            runtime=self.name,
            created_at=time.time(),
            data={"template": template, "dir": str(self.sandbox_dir(sandbox_id)),
                  "jail": str(self.jail(sandbox_id).dir)},
        )  # fmt: skip

    def _own(self, path: Path) -> None:
        """Hand a file in the jail to the jailed uid (only root can, and only root jails)."""
        if os.geteuid() == 0:
            os.chown(path, self._uid, self._gid)

    def _prepare(
        self,
        sandbox_id: str,
        jail: Jail,
        record: Mapping[str, Any],
        kernel: Path,
        initrd: Path,
        disk: Path,
    ) -> None:
        sdir = self.sandbox_dir(sandbox_id)
        sdir.mkdir(parents=True, mode=0o700)
        self._record_path(sandbox_id).write_text(json.dumps(record))
        jail.root.mkdir(parents=True, mode=0o755)
        for src, name in ((kernel, KERNEL), (initrd, INITRD)):
            _link_or_copy(src, jail.root / name)
        _cow_copy(disk, jail.root / ROOTFS)
        self._own(jail.root / ROOTFS)

    def _clear_jail(self, jail: Jail) -> None:
        """What a previous Firecracker in this jail left that a new one would trip on."""
        for name in (API_SOCK, VSOCK, "dev", Path(self._firecracker).name, "firecracker.pid"):
            path = jail.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self._remove_cgroups(jail)

    def _remove_cgroups(self, jail: Jail) -> None:
        root = Path("/sys/fs/cgroup")
        candidates = [root / jail.exec_name / jail.id]
        for controller in ("cpu", "cpu,cpuacct", "memory"):
            candidates.append(root / controller / jail.exec_name / jail.id)
        for path in candidates:
            with contextlib.suppress(OSError):
                path.rmdir()

    async def _launch(self, sandbox_id: str, jail: Jail, limits: Limits) -> None:
        """Run the jailer (it execs Firecracker in place) detached, stdio to the console log,
        and wait for the API socket."""
        await asyncio.to_thread(self._clear_jail, jail)
        argv = jailer_argv(
            jailer=self._jailer,
            firecracker=self._firecracker,
            jail=jail,
            uid=self._uid,
            gid=self._gid,
            cgroup_version=self._cgroup_version,
            limits=limits,
        )
        out = await asyncio.to_thread(open, self._console(sandbox_id), "ab")
        with out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # not in the agent's process group: outlives it
            )
        await asyncio.to_thread(self._pidfile(sandbox_id).write_text, str(proc.pid))
        reaper = asyncio.create_task(proc.wait())
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        sock = jail.root / API_SOCK
        deadline = time.monotonic() + self._boot_timeout_s
        while not sock.exists():  # Firecracker gives no other signal
            if reaper.done():
                raise CorralError(
                    f"jailer exited with {reaper.result()}: "
                    f"{processes.tail(self._console(sandbox_id)) or '(no output)'}",
                    sandbox_id=sandbox_id,
                )
            if time.monotonic() > deadline:
                raise CorralError(
                    f"Firecracker made no API socket within {self._boot_timeout_s:.0f} s",
                    sandbox_id=sandbox_id,
                )
            await asyncio.sleep(0.01)

    async def _configure_and_start(
        self, sandbox_id: str, jail: Jail, record: Mapping[str, Any]
    ) -> None:
        api = self._api(sandbox_id)
        await api.put(
            "/boot-source",
            {
                "kernel_image_path": jail.inside(KERNEL),
                "initrd_path": jail.inside(INITRD),
                "boot_args": str(record["boot_args"]),
            },
        )
        await api.put(
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "path_on_host": jail.inside(ROOTFS),
                "is_root_device": True,
                "is_read_only": False,
            },
        )
        await api.put(
            "/machine-config",
            {"vcpu_count": int(record["cpu"]), "mem_size_mib": int(record["memory_mb"])},
        )
        if self._network is not None:
            iface: dict[str, Any] = {"iface_id": "eth0", "host_dev_name": self._network.tap}
            if self._network.guest_mac:
                iface["guest_mac"] = self._network.guest_mac
            await api.put("/network-interfaces/eth0", iface)
        await api.put("/vsock", {"guest_cid": GUEST_CID, "uds_path": jail.inside(VSOCK)})
        await api.put("/actions", {"action_type": "InstanceStart"})

    async def _connect(self, sandbox_id: str, timeout_s: float | None = None) -> GuestChannel:
        channel = GuestChannel(self.jail(sandbox_id).root / VSOCK, vsock_port=VSOCK_PORT)
        try:
            await channel.connect(timeout_s or self._boot_timeout_s)
        except ChannelClosed as e:
            await channel.close()
            tail = processes.tail(self._console(sandbox_id))
            raise CorralError(
                f"microVM did not become ready: {e}; console: {tail or '(empty)'}",
                sandbox_id=sandbox_id,
            ) from None
        self._channels[sandbox_id] = channel
        return channel

    # ---- liveness ----------------------------------------------------------------

    async def inspect(self, handle: SandboxHandle) -> Liveness:
        self.jail(handle.sandbox_id)  # validates the id
        if self._running(handle.sandbox_id):
            return Liveness.RUNNING
        if self._paused(handle.sandbox_id):
            return Liveness.PAUSED
        if self.sandbox_dir(handle.sandbox_id).exists():
            return Liveness.STOPPED
        return Liveness.MISSING

    async def _channel(self, handle: SandboxHandle) -> GuestChannel:
        channel = self._channels.get(handle.sandbox_id)
        if channel is not None and channel.alive:
            return channel
        async with self._lock(handle.sandbox_id):
            channel = self._channels.get(handle.sandbox_id)
            if channel is not None and channel.alive:
                return channel
            if not self._running(handle.sandbox_id):
                state = "paused" if self._paused(handle.sandbox_id) else "not running"
                raise SandboxNotRunningError(
                    f"sandbox {handle.sandbox_id} is {state}", sandbox_id=handle.sandbox_id
                )
            # vsock takes many connections; the guest daemon serves the newest one, so an
            # agent that restarted takes over from its dead predecessor.
            try:
                return await self._connect(handle.sandbox_id, 10.0)
            except CorralError as e:
                raise SandboxNotRunningError(
                    f"sandbox {handle.sandbox_id} does not answer: {e}",
                    sandbox_id=handle.sandbox_id,
                ) from None

    def _record(self, sandbox_id: str) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads(self._record_path(sandbox_id).read_text())
        except (OSError, ValueError) as e:
            raise SandboxNotRunningError(
                f"sandbox {sandbox_id} has no record: {e}", sandbox_id=sandbox_id
            ) from None
        return record

    def _spec_env(self, handle: SandboxHandle) -> dict[str, str]:
        saved = self._record(handle.sandbox_id).get("env", {})
        return {str(k): str(v) for k, v in saved.items()}

    # ---- pause, snapshot, restore ------------------------------------------------

    async def _save(self, handle: SandboxHandle, subdir: str) -> None:
        """Sync the guest, pause its vCPUs and write a full snapshot to ``<root>/<subdir>``.
        The VM is left paused."""
        jail = self.jail(handle.sandbox_id)
        await self.sync(handle)
        target = jail.root / subdir

        def mkdir() -> None:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(mode=0o700)
            self._own(target)

        await asyncio.to_thread(mkdir)
        api = self._api(handle.sandbox_id)
        await api.patch("/vm", {"state": "Paused"})
        await api.put(
            "/snapshot/create",
            {
                "snapshot_type": "Full",
                "snapshot_path": jail.inside(f"{subdir}/{STATE}"),
                "mem_file_path": jail.inside(f"{subdir}/{MEMORY}"),
            },
        )

    async def _load(self, sandbox_id: str, jail: Jail, subdir: str) -> None:
        await self._api(sandbox_id).put(
            "/snapshot/load",
            {
                "snapshot_path": jail.inside(f"{subdir}/{STATE}"),
                "mem_backend": {"backend_type": "File",
                                "backend_path": jail.inside(f"{subdir}/{MEMORY}")},
                "resume_vm": True,
            },
        )  # fmt: skip

    async def pause(self, handle: SandboxHandle) -> None:
        await self._channel(handle)  # raises unless running
        started = time.monotonic()
        async with self._lock(handle.sandbox_id):
            try:
                await self._save(handle, PAUSED)
            except BaseException:
                with contextlib.suppress(CorralError):
                    await self._api(handle.sandbox_id).patch("/vm", {"state": "Resumed"})
                await asyncio.to_thread(
                    shutil.rmtree, self.jail(handle.sandbox_id).root / PAUSED, True
                )
                raise
            channel = self._channels.pop(handle.sandbox_id, None)
            if channel is not None:
                await channel.close()
            await self._kill(handle.sandbox_id)
        log.info("sandbox_paused", sandbox_id=handle.sandbox_id,
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip

    async def resume(self, handle: SandboxHandle) -> None:
        jail = self.jail(handle.sandbox_id)
        started = time.monotonic()
        async with self._lock(handle.sandbox_id):
            if self._running(handle.sandbox_id):
                return
            if not self._paused(handle.sandbox_id):
                raise SandboxNotRunningError(
                    f"sandbox {handle.sandbox_id} is not paused", sandbox_id=handle.sandbox_id
                )
            record = self._record(handle.sandbox_id)
            limits = Limits(int(record["cpu"]), int(record["memory_mb"]))
            await self._launch(handle.sandbox_id, jail, limits)
            try:
                await self._load(handle.sandbox_id, jail, PAUSED)
                await self._connect(handle.sandbox_id)
            except BaseException:
                await self._kill(handle.sandbox_id)  # stays paused: the saved VM is kept
                raise
            await asyncio.to_thread(shutil.rmtree, jail.root / PAUSED, True)
        log.info("sandbox_resumed", sandbox_id=handle.sandbox_id,
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip

    async def snapshot(self, handle: SandboxHandle, dest: Path) -> None:
        jail = self.jail(handle.sandbox_id)
        await self._channel(handle)
        async with self._lock(handle.sandbox_id):
            if await asyncio.to_thread(dest.exists):
                raise InvalidArgumentError(f"snapshot {dest.name} already exists")
            work = jail.root / "snapshot"
            try:
                await self._save(handle, "snapshot")
                # Paused with its disk flushed: the root disk copies consistently.
                await asyncio.to_thread(dest.mkdir, parents=True)
                await asyncio.to_thread(_cow_copy, jail.root / ROOTFS, dest / ROOTFS)
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, dest, True)
                raise
            finally:
                with contextlib.suppress(CorralError):
                    await self._api(handle.sandbox_id).patch("/vm", {"state": "Resumed"})
            try:
                for name in (STATE, MEMORY):
                    await asyncio.to_thread(shutil.move, work / name, dest / name)
                record = {**self._record(handle.sandbox_id), "runtime": self.name}
                await asyncio.to_thread((dest / SNAPSHOT_META).write_text, json.dumps(record))
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, dest, True)
                raise
            finally:
                await asyncio.to_thread(shutil.rmtree, work, True)

    async def restore(self, spec: SandboxSpec, source: Path) -> SandboxHandle:
        jail = self.jail(spec.sandbox_id)
        validate_env(spec.env)
        meta = read_snapshot_meta(source, self.name)
        started = time.monotonic()
        async with self._lock(spec.sandbox_id):
            if self.sandbox_dir(spec.sandbox_id).exists() or jail.dir.exists():
                raise InvalidArgumentError(
                    f"sandbox {spec.sandbox_id} already exists", sandbox_id=spec.sandbox_id
                )
            record = {**meta, "env": {**meta.get("env", {}), **spec.env},
                      "tenant_id": spec.tenant_id, "jail_id": jail.id}  # fmt: skip
            record.pop("runtime", None)
            try:
                limits = Limits(int(record["cpu"]), int(record["memory_mb"]))
                await asyncio.to_thread(
                    self._prepare_restore, spec.sandbox_id, jail, record, source
                )
                await self._launch(spec.sandbox_id, jail, limits)
                await self._load(spec.sandbox_id, jail, "restore")
                channel = await self._connect(spec.sandbox_id)
                await channel.call(
                    {"op": "identity", "hostname": spec.sandbox_id,
                     "machine_id": uuid.uuid4().hex},
                    os.urandom(64),
                )  # fmt: skip
                await asyncio.to_thread(shutil.rmtree, jail.root / "restore", True)
            except BaseException:
                await asyncio.shield(self._teardown(spec.sandbox_id))
                raise
        log.info("sandbox_restored", sandbox_id=spec.sandbox_id, snapshot=source.name,
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip
        return self._handle(spec.sandbox_id, str(record["template"]))

    def _prepare_restore(
        self, sandbox_id: str, jail: Jail, record: Mapping[str, Any], source: Path
    ) -> None:
        for name in (STATE, MEMORY, ROOTFS):
            if not (source / name).is_file():
                raise InvalidArgumentError(f"snapshot {source.name} has no {name}")
        sdir = self.sandbox_dir(sandbox_id)
        sdir.mkdir(parents=True, mode=0o700)
        self._record_path(sandbox_id).write_text(json.dumps(record))
        (jail.root / "restore").mkdir(parents=True, mode=0o755)
        _cow_copy(source / ROOTFS, jail.root / ROOTFS)
        self._own(jail.root / ROOTFS)
        for name in (STATE, MEMORY):
            _link_or_copy(source / name, jail.root / "restore" / name)
            self._own(jail.root / "restore" / name)

    # ---- teardown ----------------------------------------------------------------

    async def destroy(self, handle: SandboxHandle) -> None:
        self.jail(handle.sandbox_id)
        async with self._lock(handle.sandbox_id):
            await self._teardown(handle.sandbox_id)
        self._locks.pop(handle.sandbox_id, None)

    async def _teardown(self, sandbox_id: str) -> None:
        channel = self._channels.pop(sandbox_id, None)
        if channel is not None:
            await channel.close()
        await self._kill(sandbox_id)
        jail = self.jail(sandbox_id)
        await asyncio.to_thread(self._remove_cgroups, jail)
        await asyncio.to_thread(shutil.rmtree, jail.dir, True)
        await asyncio.to_thread(shutil.rmtree, self.sandbox_dir(sandbox_id), True)

    async def _kill(self, sandbox_id: str) -> None:
        await processes.kill(self._pid(sandbox_id), self.jail(sandbox_id).id)
        self._pidfile(sandbox_id).unlink(missing_ok=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link into the jail (no bytes copied); copy when the jail is on another filesystem."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _cow_copy(src: Path, dst: Path) -> None:
    """A private, writable copy of a disk image: a reflink where the filesystem can (btrfs,
    xfs), else a sparse copy that skips the image's holes."""
    proc = subprocess.run(
        ["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CorralError(f"cannot copy disk image {src.name}: {proc.stderr.strip()}")


__all__: Sequence[str] = (
    "FirecrackerApi",
    "FirecrackerError",
    "FirecrackerRuntime",
    "Jail",
    "Limits",
    "Network",
    "cgroup_args",
    "extract_vmlinux",
    "jail_id",
    "jailer_argv",
)
