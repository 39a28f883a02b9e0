"""The host fleet over the bare-metal provider: inventory machines are claimed when
sandboxes wait, released when idle, and the claim survives an agent restart."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from provider_cases import BM_TYPE, loopback_hosts, write_inventory

from byoc_agent.hosts.autoscale import ScalingPolicy
from byoc_agent.hosts.fleet import HostFleet
from byoc_agent.hosts.phases import HostPhase
from byoc_agent.providers.baremetal import BareMetalProvider
from byoc_agent.scheduling import SandboxRequest
from byoc_agent.state import AgentStateStore

pytestmark = [pytest.mark.asyncio, pytest.mark.providers]


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def make(inventory: Path, store: AgentStateStore, clock: Clock) -> HostFleet:
    return HostFleet(
        state=store, provider=BareMetalProvider(inventory), tenant_id="ten-bm",
        agent_id="agt-bm", policy=ScalingPolicy(max_hosts=2, idle_timeout_s=30),
        prices={}, default_price=Decimal(0), clock=clock,
    )


async def test_inventory_hosts_are_claimed_for_waiting_sandboxes_and_released_when_idle(
    tmp_path: Path, loopback_port: int
) -> None:
    """Two 6-vCPU sandboxes claim both 8-vCPU machines; a third waits (max 2 hosts);
    after a restart and the idle time both machines are released to the inventory."""
    inventory = write_inventory(tmp_path / "inventory.toml", loopback_hosts(loopback_port))
    clock = Clock()
    store = AgentStateStore(tmp_path / "state.db")
    f = make(inventory, store, clock)
    await f.start()
    for i in range(3):
        f.submit(SandboxRequest(f"sbx-{i}", 6, 4096))
    plan = await f.step()
    assert plan.launch == (BM_TYPE, BM_TYPE)
    await f.step()
    ready = f.state.hosts(frozenset({HostPhase.READY}))
    assert len(ready) == 2
    assert {f.host_of("sbx-0"), f.host_of("sbx-1")} == {h.host_key for h in ready}
    assert f.host_of("sbx-2") is None
    assert [r.value for _, r in f.last_plan.blocked] == ["max_hosts"]
    store.close()

    store = AgentStateStore(tmp_path / "state.db")
    f = make(inventory, store, clock)
    await f.start()
    try:
        for i in range(3):
            f.release(f"sbx-{i}")
        clock.now += 31
        await f.step()
        await f.step()
        assert {h.phase for h in f.state.hosts()} == {HostPhase.TERMINATED}
        provider = BareMetalProvider(inventory)
        assert await provider.list_by_tag("corral:agent", "agt-bm") == []
    finally:
        store.close()
