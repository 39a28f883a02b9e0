"""The agent's host fleet end to end on moto's EC2 server over HTTP: scale out for waiting
sandboxes, placement, scale in of idle hosts (never one with a sandbox), restart from the
SQLite state, a crash between the launch and the state write, a host that is never ready,
and nothing credential-like in what the agent publishes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from provider_cases import REGION, MotoEc2, aws_unavailable

from byoc_agent.hosts.autoscale import ScalingPolicy
from byoc_agent.hosts.fleet import REASON_NOT_READY, HostFleet
from byoc_agent.hosts.phases import HostPhase
from byoc_agent.providers.base import (
    TAG_AGENT,
    TAG_CLIENT_TOKEN,
    Host,
    HostProvider,
    HostSpec,
    Offering,
)
from byoc_agent.scheduling import Isolation, SandboxRequest
from byoc_agent.state import AgentStateStore

pytestmark = [pytest.mark.asyncio, pytest.mark.providers]

if (_why_not := aws_unavailable()) is not None:
    pytest.skip(_why_not, allow_module_level=True)

TENANT = "ten-fleet"
AGENT = "agt-fleet"
PRICES = {"c5.metal": Decimal("4.08"), "m7i.metal-24xl": Decimal("4.8384")}


@dataclass(slots=True)
class Clock:
    """The fleet's clock, moved by the test (idle and ready deadlines without sleeping)."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class SimulatedCrash(BaseException):
    """The agent process dying at this point (not an error anything should handle)."""


class CrashAfterLaunch:
    """A HostProvider that launches through the real AWS provider, then 'dies' before
    the caller can record what it got back."""

    def __init__(self, inner: HostProvider) -> None:
        self.inner = inner
        self.name = inner.name

    async def list_offerings(self) -> list[Offering]:
        return await self.inner.list_offerings()

    async def provision(self, spec: HostSpec) -> Host:
        await self.inner.provision(spec)
        raise SimulatedCrash

    async def describe(self, host_id: str) -> Host:
        return await self.inner.describe(host_id)

    async def list_by_tag(self, key: str, value: str) -> list[Host]:
        return await self.inner.list_by_tag(key, value)

    async def terminate(self, host_id: str) -> None:
        await self.inner.terminate(host_id)


def aws(moto_ec2: MotoEc2) -> HostProvider:
    from byoc_agent.providers.aws import AwsProvider

    return AwsProvider(region=REGION, image_id=moto_ec2.image_id,
                       instance_types=("c5.metal", "m7i.metal-24xl"))


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "agent-state.db"


@pytest.fixture
def stores(state_path: Path) -> Iterator[list[AgentStateStore]]:
    """Open stores on the agent's state file; each 'agent process' gets its own."""
    opened: list[AgentStateStore] = []
    yield opened
    for s in opened:
        s.close()


def fleet(moto_ec2: MotoEc2, state_path: Path, stores: list[AgentStateStore], clock: Clock,
          *, provider: HostProvider | None = None, **policy: Any) -> HostFleet:
    store = AgentStateStore(state_path)
    stores.append(store)
    knobs: dict[str, Any] = {"max_hosts": 3, "budget_per_hour": Decimal("20"),
                                "idle_timeout_s": 60.0, "ready_timeout_s": 300.0}
    knobs.update(policy)
    return HostFleet(
        state=store, provider=provider or aws(moto_ec2), tenant_id=TENANT, agent_id=AGENT,
        policy=ScalingPolicy(**knobs),
        prices=PRICES, subnet_id=moto_ec2.subnet_id,
        security_group_ids=(moto_ec2.security_group_id,), clock=clock,
    )


def instances(moto_ec2: MotoEc2) -> dict[str, tuple[str, str, dict[str, str]]]:
    """Every instance moto holds for this agent: id → (type, state, tags)."""
    out = {}
    resp = moto_ec2.ec2.describe_instances(
        Filters=[{"Name": f"tag:{TAG_AGENT}", "Values": [AGENT]}]
    )
    for r in resp["Reservations"]:
        for i in r["Instances"]:
            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            out[i["InstanceId"]] = (i["InstanceType"], i["State"]["Name"], tags)
    return out


def running(moto_ec2: MotoEc2) -> set[str]:
    return {i for i, (_, state, _) in instances(moto_ec2).items() if state == "running"}


