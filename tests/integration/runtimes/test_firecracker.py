"""The Firecracker runtime against a stand-in for Firecracker and its jailer (firecracker_api).

The stand-in runs as a real process started by the runtime through the ``jailer`` path it is
given; it checks every API request against Firecracker's schema and state machine and records
it. The real-binary run is the Runtime contract suite (runtime_factories.FIRECRACKER).
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import gzip
import json
import lzma
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from byoc_agent.protocol.errors import CorralError, InvalidArgumentError, SandboxNotRunningError
from byoc_agent.runtimes import templates
from byoc_agent.runtimes.base import (
    SNAPSHOT_META,
    ExecRequest,
    Exit,
    Liveness,
    SandboxHandle,
    SandboxSpec,
    Stdout,
)
from byoc_agent.runtimes.firecracker import (
    GUEST_CID,
    VSOCK_PORT,
    FirecrackerApi,
    FirecrackerError,
    FirecrackerRuntime,
    Jail,
    Limits,
    Network,
    extract_vmlinux,
    jail_id,
    jailer_argv,
)
from byoc_agent.runtimes.guest import guestd
from byoc_agent.runtimes.guest.channel import GuestChannel
from corral.testing import eventually

pytestmark = pytest.mark.microvm

STAND_IN = Path(__file__).with_name("firecracker_api.py")
FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64


def fake_bzimage(payload: bytes = FAKE_ELF) -> bytes:
    """A bzImage-shaped file: a setup header, then the kernel as an xz stream, then trailer."""
    return b"MZ" + b"\0" * 0x1F0 + b"HdrS" + b"\0" * 512 + lzma.compress(payload) + b"\0" * 64


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """``firecracker`` (never run: the jailer only copies it) and a ``jailer`` that is the
    stand-in."""
    d = tmp_path / "bin"
    d.mkdir()
    (d / "firecracker").write_text("#!/bin/sh\necho 'not a real firecracker' >&2\nexit 1\n")
    (d / "jailer").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    for name in ("firecracker", "jailer"):
        (d / name).chmod(0o755)
    return d


@pytest.fixture
def chroot_base() -> Iterator[Path]:
    """Short, so the API and vsock socket paths inside the jail fit in sun_path."""
    base = Path(tempfile.mkdtemp(prefix="fc"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def small_templates(tmp_path: Path) -> Path:
    """A built-looking ``base`` template with a tiny tree (the disk is still a real ext4)."""
    root = tmp_path / "templates"
    tree = root / "base" / templates.ROOTFS
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("NAME=stand-in\n")
    (root / "base" / templates.STAMP).write_text(templates.RECIPES["base"].digest())
    return root


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "bzImage"
    path.write_bytes(fake_bzimage())
    return path


def make_runtime(
    tmp_path: Path,
    bin_dir: Path,
    chroot_base: Path,
    small_templates: Path,
    kernel: Path,
    network: Network | None = None,
) -> FirecrackerRuntime:
    return FirecrackerRuntime(
        tmp_path / "state",
        small_templates,
        kernel=kernel,
        cache_dir=tmp_path / "cache",
        firecracker=str(bin_dir / "firecracker"),
        jailer=str(bin_dir / "jailer"),
        chroot_base=chroot_base,
        uid=os.getuid(),
        gid=os.getgid(),
        cgroup_version="2",
        network=network,
        boot_timeout_s=20,
    )


@pytest_asyncio.fixture
async def runtime(
    tmp_path: Path, bin_dir: Path, chroot_base: Path, small_templates: Path, kernel: Path
) -> AsyncIterator[FirecrackerRuntime]:
    rt = make_runtime(tmp_path, bin_dir, chroot_base, small_templates, kernel)
    try:
        yield rt
    finally:  # every sandbox the test left: its stand-in process, jail and state
        left = rt.sandbox_dir("x").parent
        for d in sorted(left.iterdir()) if left.exists() else []:
            await rt.destroy(SandboxHandle(d.name, rt.name, 0.0))


def spec(sandbox_id: str = "fc-test", cpu: int = 2, memory_mb: int = 256) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id=sandbox_id,
        tenant_id="tenant-fc",
        template="base",
        cpu=cpu,
        memory_mb=memory_mb,
        timeout_s=60,
        env={"GREETING": "hi"},
    )


def requests(rt: FirecrackerRuntime, sandbox_id: str) -> list[dict[str, Any]]:
    """What the stand-in recorded for this sandbox's jail, one entry per request or start."""
    log = rt.jail(sandbox_id).dir / "requests.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def calls(entries: list[dict[str, Any]]) -> list[str]:
    return [f"{e['method']} {e['path']}" for e in entries if "method" in e]


