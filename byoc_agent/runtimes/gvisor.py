"""gVisor (``runsc``) runtime: one OCI bundle and one runsc sandbox per Corral sandbox.

Layout under ``state_dir``::

    runsc/                     private ``runsc --root`` (never the system-wide one)
    sandboxes/<id>/bundle/     config.json (written here) + rootfs/ (overlay mount point)
    sandboxes/<id>/disk.img    sparse ext4 image of ``disk_mb`` (the disk quota), loop-mounted
    sandboxes/<id>/disk/       ... here; holds upper/ (the sandbox's writes) and work/
    sandboxes/<id>/exec/       pid files of running commands
    sandboxes/<id>/runsc.log   stdio of ``runsc run -detach``

Writable root filesystem — kernel overlayfs, not ``runsc --overlay``. Measured on the
development machine (Debian 12, kernel 6.18, runsc 20221219, ptrace platform): runsc
serves a host overlayfs mount (lower = the template's rootfs, upper/work in the
sandbox's state dir) through its gofer without complaint, the mount costs ~2 ms, and
writes land on disk in ``upper/``. ``runsc --overlay`` (``--overlay2=root:memory``)
would keep every written byte in the sandbox's memory — a 50 MB file would eat a quarter
of a 256 MB sandbox and vanish on restore — so it is not used. For the same reason
``/tmp`` is bound to the rootfs's own ``/tmp`` instead of gVisor's default tmpfs.

Limits are real because ``linux.cgroupsPath`` is ``/<cgroup_parent>/<id>`` with a CPU
quota of ``cpu * 100000`` µs per 100000 µs and a memory limit of ``memory_mb``; runsc
creates the cgroups under every v1 controller. Over the memory limit the host OOM killer
ends the whole sandbox; :meth:`GVisorRuntime.stop_reason` then reads the memory cgroup's
``oom_kill`` counter and reports ``oom_killed``.

Process count: a ``pids.limit`` in the spec makes this runsc crash at start (its Go
runtime cannot make its threads), so ``pids.max`` is written into the sandbox's pids
cgroup from outside once the sandbox is up, at ``pids_max`` tasks (threads of the sentry,
the gofer and, on the ptrace platform, one stub process per sandboxed address space). A
fork bomb that reaches it ends the sandbox (runsc cannot make another thread) — reported
as ``pids_limit`` — instead of the host's process table; gVisor does not enforce
``RLIMIT_NPROC`` for its tasks, so there is no gentler in-sandbox limit.

Disk: the overlay's upper and work dirs live on a per-sandbox ext4 file system in a sparse
image of ``disk_mb`` MiB, loop-mounted (``nosuid,nodev,discard``: deleted files give their
blocks back to the host). A full disk is ``ENOSPC`` inside the sandbox and nothing
outside it. ``disk_mb=0`` puts them on the agent's own disk with no quota.

Commands run as ``/bin/sh -c <cmd>`` through ``runsc exec`` (a command that is only plain
words, with no shell syntax and no builtin, skips the shell: one process less inside gVisor;
see ``command_argv``). The timeout is a host-side deadline: when it passes, the command's
process group is killed from a second ``runsc exec`` (or ``runsc kill --pid`` if the
sandbox is wedged), so no in-sandbox ``timeout`` process costs every exec.
File operations are small shell commands run the same way (no host-side access to the
rootfs: a symlink planted in the sandbox must not reach the host, and gVisor caches the
root filesystem, so host-side writes could go unseen). Relative paths are relative to
``/root`` (``HOME``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from byoc_agent.protocol.errors import (
    CorralError,
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    RetryableError,
    SandboxNotRunningError,
)
from byoc_agent.runtimes import processes
from byoc_agent.runtimes.base import (
    SNAPSHOT_META,
    EndReason,
    ExecEvent,
    ExecRequest,
    Exit,
    FileInfo,
    FileType,
    Liveness,
    SandboxHandle,
    SandboxSpec,
    Stderr,
    Stdout,
    read_snapshot_meta,
)
from byoc_agent.runtimes.inputs import SANDBOX_HOME as _HOME
from byoc_agent.runtimes.inputs import check_sandbox_id
from byoc_agent.runtimes.inputs import sandbox_path as _sandbox_path
from byoc_agent.runtimes.inputs import validate_env as _validate_env
from byoc_agent.runtimes.templates import template_rootfs

log = structlog.get_logger(__name__)

_CHUNK = 64 * 1024
_STDIN_CHUNK = 1024 * 1024
_CPU_PERIOD_US = 100_000
_MIN_MEMORY_MB = 32
_PAUSED = "paused"  # a paused sandbox's checkpoint, inside its directory
_CHECKPOINT = "checkpoint.img"  # what runsc checkpoint writes into its image directory
_CHECKPOINT_DIR = "checkpoint"  # in a snapshot directory
DEFAULT_DISK_MB = 10 * 1024
DEFAULT_PIDS_MAX = 4096
_MIN_DISK_MB = 16
# A sandbox starts with ~45 tasks (sentry and gofer threads); leave room for real work.
_MIN_PIDS_MAX = 128
_TIMEOUT_EXIT = 124  # what coreutils ``timeout`` reports; we report it for a timed-out command
_KILLED_EXIT = 137  # ``timeout -s KILL`` exits 128 + 9 when the command ran out of time
_RUNSC_FAILED = 128  # runsc exec's own failures (no such sandbox, no such cwd, ...)
_PID_FILE_WAIT_S = 5.0  # how long a kill waits for runsc exec to name the command's pid
_ADOPTED_ENV = "adopted-env.json"  # the env a warm-pool member was given when it was taken
# A restored copy's or an adopted pool member's own identity (hostname, /etc/hostname,
# /etc/machine-id) in one process inside the sandbox: perl (perl-base is Essential in every
# Debian template) starts in a few ms under ptrace and, unlike Debian's hostname(1), takes
# the "_" of every Corral sandbox id ("sb_..."), for which the shell fallback below has to
# start python3. With no arguments it first says "ready" and then reads "hostname
# machine-id" from stdin: a warm-pool member's helper, started before the take.
_SETHOSTNAME_NR = {"x86_64": 170, "aarch64": 161}.get(platform.machine())
_PERL = "/usr/bin/perl"
_IDENTITY_PERL = (
    "$| = 1; my ($h, $m) = @ARGV;"
    ' if (!defined $m) { print "ready\n"; local $/; ($h, $m) = split " ", (<STDIN> // ""); }'
    ' defined $m or die "no identity given\n";'
    ' syscall(%d, $h, length $h) == 0 or die "sethostname: $!\n";'
    ' for (["/etc/hostname", $h], ["/etc/machine-id", $m]) {'
    ' open(my $f, ">", $_->[0]) or die "$_->[0]: $!\n"; print $f "$_->[1]\n";'
    ' close $f or die "$_->[0]: $!\n"; }'
)
# Without perl: hostname(1), or python's sethostname(2) for names hostname(1) refuses. The
# machine-id comes from the host: this runsc has no /proc/sys/kernel/random/uuid, and a
# pipeline from it wrote an empty id.
_IDENTITY_SH = (
    '{ hostname "$1" 2>/dev/null || '
    "python3 -c 'import socket, sys; socket.sethostname(sys.argv[1])' \"$1\"; } && "
    'echo "$1" > /etc/hostname && '
    "printf '%s\\n' \"$2\" > /etc/machine-id"
)
_HELPER_ANSWER_S = 10.0  # an identity helper that takes longer to apply a take is broken
_BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": _HOME,
    "LANG": "C.UTF-8",
}
# PID 1: sleeps forever and reaps orphans (``wait`` in sh waits on any child). It first
# drops the stdio runsc gave it — the host's runsc.log — so that nothing in the sandbox can
# write to a host file through /proc/1/fd/1 (that would bypass the disk quota).
_INIT = [
    "/bin/sh",
    "-c",
    "exec </dev/null >/dev/null 2>&1; trap 'exit 0' TERM; "
    "while :; do sleep infinity & wait; done",
]
# Docker's default capability set: root in the sandbox can chown, bind low ports, etc.
_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

# File-operation scripts: ``$1`` is the path. Exit codes 3/5/6 are ours, not the tools'.
_E_MISSING, _E_IS_DIR, _E_NOT_DIR = 3, 5, 6
_WRITE = (
    'd=$(dirname -- "$1") && mkdir -p -- "$d" || exit 6; [ -d "$1" ] && exit 5; exec cat > "$1"'
)
_READ = '[ -e "$1" ] || exit 3; [ -d "$1" ] && exit 5; exec cat -- "$1"'
_LIST = (
    '[ -e "$1" ] || exit 3; [ -d "$1" ] || exit 6; '
    "exec find -H \"$1\" -mindepth 1 -maxdepth 1 -printf '%f\\0%y\\0%s\\0%m\\0%T@\\0'"
)
_REMOVE = '[ -e "$1" ] || [ -L "$1" ] || exit 3; exec rm -rf -- "$1"'
_MKDIR = '[ -e "$1" ] && ! [ -d "$1" ] && exit 6; exec mkdir -p -- "$1"'
_KILL_GROUP = 'kill -9 "-$1" 2>/dev/null || kill -9 "$1"'  # dash: no "--"
_FIND_TYPES: Mapping[str, FileType] = {"f": FileType.FILE, "d": FileType.DIR, "l": FileType.SYMLINK}


@dataclass(frozen=True, slots=True)
class _Paths:
    """Where one sandbox's host-side state lives."""

    dir: Path
    bundle: Path
    rootfs: Path
    disk_image: Path
    disk: Path
    upper: Path
    work: Path
    exec_dir: Path
    log: Path

    @classmethod
    def under(cls, sandboxes: Path, sandbox_id: str) -> _Paths:
        d = sandboxes / sandbox_id
        return cls(
            dir=d,
            bundle=d / "bundle",
            rootfs=d / "bundle" / "rootfs",
            disk_image=d / "disk.img",
            disk=d / "disk",
            upper=d / "disk" / "upper",
            work=d / "disk" / "work",
            exec_dir=d / "exec",
            log=d / "runsc.log",
        )


