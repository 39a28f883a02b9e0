"""The QEMU ``microvm`` runtime: a kernel of its own for every sandbox.

Each sandbox is one ``qemu-system-x86_64 -M microvm`` process, daemonized so it outlives an
agent restart. It boots Debian's cloud kernel with Corral's initramfs (see ``guest/image.py``),
mounts a copy-on-write qcow2 overlay of the template's ext4 image as its root, and runs the
guest daemon (``guest/guestd.py``) as PID 1, which serves exec and files over one
virtio-serial port that QEMU exposes as a unix socket.

Acceleration: KVM where it really works, else TCG. ``accel="auto"`` boots the initramfs once
under KVM with a short timeout and caches the answer next to the guest images (on nested PVM
hosts KVM is present but hangs a stock kernel, so the presence of ``/dev/kvm`` proves nothing).
Under TCG the kernel needs ``tsc_early_khz`` (the host's TSC rate) or a busy host makes its
clock calibration fail and the boot hang.

Per-sandbox state lives in ``<state_dir>/sandboxes/<id>/`` (the overlay disk, spec, pid file,
console log); the sockets live under a short directory (unix socket paths are limited to 108
bytes).

Network: none by default — no network device is attached and the guest has only ``lo``.
A sandbox with an egress allow-list (``SandboxSpec.egress``; the agent grants it within its
operator's ceiling, see ``byoc_agent/egress.py``) gets one virtio-net device on QEMU's
user-mode network with ``restrict=on``: the guest can reach nothing on the host or beyond
except the listed destinations. Destination *i* appears
in the guest at ``10.0.2.(100+i)`` on its own port; each connection there makes QEMU run a
relay (``busybox nc``) to the real destination. The guest finds the mapping in
``/run/corral/egress`` (one ``guest-address:port destination:port`` line each).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from byoc_agent.protocol.errors import (
    CorralError,
    InvalidArgumentError,
    RetryableError,
    SandboxNotRunningError,
)
from byoc_agent.runtimes import processes
from byoc_agent.runtimes.base import (
    SNAPSHOT_META,
    ExecEvent,
    ExecRequest,
    Liveness,
    SandboxHandle,
    SandboxSpec,
    parse_egress,
    read_snapshot_meta,
)
from byoc_agent.runtimes.guest.channel import ChannelClosed, GuestChannel
from byoc_agent.runtimes.guest.image import BUSYBOX, GuestBoot, ensure_boot
from byoc_agent.runtimes.guest.ops import GuestOps, raise_guest_error, stopped
from byoc_agent.runtimes.inputs import check_sandbox_id
from byoc_agent.runtimes.inputs import validate_env as _validate_env

log = structlog.get_logger(__name__)

_MIN_MEMORY_MB = 128  # the guest kernel and python3 need room of their own
_QMP_TIMEOUT_S = 5.0
_MEMORY = "memory.bin"  # a saved VM (QEMU's migration stream) in a snapshot or pause dir
_DISK = "disk.qcow2"
_MIGRATE_TIMEOUT_S = 120.0
_GUEST_NET_FIRST = 100  # destination i of an allow-list is 10.0.2.(100+i) in the guest


def guest_address(index: int) -> str:
    """Where the guest reaches the ``index``-th destination of its egress allow-list."""
    return f"10.0.2.{_GUEST_NET_FIRST + index}"


def _host_tsc_khz() -> int:
    """The host's TSC rate in kHz (what the guest kernel must assume under TCG)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 2_000_000


@dataclass(frozen=True, slots=True)
class _Paths:
    dir: Path
    sock_dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "root.qcow2"

    @property
    def spec(self) -> Path:
        return self.dir / "spec.json"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def paused(self) -> Path:
        """Where a paused sandbox's memory waits (its disk stays in place)."""
        return self.dir / "paused"

    @property
    def guest_sock(self) -> Path:
        return self.sock_dir / "guest.sock"

    @property
    def qmp_sock(self) -> Path:
        return self.sock_dir / "qmp.sock"