async def run(rt: FirecrackerRuntime, handle: SandboxHandle, cmd: str) -> str:
    chunks: list[bytes] = []
    exits: list[Exit] = []
    async for event in rt.exec(handle, ExecRequest(cmd, timeout_s=10)):
        if isinstance(event, Stdout):
            chunks.append(event.data)
        elif isinstance(event, Exit):
            exits.append(event)
    assert [e.exit_code for e in exits] == [0]
    return b"".join(chunks).decode()


@pytest.mark.asyncio
async def test_boot_configures_the_vm_exactly_as_firecracker_expects(
    runtime: FirecrackerRuntime,
) -> None:
    """Boot source, root drive, machine config, vsock, then InstanceStart — each accepted."""
    handle = await runtime.create(spec())
    entries = requests(runtime, "fc-test")
    assert calls(entries) == [
        "PUT /boot-source",
        "PUT /drives/rootfs",
        "PUT /machine-config",
        "PUT /vsock",
        "PUT /actions",
    ]
    assert [e["status"] for e in entries if "method" in e] == [204] * 5
    bodies = {f"{e['method']} {e['path']}": e["body"] for e in entries if "method" in e}
    boot = bodies["PUT /boot-source"]
    assert boot["kernel_image_path"] == "/vmlinux"
    assert boot["initrd_path"] == "/initrd.cpio"
    assert f"corral.channel=vsock:{VSOCK_PORT}" in boot["boot_args"]
    assert "corral.hostname=fc-test" in boot["boot_args"]
    assert bodies["PUT /drives/rootfs"] == {
        "drive_id": "rootfs",
        "path_on_host": "/rootfs.ext4",
        "is_root_device": True,
        "is_read_only": False,
    }
    assert bodies["PUT /machine-config"] == {"vcpu_count": 2, "mem_size_mib": 256}
    assert bodies["PUT /vsock"] == {"guest_cid": GUEST_CID, "uds_path": "/v.sock"}
    assert bodies["PUT /actions"] == {"action_type": "InstanceStart"}

    root = runtime.jail("fc-test").root
    assert (root / "vmlinux").read_bytes() == FAKE_ELF  # extracted from the bzImage
    assert (root / "rootfs.ext4").stat().st_size > 0
    # The guest daemon answers over the vsock proxy (CONNECT handshake, then wire frames).
    assert await run(runtime, handle, "uname") == "uname #1 on boot"
    assert await runtime.inspect(handle) is Liveness.RUNNING

    await runtime.destroy(handle)
    assert await runtime.inspect(handle) is Liveness.MISSING
    assert not runtime.jail("fc-test").dir.exists()
    assert not runtime.sandbox_dir("fc-test").exists()


@pytest.mark.asyncio
async def test_jailer_gets_the_id_binary_uid_chroot_and_cgroup_limits(
    runtime: FirecrackerRuntime, bin_dir: Path, chroot_base: Path
) -> None:
    """The jailer's argv: --id, --exec-file, --uid/--gid, --chroot-base-dir, cgroup v2 limits
    (cpu.max from the vCPUs, memory.max from the memory plus the VMM's overhead), then ``--``
    and Firecracker's own --api-sock inside the chroot."""
    base = await asyncio.to_thread(chroot_base.resolve)
    await runtime.create(spec(cpu=2, memory_mb=256))
    jail = runtime.jail("fc-test")
    argv = json.loads((jail.dir / "jailer-argv.json").read_text())
    assert argv == [
        "--id", jail_id("fc-test"),
        "--exec-file", str((bin_dir / "firecracker").resolve()),
        "--uid", str(os.getuid()),
        "--gid", str(os.getgid()),
        "--chroot-base-dir", str(base),
        "--cgroup-version", "2",
        "--cgroup", "cpu.max=200000 100000",
        "--cgroup", f"memory.max={(256 + 64) << 20}",
        "--",
        "--api-sock", "/api.sock",
    ]  # fmt: skip
    assert jail.dir == base / "firecracker" / jail_id("fc-test")


