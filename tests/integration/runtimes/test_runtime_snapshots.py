"""Pause, resume, snapshot and restore, for every runtime that can (see runtime_factories)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import pytest
from runtime_factories import GVISOR, MICROVM, Sandboxes

from byoc_agent.protocol.errors import RetryableError, SandboxNotRunningError
from byoc_agent.runtimes.base import (
    ExecRequest,
    Exit,
    Liveness,
    Runtime,
    SandboxHandle,
    SandboxSpec,
    Snapshotting,
    Stdout,
)
from byoc_agent.runtimes.gvisor import GVisorRuntime
from corral.testing import eventually

pytestmark = pytest.mark.asyncio


@pytest.fixture
def snapshots(runtime: Runtime) -> Snapshotting:
    if not isinstance(runtime, Snapshotting):
        pytest.skip(f"{runtime.name} cannot pause or snapshot sandboxes")
    return runtime


async def out(runtime: Runtime, handle: SandboxHandle, cmd: str) -> str:
    chunks: list[bytes] = []
    async for event in runtime.exec(handle, ExecRequest(cmd, timeout_s=30)):
        if isinstance(event, Stdout):
            chunks.append(event.data)
        elif isinstance(event, Exit):
            assert event.exit_code == 0, (cmd, b"".join(chunks))
    return b"".join(chunks).decode()


# A process that keeps a counter in memory only; its state survives only if memory does.
COUNTER = """
import time
n = 0
while True:
    n += 1
    with open("/tmp/count", "w") as fh:
        fh.write(str(n))
    time.sleep(0.05)  # the counter's tick
"""


async def start_counter(runtime: Runtime, handle: SandboxHandle) -> str:
    await runtime.write_file(handle, "/work/counter.py", COUNTER.encode())
    pid = await out(runtime, handle, "nohup python3 /work/counter.py >/dev/null 2>&1 & echo $!")

    async def counting() -> str:
        return (await out(runtime, handle, "test -s /tmp/count && echo yes || true")).strip()

    # Generous: python starts slowly in an emulated VM.
    await eventually(counting, within_s=60, every_s=0.1, what="the counter to start")
    return pid.strip()


async def count(runtime: Runtime, handle: SandboxHandle) -> int:
    """The counter's value (0 while it rewrites its file)."""
    text = (await runtime.read_file(handle, "/tmp/count")).strip()
    return int(text) if text.isdigit() else 0


async def test_files_and_processes_survive_five_pause_resume_cycles(
    runtime: Runtime, snapshots: Snapshotting, sandbox: SandboxHandle
) -> None:
    """A file written before each pause is there after resume; the same process runs on."""
    pid = await start_counter(runtime, sandbox)
    for cycle in range(5):
        await runtime.write_file(sandbox, f"/work/cycle-{cycle}", f"before pause {cycle}".encode())
        await snapshots.pause(sandbox)
        assert await runtime.inspect(sandbox) is Liveness.PAUSED
        with pytest.raises(SandboxNotRunningError, match="paused"):
            await runtime.read_file(sandbox, f"/work/cycle-{cycle}")
        await snapshots.resume(sandbox)
        assert await runtime.inspect(sandbox) is Liveness.RUNNING
        for earlier in range(cycle + 1):
            got = await runtime.read_file(sandbox, f"/work/cycle-{earlier}")
            assert got == f"before pause {earlier}".encode()
        # The in-memory counter goes on from where it was: same pid, still counting.
        assert (await out(runtime, sandbox, f"kill -0 {pid} && echo alive")).strip() == "alive"
    first = await count(runtime, sandbox)

    async def counted_on() -> bool:
        return await count(runtime, sandbox) > first

    await eventually(counted_on, what="the counter to go on after the last resume")


