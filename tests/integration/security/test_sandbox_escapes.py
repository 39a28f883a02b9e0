"""Code inside a real gVisor sandbox tries to reach what it must not; the host checks.

Each test runs the attempt in a sandbox, then looks at the host: its files, processes,
listeners, memory, disk and process table are as they were, and other sandboxes still run.
Traffic goes only to 127.0.0.1 or to a network namespace the test creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Sandboxes

from byoc_agent.protocol.errors import SandboxNotRunningError
from byoc_agent.runtimes.base import (
    EndReason,
    ExecRequest,
    Exit,
    Liveness,
    SandboxHandle,
    Stderr,
    Stdout,
)
from byoc_agent.runtimes.gvisor import GVisorRuntime
from corral.testing import eventually_sync

pytestmark = [pytest.mark.gvisor, pytest.mark.asyncio]


@dataclass(frozen=True, slots=True)
class Ran:
    stdout: str
    stderr: str
    exit_code: int | None  # None: the sandbox stopped while the command ran


async def run(
    runtime: GVisorRuntime, handle: SandboxHandle, cmd: str, timeout_s: float = 60
) -> Ran:
    out: list[bytes] = []
    err: list[bytes] = []
    code: int | None = None
    try:
        async for event in runtime.exec(handle, ExecRequest(cmd, timeout_s=timeout_s)):
            if isinstance(event, Stdout):
                out.append(event.data)
            elif isinstance(event, Stderr):
                err.append(event.data)
            elif isinstance(event, Exit):
                code = event.exit_code
    except SandboxNotRunningError:
        code = None
    return Ran(b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace"), code)


def python(script: str) -> str:
    """A shell command running ``script`` with the sandbox's python3."""
    quoted = script.replace("'", "'\"'\"'")
    return f"python3 -c '{quoted}'"


async def host_still_forks() -> None:
    proc = await asyncio.create_subprocess_exec("true")
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def still_works(runtime: GVisorRuntime, handle: SandboxHandle) -> None:
    ran = await run(runtime, handle, "echo alive")
    assert (ran.stdout, ran.exit_code) == ("alive\n", 0), ran


# ---- files ---------------------------------------------------------------------------


async def test_host_files_outside_the_sandbox_root_cannot_be_read_or_written(
    sandboxes: Sandboxes, host_secret: Callable[[], tuple[Path, str]]
) -> None:
    """Absolute host paths, /proc/1/root, the sandbox's own host dirs and symlinks reach nothing."""
    path, secret = host_secret()
    runtime = sandboxes.runtime()
    sb = await sandboxes.create(runtime)
    upper = runtime.sandbox_dir(sb.sandbox_id)
    attempts = [
        f"cat {path}",
        f"cat /proc/1/root{path}",
        f"cat /proc/self/root{path}",
        f"ls -la {upper} {upper}/disk/upper",
        f"cat {path.parent}/../../{path.parent.name}/{path.name}",
        f"ln -s {path} /root/link && cat /root/link",
        "grep -rl host-secret- /proc/*/root/ 2>/dev/null | head -5",
        f"find / -xdev -name '{path.name}' 2>/dev/null",
        f"mkdir -p {path.parent}; echo overwritten > {path}; echo planted > {path.parent}/planted",
    ]
    for attempt in attempts:
        ran = await run(runtime, sb, attempt, timeout_s=60)
        assert secret not in ran.stdout + ran.stderr, attempt
    # What the sandbox wrote to "the host path" stayed inside the sandbox:
    assert path.read_text() == secret + "\n"
    assert not (path.parent / "planted").exists()
    inside = await run(runtime, sb, f"cat {path.parent}/planted")
    assert inside.stdout == "planted\n"
    # The agent's file API follows the symlink inside the sandbox, to the sandbox's own file.
    assert await runtime.read_file(sb, "/root/link") == b"overwritten\n"


# ---- processes -----------------------------------------------------------------------


@pytest.fixture
def host_process() -> Iterator[tuple[int, str]]:
    """A host process with a unique marker in its command line."""
    marker = f"corral-host-marker-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", marker],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc.pid, marker
    finally:
        proc.kill()
        proc.wait()


async def test_host_processes_are_invisible_and_unkillable(
    sandboxes: Sandboxes, host_process: tuple[int, str]
) -> None:
    """The sandbox's /proc shows only its own processes; signalling a host pid does nothing."""
    pid, marker = host_process
    runtime = sandboxes.runtime()
    sb = await sandboxes.create(runtime)
    listing = await run(
        runtime, sb, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
    )
    assert listing.exit_code == 0
    assert "sleep infinity" in listing.stdout  # the probe does read the sandbox's own
    assert marker not in listing.stdout
    assert "runsc" not in listing.stdout
    pids = await run(
        runtime, sb, python("import os; print(sum(n.isdigit() for n in os.listdir('/proc')))")
    )
    assert 0 < int(pids.stdout) < 10, pids  # init, its sleep, this shell: not the host's
    await run(runtime, sb, f"kill -9 {pid}; kill -9 -1; true")
    os.kill(pid, 0)  # the host process is alive (raises if it is not)
    cmdline = await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
    assert marker.encode() in cmdline