def test_jailer_uses_cgroup_v1_files_on_v1_hosts() -> None:
    """On cgroup v1 the same limits go to cpu.cfs_* and memory.limit_in_bytes."""
    jail = Jail(Path("/srv/jailer"), "firecracker", "sb-1")
    argv = jailer_argv(
        jailer="jailer", firecracker="/usr/bin/firecracker", jail=jail, uid=123, gid=100,
        cgroup_version="1", limits=Limits(cpu=1, memory_mb=512),
    )  # fmt: skip
    cut = argv.index("--")
    assert argv[cut:] == ["--", "--api-sock", "/api.sock"]
    cgroups = [argv[i + 1] for i, a in enumerate(argv[:cut]) if a == "--cgroup"]
    assert cgroups == [
        "cpu.cfs_period_us=100000",
        "cpu.cfs_quota_us=100000",
        f"memory.limit_in_bytes={(512 + 64) << 20}",
    ]
    assert argv[argv.index("--cgroup-version") + 1] == "1"


def test_jail_ids_are_what_the_jailer_accepts() -> None:
    for sandbox_id in ("sb_1.x", "a" * 63, "Z"):
        jid = jail_id(sandbox_id)
        assert len(jid) <= 64
        assert all(c.isalnum() or c == "-" for c in jid)
    assert jail_id("a_b") != jail_id("a-b")


