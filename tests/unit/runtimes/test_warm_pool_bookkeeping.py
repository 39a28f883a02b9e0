"""The warm pool's bookkeeping against the in-memory runtime (real runtimes: the agent's
integration tests)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.runtimes.base import SandboxSpec
from byoc_agent.runtimes.memory import InMemoryRuntime, SnapshottingMemoryRuntime
from byoc_agent.settings import AgentSettings
from byoc_agent.warm_pool import POOL_ID_PREFIX, PoolKey, WarmPool, parse_pool_sizes
from corral.testing import eventually

KEY = PoolKey("base", 1, 512, "gvisor")


async def let_run() -> None:
    """Let every other task run until it waits on something (the in-memory runtime and
    the pool wait on no timer here), without a fixed sleep."""
    for _ in range(50):
        await asyncio.sleep(0)


def spec(sandbox_id: str, *, cpu: int = 1, memory_mb: int = 512) -> SandboxSpec:
    return SandboxSpec(sandbox_id=sandbox_id, tenant_id="t", template="base", cpu=cpu,
                       memory_mb=memory_mb, timeout_s=60, env={"A": "1"})  # fmt: skip


def test_pool_sizes_parse_from_the_setting() -> None:
    """The documented format parses; an empty setting means no pools."""
    sizes = parse_pool_sizes("base:1:512:gvisor=2, base:1:512:microvm=1")
    assert sizes == {KEY: 2, PoolKey("base", 1, 512, "microvm"): 1}
    assert parse_pool_sizes("") == {}


def test_the_restore_pool_size_comes_from_the_environment() -> None:
    """CORRAL_AGENT_RESTORE_POOL: off (0) by default; a bad value names the variable."""
    assert AgentSettings.from_env({}).restore_pool == 0
    assert AgentSettings.from_env({"CORRAL_AGENT_RESTORE_POOL": "2"}).restore_pool == 2
    for bad in ("-1", "two"):
        with pytest.raises(InvalidArgumentError, match="CORRAL_AGENT_RESTORE_POOL"):
            AgentSettings.from_env({"CORRAL_AGENT_RESTORE_POOL": bad})


@pytest.mark.parametrize("bad", ["base:1:512=2", "base:1:512:gvisor", "base:x:512:gvisor=1",
                                 "base:0:512:gvisor=1", "a:1:1:gvisor=1,a:1:1:gvisor=2"])
def test_a_malformed_pool_setting_is_refused_with_its_entry_named(bad: str) -> None:
    """Each malformed entry raises InvalidArgumentError naming what is wrong."""
    with pytest.raises(InvalidArgumentError, match="warm pool entry"):
        parse_pool_sizes(bad)


@pytest.mark.asyncio
async def test_take_adopts_a_member_and_the_pool_refills(tmp_path: Path) -> None:
    """A hit hands over a member adopted with the spec; a replacement starts; a size with
    no pool is a miss."""
    runtime = InMemoryRuntime()
    pool = WarmPool(runtime, {KEY: 1}, tenant_id="t", free_capacity=lambda: (4, 4096),
                    ledger=tmp_path / "pool.json")  # fmt: skip
    filler = asyncio.create_task(pool.run())
    try:
        await eventually(lambda: len(pool.ready(KEY)) == 1, what="member ready")
        handle = await pool.take(spec("sbx-1"))
        assert handle is not None
        assert handle.sandbox_id.startswith(POOL_ID_PREFIX)
        assert runtime.adopted[handle.sandbox_id].sandbox_id == "sbx-1"
        pool.confirm(handle)
        await eventually(lambda: len(pool.ready(KEY)) == 1, what="refill")
        assert pool.ready(KEY)[0].sandbox_id != handle.sandbox_id
        assert await pool.take(spec("sbx-2", memory_mb=1024)) is None
        assert (pool.stats.hits, pool.stats.misses) == (1, 1)
        ledger = json.loads((tmp_path / "pool.json").read_text())
        assert [m["id"] for m in ledger["members"]] == [pool.ready(KEY)[0].sandbox_id]
    finally:
        filler.cancel()
        await pool.close()
    assert list(runtime.live) == [handle.sandbox_id], "close() left a member running"


@pytest.mark.asyncio
async def test_the_pool_fills_only_spare_room_and_gives_it_up_for_a_create() -> None:
    """Members never take room a sandbox needs: make_room evicts them."""
    runtime = InMemoryRuntime()
    free = [2]
    pool = WarmPool(runtime, {KEY: 3}, tenant_id="t", free_capacity=lambda: (free[0], 4096))
    filler = asyncio.create_task(pool.run())
    try:
        await eventually(lambda: len(pool.ready(KEY)) == 2, what="two members (room for two)")
        await let_run()  # the filler gets every chance to overfill; it must not
        assert len(pool.ready(KEY)) == 2
        pool.make_room(2, 1024)
        assert pool.ready(KEY) == []
        assert pool.stats.evicted == 2
        free[0] = 0  # the sandbox now holds the room: nothing refills
        await let_run()  # the filler gets every chance to refill; it must not
        assert pool.ready(KEY) == []
    finally:
        filler.cancel()
        await pool.close()
    assert runtime.live == {}


@pytest.mark.asyncio
async def test_members_a_crash_left_are_destroyed_at_the_next_start(tmp_path: Path) -> None:
    """The ledger names every member; one no sandbox record holds is destroyed on start,
    one a record holds (taken just before the crash) is kept."""
    runtime = InMemoryRuntime()
    first = WarmPool(runtime, {KEY: 2}, tenant_id="t", free_capacity=lambda: (4, 4096),
                     ledger=tmp_path / "pool.json")  # fmt: skip
    filler = asyncio.create_task(first.run())
    await eventually(lambda: len(first.ready(KEY)) == 2, what="two members")
    filler.cancel()  # a crash: no close()
    taken = await first.take(spec("sbx-kept"))
    assert taken is not None
    leftover = first.ready(KEY)[0]

    second = WarmPool(runtime, {KEY: 0}, tenant_id="t", free_capacity=lambda: (4, 4096),
                      ledger=tmp_path / "pool.json")  # fmt: skip
    await second.run(in_use={taken.sandbox_id})
    assert leftover.sandbox_id in runtime.destroyed
    assert taken.sandbox_id in runtime.live
    assert json.loads((tmp_path / "pool.json").read_text()) == {"members": []}


def snap_key(snapshot_id: str) -> PoolKey:
    return PoolKey("base", 1, 512, "gvisor", snapshot_id)


async def snapshot_of(runtime: SnapshottingMemoryRuntime, root: Path, snapshot_id: str) -> Path:
    """A snapshot of a fresh sandbox holding one file naming the snapshot."""
    parent = await runtime.create(spec(f"parent-{snapshot_id}"))
    await runtime.write_file(parent, "/work/from", snapshot_id.encode())
    await runtime.snapshot(parent, root / snapshot_id)
    return root / snapshot_id


def test_a_restore_pool_needs_a_runtime_that_restores_and_sane_sizes() -> None:
    """Bad restore-pool settings are refused with what is wrong."""
    runtime = SnapshottingMemoryRuntime()
    with pytest.raises(InvalidArgumentError, match="cannot restore"):
        WarmPool(InMemoryRuntime(), {}, tenant_id="t", free_capacity=lambda: (4, 4096),
                 restore_size=1)  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="restore pool"):
        WarmPool(runtime, {}, tenant_id="t", free_capacity=lambda: (4, 4096), restore_size=-1)
    with pytest.raises(InvalidArgumentError, match="restore pool"):
        WarmPool(runtime, {}, tenant_id="t", free_capacity=lambda: (4, 4096), restore_size=1,
                 restore_snapshots=0)  # fmt: skip
    assert str(snap_key("snap-1")) == "base:1:512:gvisor@snap-1"


@pytest.mark.asyncio
async def test_restore_pools_follow_the_most_recently_used_snapshots(tmp_path: Path) -> None:
    """Copies are restored ahead per snapshot; a take serves the right snapshot's copy;
    only the two most recent snapshots keep a pool; a miss on another snapshot is a miss."""
    runtime = SnapshottingMemoryRuntime()
    pool = WarmPool(runtime, {}, tenant_id="t", free_capacity=lambda: (8, 8192),
                    restore_size=1, restore_snapshots=2)  # fmt: skip
    filler = asyncio.create_task(pool.run())
    try:
        for name in ("snap-a", "snap-b"):
            pool.keep_snapshot(snap_key(name), await snapshot_of(runtime, tmp_path, name))
        both = [snap_key("snap-a"), snap_key("snap-b")]
        await eventually(lambda: all(len(pool.ready(k)) == 1 for k in both), what="a copy each")
        copy_a = pool.ready(snap_key("snap-a"))[0]
        got = await pool.take(spec("sbx-a"), snapshot="snap-a")
        assert got == copy_a
        assert await runtime.read_file(got, "/work/from") == b"snap-a"
        assert runtime.adopted[got.sandbox_id].sandbox_id == "sbx-a"
        pool.confirm(got)
        assert await pool.take(spec("sbx-x"), snapshot="snap-x") is None  # no pool for it
        assert await pool.take(spec("sbx-plain")) is None  # a create never gets a copy

        # A third snapshot: snap-b was used least recently (snap-a was just taken from by
        # the keep_snapshot the agent calls after every restore).
        pool.keep_snapshot(snap_key("snap-a"), tmp_path / "snap-a")
        copy_b = pool.ready(snap_key("snap-b"))[0]
        pool.keep_snapshot(snap_key("snap-c"), await snapshot_of(runtime, tmp_path, "snap-c"))
        assert pool.ready(snap_key("snap-b")) == []
        await eventually(lambda: copy_b.sandbox_id in runtime.destroyed, what="b's copy gone")
        await eventually(lambda: len(pool.ready(snap_key("snap-c"))) == 1, what="a copy of c")
        await eventually(lambda: len(pool.ready(snap_key("snap-a"))) == 1, what="a refilled")
        assert (pool.stats.hits, pool.stats.misses) == (1, 2)
    finally:
        filler.cancel()
        await pool.close()
    assert set(runtime.live) == {got.sandbox_id, "parent-snap-a", "parent-snap-b",
                                 "parent-snap-c"}  # fmt: skip


@pytest.mark.asyncio
async def test_dropping_a_snapshot_waits_for_a_copy_being_restored_from_it(
    tmp_path: Path,
) -> None:
    """drop_snapshot returns only once no copy is being restored from the files (the agent
    deletes them next), and that copy is destroyed instead of joining the pool."""
    runtime = SnapshottingMemoryRuntime()
    pool = WarmPool(runtime, {}, tenant_id="t", free_capacity=lambda: (8, 8192),
                    restore_size=1)  # fmt: skip
    runtime.restores_may_finish.clear()
    filler = asyncio.create_task(pool.run())
    try:
        pool.keep_snapshot(snap_key("snap-a"), await snapshot_of(runtime, tmp_path, "snap-a"))
        await eventually(lambda: pool.used() == (1, 512), what="a copy being restored")
        dropping = asyncio.create_task(pool.drop_snapshot("snap-a"))
        await let_run()  # drop_snapshot must still be waiting (on the held restore)
        assert not dropping.done()
        runtime.restores_may_finish.set()
        async with asyncio.timeout(5):
            await dropping
        assert len(runtime.restored) == 1
        await eventually(lambda: runtime.restored[0] in runtime.destroyed, what="copy destroyed")
        assert pool.ready(snap_key("snap-a")) == []
        assert pool.used() == (0, 0)
    finally:
        filler.cancel()
        await pool.close()


@pytest.mark.asyncio
async def test_close_with_settle_waits_for_a_member_being_started_and_destroys_it(
    tmp_path: Path,
) -> None:
    """With the filler running, close(settle_s) lets a start in progress end and then
    destroys that member too: nothing is left half-made (hostd's shutdown uses this)."""
    runtime = SnapshottingMemoryRuntime()
    pool = WarmPool(runtime, {}, tenant_id="t", free_capacity=lambda: (8, 8192),
                    restore_size=1, ledger=tmp_path / "pool.json")  # fmt: skip
    runtime.restores_may_finish.clear()
    filler = asyncio.create_task(pool.run())
    try:
        pool.keep_snapshot(snap_key("snap-a"), await snapshot_of(runtime, tmp_path, "snap-a"))
        await eventually(lambda: pool.used() == (1, 512), what="a copy being restored")
        closing = asyncio.create_task(pool.close(settle_s=5))
        await let_run()  # close must still be waiting for the held start
        assert not closing.done()
        runtime.restores_may_finish.set()
        async with asyncio.timeout(5):
            await closing
        assert runtime.restored[0] in runtime.destroyed
        assert json.loads((tmp_path / "pool.json").read_text()) == {"members": []}
    finally:
        filler.cancel()
        await asyncio.wait({filler}, timeout=5)
