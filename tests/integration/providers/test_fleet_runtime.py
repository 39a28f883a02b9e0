"""Sandbox creates feed the host fleet (moto's EC2 over HTTP): a create that no host has room
for waits while the autoscaler launches one, then runs there; ending it lets the idle host be
scaled in; a create the autoscaler may not serve fails with the reason. The hosts' worker is
the agent's in-memory runtime here (LocalWorkers); the hostd suites run real workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from provider_cases import REGION, MotoEc2, aws_unavailable

from byoc_agent.hosts.autoscale import ScalingPolicy
from byoc_agent.hosts.fleet import HostFleet
from byoc_agent.hosts.phases import HostPhase
from byoc_agent.hosts.runtime import HOST_KEY, ON_HOST, FleetRuntime
from byoc_agent.hosts.workers import LocalWorkers
from byoc_agent.protocol.errors import (
    CapacityError,
    NotFoundError,
    SandboxNotRunningError,
)
from byoc_agent.providers.base import TAG_AGENT
from byoc_agent.runtimes.base import ExecRequest, Exit, SandboxSpec
from byoc_agent.runtimes.memory import InMemoryRuntime, SnapshottingMemoryRuntime
from byoc_agent.scheduling import SandboxRequest
from byoc_agent.state import AgentStateStore
from corral.testing import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.providers]

if (_why_not := aws_unavailable()) is not None:
    pytest.skip(_why_not, allow_module_level=True)

TENANT = "ten-fleetrt"
AGENT = "agt-fleetrt"
PRICES = {"c5.metal": Decimal("4.08"), "m7i.metal-24xl": Decimal("4.8384")}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AgentStateStore]:
    s = AgentStateStore(tmp_path / "agent-state.db")
    yield s
    s.close()


def make_fleet(moto_ec2: MotoEc2, store: AgentStateStore, *,
               worker: InMemoryRuntime | None = None, **policy: Any) -> HostFleet:  # fmt: skip
    from byoc_agent.providers.aws import AwsProvider

    knobs: dict[str, Any] = {"max_hosts": 2, "budget_per_hour": Decimal("20"),
                             "idle_timeout_s": 0.5, "ready_timeout_s": 60.0}
    knobs.update(policy)
    return HostFleet(
        state=store,
        provider=AwsProvider(region=REGION, image_id=moto_ec2.image_id,
                             instance_types=("c5.metal", "m7i.metal-24xl")),
        tenant_id=TENANT, agent_id=AGENT, policy=ScalingPolicy(**knobs), prices=PRICES,
        subnet_id=moto_ec2.subnet_id, security_group_ids=(moto_ec2.security_group_id,),
        workers=LocalWorkers(worker or InMemoryRuntime()),
    )


@pytest_asyncio.fixture
async def running_fleet(moto_ec2: MotoEc2, store: AgentStateStore) -> AsyncIterator[HostFleet]:
    fleet = make_fleet(moto_ec2, store)
    await fleet.start()  # offerings known: the elastic capacity can be offered at once
    task = asyncio.create_task(fleet.run(interval_s=0.2))
    try:
        yield fleet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def states(moto_ec2: MotoEc2) -> list[str]:
    resp = moto_ec2.ec2.describe_instances(
        Filters=[{"Name": f"tag:{TAG_AGENT}", "Values": [AGENT]}]
    )
    return sorted(i["State"]["Name"] for r in resp["Reservations"] for i in r["Instances"])


def spec(sandbox_id: str, cpu: int = 4, memory_mb: int = 1024, **kw: Any) -> SandboxSpec:
    return SandboxSpec(sandbox_id=sandbox_id, tenant_id=TENANT, template="base", cpu=cpu,
                       memory_mb=memory_mb, timeout_s=300, **kw)


async def test_a_create_with_no_host_scales_out_runs_there_and_the_idle_host_scales_in(
    moto_ec2: MotoEc2, running_fleet: HostFleet
) -> None:
    fleet = running_fleet
    runtime = FleetRuntime(fleet, fleet.workers or LocalWorkers(InMemoryRuntime()),
                           place_timeout_s=30)
    assert states(moto_ec2) == []
    cpu_before, _ = fleet.elastic_capacity()
    assert cpu_before == 2 * 96  # no host yet: two c5.metal may still be launched

    handle = await runtime.create(spec("sbx-fleet-1"))

    host_key = handle.data[HOST_KEY]
    rec = fleet.state.get_host(host_key)
    assert rec is not None
    assert rec.phase is HostPhase.READY
    assert rec.instance_type == "c5.metal"  # the cheaper type that holds it
    assert states(moto_ec2) == ["running"]
    await runtime.write_file(handle, "/tmp/x", b"on the host")
    assert await runtime.read_file(handle, "/tmp/x") == b"on the host"
    events = [e async for e in runtime.exec(handle, ExecRequest(cmd="true"))]
    assert events[-1] == Exit(0)

    # a second sandbox fits the same host: no second launch
    second = await runtime.create(spec("sbx-fleet-2"))
    assert second.data[HOST_KEY] == host_key
    assert states(moto_ec2) == ["running"]

    await runtime.destroy(handle)
    await runtime.destroy(second)
    assert fleet.state.placements(host_key) == []
    await eventually(
        lambda: fleet.state.get_host(host_key).phase is HostPhase.TERMINATED,  # type: ignore[union-attr]
        within_s=20, what="the idle host to be terminated",
    )
    assert states(moto_ec2) == ["terminated"]


async def test_a_create_the_autoscaler_may_not_serve_fails_with_the_reason(
    moto_ec2: MotoEc2, store: AgentStateStore
) -> None:
    fleet = make_fleet(moto_ec2, store, max_hosts=0)
    await fleet.start()
    task = asyncio.create_task(fleet.run(interval_s=0.2))
    try:
        runtime = FleetRuntime(fleet, LocalWorkers(InMemoryRuntime()), place_timeout_s=1.5)
        assert fleet.elastic_capacity() == (0, 0)
        with pytest.raises(CapacityError, match="max_hosts"):
            await runtime.create(spec("sbx-never"))
        assert store.get_placement("sbx-never") is None  # withdrawn, not left waiting
        assert states(moto_ec2) == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_sandbox_whose_host_is_gone_is_missing_and_cannot_be_snapshotted(
    moto_ec2: MotoEc2, running_fleet: HostFleet, tmp_path: Path
) -> None:
    fleet = running_fleet
    runtime = FleetRuntime(fleet, fleet.workers or LocalWorkers(InMemoryRuntime()),
                           place_timeout_s=30)
    handle = await runtime.create(spec("sbx-lost"))
    rec = fleet.state.get_host(handle.data[HOST_KEY])
    assert rec is not None
    assert rec.provider_host_id is not None
    moto_ec2.ec2.terminate_instances(InstanceIds=[rec.provider_host_id])
    from byoc_agent.runtimes.base import Liveness

    await eventually(
        lambda: fleet.state.get_host(rec.host_key).phase is HostPhase.FAILED,  # type: ignore[union-attr]
        within_s=20, what="the lost host to be noticed",
    )
    assert await runtime.inspect(handle) is Liveness.MISSING
    with pytest.raises(SandboxNotRunningError, match="no longer ready"):
        await runtime.snapshot(handle, tmp_path / "snapshots" / "snap-lost")
    assert not (tmp_path / "snapshots").exists()
    await runtime.destroy(handle)  # its host is gone: nothing to do, and no error


async def test_after_an_agent_restart_its_sandboxes_are_found_on_their_hosts(
    moto_ec2: MotoEc2, tmp_path: Path
) -> None:
    """A new fleet and FleetRuntime over the same state file (the agent restarted) route the
    sandbox to the same host, and its room is still taken there."""
    path = tmp_path / "restart-state.db"
    host_runtime = InMemoryRuntime()  # the host's worker outlives the agent
    first = AgentStateStore(path)
    try:
        fleet = make_fleet(moto_ec2, first)
        await fleet.start()
        task = asyncio.create_task(fleet.run(interval_s=0.2))
        try:
            runtime = FleetRuntime(fleet, LocalWorkers(host_runtime), place_timeout_s=30)
            handle = await runtime.create(spec("sbx-restart", cpu=90))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        first.close()

    again = AgentStateStore(path)
    try:
        fleet = make_fleet(moto_ec2, again)
        await fleet.start()
        runtime = FleetRuntime(fleet, LocalWorkers(host_runtime), place_timeout_s=30)
        from byoc_agent.runtimes.base import Liveness

        assert await runtime.recover(handle) is Liveness.RUNNING
        assert fleet.host_of("sbx-restart") == handle.data[HOST_KEY]
        # 90 of the host's 96 vCPUs are still taken: 10 more do not fit without a new host
        assert fleet.submit(SandboxRequest("sbx-more", 10, 1024)) is None
        fleet.release("sbx-more")
        await runtime.destroy(handle)
        assert fleet.host_of("sbx-restart") is None
    finally:
        again.close()


async def test_a_snapshot_stays_on_its_host_holds_it_and_restores_there(
    moto_ec2: MotoEc2, store: AgentStateStore, tmp_path: Path
) -> None:
    """A snapshot is kept by the host that took it: the agent's directory names the host,
    the host is not scaled in while it holds one (also after an agent restart), a restore
    runs there or fails with the host's room named, and deleting it lets the host go."""
    fleet = make_fleet(moto_ec2, store, worker=SnapshottingMemoryRuntime())
    await fleet.start()
    task = asyncio.create_task(fleet.run(interval_s=0.2))
    snapshots = tmp_path / "snapshots"
    try:
        assert fleet.workers is not None
        runtime = FleetRuntime(fleet, fleet.workers, place_timeout_s=30, snapshots_dir=snapshots)
        source = await runtime.create(spec("sbx-snap-src"))
        host_key = source.data[HOST_KEY]
        await runtime.write_file(source, "/work/state", b"from the source")
        dest = snapshots / "snap-one"
        await runtime.snapshot(source, dest)
        assert json.loads((dest / ON_HOST).read_text()) == {"host_key": host_key}
        assert fleet.held(host_key) == {"snap-one"}

        await runtime.destroy(source)  # no sandbox left on the host, but a snapshot
        assert fleet.state.placements(host_key) == []
        assert host_key not in fleet.plan(time.time() + 3600).drain
        # an agent restart rebuilds the hold from the snapshot directories
        again = make_fleet(moto_ec2, store)
        FleetRuntime(again, LocalWorkers(InMemoryRuntime()), snapshots_dir=snapshots)
        assert again.held(host_key) == {"snap-one"}

        copy = await runtime.restore(spec("sbx-snap-copy"), dest)
        assert copy.data[HOST_KEY] == host_key
        assert await runtime.read_file(copy, "/work/state") == b"from the source"
        with pytest.raises(CapacityError, match=f"host {host_key}.*no room"):
            await runtime.restore(spec("sbx-snap-big", cpu=96), dest)
        assert store.get_placement("sbx-snap-big") is None  # nothing left reserved

        await runtime.remove_snapshot(dest)
        assert fleet.held(host_key) == frozenset()
        await runtime.destroy(copy)
        await eventually(
            lambda: fleet.state.get_host(host_key).phase is HostPhase.TERMINATED,  # type: ignore[union-attr]
            within_s=20, what="the host, free of sandboxes and snapshots, to be scaled in",
        )
        with pytest.raises(NotFoundError, match="which is gone"):
            await runtime.restore(spec("sbx-snap-late"), dest)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