@pytest.mark.asyncio
async def test_network_interface_is_configured_only_when_egress_is_asked(
    tmp_path: Path, bin_dir: Path, chroot_base: Path, small_templates: Path, kernel: Path
) -> None:
    rt = make_runtime(
        tmp_path, bin_dir, chroot_base, small_templates, kernel, network=Network(tap="fc-tap0")
    )
    handle = await rt.create(spec("fc-net"))
    try:
        entries = [e for e in requests(rt, "fc-net") if "method" in e]
        net = [e for e in entries if e["path"].startswith("/network-interfaces/")]
        assert [(e["path"], e["body"], e["status"]) for e in net] == [
            ("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "fc-tap0"}, 204)
        ]
        assert calls(entries)[-1] == "PUT /actions"
    finally:
        await rt.destroy(handle)


@pytest.mark.asyncio
async def test_pause_and_resume_save_and_load_a_full_snapshot(
    runtime: FirecrackerRuntime,
) -> None:
    """pause: sync, PATCH /vm Paused, snapshot/create (Full), process gone; resume: a fresh
    jailed process whose first and only call is snapshot/load with resume_vm."""
    handle = await runtime.create(spec())
    assert await run(runtime, handle, "a") == "a #1 on boot"
    before = len(requests(runtime, "fc-test"))

    await runtime.pause(handle)
    paused = requests(runtime, "fc-test")[before:]
    assert calls(paused) == ["PATCH /vm", "PUT /snapshot/create"]
    assert paused[0]["body"] == {"state": "Paused"}
    assert paused[1]["body"] == {
        "snapshot_type": "Full",
        "snapshot_path": "/paused/vm.state",
        "mem_file_path": "/paused/memory.bin",
    }
    assert all(e["status"] == 204 for e in paused)
    assert await runtime.inspect(handle) is Liveness.PAUSED
    with pytest.raises(SandboxNotRunningError, match="paused"):
        await run(runtime, handle, "b")

    before = len(requests(runtime, "fc-test"))
    await runtime.resume(handle)
    resumed = requests(runtime, "fc-test")[before:]
    assert "event" in resumed[0]  # a new Firecracker process
    assert calls(resumed) == ["PUT /snapshot/load"]
    assert resumed[1]["body"] == {
        "snapshot_path": "/paused/vm.state",
        "mem_backend": {"backend_type": "File", "backend_path": "/paused/memory.bin"},
        "resume_vm": True,
    }
    assert resumed[1]["status"] == 204
    assert await runtime.inspect(handle) is Liveness.RUNNING
    # The stand-in guest's "memory" (its exec count) came back with the VM.
    assert await run(runtime, handle, "b") == "b #2 on boot"
    assert not (runtime.jail("fc-test").root / "paused").exists()


@pytest.mark.asyncio
async def test_snapshot_then_restore_makes_a_new_machine(
    runtime: FirecrackerRuntime, tmp_path: Path
) -> None:
    """snapshot: Paused, snapshot/create, Resumed (the sandbox runs on); restore: a new jail
    whose only call is snapshot/load, then the guest gets its new identity."""
    handle = await runtime.create(spec())
    await run(runtime, handle, "a")
    before = len(requests(runtime, "fc-test"))
    dest = tmp_path / "snaps" / "s1"
    await runtime.snapshot(handle, dest)
    taken = requests(runtime, "fc-test")[before:]
    assert calls(taken) == ["PATCH /vm", "PUT /snapshot/create", "PATCH /vm"]
    assert [e["body"].get("state") for e in taken] == ["Paused", None, "Resumed"]
    assert taken[1]["body"]["snapshot_type"] == "Full"
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [SNAPSHOT_META, "vm.state", "memory.bin", "rootfs.ext4"]
    )
    assert json.loads((dest / SNAPSHOT_META).read_text())["runtime"] == "firecracker"
    assert await run(runtime, handle, "still") == "still #2 on boot"

    with pytest.raises(InvalidArgumentError, match="already exists"):
        await runtime.snapshot(handle, dest)

    fork = await runtime.restore(spec("fc-fork"), dest)
    try:
        entries = requests(runtime, "fc-fork")
        assert calls(entries) == ["PUT /snapshot/load"]
        assert entries[1]["body"]["resume_vm"] is True
        assert entries[1]["body"]["snapshot_path"] == "/restore/vm.state"
        # The fork continues the snapshot's memory under its own name.
        assert await run(runtime, fork, "f") == "f #2 on fc-fork"
        assert await run(runtime, handle, "p") == "p #3 on boot"
    finally:
        await runtime.destroy(fork)
    assert not runtime.jail("fc-fork").dir.exists()


@pytest.mark.asyncio
async def test_firecracker_fault_messages_surface_as_clear_errors(
    runtime: FirecrackerRuntime, chroot_base: Path
) -> None:
    """A 400 from Firecracker fails create with its fault_message; nothing is left behind."""
    (chroot_base / "faults.json").write_text(
        json.dumps({"PUT /machine-config": "Invalid Memory Configuration: too big"})
    )
    with pytest.raises(FirecrackerError) as caught:
        await runtime.create(spec())
    message = str(caught.value)
    assert "PUT /machine-config" in message
    assert "Invalid Memory Configuration: too big" in message
    assert isinstance(caught.value, CorralError)
    assert not runtime.jail("fc-test").dir.exists()
    assert not runtime.sandbox_dir("fc-test").exists()


@pytest.mark.asyncio
async def test_a_jailer_that_fails_is_reported_with_its_output(
    runtime: FirecrackerRuntime, bin_dir: Path
) -> None:
    (bin_dir / "jailer").write_text("#!/bin/sh\necho 'jailer: cannot create cgroup' >&2\nexit 1\n")
    with pytest.raises(CorralError, match="cannot create cgroup"):
        await runtime.create(spec())
    assert not runtime.sandbox_dir("fc-test").exists()