class QemuMicrovmRuntime(GuestOps):
    """The :class:`~byoc_agent.runtimes.base.Runtime` backed by QEMU's ``microvm`` machine."""

    name = "qemu-microvm"

    def __init__(
        self,
        state_dir: Path,
        templates_root: Path,
        *,
        cache_dir: Path | None = None,
        qemu: str | None = None,
        accel: str = "auto",
        boot_timeout_s: float = 90.0,
        socket_root: Path | None = None,
    ) -> None:
        found = qemu if qemu is not None else shutil.which("qemu-system-x86_64")
        if found is None:
            raise InvalidArgumentError(
                "qemu-system-x86_64 not found on PATH; install the Debian package qemu-system-x86"
            )
        if accel not in ("auto", "kvm", "tcg"):
            raise InvalidArgumentError(f"accel must be auto, kvm or tcg, not {accel!r}")
        self._qemu = found
        self._state_dir = state_dir.resolve()
        self._sandboxes = self._state_dir / "sandboxes"
        self._templates_root = templates_root
        self._cache = (cache_dir or self._state_dir / "images").resolve()
        self._accel_setting = accel
        self._accel: str | None = None if accel == "auto" else accel
        self._boot_timeout_s = boot_timeout_s
        digest = hashlib.sha256(str(self._state_dir).encode()).hexdigest()[:12]
        self._socket_root = socket_root or Path("/run/corral-microvm") / digest
        self._channels: dict[str, GuestChannel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Commands from exec() still running, per sandbox: a pause waits for none of them.
        self._commands: collections.Counter[str] = collections.Counter()

    # ---- helpers -----------------------------------------------------------------

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self._sandboxes / sandbox_id

    def socket_dir(self, sandbox_id: str) -> Path:
        return self._socket_root / hashlib.sha256(sandbox_id.encode()).hexdigest()[:16]

    def _paths(self, sandbox_id: str) -> _Paths:
        check_sandbox_id(sandbox_id)
        return _Paths(self.sandbox_dir(sandbox_id), self.socket_dir(sandbox_id))

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    @staticmethod
    def _validate(spec: SandboxSpec) -> None:
        if spec.cpu < 1:
            raise InvalidArgumentError("cpu must be at least 1", sandbox_id=spec.sandbox_id)
        if spec.memory_mb < _MIN_MEMORY_MB:
            raise InvalidArgumentError(
                f"memory_mb must be at least {_MIN_MEMORY_MB} for a microVM",
                sandbox_id=spec.sandbox_id,
            )
        _validate_env(spec.env)
        parse_egress(spec.egress)

    async def accel(self) -> str:
        """``kvm`` if a guest really boots under KVM here, else ``tcg`` (probed once, cached)."""
        if self._accel is None:
            self._accel = await asyncio.to_thread(self._probe_accel)
        return self._accel

    def _probe_accel(self) -> str:
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "tcg"
        boot = ensure_boot(self._cache, self._templates_root, "base")
        key = hashlib.sha256(f"{boot.kernel.resolve()}:{os.uname().release}".encode()).hexdigest()[
            :16
        ]
        cached = self._cache / f"accel-{key}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(json.loads(cached.read_text())["accel"])
        # A hung KVM boot (nested PVM) must be killed after a short wait, not awaited.
        proc = subprocess.Popen(
            [
                self._qemu,
                *self._machine_args("kvm", 1, 128),
                "-kernel",
                str(boot.kernel),
                "-initrd",
                str(boot.initrd),
                "-serial",
                "stdio",
                "-append",
                self._cmdline("kvm", "probe") + " corral.probe=1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        accel = "kvm" if b"corral-probe-ok" in out else "tcg"
        cached.write_text(json.dumps({"accel": accel, "probed_at": time.time()}))
        log.info("microvm_accel_probed", accel=accel)
        return accel

    @staticmethod
    def _machine_args(accel: str, cpu: int, memory_mb: int) -> list[str]:
        return [
            "-M",
            "microvm,x-option-roms=off,pit=on,pic=on,rtc=on",
            "-accel",
            accel,
            "-cpu",
            "host" if accel == "kvm" else "qemu64",
            "-m",
            str(memory_mb),
            "-smp",
            str(cpu),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]

    @staticmethod
    def _cmdline(accel: str, hostname: str, egress: Iterable[str] = ()) -> str:
        parts = ["console=ttyS0", "quiet", "panic=-1", "reboot=t", f"corral.hostname={hostname}"]
        mapping = [f"{guest_address(i)}:{r.port}={r}" for i, r in enumerate(parse_egress(egress))]
        if mapping:
            parts += ["corral.net=1", "corral.egress=" + ",".join(mapping)]
        if accel == "tcg":
            parts += [f"tsc_early_khz={_host_tsc_khz()}", "tsc=reliable"]
        return " ".join(parts)

    def _qemu_argv(
        self, paths: _Paths, record: Mapping[str, Any], incoming: Path | None = None
    ) -> list[str]:
        """QEMU's command line from a sandbox's record (the same for a restore as for a boot)."""
        argv = [
            self._qemu,
            *self._machine_args(str(record["accel"]), int(record["cpu"]), int(record["memory_mb"])),
            "-name", f"corral-{paths.dir.name}",
            "-kernel", str(record["kernel"]),
            "-initrd", str(record["initrd"]),
            "-append", str(record["cmdline"]),
            "-serial", f"file:{paths.console}",
            "-drive", f"id=root,file={paths.disk},format=qcow2,if=none,cache=unsafe",
            "-device", "virtio-blk-device,drive=root",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,path={paths.guest_sock},server=on,wait=off,id=guest",
            "-device", "virtserialport,chardev=guest,name=corral",
            "-qmp", f"unix:{paths.qmp_sock},server=on,wait=off",
            "-pidfile", str(paths.pidfile),
            "-daemonize",
        ]  # fmt: skip
        argv += self._network_args(record.get("egress") or [])
        if incoming is not None:
            argv += ["-incoming", f"exec:cat {shlex.quote(str(incoming))}"]
        return argv

    @staticmethod
    def _network_args(egress: Iterable[str]) -> list[str]:
        """A restricted user-mode network with one forward per allowed destination, or none.

        A forward runs a relay per connection (``-cmd:``) rather than naming a socket
        chardev: a chardev connects once when QEMU starts (QEMU fails to start while the
        destination is down) and carries a single connection.
        """
        rules = parse_egress(egress)
        if not rules:
            return []
        netdev = "user,id=net0,restrict=on,ipv6=off,net=10.0.2.0/24"
        for i, rule in enumerate(rules):
            netdev += (
                f",guestfwd=tcp:{guest_address(i)}:{rule.port}"
                f"-cmd:{BUSYBOX} nc {rule.host} {rule.port}"
            )
        return ["-netdev", netdev, "-device", "virtio-net-device,netdev=net0"]

    def _pid(self, paths: _Paths) -> int | None:
        try:
            return int(paths.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _running(self, paths: _Paths) -> bool:
        pid = self._pid(paths)
        return pid is not None and processes.pid_alive(pid, str(paths.dir))

    # ---- lifecycle ---------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        """Overlay the template disk, start QEMU, return once the guest daemon answers."""
        paths = self._paths(spec.sandbox_id)
        self._validate(spec)
        boot = await asyncio.to_thread(
            ensure_boot, self._cache, self._templates_root, spec.template
        )
        accel = await self.accel()
        bound = log.bind(sandbox_id=spec.sandbox_id, tenant_id=spec.tenant_id, accel=accel)
        started = time.monotonic()
        async with self._lock(spec.sandbox_id):
            if paths.dir.exists():
                raise InvalidArgumentError(
                    f"sandbox {spec.sandbox_id} already exists", sandbox_id=spec.sandbox_id
                )
            try:
                record = await asyncio.to_thread(self._prepare, spec, paths, boot, accel)
                await self._launch(paths, record)
                channel = GuestChannel(paths.guest_sock)
                try:
                    await channel.connect(self._boot_timeout_s)
                except ChannelClosed as e:
                    await channel.close()
                    tail = processes.tail(paths.console)
                    raise CorralError(
                        f"microVM did not become ready: {e}; console: {tail or '(empty)'}",
                        sandbox_id=spec.sandbox_id,
                    ) from None
                self._channels[spec.sandbox_id] = channel
            except BaseException:
                bound.warning("sandbox_create_failed")
                await asyncio.shield(self._teardown(spec.sandbox_id, paths))
                raise
        bound.info("sandbox_created", ms=round((time.monotonic() - started) * 1000))
        return SandboxHandle(
            sandbox_id=spec.sandbox_id,
            runtime=self.name,
            created_at=time.time(),
            data={"template": spec.template, "dir": str(paths.dir), "accel": accel},
        )

    def _prepare(
        self, spec: SandboxSpec, paths: _Paths, boot: GuestBoot, accel: str
    ) -> dict[str, Any]:
        paths.dir.mkdir(parents=True, mode=0o700)
        egress = [str(rule) for rule in parse_egress(spec.egress)]
        record: dict[str, Any] = {
            "template": spec.template,
            "cpu": spec.cpu,
            "memory_mb": spec.memory_mb,
            "env": dict(spec.env),
            "tenant_id": spec.tenant_id,
            "accel": accel,
            "kernel": str(boot.kernel),
            "initrd": str(boot.initrd),
            "base_disk": str(boot.disk),
            "cmdline": self._cmdline(accel, spec.sandbox_id, egress),
            "egress": egress,
        }
        paths.spec.write_text(json.dumps(record))
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(boot.disk),
             str(paths.disk)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return record

    async def _launch(
        self, paths: _Paths, record: Mapping[str, Any], incoming: Path | None = None
    ) -> None:
        def fresh_sockets() -> None:
            paths.sock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            for stale in paths.sock_dir.iterdir():
                stale.unlink(missing_ok=True)

        await asyncio.to_thread(fresh_sockets)
        out = await asyncio.to_thread(open, paths.qemu_log, "ab")
        with out:
            proc = await asyncio.create_subprocess_exec(
                *self._qemu_argv(paths, record, incoming),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
            code = await proc.wait()  # -daemonize: returns once the VM is set up
        if code != 0:
            raise CorralError(
                f"qemu exited with {code}: {processes.tail(paths.qemu_log)}",
                sandbox_id=paths.dir.name,
            )

    async def inspect(self, handle: SandboxHandle) -> Liveness:
        paths = self._paths(handle.sandbox_id)
        if self._running(paths):
            return Liveness.RUNNING
        if (paths.paused / _MEMORY).exists():
            return Liveness.PAUSED
        return Liveness.STOPPED if paths.dir.exists() else Liveness.MISSING

    async def _channel(self, handle: SandboxHandle) -> GuestChannel:
        channel = self._channels.get(handle.sandbox_id)
        if channel is not None and channel.alive:
            return channel
        paths = self._paths(handle.sandbox_id)
        async with self._lock(handle.sandbox_id):
            channel = self._channels.get(handle.sandbox_id)
            if channel is not None and channel.alive:
                return channel
            if not self._running(paths):
                paused = (paths.paused / _MEMORY).exists()
                raise SandboxNotRunningError(
                    f"sandbox {handle.sandbox_id} is {'paused' if paused else 'not running'}",
                    sandbox_id=handle.sandbox_id,
                )
            # Take the port over: QEMU serves one client per socket, and an agent that died
            # (or an older instance of this runtime) may still hold the current one. A fresh
            # listening socket replaces it; the guest sees its old client leave.
            fresh = paths.sock_dir / f"guest-{time.monotonic_ns()}.sock"
            try:
                await qmp(
                    paths.qmp_sock,
                    "chardev-change",
                    {
                        "id": "guest",
                        "backend": {
                            "type": "socket",
                            "data": {
                                "addr": {"type": "unix", "data": {"path": str(fresh)}},
                                "server": True,
                                "wait": False,
                            },
                        },
                    },
                )
            except (OSError, TimeoutError, CorralError) as e:
                raise SandboxNotRunningError(
                    f"sandbox {handle.sandbox_id} cannot be reattached: {e}",
                    sandbox_id=handle.sandbox_id,
                ) from None
            channel = GuestChannel(fresh)
            try:
                await channel.connect(10.0)
            except ChannelClosed as e:
                await channel.close()
                raise SandboxNotRunningError(
                    f"sandbox {handle.sandbox_id} does not answer: {e}",
                    sandbox_id=handle.sandbox_id,
                ) from None
            self._channels[handle.sandbox_id] = channel
            return channel

    def _spec_env(self, handle: SandboxHandle) -> dict[str, str]:
        try:
            record = json.loads(self._paths(handle.sandbox_id).spec.read_text())
        except (OSError, ValueError):
            return {}
        env = record.get("env") or {}
        return {str(k): str(v) for k, v in env.items()}

    # ---- exec --------------------------------------------------------------------

    async def exec(self, handle: SandboxHandle, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        """The shared guest exec, counted per sandbox so a pause can refuse while one runs."""
        sid = handle.sandbox_id
        self._commands[sid] += 1
        events = super().exec(handle, request)
        try:
            async for event in events:
                yield event
        finally:
            self._commands[sid] -= 1
            if self._commands[sid] <= 0:
                del self._commands[sid]
            await events.aclose()  # type: ignore[attr-defined]

    async def adopt(self, handle: SandboxHandle, spec: SandboxSpec) -> None:
        """Make a warm-pool member the sandbox ``spec`` asks for: the guest daemon sets its
        hostname, a fresh machine-id and mixes in a random seed; ``spec.env`` goes into the
        sandbox's record, which every exec reads its env from."""
        _validate_env(spec.env)
        paths = self._paths(handle.sandbox_id)
        channel = await self._channel(handle)
        async with self._lock(handle.sandbox_id):
            record = self._record(paths)
            record["env"] = {**record.get("env", {}), **spec.env}
            record["tenant_id"] = spec.tenant_id
            await asyncio.to_thread(paths.spec.write_text, json.dumps(record))
            try:
                frames = await channel.call(
                    {"op": "identity", "hostname": spec.sandbox_id,
                     "machine_id": uuid.uuid4().hex},
                    os.urandom(64),
                )  # fmt: skip
            except ChannelClosed:
                raise stopped(handle.sandbox_id) from None
        for header, _body in frames:
            if header.get("ev") == "error":
                raise_guest_error(header, handle.sandbox_id)

    # ---- pause, snapshot, restore --------------------------------------------------

    def _record(self, paths: _Paths) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads(paths.spec.read_text())
        except (OSError, ValueError) as e:
            raise SandboxNotRunningError(
                f"sandbox {paths.dir.name} has no record: {e}", sandbox_id=paths.dir.name
            ) from None
        return record

    async def _save_memory(self, handle: SandboxHandle, dest: Path) -> None:
        """Sync the guest's files, stop its CPUs and stream its state to ``dest/memory.bin``."""
        paths = self._paths(handle.sandbox_id)
        await self.sync(handle)
        await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
        target = dest / _MEMORY
        await qmp(paths.qmp_sock, "stop")
        await qmp(paths.qmp_sock, "migrate", {"uri": f"exec:cat > {shlex.quote(str(target))}"})
        deadline = time.monotonic() + _MIGRATE_TIMEOUT_S
        while True:
            info = await qmp(paths.qmp_sock, "query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                return
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise CorralError(
                    f"saving sandbox {handle.sandbox_id} failed: migration {status}",
                    sandbox_id=handle.sandbox_id,
                )
            await asyncio.sleep(0.05)

    async def _await_incoming(self, paths: _Paths) -> None:
        """Wait until a VM started with ``-incoming`` has loaded its state, then run it."""
        deadline = time.monotonic() + _MIGRATE_TIMEOUT_S
        while True:
            info = await qmp(paths.qmp_sock, "query-status")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "running":
                return
            if status not in ("inmigrate", None):
                await qmp(paths.qmp_sock, "cont")
                return
            if time.monotonic() > deadline:
                raise CorralError(
                    f"sandbox {paths.dir.name} did not load its saved state",
                    sandbox_id=paths.dir.name,
                )
            await asyncio.sleep(0.05)

    async def _connect(self, paths: _Paths, timeout_s: float) -> GuestChannel:
        channel = GuestChannel(paths.guest_sock)
        try:
            await channel.connect(timeout_s)
        except ChannelClosed as e:
            await channel.close()
            tail = processes.tail(paths.console)
            raise CorralError(
                f"microVM did not answer: {e}; console: {tail or '(empty)'}",
                sandbox_id=paths.dir.name,
            ) from None
        self._channels[paths.dir.name] = channel
        return channel

    async def pause(self, handle: SandboxHandle) -> None:
        """Save the VM's state into ``paused/`` and stop QEMU. Refused (retryable) while a
        command started through ``exec`` still runs, as on gVisor."""
        paths = self._paths(handle.sandbox_id)
        await self._channel(handle)  # raises unless running
        started = time.monotonic()
        async with self._lock(handle.sandbox_id):
            # The command's output streams over the guest channel, which the pause closes:
            # its caller would lose the stream and the exit code while the process lived on.
            running = self._commands[handle.sandbox_id]
            if running:
                raise RetryableError(
                    f"{running} command(s) started through the API still run in sandbox "
                    f"{handle.sandbox_id}; a pause cannot keep their connections: wait for "
                    "them or kill them first (start processes that must outlive a pause "
                    "detached: nohup ... &)",
                    sandbox_id=handle.sandbox_id,
                )
            await self._save_memory(handle, paths.paused)
            channel = self._channels.pop(handle.sandbox_id, None)
            if channel is not None:
                await channel.close()
            await self._kill(paths)
        log.info("sandbox_paused", sandbox_id=handle.sandbox_id,
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip

    async def resume(self, handle: SandboxHandle) -> None:
        paths = self._paths(handle.sandbox_id)
        started = time.monotonic()
        async with self._lock(handle.sandbox_id):
            if self._running(paths):
                return
            memory = paths.paused / _MEMORY
            if not memory.exists():
                raise SandboxNotRunningError(
                    f"sandbox {handle.sandbox_id} is not paused", sandbox_id=handle.sandbox_id
                )
            await self._launch(paths, self._record(paths), incoming=memory)
            await self._await_incoming(paths)
            await self._connect(paths, self._boot_timeout_s)
            await asyncio.to_thread(shutil.rmtree, paths.paused, True)
        log.info("sandbox_resumed", sandbox_id=handle.sandbox_id,
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip

    async def snapshot(self, handle: SandboxHandle, dest: Path) -> None:
        paths = self._paths(handle.sandbox_id)
        await self._channel(handle)
        async with self._lock(handle.sandbox_id):
            if await asyncio.to_thread(dest.exists):
                raise InvalidArgumentError(f"snapshot {dest.name} already exists")
            try:
                await self._save_memory(handle, dest)
                # The VM is stopped and its disk flushed: the overlay copies consistently.
                await asyncio.to_thread(shutil.copyfile, paths.disk, dest / _DISK)
                record = {**self._record(paths), "runtime": self.name}
                await asyncio.to_thread((dest / SNAPSHOT_META).write_text, json.dumps(record))
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, dest, True)
                raise
            finally:
                with contextlib.suppress(CorralError, OSError, TimeoutError):
                    await qmp(paths.qmp_sock, "cont")

    async def restore(self, spec: SandboxSpec, source: Path) -> SandboxHandle:
        paths = self._paths(spec.sandbox_id)
        _validate_env(spec.env)
        meta = read_snapshot_meta(source, self.name)
        started = time.monotonic()
        async with self._lock(spec.sandbox_id):
            if paths.dir.exists():
                raise InvalidArgumentError(
                    f"sandbox {spec.sandbox_id} already exists", sandbox_id=spec.sandbox_id
                )
            record = {**meta, "env": {**meta.get("env", {}), **spec.env},
                      "tenant_id": spec.tenant_id}  # fmt: skip
            record.pop("runtime", None)
            try:
                await asyncio.to_thread(paths.dir.mkdir, parents=True, mode=0o700)
                await asyncio.to_thread(paths.spec.write_text, json.dumps(record))
                await asyncio.to_thread(shutil.copyfile, source / _DISK, paths.disk)
                await self._launch(paths, record, incoming=source / _MEMORY)
                await self._await_incoming(paths)
                channel = await self._connect(paths, self._boot_timeout_s)
                await channel.call(
                    {"op": "identity", "hostname": spec.sandbox_id,
                     "machine_id": uuid.uuid4().hex},
                    os.urandom(64),
                )  # fmt: skip
            except BaseException:
                await asyncio.shield(self._teardown(spec.sandbox_id, paths))
                raise
        log.info("sandbox_restored", sandbox_id=spec.sandbox_id, snapshot=source.name,
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip
        return SandboxHandle(
            sandbox_id=spec.sandbox_id,
            runtime=self.name,
            created_at=time.time(),
            data={"template": str(record["template"]), "dir": str(paths.dir),
                  "accel": str(record["accel"])},
        )  # fmt: skip

    # ---- teardown ----------------------------------------------------------------

    async def destroy(self, handle: SandboxHandle) -> None:
        paths = self._paths(handle.sandbox_id)
        async with self._lock(handle.sandbox_id):
            await self._teardown(handle.sandbox_id, paths)
        self._locks.pop(handle.sandbox_id, None)

    async def _teardown(self, sandbox_id: str, paths: _Paths) -> None:
        channel = self._channels.pop(sandbox_id, None)
        if channel is not None:
            await channel.close()
        await self._kill(paths)
        await asyncio.to_thread(_remove, paths)

    async def _kill(self, paths: _Paths) -> None:
        await processes.kill(self._pid(paths), str(paths.dir))  # QEMU daemonized itself
        paths.pidfile.unlink(missing_ok=True)


async def qmp(socket_path: Path, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
    """Run one QMP command on a VM's monitor socket and return its ``return`` value.

    The monitor takes one client at a time; the runtime connects only for a command.
    """
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(str(socket_path)), _QMP_TIMEOUT_S
    )
    try:

        async def reply() -> dict[str, Any]:
            while True:
                line = await asyncio.wait_for(reader.readline(), _QMP_TIMEOUT_S)
                if not line:
                    raise CorralError(f"QEMU monitor closed while waiting for {command}")
                msg: dict[str, Any] = json.loads(line)
                if "event" in msg:
                    continue
                return msg

        await reply()  # greeting
        for cmd, args in (("qmp_capabilities", None), (command, arguments)):
            body: dict[str, Any] = {"execute": cmd}
            if args:
                body["arguments"] = dict(args)
            writer.write(json.dumps(body).encode() + b"\n")
            await writer.drain()
            msg = await reply()
            if "error" in msg:
                raise CorralError(f"QEMU {cmd} failed: {msg['error'].get('desc', msg['error'])}")
        return msg.get("return")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


def _remove(paths: _Paths) -> None:
    shutil.rmtree(paths.dir, ignore_errors=True)
    shutil.rmtree(paths.sock_dir, ignore_errors=True)
