"""A warm pool over every real runtime (gVisor, QEMU microvm): a taken member becomes the
requested sandbox — hostname, machine-id and env its own — and a replacement starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from runtime_factories import GVISOR

from byoc_agent.runtimes.base import (
    ExecRequest,
    Exit,
    Runtime,
    SandboxHandle,
    SandboxSpec,
    Snapshotting,
    Stdout,
)
from byoc_agent.runtimes.gvisor import GVisorRuntime
from byoc_agent.runtimes.multi import isolation_of
from byoc_agent.warm_pool import POOL_ID_PREFIX, PoolKey, WarmPool
from corral.testing import eventually

pytestmark = [pytest.mark.microvm, pytest.mark.asyncio]


async def output(runtime: Runtime, handle: SandboxHandle, cmd: str) -> str:
    out = b""
    code = None
    async for ev in runtime.exec(handle, ExecRequest(cmd=cmd)):
        if isinstance(ev, Stdout):
            out += ev.data
        elif isinstance(ev, Exit):
            code = ev.exit_code
    assert code == 0, f"{cmd!r} exited {code}"
    return out.decode()


async def ready(pool: WarmPool, key: PoolKey, *, not_id: str = "") -> SandboxHandle:
    """The pool's ready member (other than ``not_id``), waiting up to 120 s for it."""

    def member() -> SandboxHandle | None:
        found = next((h for h in pool.ready(key) if h.sandbox_id != not_id), None)
        if found is None:
            assert pool.stats.start_failures == 0, "a pool member failed to start"
        return found

    handle = await eventually(member, within_s=120, what="a pool member to become ready")
    assert handle is not None
    return handle


@pytest_asyncio.fixture
async def pool_and_key(runtime: Runtime) -> AsyncIterator[tuple[WarmPool, PoolKey]]:
    key = PoolKey("base", 1, 256, isolation_of(runtime.name))
    pool = WarmPool(runtime, {key: 1}, tenant_id="t-pool", free_capacity=lambda: (8, 8192))
    filler = asyncio.create_task(pool.run())
    try:
        yield pool, key
    finally:
        filler.cancel()
        await asyncio.wait({filler}, timeout=30)
        await pool.close()


async def test_a_taken_pool_member_is_the_requested_sandbox(
    runtime: Runtime, pool_and_key: tuple[WarmPool, PoolKey]
) -> None:
    """Hostname and machine-id change at take time; the create's env reaches later execs;
    the pool starts a replacement."""
    pool, key = pool_and_key
    member = await ready(pool, key)
    before = (await output(runtime, member, "cat /etc/machine-id")).strip()
    spec = SandboxSpec(sandbox_id="sbx-adopted1", tenant_id="t-pool", template="base", cpu=1,
                       memory_mb=256, timeout_s=60, env={"WHO": "adopted"},
                       isolation=key.isolation)  # fmt: skip
    handle = await pool.take(spec)
    assert handle is not None
    try:
        assert handle.sandbox_id == member.sandbox_id
        assert handle.sandbox_id.startswith(POOL_ID_PREFIX)
        got = await output(runtime, handle, 'echo "$WHO"; hostname; cat /etc/hostname; '
                                            "cat /etc/machine-id")  # fmt: skip
        who, hostname, etc_hostname, machine_id = got.splitlines()
        assert who == "adopted"
        assert hostname == etc_hostname == "sbx-adopted1"
        assert machine_id != before
        assert len(machine_id) == 32
        pool.confirm(handle)
        refill = await ready(pool, key, not_id=member.sandbox_id)
        assert refill.sandbox_id != member.sandbox_id
    finally:
        await runtime.destroy(handle)