@pytest.mark.asyncio
async def test_the_stand_in_enforces_firecracker_order(
    bin_dir: Path, chroot_base: Path, tmp_path: Path
) -> None:
    """The checks the tests rely on really bite: out-of-order or malformed requests get 400s."""
    jail = Jail(chroot_base, "firecracker", "order-1")
    proc = await asyncio.create_subprocess_exec(
        str(bin_dir / "jailer"), *jailer_argv(
            jailer="jailer", firecracker=str(bin_dir / "firecracker"), jail=jail,
            uid=os.getuid(), gid=os.getgid(), cgroup_version="2", limits=Limits(1, 128),
        )[1:],
    )  # fmt: skip
    try:
        sock = jail.root / "api.sock"
        await eventually(sock.exists, every_s=0.01, what="the stand-in's API socket")
        api = FirecrackerApi(sock, sandbox_id="order-1")
        (jail.root / "vmlinux").write_bytes(FAKE_ELF)
        (jail.root / "rootfs.ext4").write_bytes(b"\0" * 4096)

        async def refused(method: str, path: str, body: dict[str, Any], fault: str) -> None:
            with pytest.raises(FirecrackerError, match=fault):
                await api.request(method, path, body)

        await refused("PUT", "/actions", {"action_type": "InstanceStart"}, "kernel configuration")
        await refused("PATCH", "/vm", {"state": "Paused"}, "not running")
        await refused("PUT", "/machine-config", {"vcpu_count": 33, "mem_size_mib": 128},
                      "vcpu_count")  # fmt: skip
        await refused("PUT", "/machine-config", {"vcpus": 1, "mem_size_mib": 128}, "vcpu")
        await refused("PUT", "/boot-source", {"kernel_image_path": "/nope"}, "Kernel file")
        root_drive = {"drive_id": "root", "is_root_device": True, "path_on_host": "/rootfs.ext4"}
        await refused("PUT", "/drives/a", root_drive, "does not match")
        await refused("GET", "/nowhere", {}, "Invalid request")
        await api.put("/boot-source", {"kernel_image_path": "/vmlinux"})
        await refused("PUT", "/actions", {"action_type": "InstanceStart"}, "root block device")
        await refused("PUT", "/snapshot/load", {"snapshot_path": "/s",
                                                "mem_file_path": "/m"}, "not allowed")  # fmt: skip
        await api.put("/drives/root", root_drive)
        await api.put("/actions", {"action_type": "InstanceStart"})
        await refused("PUT", "/snapshot/create", {"snapshot_path": "/s", "mem_file_path": "/m"},
                      "not paused")  # fmt: skip
        await refused("PUT", "/drives/root", root_drive, "after starting")
        await api.patch("/vm", {"state": "Paused"})
        await api.put("/snapshot/create", {"snapshot_path": "/s", "mem_file_path": "/m"})
        assert (jail.root / "s").exists()
        assert (jail.root / "m").exists()
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.asyncio
async def test_an_agent_restart_reattaches_over_a_new_vsock_connection(
    runtime: FirecrackerRuntime,
    tmp_path: Path,
    bin_dir: Path,
    chroot_base: Path,
    small_templates: Path,
    kernel: Path,
) -> None:
    handle = await runtime.create(spec())
    again = make_runtime(tmp_path, bin_dir, chroot_base, small_templates, kernel)
    assert await again.recover(handle) is Liveness.RUNNING
    assert await run(again, handle, "x") == "x #1 on boot"


@pytest.mark.asyncio
async def test_bad_specs_are_refused_before_anything_starts(runtime: FirecrackerRuntime) -> None:
    with pytest.raises(InvalidArgumentError, match="cpu"):
        await runtime.create(spec(cpu=33))
    with pytest.raises(InvalidArgumentError, match="memory_mb"):
        await runtime.create(spec(memory_mb=64))
    with pytest.raises(InvalidArgumentError, match="sandbox_id"):
        await runtime.create(spec("../x"))