@dataclass(frozen=True, slots=True)
class _Completed:
    """A finished helper command inside the sandbox."""

    exit_code: int
    stdout: bytes
    stderr: bytes



# Words made only of these characters mean the same to /bin/sh as to execve: no quoting,
# expansion, redirection, globbing, assignment (no "=") or operators.
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_./:,+@%-]+$")
# Builtins, keywords and words that need a shell even when written plainly.
_NEEDS_SHELL = frozenset(
    {"cd", "exit", "export", "set", "unset", "source", ".", "alias", "ulimit", "umask",
     "wait", "read", "eval", "exec", "trap", "shift", "return", "type", "command", "times",
     "getopts", "hash", "local", "if", "then", "else", "elif", "fi", "for", "while", "until",
     "do", "done", "case", "esac", "function", "readonly", "break", "continue", "jobs", "fg",
     "bg", "kill", "printf", "echo", "test", "[", "pwd"}
)


def command_argv(cmd: str) -> list[str]:
    """The argv that runs ``cmd`` as ``/bin/sh -c`` would: plain words run directly."""
    words = cmd.split()
    if (
        words
        and cmd == " ".join(words)
        and words[0] not in _NEEDS_SHELL
        and all(_PLAIN_WORD.match(w) for w in words)
    ):
        return words
    return ["/bin/sh", "-c", cmd]