async def test_waiting_sandboxes_scale_out_and_idle_hosts_scale_in_across_a_restart(
    moto_ec2: MotoEc2, state_path: Path, stores: list[AgentStateStore]
) -> None:
    """Three 40-vCPU sandboxes need two c5.metal hosts; they are launched, become ready
    and take the sandboxes. After a restart the state is intact. A host whose sandboxes
    ended is drained after the idle time and terminated in EC2; the host that still has
    a sandbox is kept until its sandbox ends too."""
    clock = Clock()
    f = fleet(moto_ec2, state_path, stores, clock)
    await f.start()
    for i in range(3):
        assert f.submit(SandboxRequest(f"sbx-{i}", 40, 16384)) is None  # no host yet
    first = await f.step()
    assert first.launch == ("c5.metal", "c5.metal")  # cheapest type that holds them
    hosts = f.state.hosts()
    assert [h.phase for h in hosts] == [HostPhase.PROVISIONING] * 2
    ec2 = instances(moto_ec2)
    assert len(ec2) == 2
    assert {tags[TAG_CLIENT_TOKEN] for _, _, tags in ec2.values()} == {h.host_key for h in hosts}
    assert {t for t, _, _ in ec2.values()} == {"c5.metal"}

    clock.now += 5
    await f.step()
    assert {h.phase for h in f.state.hosts()} == {HostPhase.READY}
    placed = {f"sbx-{i}": f.host_of(f"sbx-{i}") for i in range(3)}
    assert None not in placed.values()
    by_host: dict[str, list[str]] = {}
    for sid, key in placed.items():
        by_host.setdefault(str(key), []).append(sid)
    assert sorted(len(v) for v in by_host.values()) == [1, 2]  # best fit: two share a host

    # the agent restarts: a new process reads the same state file
    f = fleet(moto_ec2, state_path, stores, clock)
    await f.start()
    assert {sid: f.host_of(sid) for sid in placed} == placed
    assert f.submit(SandboxRequest("sbx-0", 40, 16384)) == placed["sbx-0"]  # idempotent

    pair = next(k for k, v in by_host.items() if len(v) == 2)
    single = next(k for k, v in by_host.items() if len(v) == 1)
    for sid in by_host[pair]:
        f.release(sid)
    clock.now += 30
    assert (await f.step()).drain == ()  # idle 30 s < 60 s
    clock.now += 31
    assert (await f.step()).drain == (pair,)
    await f.step()
    rec = f.state.get_host(pair)
    assert rec is not None
    assert rec.phase is HostPhase.TERMINATED
    assert instances(moto_ec2)[str(rec.provider_host_id)][1] == "terminated"

    clock.now += 10_000  # the busy host stays, however long, while its sandbox runs
    assert (await f.step()).drain == ()
    kept = f.state.get_host(single)
    assert kept is not None
    assert kept.phase is HostPhase.READY
    assert running(moto_ec2) == {kept.provider_host_id}

    f.release(by_host[single][0])
    clock.now += 61
    await f.step()
    await f.step()
    assert running(moto_ec2) == set()
    assert {h.phase for h in f.state.hosts()} == {HostPhase.TERMINATED}


async def test_a_crash_between_the_launch_and_the_state_write_launches_no_second_host(
    moto_ec2: MotoEc2, state_path: Path, stores: list[AgentStateStore]
) -> None:
    """The agent dies right after EC2 accepted the launch. The restarted agent finds the
    instance by its client token and records it; EC2 never gets a second instance."""
    clock = Clock()
    crashing = fleet(moto_ec2, state_path, stores, clock,
                     provider=CrashAfterLaunch(aws(moto_ec2)))
    await crashing.start()
    crashing.submit(SandboxRequest("sbx-a", 8, 8192))
    with pytest.raises(SimulatedCrash):
        await crashing.step()
    [rec] = crashing.state.hosts()
    assert rec.phase is HostPhase.REQUESTED
    assert rec.provider_host_id is None  # the state never heard back
    assert len(instances(moto_ec2)) == 1

    restarted = fleet(moto_ec2, state_path, stores, clock)
    await restarted.start()
    await restarted.step()
    await restarted.step()
    ec2 = instances(moto_ec2)
    assert len(ec2) == 1
    [(instance_id, (_, _, tags))] = ec2.items()
    [rec] = restarted.state.hosts()
    assert rec.provider_host_id == instance_id
    assert tags[TAG_CLIENT_TOKEN] == rec.host_key
    assert rec.phase is HostPhase.READY
    assert restarted.host_of("sbx-a") == rec.host_key


async def test_a_host_that_is_not_ready_in_time_is_terminated_and_replaced(
    moto_ec2: MotoEc2, state_path: Path, stores: list[AgentStateStore]
) -> None:
    """The first instance never passes the ready check (say its agent never answers):
    at the deadline it is terminated in EC2, recorded as failed, and a replacement of
    the same type is launched and takes the waiting sandbox."""
    clock = Clock()
    never_ready: set[str] = set()

    async def ready_check(host: Host) -> bool:
        if not never_ready:
            never_ready.add(host.host_id)
        return host.host_id not in never_ready

    f = fleet(moto_ec2, state_path, stores, clock, ready_timeout_s=120.0)
    f.ready_check = ready_check
    await f.start()
    f.submit(SandboxRequest("sbx-vm", 4, 4096, isolation=Isolation.MICROVM))
    await f.step()
    await f.step()
    [first] = f.state.hosts()
    assert first.phase is HostPhase.PROVISIONING  # running in EC2, but not ready
    clock.now += 121
    await f.step()
    failed = f.state.get_host(first.host_key)
    assert failed is not None
    assert failed.phase is HostPhase.FAILED
    assert failed.reason == REASON_NOT_READY
    assert instances(moto_ec2)[str(failed.provider_host_id)][1] == "terminated"
    replacement = [h for h in f.state.hosts() if h.replaces == first.host_key]
    assert len(replacement) == 1
    assert replacement[0].instance_type == first.instance_type
    await f.step()
    await f.step()
    new = f.state.get_host(replacement[0].host_key)
    assert new is not None
    assert new.phase is HostPhase.READY
    assert f.host_of("sbx-vm") == new.host_key
    assert running(moto_ec2) == {new.provider_host_id}