def test_extract_vmlinux_unpacks_the_kernels_compressed_payload() -> None:
    """What scripts/extract-vmlinux does, for the xz, gzip and bzip2 payloads."""
    assert extract_vmlinux(fake_bzimage()) == FAKE_ELF
    assert extract_vmlinux(FAKE_ELF) == FAKE_ELF
    for compress in (gzip.compress, bz2.compress):
        image = b"MZ" + b"\0" * 600 + compress(FAKE_ELF) + b"trailer"
        assert extract_vmlinux(image) == FAKE_ELF
    with pytest.raises(InvalidArgumentError, match="vmlinux"):
        extract_vmlinux(b"MZ" + b"\0" * 1000 + lzma.compress(b"not an elf"))


@pytest.mark.asyncio
async def test_guestd_serves_one_agent_connection_at_a_time_on_a_stream_socket(
    tmp_path: Path,
) -> None:
    """The guest daemon's vsock mode, on a unix socket: it serves frames, and a new agent
    connection takes over from the old one (whose channel then closes)."""
    path = Path(tempfile.mkdtemp(prefix="gd")) / "g.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    thread = threading.Thread(target=guestd.serve_listener, args=(listener,), daemon=True)
    thread.start()
    first = GuestChannel(path)
    second = GuestChannel(path)
    try:
        await first.connect(5)
        frames = await first.call(
            {"op": "exec", "cmd": "echo $GREETING", "env": {"GREETING": "hello"},
             "cwd": str(tmp_path), "timeout_s": 5},
        )  # fmt: skip
        assert [h["ev"] for h, _ in frames] == ["stdout", "exit"]
        assert frames[0][1] == b"hello\n"
        assert frames[-1][0]["code"] == 0

        await second.connect(5)
        await eventually(lambda: first.closed, every_s=0.01, what="guestd to drop the first agent")
        assert [h["ev"] for h, _ in await second.call({"op": "ping"})] == ["pong"]
    finally:
        await first.close()
        await second.close()
        # accept() fails once the listening socket is shut down: serve_listener returns.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)
        assert not thread.is_alive()
        shutil.rmtree(path.parent, ignore_errors=True)


def test_firecracker_is_registered_as_a_microvm_runtime() -> None:
    from byoc_agent import runtimes
    from byoc_agent.runtimes.multi import isolation_of

    assert isolation_of("firecracker") == "microvm"
    if shutil.which("firecracker") is None:
        assert "firecracker" not in runtimes.available()
        with pytest.raises(InvalidArgumentError, match="'firecracker' on PATH"):
            runtimes.build_runtime("firecracker", state_dir=Path("s"), templates_root=Path("t"))


@pytest.mark.asyncio
async def test_a_missing_guest_kernel_is_named_in_the_error(
    tmp_path: Path, bin_dir: Path, chroot_base: Path, small_templates: Path
) -> None:
    rt = make_runtime(tmp_path, bin_dir, chroot_base, small_templates, tmp_path / "nope")
    with pytest.raises(InvalidArgumentError, match="is not a file"):
        await rt.create(spec())
    rt = FirecrackerRuntime(
        tmp_path / "state2",
        small_templates,
        firecracker=str(bin_dir / "firecracker"),
        jailer=str(bin_dir / "jailer"),
        chroot_base=chroot_base,
    )
    with pytest.raises(InvalidArgumentError, match="CORRAL_AGENT_FIRECRACKER_KERNEL"):
        await rt.create(spec())
    assert not rt.sandbox_dir("fc-test").exists()


def test_guestd_picks_its_channel_from_the_kernel_command_line() -> None:
    """virtio-serial unless corral.channel=vsock:<port> (what the Firecracker runtime passes)."""
    assert guestd.vsock_port({}) is None
    assert guestd.vsock_port({"corral.channel": "virtio-serial"}) is None
    assert guestd.vsock_port({"corral.channel": f"vsock:{VSOCK_PORT}"}) == VSOCK_PORT
    with pytest.raises(ValueError, match=r"corral\.channel"):
        guestd.vsock_port({"corral.channel": "vsock:x"})
    args = dict(w.split("=", 1) for w in FirecrackerRuntime.boot_args("h").split() if "=" in w)
    assert guestd.vsock_port(args) == VSOCK_PORT