class GVisorRuntime:
    """The :class:`~byoc_agent.runtimes.base.Runtime` backed by gVisor's ``runsc``."""

    name = "gvisor"

    def __init__(
        self,
        state_dir: Path,
        templates_root: Path,
        runsc: str | None = None,
        *,
        platform: str = "ptrace",
        cgroup_parent: str = "corral",
        cgroup_fs: Path = Path("/sys/fs/cgroup"),
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 30.0,
        exec_grace_s: float = 5.0,
        disk_mb: int = DEFAULT_DISK_MB,
        pids_max: int = DEFAULT_PIDS_MAX,
    ) -> None:
        found = runsc if runsc is not None else shutil.which("runsc")
        if found is None:
            raise InvalidArgumentError("runsc not found on PATH; install the Debian package runsc")
        self._runsc = found
        # Commands from exec() still running, per sandbox: a pause waits for none of them.
        self._commands: collections.Counter[str] = collections.Counter()
        if disk_mb < 0 or pids_max < 0:
            raise InvalidArgumentError("disk_mb and pids_max must not be negative (0: no limit)")
        if 0 < pids_max < _MIN_PIDS_MAX:
            raise InvalidArgumentError(f"pids_max must be 0 (no limit) or at least {_MIN_PIDS_MAX}")
        if 0 < disk_mb < _MIN_DISK_MB:
            raise InvalidArgumentError(f"disk_mb must be 0 (no quota) or at least {_MIN_DISK_MB}")
        self._mkfs: str | None = None
        if disk_mb:
            self._mkfs = shutil.which("mkfs.ext4") or next(
                (p for p in ("/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4") if os.path.exists(p)), None
            )
            if self._mkfs is None:
                raise InvalidArgumentError(
                    "mkfs.ext4 not found (Debian package e2fsprogs); needed for disk_mb > 0"
                )
        self.disk_mb = disk_mb
        self.pids_max = pids_max
        self._state_dir = state_dir.resolve()
        # overlayfs mount options are comma/colon separated: keep our paths unambiguous.
        if any(c in str(self._state_dir) for c in ",:"):
            raise InvalidArgumentError(f"state_dir must not contain ',' or ':': {state_dir}")
        self._root = self._state_dir / "runsc"
        self._sandboxes = self._state_dir / "sandboxes"
        self._templates_root = templates_root
        self._platform = platform
        self._cgroup_parent = cgroup_parent
        self._cgroup_fs = cgroup_fs
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._exec_grace_s = exec_grace_s
        self._locks: dict[str, asyncio.Lock] = {}
        self._adopted_env: dict[str, dict[str, str]] = {}
        # Warm-pool members' identity helpers (``prepare_adoption``), until taken or destroyed.
        self._identity_helpers: dict[str, asyncio.subprocess.Process] = {}

    # ---- helpers -----------------------------------------------------------------

    def _flags(self) -> list[str]:
        return [
            self._runsc,
            "--root",
            str(self._root),
            f"--platform={self._platform}",
            "--network=none",
        ]

    def _paths(self, sandbox_id: str) -> _Paths:
        check_sandbox_id(sandbox_id)
        return _Paths.under(self._sandboxes, sandbox_id)

    def _cgroup_path(self, sandbox_id: str) -> str:
        return f"/{self._cgroup_parent}/{sandbox_id}"

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def _runsc_call(self, args: Sequence[str], timeout_s: float) -> _Completed:
        """Run a runsc management command (state, kill, delete) and collect its output."""
        proc = await asyncio.create_subprocess_exec(
            *self._flags(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise CorralError(f"runsc {args[0]} did not finish within {timeout_s} s") from None
        return _Completed(proc.returncode if proc.returncode is not None else -1, out, err)

    @staticmethod
    def _validate(spec: SandboxSpec) -> None:
        if spec.cpu < 1:
            raise InvalidArgumentError("cpu must be at least 1", sandbox_id=spec.sandbox_id)
        if spec.memory_mb < _MIN_MEMORY_MB:
            raise InvalidArgumentError(
                f"memory_mb must be at least {_MIN_MEMORY_MB}", sandbox_id=spec.sandbox_id
            )
        _validate_env(spec.env)
        _refuse_egress(spec)

    # ---- lifecycle ---------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        """Mount the overlay, write the bundle, ``runsc run -detach``; return once exec works."""
        paths = self._paths(spec.sandbox_id)
        self._validate(spec)
        lower = await asyncio.to_thread(template_rootfs, self._templates_root, spec.template)
        bound = log.bind(sandbox_id=spec.sandbox_id, tenant_id=spec.tenant_id)
        started = time.monotonic()
        async with self._lock(spec.sandbox_id):
            if await asyncio.to_thread(paths.dir.exists):
                raise InvalidArgumentError(
                    f"sandbox {spec.sandbox_id} already exists", sandbox_id=spec.sandbox_id
                )
            try:
                await asyncio.to_thread(self._prepare_bundle, spec, paths)
                await self._mount(lower, paths)
                await self._start(spec.sandbox_id, paths)
                await self._wait_ready(spec.sandbox_id)
                await asyncio.to_thread(self._limit_pids, spec.sandbox_id)
            except BaseException:
                bound.warning("sandbox_create_failed")
                await asyncio.shield(self._teardown(spec.sandbox_id, paths))
                raise
        bound.info("sandbox_created", ms=round((time.monotonic() - started) * 1000))
        return SandboxHandle(
            sandbox_id=spec.sandbox_id,
            runtime=self.name,
            created_at=time.time(),
            data={
                "template": spec.template,
                "bundle": str(paths.bundle),
                "runsc_root": str(self._root),
                "cgroup": self._cgroup_path(spec.sandbox_id),
            },
        )

    def _prepare_bundle(self, spec: SandboxSpec, paths: _Paths) -> None:
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths.dir.mkdir(parents=True, mode=0o700)
        for d in (paths.rootfs, paths.disk, paths.exec_dir):
            d.mkdir(parents=True)
        config = oci_config(spec, paths.rootfs, self._cgroup_path(spec.sandbox_id))
        (paths.bundle / "config.json").write_text(json.dumps(config, indent=2))

    async def _host(self, what: str, *argv: str) -> None:
        """Run a host tool (mount, mkfs) to completion; raise with its stderr if it fails."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(self._start_timeout_s):
                _, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise CorralError(f"{what} did not finish within {self._start_timeout_s} s") from None
        if proc.returncode != 0:
            raise CorralError(f"{what} failed: {err.decode(errors='replace').strip()[-300:]}")

    async def _mount_disk(self, paths: _Paths, upper_from: Path | None = None) -> None:
        """The sandbox's writable disk: a sparse ext4 image of ``disk_mb``, loop-mounted.

        Its upper layer starts empty but for a machine-id of its own, or (a restore) as a
        copy of ``upper_from``."""
        if self._mkfs is not None:
            await asyncio.to_thread(_sparse_file, paths.disk_image, self.disk_mb * 1024 * 1024)
            await self._host(
                "mkfs.ext4",
                self._mkfs,
                "-q",
                "-F",
                "-m",
                "0",
                # No journal; no blocks reserved for growing it online (resize_inode:
                # ~4 MiB written per 10 GiB disk, ~15 ms of every create and restore), as
                # a sandbox's disk never grows.
                "-O",
                "^has_journal,^resize_inode",
                "-E",
                "lazy_itable_init=1,nodiscard",
                str(paths.disk_image),
            )
            await self._host(
                "disk mount",
                "mount",
                "-o",
                "loop,nosuid,nodev,discard",
                str(paths.disk_image),
                str(paths.disk),
            )
        await asyncio.to_thread(paths.work.mkdir)
        if upper_from is not None:
            await _copy_tree(upper_from, paths.upper)
            return

        def fresh_upper() -> None:
            # Every sandbox is its own machine: its own machine-id, over the template's.
            (paths.upper / "etc").mkdir(parents=True)
            (paths.upper / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")

        await asyncio.to_thread(fresh_upper)

    async def _mount(self, lower: Path, paths: _Paths, upper_from: Path | None = None) -> None:
        if any(c in str(lower) for c in ",:"):
            raise InvalidArgumentError(f"template path must not contain ',' or ':': {lower}")
        await self._mount_disk(paths, upper_from)
        opts = f"lowerdir={lower},upperdir={paths.upper},workdir={paths.work}"
        await self._host(
            "overlay mount", "mount", "-t", "overlay", "overlay", "-o", opts, str(paths.rootfs)
        )
        # The rootfs's /tmp is bind-mounted as /tmp: make sure it exists and is world-writable.
        await asyncio.to_thread(_ensure_tmp, paths.rootfs / "tmp")

    async def _start(self, sandbox_id: str, paths: _Paths, image: Path | None = None) -> None:
        """``runsc run -detach``, or with ``image`` ``runsc restore`` from a checkpoint."""
        # runsc run -detach hands its stdio to the sandbox processes: never our pipes.
        verb = ["run"] if image is None else ["restore", "--image-path", str(image)]
        logfile = await asyncio.to_thread(paths.log.open, "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._flags(),
                *verb,
                "-detach",
                "--bundle",
                str(paths.bundle),
                sandbox_id,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
            )
        finally:
            logfile.close()
        try:
            async with asyncio.timeout(self._start_timeout_s):
                rc = await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise CorralError(
                f"runsc run did not finish within {self._start_timeout_s} s",
                sandbox_id=sandbox_id,
            ) from None
        if rc != 0:
            tail = await asyncio.to_thread(processes.tail, paths.log, 2000)
            raise CorralError(f"runsc run failed ({rc}): {tail}", sandbox_id=sandbox_id)

    async def _wait_ready(self, sandbox_id: str) -> None:
        """Poll ``exec /bin/true`` until it works (usually the first try)."""
        deadline = time.monotonic() + self._start_timeout_s
        last = b""
        while True:
            done = await self._runsc_call(["exec", sandbox_id, "/bin/true"], self._start_timeout_s)
            if done.exit_code == 0:
                return
            last = done.stderr
            if time.monotonic() > deadline:
                raise CorralError(
                    f"sandbox never accepted a command: {last.decode(errors='replace')[-300:]}",
                    sandbox_id=sandbox_id,
                )
            await asyncio.sleep(0.02)

    async def inspect(self, handle: SandboxHandle) -> Liveness:
        """Ask runsc: ``running`` → RUNNING; any other status → STOPPED; unknown → MISSING."""
        paths = self._paths(handle.sandbox_id)
        if await asyncio.to_thread((paths.dir / _PAUSED / _CHECKPOINT).exists):
            return Liveness.PAUSED
        done = await self._runsc_call(["state", handle.sandbox_id], self._stop_timeout_s)
        if done.exit_code != 0:
            return Liveness.MISSING
        try:
            status = json.loads(done.stdout).get("status")
        except (ValueError, AttributeError):
            return Liveness.MISSING
        return Liveness.RUNNING if status == "running" else Liveness.STOPPED

    async def recover(self, handle: SandboxHandle) -> Liveness:
        """Reattach after an agent restart: all state is on disk, so this is ``inspect``."""
        if handle.runtime != self.name:
            raise InvalidArgumentError(
                f"handle belongs to runtime {handle.runtime!r}, not {self.name!r}",
                sandbox_id=handle.sandbox_id,
            )
        liveness = await self.inspect(handle)
        log.info("sandbox_recovered", sandbox_id=handle.sandbox_id, liveness=liveness.value)
        return liveness

    async def destroy(self, handle: SandboxHandle) -> None:
        """``runsc kill`` + ``delete -force``, unmount, remove cgroups and state. Idempotent."""
        paths = self._paths(handle.sandbox_id)
        started = time.monotonic()
        async with self._lock(handle.sandbox_id):
            await self._teardown(handle.sandbox_id, paths)
        self._locks.pop(handle.sandbox_id, None)
        self._adopted_env.pop(handle.sandbox_id, None)
        log.info(
            "sandbox_destroyed",
            sandbox_id=handle.sandbox_id,
            ms=round((time.monotonic() - started) * 1000),
        )

    async def _teardown(self, sandbox_id: str, paths: _Paths) -> None:
        await self._runsc_call(["kill", sandbox_id, "KILL"], self._stop_timeout_s)
        await self._runsc_call(["delete", "-force", sandbox_id], self._stop_timeout_s)
        helper = self._identity_helpers.pop(sandbox_id, None)
        if helper is not None:
            await _end_helper(helper)
        await self._unmount(paths.rootfs)
        await self._unmount(paths.disk)  # the loop device goes with it (autoclear)
        await self._remove_cgroups(sandbox_id)
        for mountpoint in (paths.rootfs, paths.disk):
            if await asyncio.to_thread(os.path.ismount, mountpoint):
                raise CorralError(
                    f"{mountpoint.name} still mounted after umount", sandbox_id=sandbox_id
                )
        await asyncio.to_thread(shutil.rmtree, paths.dir, True)

    async def _unmount(self, mountpoint: Path) -> None:
        if not await asyncio.to_thread(os.path.ismount, mountpoint):
            return
        umount = await asyncio.create_subprocess_exec(
            "umount",
            str(mountpoint),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(self._stop_timeout_s):
            rc = await umount.wait()
        if rc != 0:  # something still holds it: detach now, the kernel frees it later
            lazy = await asyncio.create_subprocess_exec("umount", "-l", str(mountpoint))
            async with asyncio.timeout(self._stop_timeout_s):
                await lazy.wait()

    # ---- limits and why a sandbox stopped ------------------------------------------

    def _controller_dir(self, controller: str, sandbox_id: str) -> Path:
        """The sandbox's cgroup directory for one v1 controller (or the v2 unified one)."""
        rel = self._cgroup_path(sandbox_id).lstrip("/")
        if (self._cgroup_fs / "cgroup.controllers").exists():  # pure cgroup v2
            return self._cgroup_fs / rel
        return self._cgroup_fs / controller / rel

    def _limit_pids(self, sandbox_id: str) -> None:
        """Write ``pids.max`` into the sandbox's pids cgroup, from outside the sandbox."""
        if not self.pids_max:
            return
        limit = self._controller_dir("pids", sandbox_id) / "pids.max"
        try:
            limit.write_text(f"{self.pids_max}\n")
        except OSError as e:
            raise CorralError(
                f"cannot set pids.max on the sandbox's cgroup ({e}); set pids_max=0 "
                "to run without a process limit",
                sandbox_id=sandbox_id,
            ) from e

    async def stop_reason(self, handle: SandboxHandle) -> EndReason | None:
        """Why a sandbox that is no longer running stopped, from its cgroups' counters.

        ``oom_killed`` when the memory cgroup recorded an OOM kill; ``pids_limit`` when the
        pids cgroup refused a task at ``pids.max``; ``None`` when neither (it exited).
        Call it before :meth:`destroy`, which removes the cgroups.
        """
        sid = handle.sandbox_id
        self._paths(sid)
        memory = self._controller_dir("memory", sid)
        pids = self._controller_dir("pids", sid)
        v2 = (self._cgroup_fs / "cgroup.controllers").exists()
        oom = await asyncio.to_thread(
            _counter, memory / ("memory.events" if v2 else "memory.oom_control"), "oom_kill"
        )
        if oom:
            return EndReason.OOM_KILLED
        if await asyncio.to_thread(_counter, pids / "pids.events", "max"):
            return EndReason.PIDS_LIMIT
        return None

    def cgroup_dirs(self, sandbox_id: str) -> list[Path]:
        """Every cgroup directory this sandbox may have (v1 controllers and unified)."""
        rel = self._cgroup_path(sandbox_id).lstrip("/")
        try:
            hierarchies = sorted(p for p in self._cgroup_fs.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        if (self._cgroup_fs / "cgroup.controllers").exists():  # pure cgroup v2
            hierarchies = [self._cgroup_fs]
        return [h / rel for h in hierarchies]

    async def _remove_cgroups(self, sandbox_id: str) -> None:
        deadline = time.monotonic() + self._stop_timeout_s
        remaining = await asyncio.to_thread(self.cgroup_dirs, sandbox_id)
        while True:
            remaining = await asyncio.to_thread(_rmdirs, remaining)
            if not remaining:
                return
            if time.monotonic() > deadline:  # processes still inside: leave, but say so
                log.warning("cgroup_busy", sandbox_id=sandbox_id, dirs=[str(p) for p in remaining])
                return
            await asyncio.sleep(0.05)

    # ---- pause, snapshot, restore ----------------------------------------------------

    async def _checkpoint(self, handle: SandboxHandle, image_dir: Path) -> None:
        """Sync the sandbox's files, write its state to ``image_dir`` (it stops), delete it.
        Refused (retryable) while a command started through ``exec`` still runs."""
        sid = handle.sandbox_id
        # A command started through exec talks to the host over pipes that a checkpoint
        # cannot carry: runsc would save it, and the restore would then fail for good.
        running = self._commands[sid]
        if running:
            raise RetryableError(
                f"{running} command(s) started through the API still run in sandbox {sid}; "
                "a pause cannot keep their connections: wait for them or kill them first "
                "(start processes that must outlive a pause detached: nohup ... &)",
                sandbox_id=sid,
            )
        helper = self._identity_helpers.pop(sid, None)
        if helper is not None:  # a pool member's pipe would not survive either: let it go
            await _end_helper(helper)
        synced = await self._helper(handle, "sync", "/")
        if synced.exit_code != 0:
            raise CorralError("sync before checkpoint failed", sandbox_id=sid)
        await asyncio.to_thread(image_dir.mkdir, parents=True, exist_ok=True)
        done = await self._runsc_call(
            ["checkpoint", "--image-path", str(image_dir), sid], self._stop_timeout_s
        )
        if done.exit_code != 0:
            await asyncio.to_thread(shutil.rmtree, image_dir, True)
            raise CorralError(
                f"runsc checkpoint failed: {done.stderr.decode(errors='replace')[-300:]}",
                sandbox_id=sid,
            )
        await self._runsc_call(["delete", "-force", sid], self._stop_timeout_s)

    async def pause(self, handle: SandboxHandle) -> None:
        """``runsc checkpoint`` into the sandbox's ``paused/``; files stay in its overlay."""
        paths = await self._require_running(handle)
        started = time.monotonic()
        async with self._lock(handle.sandbox_id):
            await self._checkpoint(handle, paths.dir / _PAUSED)
        log.info("sandbox_paused", sandbox_id=handle.sandbox_id,
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip

    async def resume(self, handle: SandboxHandle) -> None:
        """``runsc restore`` from ``paused/``, then drop the checkpoint."""
        paths = self._paths(handle.sandbox_id)
        paused = paths.dir / _PAUSED
        started = time.monotonic()
        async with self._lock(handle.sandbox_id):
            if not await asyncio.to_thread((paused / _CHECKPOINT).exists):
                if await self.inspect(handle) is Liveness.RUNNING:
                    return
                raise SandboxNotRunningError(
                    f"sandbox {handle.sandbox_id} is not paused", sandbox_id=handle.sandbox_id
                )
            await self._start(handle.sandbox_id, paths, image=paused)
            # runsc made the cgroups afresh: pids.max is ours to set again, as at create.
            await asyncio.to_thread(self._limit_pids, handle.sandbox_id)
            await self._wait_ready(handle.sandbox_id)
            await asyncio.to_thread(shutil.rmtree, paused, True)
        log.info("sandbox_resumed", sandbox_id=handle.sandbox_id,
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip

    async def snapshot(self, handle: SandboxHandle, dest: Path) -> None:
        """Checkpoint into ``dest``, copy the overlay's upper layer, restore the original."""
        paths = await self._require_running(handle)
        sid = handle.sandbox_id
        async with self._lock(sid):
            if await asyncio.to_thread(dest.exists):
                raise InvalidArgumentError(f"snapshot {dest.name} already exists")
            try:
                await self._checkpoint(handle, dest / _CHECKPOINT_DIR)
                try:
                    await _copy_tree(paths.upper, dest / "upper")
                    config = json.loads(
                        await asyncio.to_thread((paths.bundle / "config.json").read_text)
                    )
                    meta = {"runtime": self.name, "template": handle.data.get("template", ""),
                            "config": config}  # fmt: skip
                    await asyncio.to_thread((dest / SNAPSHOT_META).write_text, json.dumps(meta))
                finally:
                    await self._start(sid, paths, image=dest / _CHECKPOINT_DIR)
                    await asyncio.to_thread(self._limit_pids, sid)
                    await self._wait_ready(sid)
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, dest, True)
                raise

    async def restore(self, spec: SandboxSpec, source: Path) -> SandboxHandle:
        """A new sandbox from a snapshot: its own overlay (a copy of the snapshot's upper
        layer), restored with ``runsc restore``, then given its own hostname and machine-id."""
        paths = self._paths(spec.sandbox_id)
        _validate_env(spec.env)
        _refuse_egress(spec)
        meta = await asyncio.to_thread(read_snapshot_meta, source, self.name)
        template = str(meta.get("template") or spec.template)
        lower = await asyncio.to_thread(template_rootfs, self._templates_root, template)
        started = time.monotonic()
        async with self._lock(spec.sandbox_id):
            if await asyncio.to_thread(paths.dir.exists):
                raise InvalidArgumentError(
                    f"sandbox {spec.sandbox_id} already exists", sandbox_id=spec.sandbox_id
                )
            try:
                await asyncio.to_thread(self._prepare_restore, spec, paths, meta["config"])
                await self._mount(lower, paths, upper_from=source / "upper")
                await self._start(spec.sandbox_id, paths, image=source / _CHECKPOINT_DIR)
                await asyncio.to_thread(self._limit_pids, spec.sandbox_id)
                # The identity exec is also the readiness probe (retried like _wait_ready).
                await self._become(spec.sandbox_id, until_ready=True)
            except BaseException:
                await asyncio.shield(self._teardown(spec.sandbox_id, paths))
                raise
        log.info("sandbox_restored", sandbox_id=spec.sandbox_id, snapshot=source.name,
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip
        return SandboxHandle(
            sandbox_id=spec.sandbox_id,
            runtime=self.name,
            created_at=time.time(),
            data={
                "template": template,
                "bundle": str(paths.bundle),
                "runsc_root": str(self._root),
                "cgroup": self._cgroup_path(spec.sandbox_id),
            },
        )

    def _prepare_restore(self, spec: SandboxSpec, paths: _Paths, config: object) -> None:
        """This sandbox's spec (its rootfs, cgroup, hostname) with the snapshot's limits,
        which its memory image was made under."""
        resources = config.get("linux", {}).get("resources", {}) if isinstance(config, dict) else {}
        quota = int(resources.get("cpu", {}).get("quota", spec.cpu * _CPU_PERIOD_US))
        cpu = quota // _CPU_PERIOD_US
        memory_mb = int(resources.get("memory", {}).get("limit", spec.memory_mb << 20)) >> 20
        own = dataclasses.replace(spec, cpu=max(cpu, 1), memory_mb=memory_mb)
        self._prepare_bundle(own, paths)

    async def _become(
        self, sandbox_id: str, hostname: str | None = None, *, until_ready: bool = False
    ) -> None:
        """A restored copy's (or an adopted pool member's) own identity: hostname,
        /etc/hostname and a fresh machine-id, in one ``runsc exec --cap CAP_SYS_ADMIN``.
        Randomness needs nothing: gVisor reads it from the host kernel on every request and
        keeps no pool that a checkpoint could copy. ``until_ready``: retried until the
        sandbox accepts commands (after a restore, in place of a separate readiness probe);
        the script is idempotent."""
        name, machine_id = hostname or sandbox_id, uuid.uuid4().hex
        attempts = [["/bin/sh", "-c", _IDENTITY_SH, "sh", name, machine_id]]
        if _SETHOSTNAME_NR is not None:
            attempts.insert(0, [_PERL, "-e", _IDENTITY_PERL % _SETHOSTNAME_NR, name, machine_id])
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            for argv in attempts:
                done = await self._runsc_call(
                    ["exec", "--cap", "CAP_SYS_ADMIN", sandbox_id, *argv], self._start_timeout_s
                )
                if done.exit_code == 0:
                    return
            if not until_ready or time.monotonic() > deadline:
                raise CorralError(
                    f"could not give the sandbox its own identity: "
                    f"{done.stderr.decode(errors='replace')[-300:]}",
                    sandbox_id=sandbox_id,
                )
            await asyncio.sleep(0.02)

    async def prepare_adoption(self, handle: SandboxHandle) -> None:
        """Start a warm-pool member's identity helper (``_IDENTITY_PERL`` without arguments,
        through ``runsc exec --cap CAP_SYS_ADMIN``) and wait until it says it is ready.

        A take then costs a write to its stdin and its exit, not a ``runsc exec`` that starts
        a process under ptrace. The helper only ever reads the agent's pipe: it ends at the
        take, or when the pipe closes (the member is destroyed, the agent goes away), so no
        privileged process of ours outlives the member's time in the pool. Any failure here
        leaves the member without a helper: ``adopt`` then takes the ``runsc exec`` path."""
        sid = handle.sandbox_id
        if _SETHOSTNAME_NR is None or sid in self._identity_helpers:
            return
        await self._require_running(handle)
        proc = await asyncio.create_subprocess_exec(
            *self._flags(), "exec", "--cap", "CAP_SYS_ADMIN", sid,
            _PERL, "-e", _IDENTITY_PERL % _SETHOSTNAME_NR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        line = b""
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(self._start_timeout_s):
                line = await proc.stdout.readline()
        if line != b"ready\n":
            await _end_helper(proc)
            log.warning("identity_helper_failed", sandbox_id=sid, said=line[-200:].decode(
                errors="replace"))  # fmt: skip
            return
        self._identity_helpers[sid] = proc

    async def _adopt_through_helper(
        self, sid: str, helper: asyncio.subprocess.Process, hostname: str
    ) -> bool:
        """Hand the new identity to a member's helper. False: it failed before changing
        anything lasting (the caller falls back to an exec); raises if it hangs (the
        member is then destroyed: a privileged process might still run in it)."""
        try:
            async with asyncio.timeout(_HELPER_ANSWER_S):
                _, err = await helper.communicate(f"{hostname} {uuid.uuid4().hex}\n".encode())
        except TimeoutError:
            await _end_helper(helper)
            raise CorralError("the identity helper did not answer", sandbox_id=sid) from None
        except (BrokenPipeError, ConnectionResetError):
            await _end_helper(helper)
            return False
        if helper.returncode == 0:
            return True
        log.warning("identity_helper_failed", sandbox_id=sid, code=helper.returncode,
                    stderr=err[-200:].decode(errors="replace"))  # fmt: skip
        return False

    async def adopt(self, handle: SandboxHandle, spec: SandboxSpec) -> None:
        """Make a warm-pool member the sandbox ``spec`` asks for: its hostname and a fresh
        machine-id (through the helper ``prepare_adoption`` started, else an exec with
        CAP_SYS_ADMIN), and ``spec.env`` for later execs. The env of the OCI config (what
        ``runsc exec`` starts from) was fixed when the member started, so the adopted env
        is kept in the sandbox directory and passed on every exec."""
        _validate_env(spec.env)
        paths = await self._require_running(handle)
        sid = handle.sandbox_id
        async with self._lock(sid):
            await asyncio.to_thread(
                (paths.dir / _ADOPTED_ENV).write_text, json.dumps(dict(spec.env))
            )
            self._adopted_env[sid] = dict(spec.env)
            helper = self._identity_helpers.pop(sid, None)
            if helper is not None and await self._adopt_through_helper(
                sid, helper, spec.sandbox_id
            ):
                return
            await self._become(sid, hostname=spec.sandbox_id)

    def _env_of(self, paths: _Paths) -> dict[str, str]:
        """The env an adopted sandbox was given (empty for a sandbox started as itself)."""
        sid = paths.dir.name
        env = self._adopted_env.get(sid)
        if env is None:
            try:
                raw = json.loads((paths.dir / _ADOPTED_ENV).read_text())
                env = {str(k): str(v) for k, v in raw.items()}
            except (OSError, ValueError, AttributeError):
                env = {}
            self._adopted_env[sid] = env
        return env

    def sandbox_dir(self, sandbox_id: str) -> Path:
        """Host directory holding this sandbox's bundle, overlay layers and logs."""
        return self._paths(sandbox_id).dir

    # ---- exec --------------------------------------------------------------------

    async def _require_running(self, handle: SandboxHandle) -> _Paths:
        paths = self._paths(handle.sandbox_id)
        if not await asyncio.to_thread(paths.bundle.exists):
            raise SandboxNotRunningError(
                f"sandbox {handle.sandbox_id} does not exist here", sandbox_id=handle.sandbox_id
            )
        if await asyncio.to_thread((paths.dir / _PAUSED).exists):
            raise SandboxNotRunningError(
                f"sandbox {handle.sandbox_id} is paused", sandbox_id=handle.sandbox_id
            )
        return paths

    async def _spawn(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        with_stdin: bool,
        pid_file: Path,
    ) -> asyncio.subprocess.Process:
        env_flags = [f"--env={k}={v}" for k, v in env.items()]
        return await asyncio.create_subprocess_exec(
            *self._flags(),
            "exec",
            f"--cwd={cwd}",
            f"--internal-pid-file={pid_file}",
            *env_flags,
            sandbox_id,
            *argv,
            stdin=asyncio.subprocess.PIPE if with_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def _not_started(self, sandbox_id: str, cwd: str, stderr: bytes) -> CorralError:
        """The error for a ``runsc exec`` that failed before the command ran."""
        text = stderr.decode(errors="replace").strip()
        if "initial working directory" in text:
            return InvalidArgumentError(
                f"cwd {cwd!r} does not exist in the sandbox", sandbox_id=sandbox_id
            )
        if await self._liveness(sandbox_id) is not Liveness.RUNNING:
            return SandboxNotRunningError(
                f"sandbox {sandbox_id} is not running", sandbox_id=sandbox_id
            )
        return CorralError(f"runsc exec failed: {text[-300:]}", sandbox_id=sandbox_id)

    async def _liveness(self, sandbox_id: str) -> Liveness:
        return await self.inspect(
            SandboxHandle(sandbox_id=sandbox_id, runtime=self.name, created_at=0.0)
        )

    async def exec(self, handle: SandboxHandle, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        """Stream a command's stdout/stderr as produced, then one Exit.

        A command over ``timeout_s`` is killed inside the sandbox and reported as
        ``Exit(124, timed_out=True)``. A missing ``cwd`` raises InvalidArgumentError.
        """
        if request.timeout_s <= 0:
            raise InvalidArgumentError("timeout_s must be positive", sandbox_id=handle.sandbox_id)
        _validate_env(request.env)
        paths = await self._require_running(handle)
        sid = handle.sandbox_id
        cwd = request.cwd or _HOME
        pid_file = paths.exec_dir / f"{uuid.uuid4().hex}.pid"
        # runsc exec starts the command as a session and process-group leader, so the
        # host-side deadline below can end it and everything it started with one
        # ``kill -9 -<pid>``; no in-sandbox ``timeout`` process is needed.
        argv = command_argv(request.cmd)
        started = time.monotonic()
        self._commands[sid] += 1
        try:
            env = {**self._env_of(paths), **request.env}
            events = self._exec(sid, request, env, cwd, pid_file, argv, started)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
        finally:
            self._commands[sid] -= 1
            if self._commands[sid] <= 0:
                del self._commands[sid]

    async def _exec(
        self,
        sid: str,
        request: ExecRequest,
        env: Mapping[str, str],
        cwd: str,
        pid_file: Path,
        argv: list[str],
        started: float,
    ) -> AsyncGenerator[ExecEvent, None]:
        try:
            proc = await self._spawn(
                sid,
                argv,
                env=env,
                cwd=cwd,
                with_stdin=request.stdin is not None,
                pid_file=pid_file,
            )
        except FileNotFoundError as e:  # exec_dir vanished: destroyed concurrently
            raise SandboxNotRunningError(f"sandbox {sid} is not running", sandbox_id=sid) from e
        queue: asyncio.Queue[ExecEvent | None] = asyncio.Queue()
        assert proc.stdout is not None
        assert proc.stderr is not None
        tasks = [
            asyncio.create_task(_pump(proc.stdout, Stdout, queue)),
            asyncio.create_task(_pump(proc.stderr, Stderr, queue)),
        ]
        if request.stdin is not None:
            assert proc.stdin is not None
            tasks.append(asyncio.create_task(_feed(proc.stdin, request.stdin)))
        # stderr is held back until the command is known to have started, so runsc's own
        # error text ("no such working directory") is never passed off as command output.
        held: list[bytes] = []
        command_started = False
        deadline = started + request.timeout_s
        open_streams = 2
        finished = False
        try:
            while open_streams:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        event = await queue.get()
                except TimeoutError:
                    log.warning("exec_host_deadline", sandbox_id=sid)
                    await self._kill_command(sid, pid_file, proc)
                    finished = True
                    yield Exit(exit_code=_TIMEOUT_EXIT, timed_out=True)
                    return
                if event is None:
                    open_streams -= 1
                    continue
                if not command_started:
                    command_started = await asyncio.to_thread(pid_file.exists)
                if isinstance(event, Stderr) and not command_started:
                    held.append(event.data)
                    continue
                if held:
                    yield Stderr(b"".join(held))
                    held.clear()
                yield event
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                rc = await proc.wait()
            finished = True
            if not command_started and not await asyncio.to_thread(pid_file.exists):
                raise await self._not_started(sid, cwd, b"".join(held))
            if held:
                yield Stderr(b"".join(held))
            elapsed = time.monotonic() - started
            if rc == _KILLED_EXIT and elapsed >= request.timeout_s - 0.05:
                yield Exit(exit_code=_TIMEOUT_EXIT, timed_out=True)
                return
            if rc in (_RUNSC_FAILED, _KILLED_EXIT) and await self._liveness(sid) is not (
                Liveness.RUNNING
            ):
                raise SandboxNotRunningError(
                    f"sandbox {sid} stopped while the command ran (out of memory?)",
                    sandbox_id=sid,
                )
            yield Exit(exit_code=rc if rc >= 0 else 128 - rc)
        finally:
            if not finished:  # the caller stopped listening: stop the command too
                await asyncio.shield(self._kill_command(sid, pid_file, proc))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(pid_file.unlink, True)

    async def _kill_command(
        self, sandbox_id: str, pid_file: Path, proc: asyncio.subprocess.Process
    ) -> None:
        """Host-side kill: the command's process group inside the sandbox, then ``runsc exec``.

        The recorded pid is the command's; ``runsc exec`` makes it a process-group leader,
        so killing the group also ends everything it started.
        """
        pid = await _command_pid(pid_file, proc)
        if pid > 0:
            with contextlib.suppress(CorralError):
                done = await self._runsc_call(
                    ["exec", sandbox_id, "/bin/sh", "-c", _KILL_GROUP, "sh", str(pid)], 10.0
                )
                if done.exit_code != 0:  # sandbox wedged: signal the one process from outside
                    await self._runsc_call(["kill", f"--pid={pid}", sandbox_id, "KILL"], 10.0)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10.0):
                    await proc.wait()

    # ---- files -------------------------------------------------------------------

    async def _helper(
        self,
        handle: SandboxHandle,
        script: str,
        path: str,
        *,
        stdin: bytes | None = None,
        timeout_s: float = 300.0,
    ) -> _Completed:
        """Run a file-operation script with ``$1 = path``; collect its output."""
        paths = await self._require_running(handle)
        sid = handle.sandbox_id
        pid_file = paths.exec_dir / f"{uuid.uuid4().hex}.pid"
        try:
            proc = await self._spawn(
                sid,
                ["/bin/sh", "-c", script, "sh", path],
                env={},
                cwd="/",
                with_stdin=stdin is not None,
                pid_file=pid_file,
            )
        except FileNotFoundError as e:
            raise SandboxNotRunningError(f"sandbox {sid} is not running", sandbox_id=sid) from e
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(timeout_s):
                feeding = (
                    _feed(proc.stdin, stdin)
                    if stdin is not None and proc.stdin is not None
                    else _nothing()
                )
                _, out, err = await asyncio.gather(
                    feeding, _read_all(proc.stdout), _read_all(proc.stderr)
                )
                rc = await proc.wait()
        except TimeoutError:
            await self._kill_command(sid, pid_file, proc)
            raise CorralError(f"file operation took over {timeout_s} s", sandbox_id=sid) from None
        try:
            if not await asyncio.to_thread(pid_file.exists):
                raise await self._not_started(sid, "/", err)
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(pid_file.unlink, True)
        return _Completed(rc, out, err)

    @staticmethod
    def _check(done: _Completed, sandbox_id: str, path: str) -> None:
        if done.exit_code == 0:
            return
        if done.exit_code == _E_MISSING:
            raise FileNotFoundInSandboxError(f"no such file: {path}", sandbox_id=sandbox_id)
        if done.exit_code == _E_IS_DIR:
            raise InvalidArgumentError(f"is a directory: {path}", sandbox_id=sandbox_id)
        if done.exit_code == _E_NOT_DIR:
            raise InvalidArgumentError(
                f"not a directory (or a parent is not): {path}", sandbox_id=sandbox_id
            )
        message = done.stderr.decode(errors="replace").strip()[-300:]
        raise InvalidArgumentError(f"{path}: {message or done.exit_code}", sandbox_id=sandbox_id)

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        p = _sandbox_path(path)
        done = await self._helper(handle, _WRITE, p, stdin=data)
        self._check(done, handle.sandbox_id, p)

    async def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        p = _sandbox_path(path)
        done = await self._helper(handle, _READ, p)
        self._check(done, handle.sandbox_id, p)
        return done.stdout

    async def list_dir(self, handle: SandboxHandle, path: str) -> list[FileInfo]:
        p = _sandbox_path(path)
        done = await self._helper(handle, _LIST, p)
        self._check(done, handle.sandbox_id, p)
        fields = done.stdout.split(b"\0")[:-1]
        items: list[FileInfo] = []
        base = p.rstrip("/") or ""
        for i in range(0, len(fields) - 4, 5):
            raw_name, kind, size, mode, mtime = fields[i : i + 5]
            name = raw_name.decode(errors="surrogateescape")
            items.append(
                FileInfo(
                    name=name,
                    path=f"{base}/{name}",
                    type=_FIND_TYPES.get(kind.decode(), FileType.OTHER),
                    size=int(size),
                    mode=int(mode, 8),
                    mtime=float(mtime),
                )
            )
        return sorted(items, key=lambda f: f.name)

    async def remove(self, handle: SandboxHandle, path: str) -> None:
        p = _sandbox_path(path)
        done = await self._helper(handle, _REMOVE, p)
        self._check(done, handle.sandbox_id, p)

    async def make_dir(self, handle: SandboxHandle, path: str) -> None:
        p = _sandbox_path(path)
        done = await self._helper(handle, _MKDIR, p)
        self._check(done, handle.sandbox_id, p)


# ---- module helpers ------------------------------------------------------------------


def oci_config(spec: SandboxSpec, rootfs: Path, cgroups_path: str) -> dict[str, object]:
    """The OCI runtime spec (config.json) for one sandbox whose root is ``rootfs``."""
    env = {**_BASE_ENV, **spec.env}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": _INIT,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/",
            "capabilities": {k: _CAPS for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": spec.sandbox_id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",  # noqa: S108 (inside the sandbox)
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            # On disk (through the overlay), not gVisor's memory-backed default tmpfs.
            {
                "destination": "/tmp",  # noqa: S108 (inside the sandbox)
                "type": "bind",
                "source": str(rootfs / "tmp"),
                "options": ["rbind", "rw"],
            },
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {
                "cpu": {"quota": spec.cpu * _CPU_PERIOD_US, "period": _CPU_PERIOD_US},
                "memory": {"limit": spec.memory_mb * 1024 * 1024},
            },
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
        },
    }


async def _copy_tree(src: Path, dest: Path) -> None:
    """``cp -a``: keeps owners, modes, xattrs and overlayfs whiteouts (device nodes)."""
    if not await asyncio.to_thread(src.exists):
        await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
        return
    proc = await asyncio.create_subprocess_exec(
        "cp", "-a", "--reflink=auto", str(src), str(dest),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise CorralError(f"copying {src.name} failed: {err.decode(errors='replace')[-300:]}")


def _refuse_egress(spec: SandboxSpec) -> None:
    """runsc runs with --network=none: only that works on these kernels (see docs/microvm.md).
    An allow-list is refused rather than ignored, so nobody believes it is in force."""
    if spec.egress:
        raise InvalidArgumentError(
            "gvisor sandboxes have no network on this host; use isolation=microvm for an "
            "egress allow-list",
            sandbox_id=spec.sandbox_id,
        )


def _ensure_tmp(tmp: Path) -> None:
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)


def _sparse_file(path: Path, size: int) -> None:
    with path.open("xb") as fh:
        fh.truncate(size)
    path.chmod(0o600)


def _counter(path: Path, name: str) -> int:
    """The value of ``name`` in a cgroup ``key value`` file; 0 when absent or unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value.strip())
    return 0


def _rmdirs(dirs: list[Path]) -> list[Path]:
    """Remove empty cgroup dirs; returns those still present (busy)."""
    left: list[Path] = []
    for d in dirs:
        try:
            d.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            left.append(d)
    return left


async def _command_pid(pid_file: Path, proc: asyncio.subprocess.Process) -> int:
    """The command's pid inside the sandbox; 0 if it never started.

    ``runsc exec`` writes its internal pid file only after the command has started, so the
    command's first output can come before it: while ``runsc exec`` runs, wait for the file.
    """
    deadline = time.monotonic() + _PID_FILE_WAIT_S
    while True:
        with contextlib.suppress(OSError, ValueError):  # not there yet, or half written
            return int((await asyncio.to_thread(pid_file.read_text)).strip())
        if proc.returncode is not None or time.monotonic() > deadline:
            return 0
        await asyncio.sleep(0.01)


async def _pump(
    stream: asyncio.StreamReader,
    kind: type[Stdout] | type[Stderr],
    queue: asyncio.Queue[ExecEvent | None],
) -> None:
    try:
        while chunk := await stream.read(_CHUNK):
            await queue.put(kind(chunk))
    finally:
        queue.put_nowait(None)


async def _feed(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write stdin in chunks (no extra copy of large inputs), then close it."""
    view = memoryview(data)
    try:
        for i in range(0, len(view), _STDIN_CHUNK):
            writer.write(view[i : i + _STDIN_CHUNK])
            await writer.drain()
        writer.close()
        await writer.wait_closed()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command stopped reading; its exit code says the rest


async def _read_all(stream: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while chunk := await stream.read(_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


async def _nothing() -> None:
    return None


async def _end_helper(proc: asyncio.subprocess.Process) -> None:
    """End an identity helper: close its stdin (it exits without changing anything), then
    kill the host-side ``runsc exec`` if it lingers."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        async with asyncio.timeout(5.0):
            await proc.communicate()
    except (TimeoutError, OSError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
