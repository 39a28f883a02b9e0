"""A running agent with a host provider steps its fleet and reports its hosts in signed
heartbeats over a real nats-server; after a restart it reports the same host, not a new one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from byoc_agent.agent import Agent, AgentConfig
from byoc_agent.hosts.autoscale import ScalingPolicy
from byoc_agent.hosts.fleet import HostFleet
from byoc_agent.hosts.phases import HostPhase
from byoc_agent.protocol import messages, signing, subjects, verify
from byoc_agent.providers.baremetal import BareMetalProvider
from byoc_agent.runtimes.memory import InMemoryRuntime
from byoc_agent.state import AgentIdentity, AgentStateStore
from byoc_agent.transport.nats import NatsAgentTransport
from corral.testing import NatsServer

pytestmark = [pytest.mark.nats, pytest.mark.providers, pytest.mark.asyncio]

TENANT = "ten-h"
AGENT = "agt-h"


@pytest_asyncio.fixture
async def heartbeats(nats_server: NatsServer) -> AsyncIterator[asyncio.Queue[bytes]]:
    """Every heartbeat the agent publishes, as the raw signed bytes."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name=subjects.JOBS_STREAM, subjects=[subjects.ALL_JOBS])
    await js.add_stream(
        name=subjects.AGENT_OUT_STREAM, subjects=[subjects.ALL_RESULTS, subjects.ALL_EVENTS]
    )
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_heartbeat(msg: Any) -> None:
        await queue.put(msg.data)

    await nc.subscribe(subjects.heartbeat(TENANT, AGENT), cb=on_heartbeat)
    yield queue
    await nc.close()


async def run_agent(url: str, state_path: Path, inventory: Path,
                    key: signing.SigningKey) -> tuple[Agent, asyncio.Task[None]]:
    state = AgentStateStore(state_path)
    fleet = HostFleet(
        state=state, provider=BareMetalProvider(inventory), tenant_id=TENANT, agent_id=AGENT,
        policy=ScalingPolicy(min_hosts=1, max_hosts=1), prices={}, default_price=Decimal(0),
    )
    transport = NatsAgentTransport(url, TENANT, AGENT)
    await transport.connect()
    agent = Agent(
        identity=AgentIdentity(AGENT, TENANT, key.kid, url), signing_key=key,
        keyring=verify.Keyring(), state=state, runtime=InMemoryRuntime(), transport=transport,
        config=AgentConfig(data_plane_url="http://127.0.0.1:1", cpu_total=2,
                           memory_mb_total=2048, heartbeat_interval_s=0.2,
                           fleet_interval_s=0.1),
        fleet=fleet,
    )
    return agent, asyncio.create_task(agent.run())


async def stop(agent: Agent, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task}, timeout=10)
    assert task.done()
    await agent.transport.close()
    agent.state.close()


async def ready_host_in_heartbeats(queue: asyncio.Queue[bytes],
                                   key: signing.SigningKey) -> messages.HostSummary:
    ring = verify.Keyring({key.kid: key.public_key})
    async with asyncio.timeout(20):
        while True:
            _, hb = verify.verify_model(await queue.get(), typ=messages.HEARTBEAT_TYP,
                                        model=messages.Heartbeat, keyring=ring)
            ready = [h for h in hb.hosts or [] if h.state == "ready"]
            if ready:
                return ready[0]


async def test_the_agent_reports_its_hosts_and_keeps_them_across_a_restart(
    nats_server: NatsServer, heartbeats: asyncio.Queue[bytes], tmp_path: Path
) -> None:
    """With min_hosts 1 the agent claims an inventory machine, its heartbeats list it as
    ready, and after a restart they list the same host while the inventory still shows
    one claim."""
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"hosts": [
        {"id": f"rack1-0{i}", "address": "127.0.0.1", "cpu": 8, "memory_mib": 16384}
        for i in (1, 2)
    ]}), encoding="utf-8")
    key = signing.SigningKey.generate()
    agent, task = await run_agent(nats_server.url, tmp_path / "state.db", inventory, key)
    try:
        first = await ready_host_in_heartbeats(heartbeats, key)
    finally:
        await stop(agent, task)
    assert (first.cpu_total, first.memory_mb_total, first.sandboxes) == (8, 16384, 0)

    agent, task = await run_agent(nats_server.url, tmp_path / "state.db", inventory, key)
    try:
        while not heartbeats.empty():
            heartbeats.get_nowait()
        again = await ready_host_in_heartbeats(heartbeats, key)
        assert again.host_id == first.host_id
        live = agent.state.hosts(frozenset({HostPhase.READY}))
        assert [h.provider_host_id for h in live] == [first.host_id]
        claimed = await BareMetalProvider(inventory).list_by_tag("corral:agent", AGENT)
        assert [h.host_id for h in claimed] == [first.host_id]
    finally:
        await stop(agent, task)
