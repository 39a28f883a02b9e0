"""The host fleet over the bare-metal provider: inventory machines are claimed when
sandboxes wait, released when idle, and the claim survives an agent restart."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from provider_cases import BM_TYPE, loopback_hosts, write_inventory

from byoc_agent.hosts.autoscale import ScalingPolicy
from byoc_agent.hosts.fleet import FAILED_TYPE_COOLDOWN_S, REASON_QUOTA, HostFleet
from byoc_agent.hosts.phases import HostPhase
from byoc_agent.providers.baremetal import BareMetalProvider
from byoc_agent.providers.base import Host, HostSpec, Offering
from byoc_agent.providers.errors import QuotaExceededError
from byoc_agent.scheduling import SandboxRequest
from byoc_agent.state import AgentStateStore, Placement

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


class QuotaOnce:
    """The bare-metal provider, except that its first launch is refused for quota."""

    def __init__(self, inner: BareMetalProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.refused = 0

    async def list_offerings(self) -> list[Offering]:
        return await self.inner.list_offerings()

    async def provision(self, spec: HostSpec) -> Host:
        if not self.refused:
            self.refused += 1
            raise QuotaExceededError("quota for bm hosts reached; ask for more")
        return await self.inner.provision(spec)

    async def describe(self, host_id: str) -> Host:
        return await self.inner.describe(host_id)

    async def list_by_tag(self, key: str, value: str) -> list[Host]:
        return await self.inner.list_by_tag(key, value)

    async def terminate(self, host_id: str) -> None:
        await self.inner.terminate(host_id)


async def test_a_type_refused_for_quota_is_not_retried_until_its_cooldown_ends(
    tmp_path: Path, loopback_port: int
) -> None:
    """A quota refusal fails the host (reason quota); the type is not launched again for
    FAILED_TYPE_COOLDOWN_S, then it is, and the waiting sandbox keeps its original age."""
    inventory = write_inventory(tmp_path / "inventory.toml", loopback_hosts(loopback_port))
    clock = Clock()
    store = AgentStateStore(tmp_path / "state.db")
    provider = QuotaOnce(BareMetalProvider(inventory))
    f = HostFleet(
        state=store, provider=provider, tenant_id="ten-bm", agent_id="agt-bm",
        policy=ScalingPolicy(max_hosts=2), prices={}, default_price=Decimal(0), clock=clock,
    )
    try:
        await f.start()
        f.submit(SandboxRequest("sbx-q", 4, 4096))
        submitted = f.scheduler.waiting_since("sbx-q")
        await f.step()
        [failed] = f.state.hosts()
        assert (failed.phase, failed.reason) == (HostPhase.FAILED, REASON_QUOTA)
        clock.now += 60
        f.submit(SandboxRequest("sbx-q", 4, 4096))  # asked again: same request
        assert f.scheduler.waiting_since("sbx-q") == submitted
        assert (await f.step()).launch == ()
        assert [r.value for _, r in f.last_plan.blocked] == ["no_offering"]
        clock.now += FAILED_TYPE_COOLDOWN_S
        assert (await f.step()).launch == (BM_TYPE,)
        await f.step()
        assert f.host_of("sbx-q") is not None
        assert provider.refused == 1
    finally:
        store.close()


async def test_restoring_after_a_restart_never_overfills_a_host(
    tmp_path: Path, loopback_port: int
) -> None:
    """A sandbox waiting since before one that was placed cannot take the placed one's
    room when the state is read back: placed sandboxes are restored first."""
    inventory = write_inventory(tmp_path / "inventory.toml", loopback_hosts(loopback_port))
    clock = Clock()
    store = AgentStateStore(tmp_path / "state.db")
    f = make(inventory, store, clock)
    await f.start()
    f.submit(SandboxRequest("early-big", 8, 8192))  # waits, then gets a host
    await f.step()
    await f.step()
    host = f.host_of("early-big")
    assert host is not None
    assert len(f.state.hosts(frozenset({HostPhase.READY}))) == 1
    # a waiting request dated before the placed one (read back in submission order, it
    # would come first and fit on the only ready host if placed ones were not restored
    # before it)
    store.put_placement(Placement("older-waiting", None, 8, 8192, 0, "gvisor", clock.now - 100))
    store.close()

    store = AgentStateStore(tmp_path / "state.db")
    try:
        f = make(inventory, store, clock)
        await f.start()
        assert f.host_of("early-big") == host
        assert f.host_of("older-waiting") != host
        assert f.scheduler.free(host).cpu_milli == 0
    finally:
        store.close()


class SimulatedCrash(BaseException):
    """The agent process dying right after a provider call took effect."""


class CrashAfterCall:
    """The bare-metal provider, counting calls; call number ``crash_at`` takes effect and
    then 'kills the agent' before the caller sees the answer. Records which hosts each
    client token ever got."""

    def __init__(self, inner: BareMetalProvider, crash_at: int | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.crash_at = crash_at
        self.calls = 0
        self.hosts_per_token: dict[str, set[str]] = {}

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.crash_at:
            raise SimulatedCrash

    async def list_offerings(self) -> list[Offering]:
        return await self.inner.list_offerings()

    async def provision(self, spec: HostSpec) -> Host:
        host = await self.inner.provision(spec)
        self.hosts_per_token.setdefault(spec.client_token, set()).add(host.host_id)
        self._tick()
        return host

    async def describe(self, host_id: str) -> Host:
        host = await self.inner.describe(host_id)
        self._tick()
        return host

    async def list_by_tag(self, key: str, value: str) -> list[Host]:
        hosts = await self.inner.list_by_tag(key, value)
        self._tick()
        return hosts

    async def terminate(self, host_id: str) -> None:
        await self.inner.terminate(host_id)
        self._tick()


async def _scenario(inventory: Path, state: Path, clock: Clock,
                    provider: CrashAfterCall) -> None:
    """Two sandboxes wait, get two hosts, end; the hosts are given back. Safe to run
    again from the top after a crash (submit and release are idempotent)."""
    store = AgentStateStore(state)
    try:
        f = HostFleet(
            state=store, provider=provider, tenant_id="ten-bm", agent_id="agt-bm",
            policy=ScalingPolicy(max_hosts=2, idle_timeout_s=30), prices={},
            default_price=Decimal(0), clock=clock,
        )
        await f.start()
        for sid in ("sbx-a", "sbx-b"):
            f.submit(SandboxRequest(sid, 6, 4096))
        for _ in range(10):
            if f.host_of("sbx-a") and f.host_of("sbx-b"):
                break
            await f.step()
        assert f.host_of("sbx-a")
        assert f.host_of("sbx-b")
        f.release("sbx-a")
        f.release("sbx-b")
        clock.now += 31
        for _ in range(10):
            if all(h.phase is HostPhase.TERMINATED for h in f.state.hosts()):
                break
            await f.step()
    finally:
        store.close()


async def test_a_crash_after_any_provider_call_leaves_no_duplicate_and_no_leaked_host(
    tmp_path: Path,
) -> None:
    """For every provider call of the scenario in turn, the agent dies right after that
    call took effect and is restarted. Each run ends with every host record terminated,
    nothing claimed in the inventory, and no client token ever given two hosts."""
    clean = CrashAfterCall(BareMetalProvider(write_inventory(
        tmp_path / "clean.toml", loopback_hosts(None))), crash_at=None)
    await _scenario(tmp_path / "clean.toml", tmp_path / "clean.db", Clock(), clean)
    assert clean.calls > 5, clean.calls
    for k in range(1, clean.calls + 1):
        run = tmp_path / f"crash-{k}"
        run.mkdir()
        # local machines (no TCP check): each run claims hosts afresh, and a listening
        # socket's backlog would fill up with never-accepted readiness connects
        inventory = write_inventory(run / "inventory.toml", loopback_hosts(None))
        clock = Clock()
        crashing = CrashAfterCall(BareMetalProvider(inventory), crash_at=k)
        with pytest.raises(SimulatedCrash):
            await _scenario(inventory, run / "state.db", clock, crashing)
        restarted = CrashAfterCall(BareMetalProvider(inventory), crash_at=None)
        await _scenario(inventory, run / "state.db", clock, restarted)

        store = AgentStateStore(run / "state.db")
        try:
            records = store.hosts()
        finally:
            store.close()
        assert records, f"crash at call {k}: no host was ever recorded"
        assert {h.phase for h in records} == {HostPhase.TERMINATED}, f"crash at call {k}"
        assert await BareMetalProvider(inventory).list_by_tag("corral:agent", "agt-bm") == []
        for token in {*crashing.hosts_per_token, *restarted.hosts_per_token}:
            got = crashing.hosts_per_token.get(token, set()) | restarted.hosts_per_token.get(
                token, set())
            assert len(got) == 1, f"crash at call {k}: token {token} got hosts {got}"
            assert token in {h.host_key for h in records}, f"crash at call {k}: orphan"