# ---- network ---------------------------------------------------------------------------


class Listener:
    """A TCP listener that counts the connections it accepts."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            with contextlib.suppress(OSError):
                conn.sendall(b"host-listener\n")
            conn.close()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> bool:
        eventually_sync(
            lambda: self.accepted >= count, within_s=timeout_s, every_s=0.02,
            what=f"{count} connection(s) to the host listener",
        )  # fmt: skip
        return self.accepted == count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


CONNECT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=3)
    print("CONNECTED", s.recv(64))
except OSError as e:
    print("REFUSED", type(e).__name__, e)
"""


async def test_a_listener_on_the_host_loopback_is_unreachable(sandboxes: Sandboxes) -> None:
    """127.0.0.1 inside the sandbox is gVisor's own loopback, not the host's."""
    listener = Listener()
    try:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=3) as control:
            assert control.recv(64) == b"host-listener\n"  # it does answer from the host
        assert await asyncio.to_thread(listener.wait_for, 1)
        runtime = sandboxes.runtime()
        sb = await sandboxes.create(runtime)
        ran = await run(
            runtime, sb, f"python3 - 127.0.0.1 {listener.port} <<'EOF'\n{CONNECT}\nEOF\n"
        )
        assert "REFUSED" in ran.stdout, ran
        assert "CONNECTED" not in ran.stdout
        assert listener.accepted == 1
    finally:
        listener.close()


NETNS_PROBE = Path(__file__).with_name("netns_probe.py")
METADATA_IP = "169.254.169.254"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def metadata_namespace() -> Iterator[str]:
    """A network namespace where 169.254.169.254:80 answers, as a cloud's metadata does."""
    for binary, package in (("ip", "iproute2"), ("nsenter", "util-linux")):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} (Debian package {package}) is not on PATH")
    name = f"corral-sec-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    server = None
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", f"{METADATA_IP}/32", "dev", "lo")
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", METADATA_SERVER],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        yield name
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=10)
        _ip("netns", "delete", name)


METADATA_SERVER = f"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{METADATA_IP}", 80))
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"iam-role-credentials\\n")
    c.close()
"""


async def test_a_metadata_endpoint_reachable_from_the_agent_is_not_from_the_sandbox(
    sandboxes: Sandboxes, metadata_namespace: str
) -> None:
    """Started in a namespace where 169.254.169.254 answers, a sandbox still cannot reach it."""
    # nsenter joins only the network namespace (``ip netns exec`` would also remount /sys
    # and hide the cgroup hierarchies runsc needs).
    in_namespace = ["nsenter", f"--net=/run/netns/{metadata_namespace}", sys.executable]
    control = await asyncio.to_thread(
        subprocess.run,
        [*in_namespace, "-c", CONNECT, METADATA_IP, "80"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "CONNECTED" in control.stdout, control  # the agent's side does reach it
    assert "iam-role-credentials" in control.stdout
    probe = await asyncio.to_thread(
        subprocess.run,
        [
            *in_namespace,
            str(NETNS_PROBE),
            str(sandboxes.root / "netns-state"),
            str(sandboxes.templates_root),
            f"python3 - {METADATA_IP} 80 <<'EOF'\n{CONNECT}\nEOF\n",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["exit_code"] == 0, result
    assert "REFUSED" in result["stdout"], result
    assert "iam-role-credentials" not in result["stdout"]


# ---- memory ----------------------------------------------------------------------------

HOG = """
import sys
chunks = []
while True:
    chunks.append(bytearray(8 * 1024 * 1024))