async def test_the_host_cap_and_budget_hold_against_ec2(
    moto_ec2: MotoEc2, state_path: Path, stores: list[AgentStateStore]
) -> None:
    """Ten 90-vCPU sandboxes want ten hosts; max_hosts 2 launches two and no more, and a
    budget below one c5.metal launches none."""
    clock = Clock()
    f = fleet(moto_ec2, state_path, stores, clock, max_hosts=2)
    await f.start()
    for i in range(10):
        f.submit(SandboxRequest(f"sbx-{i}", 90, 8192))
    for _ in range(3):
        await f.step()
        clock.now += 5
    assert len(instances(moto_ec2)) == 2
    assert len(f.scheduler.pending()) == 8
    assert {reason.value for _, reason in f.last_plan.blocked} == {"max_hosts"}

    poor = fleet(moto_ec2, state_path.with_name("poor.db"), stores, clock,
                 budget_per_hour=Decimal("4.00"))
    poor.agent_id = "agt-poor"
    await poor.start()
    poor.submit(SandboxRequest("sbx-p", 8, 8192))
    plan = await poor.step()
    assert plan.launch == ()
    assert [r.value for _, r in plan.blocked] == ["budget"]
    assert len(instances(moto_ec2)) == 2


async def test_nothing_the_agent_publishes_about_hosts_carries_a_credential(
    moto_ec2: MotoEc2, state_path: Path, stores: list[AgentStateStore],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """With canary AWS credentials in the agent's environment, its signed heartbeat lists
    the hosts (id, type, state, capacity) and contains neither canary nor any field named
    like a credential; nor does anything queued in its outbox or its host records."""
    from byoc_agent.agent import Agent, AgentConfig
    from byoc_agent.protocol import messages, signing, verify
    from byoc_agent.runtimes.memory import InMemoryRuntime
    from byoc_agent.state import AgentIdentity
    from byoc_agent.transport.nats import NatsAgentTransport

    key_id, secret = "AKIACANARY0000000000", "canary-secret-4f1d9e2b7c"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    clock = Clock()
    f = fleet(moto_ec2, state_path, stores, clock)
    await f.start()
    f.submit(SandboxRequest("sbx-c", 2, 2048))
    await f.step()
    clock.now += 5
    await f.step()

    agent_key = signing.SigningKey.generate()
    agent = Agent(
        identity=AgentIdentity(AGENT, TENANT, agent_key.kid, "nats://127.0.0.1:1"),
        signing_key=agent_key,
        keyring=verify.Keyring(),
        state=f.state,
        runtime=InMemoryRuntime(),
        transport=NatsAgentTransport("nats://127.0.0.1:1", TENANT, AGENT),
        config=AgentConfig(data_plane_url="http://127.0.0.1:1", cpu_total=2,
                           memory_mb_total=2048),
        fleet=f,
    )
    data = agent.heartbeat()
    _, hb = verify.verify_model(
        data, typ=messages.HEARTBEAT_TYP, model=messages.Heartbeat,
        keyring=verify.Keyring({agent_key.kid: agent_key.public_key}),
    )
    assert hb.hosts is not None
    [h] = hb.hosts
    [rec] = f.state.hosts()
    assert (h.host_id, h.instance_type, h.state) == (rec.provider_host_id, "c5.metal", "ready")
    assert (h.cpu_total, h.cpu_free, h.sandboxes, h.kvm) == (96, 94, 1, True)

    allowed = {"host_id", "instance_type", "state", "cpu_total", "cpu_free",
               "memory_mb_total", "memory_mb_free", "gpus_total", "gpus_free", "kvm",
               "sandboxes"}
    assert set(messages.HostSummary.model_fields) == allowed
    # what crosses the wire is the signed payload: check it decoded, not base64url
    published = [signing.parse(m).payload
                 for m in [data, *(d for _, _, d in f.state.pending_outbox(limit=10_000))]]
    assert b'"hosts":[' in published[0]
    records = json.dumps([repr(r) for r in f.state.hosts()]).encode()
    for blob in [*published, records]:
        for canary in (key_id.encode(), secret.encode()):
            assert canary not in blob
    words = ("secret", "credential", "password", "access_key", "session_token")
    for name in json.loads(published[0])["hosts"][0]:
        assert not any(w in name.lower() for w in words)