async def test_a_copy_from_the_restore_pool_is_the_requested_sandbox_with_its_state(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Restore pool (ADR 0029): a copy of a snapshot restored ahead is taken as the
    requested sandbox: the snapshot's files, and hostname, machine-id and env its own."""
    if not isinstance(runtime, Snapshotting):
        pytest.skip(f"{runtime.name} cannot snapshot sandboxes")
    isolation = isolation_of(runtime.name)
    source = await runtime.create(SandboxSpec(
        sandbox_id="sbx-rp-source", tenant_id="t-pool", template="base", cpu=1,
        memory_mb=256, timeout_s=300, isolation=isolation))  # fmt: skip
    snap = tmp_path / "snap-rp"
    try:
        await runtime.write_file(source, "/work/state", b"from the source")
        source_machine_id = (await output(runtime, source, "cat /etc/machine-id")).strip()
        await runtime.snapshot(source, snap)
    finally:
        await runtime.destroy(source)
    key = PoolKey("base", 1, 256, isolation, snap.name)
    pool = WarmPool(runtime, {}, tenant_id="t-pool", free_capacity=lambda: (8, 8192),
                    restore_size=1)  # fmt: skip
    pool.keep_snapshot(key, snap)
    filler = asyncio.create_task(pool.run())
    try:
        member = await ready(pool, key)
        spec = SandboxSpec(sandbox_id="sbx-rp-copy", tenant_id="t-pool", template="base",
                           cpu=1, memory_mb=256, timeout_s=60, env={"WHO": "a copy"},
                           isolation=isolation)  # fmt: skip
        handle = await pool.take(spec, snapshot=snap.name)
        assert handle is not None
        try:
            assert handle.sandbox_id == member.sandbox_id
            got = await output(runtime, handle, 'cat /work/state; echo; echo "$WHO"; '
                                                "hostname; cat /etc/machine-id")  # fmt: skip
            state, who, hostname, machine_id = got.splitlines()
            assert (state, who, hostname) == ("from the source", "a copy", "sbx-rp-copy")
            assert machine_id != source_machine_id
            pool.confirm(handle)
        finally:
            await runtime.destroy(handle)
        await pool.drop_snapshot(snap.name)
        assert pool.ready(key) == []
    finally:
        filler.cancel()
        await asyncio.wait({filler}, timeout=30)
        await pool.close()


PROCESS_NAMES = 'for f in /proc/[0-9]*/comm; do cat "$f"; done'


def host_processes_naming(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(cmdline.decode(errors="replace"))
    return found


@pytest.mark.parametrize(
    "runtime_factory", [pytest.param(GVISOR, id="gvisor", marks=GVISOR.mark)], indirect=True
)
async def test_a_gvisor_member_is_adopted_through_the_helper_waiting_in_it(
    runtime: Runtime, pool_and_key: tuple[WarmPool, PoolKey]
) -> None:
    """A ready gVisor member holds an identity helper (perl, waiting on the agent's pipe);
    the take hands it the new identity — here an id with "_", which Debian's hostname(1)
    refuses — and it exits: nothing privileged of ours stays in the adopted sandbox."""
    pool, key = pool_and_key
    member = await ready(pool, key)
    assert "perl" in (await output(runtime, member, PROCESS_NAMES)).split()
    spec = SandboxSpec(sandbox_id="sb_adopted_2", tenant_id="t-pool", template="base", cpu=1,
                       memory_mb=256, timeout_s=60, isolation=key.isolation)  # fmt: skip
    handle = await pool.take(spec)
    assert handle is not None
    try:
        got = await output(runtime, handle, "hostname; cat /etc/hostname")
        assert got.split() == ["sb_adopted_2", "sb_adopted_2"]
        assert "perl" not in (await output(runtime, handle, PROCESS_NAMES)).split()
        assert not host_processes_naming(f"CAP_SYS_ADMIN {handle.sandbox_id}")
        pool.confirm(handle)
    finally:
        await runtime.destroy(handle)


@pytest.mark.parametrize(
    "runtime_factory", [pytest.param(GVISOR, id="gvisor", marks=GVISOR.mark)], indirect=True
)
async def test_a_gvisor_member_destroyed_untaken_takes_its_helper_along(runtime: Runtime) -> None:
    """Destroying a member that was never taken ends its helper, host side included."""
    assert isinstance(runtime, GVisorRuntime)
    member = await runtime.create(SandboxSpec(sandbox_id="pool-helper-gone", tenant_id="t-pool",
                                              template="base", cpu=1, memory_mb=256,
                                              timeout_s=60))  # fmt: skip
    try:
        await runtime.prepare_adoption(member)
        assert host_processes_naming("CAP_SYS_ADMIN pool-helper-gone")
    finally:
        await runtime.destroy(member)
    assert not host_processes_naming("CAP_SYS_ADMIN pool-helper-gone")