async def test_a_restored_snapshot_is_a_new_machine_with_the_old_state(
    runtime: Runtime,
    snapshots: Snapshotting,
    sandboxes: Sandboxes,
    sandbox: SandboxHandle,
    tmp_path: Path,
) -> None:
    """Restore keeps files and memory; the copy has its own hostname, machine-id, randomness."""
    await runtime.write_file(sandbox, "/work/state", b"from the parent")
    before = {
        "hostname": (await out(runtime, sandbox, "hostname")).strip(),
        "machine_id": (await runtime.read_file(sandbox, "/etc/machine-id")).strip(),
    }
    snap = tmp_path / "snap-1"
    await snapshots.snapshot(sandbox, snap)
    # The parent runs on after its snapshot.
    assert (await out(runtime, sandbox, "echo still here")).strip() == "still here"

    child_spec = SandboxSpec(
        # Not "<parent id>-fork": runsc takes a container id prefix as a match, so no id
        # may be a prefix of another's (Corral's own ids are fixed-length).
        sandbox_id=f"fork-{sandbox.sandbox_id}"[:63],
        tenant_id="tenant-contract",
        template="base",
        cpu=1,
        memory_mb=256,
        timeout_s=300,
    )
    child = await snapshots.restore(child_spec, snap)
    sandboxes.adopt(child)
    assert child.sandbox_id != sandbox.sandbox_id
    assert await runtime.read_file(child, "/work/state") == b"from the parent"
    assert (await out(runtime, child, "hostname")).strip() == child.sandbox_id
    assert (await out(runtime, child, "hostname")).strip() != before["hostname"]
    child_machine_id = (await runtime.read_file(child, "/etc/machine-id")).strip()
    assert re.fullmatch(rb"[0-9a-f]{32}", child_machine_id), child_machine_id
    assert child_machine_id != before["machine_id"]
    rand = "python3 -c 'import os; print(os.urandom(16).hex())'"
    assert await out(runtime, child, rand) != await out(runtime, sandbox, rand)
    # Parent and child are separate from here on.
    await runtime.write_file(child, "/work/state", b"changed in the child")
    assert await runtime.read_file(sandbox, "/work/state") == b"from the parent"


@pytest.mark.parametrize(
    "runtime_factory",
    [
        pytest.param(GVISOR, id="gvisor", marks=GVISOR.mark),
        pytest.param(MICROVM, id="microvm", marks=MICROVM.mark),
    ],
    indirect=True,
)
async def test_a_pause_is_refused_while_an_exec_command_runs(
    runtime: Runtime, snapshots: Snapshotting, sandbox: SandboxHandle
) -> None:
    """A command started through exec streams to its caller over a connection a pause
    cannot keep (gVisor: ``runsc exec``'s host pipes, which would also make the restore fail
    for good; microVM: the guest channel, which the pause closes): the pause is refused,
    retryably, and the sandbox runs on; once the command has ended the pause goes through
    and the sandbox resumes."""
    started = asyncio.Event()

    async def listen() -> None:
        async for event in runtime.exec(sandbox, ExecRequest("echo up; sleep 600", timeout_s=600)):
            if isinstance(event, Stdout):
                started.set()

    task = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(started.wait(), 60)
        with pytest.raises(RetryableError, match="still run"):
            await snapshots.pause(sandbox)
        assert await runtime.inspect(sandbox) is Liveness.RUNNING
    finally:
        task.cancel()  # the caller stops listening: the command ends
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await snapshots.pause(sandbox)
    await snapshots.resume(sandbox)
    assert (await out(runtime, sandbox, "echo ok")).strip() == "ok"


@pytest.mark.parametrize(
    "runtime_factory", [pytest.param(GVISOR, id="gvisor", marks=GVISOR.mark)], indirect=True
)
async def test_gvisor_keeps_its_process_limit_across_resume_snapshot_and_restore(
    runtime: Runtime,
    snapshots: Snapshotting,
    sandboxes: Sandboxes,
    sandbox: SandboxHandle,
    tmp_path: Path,
) -> None:
    """runsc makes a sandbox's cgroups afresh at every start, a restore from a checkpoint
    included; pids.max is set from outside (not in the spec), so it must be set again after
    a resume, after the source of a snapshot restarts, and in a restored copy (whose id
    here has the "_" of Corral's own ids)."""
    assert isinstance(runtime, GVisorRuntime)

    def pids_max(sandbox_id: str) -> str:
        files = [d / "pids.max" for d in runtime.cgroup_dirs(sandbox_id)]
        found = [f.read_text().strip() for f in files if f.exists()]
        assert found, f"no pids cgroup for {sandbox_id}"
        return found[0]

    want = str(runtime.pids_max)
    assert pids_max(sandbox.sandbox_id) == want
    await snapshots.pause(sandbox)
    await snapshots.resume(sandbox)
    assert pids_max(sandbox.sandbox_id) == want
    snap = tmp_path / "snap-pids"
    await snapshots.snapshot(sandbox, snap)
    assert pids_max(sandbox.sandbox_id) == want
    child_spec = SandboxSpec(sandbox_id=f"sb_{sandbox.sandbox_id}"[:63], tenant_id="t",
                             template="base", cpu=1, memory_mb=256, timeout_s=300)  # fmt: skip
    child = await snapshots.restore(child_spec, snap)
    sandboxes.adopt(child)
    assert pids_max(child.sandbox_id) == want
    assert (await out(runtime, child, "hostname")).strip() == child.sandbox_id