"""


async def test_exhausting_memory_kills_only_that_sandbox_and_is_recorded_as_oom(
    sandboxes: Sandboxes,
) -> None:
    """Over its limit the sandbox dies as ``oom_killed``; the host and its neighbour live on."""
    runtime = sandboxes.runtime()
    hog = await sandboxes.create(runtime, memory_mb=128)
    neighbour = await sandboxes.create(runtime, memory_mb=128)
    ran = await run(runtime, hog, f"python3 - <<'EOF'\n{HOG}\nEOF\n", timeout_s=120)
    assert ran.exit_code != 0, ran
    assert await runtime.inspect(hog) is not Liveness.RUNNING
    assert await runtime.stop_reason(hog) is EndReason.OOM_KILLED
    await still_works(runtime, neighbour)
    assert await runtime.stop_reason(neighbour) is None
    await host_still_forks()


# ---- disk ------------------------------------------------------------------------------


async def test_filling_the_disk_stops_at_the_quota_and_hurts_nobody(
    sandboxes: Sandboxes,
) -> None:
    """Writes past ``disk_mb`` get ENOSPC in the sandbox; the host's disk barely moves."""
    quota_mb = 64
    runtime = sandboxes.runtime(disk_mb=quota_mb)
    sb = await sandboxes.create(runtime)
    neighbour = await sandboxes.create(runtime)
    host_free_before = shutil.disk_usage(sandboxes.root).free
    ran = await run(
        runtime,
        sb,
        "dd if=/dev/zero of=/root/fill bs=1M count=1024 2>&1; echo rc=$?; "
        "dd if=/dev/zero of=/tmp/more bs=1M count=64 2>&1; echo rc=$?; "
        "du -sm /root/fill /tmp/more",
        timeout_s=120,
    )
    assert "No space left on device" in ran.stdout, ran
    assert "rc=0" not in ran.stdout
    used = sum(int(line.split()[0]) for line in ran.stdout.splitlines()[-2:])
    assert used <= quota_mb, ran.stdout
    host_used_mb = (host_free_before - shutil.disk_usage(sandboxes.root).free) / 2**20
    assert host_used_mb < quota_mb + 16, host_used_mb
    # Init's stdio (the host's runsc.log) is not a way around the quota either.
    outside = await asyncio.to_thread(_bytes_outside_the_disk, runtime.sandbox_dir(sb.sandbox_id))
    leak = await run(
        runtime,
        sb,
        "for fd in 0 1 2; do head -c 8000000 /dev/zero > /proc/1/fd/$fd; done; echo done",
        timeout_s=120,
    )
    assert "done" in leak.stdout, leak
    grown = (
        await asyncio.to_thread(_bytes_outside_the_disk, runtime.sandbox_dir(sb.sandbox_id))
        - outside
    )
    assert grown < 64 * 1024, grown
    await still_works(runtime, sb)
    await still_works(runtime, neighbour)
    freed = await run(runtime, sb, "rm /root/fill /tmp/more; echo again > /root/ok; cat /root/ok")
    assert freed.stdout == "again\n", freed
    image = runtime.sandbox_dir(sb.sandbox_id) / "disk.img"
    await runtime.destroy(sb)  # and the loop device goes with the sandbox
    proc = await asyncio.create_subprocess_exec(
        "losetup", "-j", str(image), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out == b""
    assert not image.exists()


def _bytes_outside_the_disk(sandbox_dir: Path) -> int:
    """Bytes in the sandbox's host directory apart from its quota disk and its root mount."""
    total = 0
    for root, dirs, files in os.walk(sandbox_dir):
        here = Path(root)
        dirs[:] = [
            d
            for d in dirs
            if here / d not in (sandbox_dir / "disk", sandbox_dir / "bundle" / "rootfs")
        ]
        total += sum(
            (here / f).stat().st_size for f in files if here / f != sandbox_dir / "disk.img"
        )
    return total


# ---- processes: fork bomb --------------------------------------------------------------

FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def _host_tasks() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


async def test_a_fork_bomb_is_contained_by_the_sandbox_process_cap(sandboxes: Sandboxes) -> None:
    """The bomb ends its sandbox at ``pids_max`` (``pids_limit``); host and neighbour run on."""
    pids_max = 160
    runtime = sandboxes.runtime(pids_max=pids_max)
    bomb = await sandboxes.create(runtime, memory_mb=1024)
    neighbour = await sandboxes.create(runtime)
    limits = [d / "pids.max" for d in runtime.cgroup_dirs(bomb.sandbox_id)]
    assert [f.read_text().strip() for f in limits if f.exists()] == [str(pids_max)]
    before = _host_tasks()
    peak = before
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _host_tasks())
            await asyncio.sleep(0.02)  # the sampling period

    sampler = asyncio.create_task(sample())
    try:
        ran = await run(runtime, bomb, f"python3 - <<'EOF'\n{FORK_BOMB}\nEOF\n", timeout_s=60)
    finally:
        stop.set()
        await sampler
    assert ran.exit_code is None or ran.exit_code != 0, ran
    assert await runtime.inspect(bomb) is not Liveness.RUNNING
    assert await runtime.stop_reason(bomb) is EndReason.PIDS_LIMIT
    # Host processes grew by at most the cap (other helpers' work adds noise: generous slack).
    assert peak - before < pids_max + 200, (before, peak)
    await still_works(runtime, neighbour)
    await host_still_forks()
