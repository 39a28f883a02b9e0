"""The autoscaler's pure decision: scale out for waiting sandboxes within the host count
and budget, scale in hosts idle long enough, never a host with sandboxes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byoc_agent.hosts.autoscale import BlockedReason, HostView, ScalePlan, ScalingPolicy, plan
from byoc_agent.hosts.phases import HostPhase
from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.providers.base import Offering
from byoc_agent.scheduling import Isolation, Overcommit, SandboxRequest

pytestmark = pytest.mark.providers

METAL = Offering("c5.metal", 96, 196608, bare_metal=True, kvm=True)
SMALL = Offering("m5.2xlarge", 8, 32768)
GPU = Offering("p5.48xlarge", 192, 2097152, gpu_count=8, gpu_model="H100")
OFFERINGS = [METAL, SMALL, GPU]
PRICES = {"c5.metal": Decimal("4.08"), "m5.2xlarge": Decimal("0.384"),
          "p5.48xlarge": Decimal("55.04")}
NOW = 10_000.0


def host(key: str, phase: HostPhase = HostPhase.READY, offering: Offering = METAL, *,
         used_cpu: int = 0, sandboxes: int = 0, idle_since: float | None = None) -> HostView:
    return HostView(key, phase, offering.instance_type, offering.vcpu, offering.memory_mib,
                    offering.gpu_count, offering.kvm, PRICES[offering.instance_type],
                    used_cpu=used_cpu, used_memory_mb=used_cpu * 1024, sandboxes=sandboxes,
                    idle_since=idle_since)


def decide(hosts: list[HostView], pending: list[SandboxRequest], **policy: Any) -> ScalePlan:
    return plan(hosts=hosts, pending=pending, offerings=OFFERINGS, prices=PRICES,
                policy=ScalingPolicy(**policy), overcommit=Overcommit(), now=NOW)


def test_waiting_sandboxes_that_fit_nowhere_get_the_cheapest_host_that_holds_them() -> None:
    """Three 4-vCPU sandboxes need two 8-vCPU m5.2xlarge hosts, the cheapest type."""
    pending = [SandboxRequest(f"s{i}", 4, 4096) for i in range(3)]
    p = decide([], pending, max_hosts=5)
    assert p.launch == ("m5.2xlarge", "m5.2xlarge")
    assert p.blocked == ()


def test_a_microvm_gets_a_kvm_host_and_a_gpu_request_a_gpu_host() -> None:
    """Cheapest is m5.2xlarge, but a microVM needs KVM and GPUs need a GPU type."""
    pending = [SandboxRequest("vm", 2, 2048, isolation=Isolation.MICROVM),
               SandboxRequest("gpu", 8, 65536, gpus=2)]
    p = decide([], pending, max_hosts=5, budget_per_hour=Decimal(100))
    assert sorted(p.launch) == ["c5.metal", "p5.48xlarge"]


def test_free_room_and_hosts_on_their_way_are_counted_before_launching() -> None:
    """Room on a ready host and a provisioning one absorbs the demand: nothing launches."""
    hosts = [host("ready", used_cpu=90, sandboxes=3),
             host("coming", HostPhase.PROVISIONING)]
    pending = [SandboxRequest("a", 4, 4096), SandboxRequest("b", 60, 8192)]
    assert decide(hosts, pending).launch == ()


def test_max_hosts_and_the_budget_bound_scale_out() -> None:
    """At the host cap the request is blocked for max_hosts; over budget, for budget."""
    pending = [SandboxRequest("big", 90, 8192)]
    at_cap = decide([host("h1", used_cpu=96, sandboxes=1)], pending, max_hosts=1)
    assert at_cap.launch == ()
    assert at_cap.blocked == (("big", BlockedReason.MAX_HOSTS),)
    poor = decide([host("h1", used_cpu=96, sandboxes=1)], pending, max_hosts=3,
                  budget_per_hour=Decimal("8.00"))
    assert poor.launch == ()
    assert poor.blocked == (("big", BlockedReason.BUDGET),)
    enough = decide([host("h1", used_cpu=96, sandboxes=1)], pending, max_hosts=3,
                    budget_per_hour=Decimal("8.16"))
    assert enough.launch == ("c5.metal",)


def test_a_request_no_offering_can_hold_is_blocked_not_launched_for() -> None:
    """More GPUs than any type has: nothing is launched for it."""
    p = decide([], [SandboxRequest("huge", 1, 1024, gpus=16)], max_hosts=9)
    assert p.launch == ()
    assert p.blocked == (("huge", BlockedReason.NO_OFFERING),)


def test_only_hosts_idle_past_the_timeout_and_without_sandboxes_are_drained() -> None:
    """Idle long enough → drained (longest first); busy or recently idle → kept."""
    hosts = [
        host("busy", used_cpu=2, sandboxes=1, idle_since=None),
        host("old", idle_since=NOW - 700),
        host("older", idle_since=NOW - 900),
        host("fresh", idle_since=NOW - 10),
    ]
    assert decide(hosts, [], idle_timeout_s=600).drain == ("older", "old")
    assert decide(hosts, [], idle_timeout_s=600, min_hosts=3).drain == ("older",)


def test_an_idle_host_a_waiting_sandbox_fits_on_is_not_drained() -> None:
    """Demand that the idle host can serve keeps it."""
    hosts = [host("idle", idle_since=NOW - 9999)]
    assert decide(hosts, [SandboxRequest("a", 2, 2048)], idle_timeout_s=1).drain == ()


def test_min_hosts_are_kept_live_without_demand_within_the_budget() -> None:
    """With no waiting sandbox, min_hosts 2 and one live host launches one more of the
    cheapest type; a budget below that type's price launches none."""
    assert decide([host("h1")], [], min_hosts=2).launch == ("m5.2xlarge",)
    assert decide([host("h1")], [], min_hosts=2, budget_per_hour=Decimal("4.20")).launch == ()


def test_bad_knobs_are_refused() -> None:
    """min above max, a negative budget: clear errors."""
    with pytest.raises(InvalidArgumentError, match="min_hosts"):
        ScalingPolicy(min_hosts=3, max_hosts=2)
    with pytest.raises(InvalidArgumentError, match="budget"):
        ScalingPolicy(budget_per_hour=Decimal(-1))


views = st.lists(
    st.builds(
        lambda i, phase, used, idle: host(
            f"h{i}", phase, METAL, used_cpu=used, sandboxes=1 if used else 0,
            idle_since=None if used else NOW - idle,
        ),
        st.integers(0, 50),
        st.sampled_from(list(HostPhase)),
        st.sampled_from([0, 0, 4, 96]),
        st.floats(0, 5000),
    ),
    max_size=8,
    unique_by=lambda v: v.host_key,
)
requests = st.lists(
    st.builds(
        lambda i, cpu, gpus, iso: SandboxRequest(f"s{i}", cpu, cpu * 1024, gpus, iso),
        st.integers(0, 500), st.integers(1, 64), st.sampled_from([0, 0, 1, 8, 9]),
        st.sampled_from(list(Isolation)),
    ),
    max_size=12,
    unique_by=lambda r: r.sandbox_id,
)


@settings(max_examples=200, deadline=None)
@given(hosts=views, pending=requests, max_hosts=st.integers(0, 6),
       budget=st.sampled_from([Decimal(0), Decimal("5"), Decimal("60"), Decimal("500")]),
       idle=st.sampled_from([0.0, 300.0, 100000.0]))
def test_any_plan_respects_the_bounds_and_never_drains_a_busy_host(
    hosts: list[HostView], pending: list[SandboxRequest], max_hosts: int, budget: Decimal,
    idle: float,
) -> None:
    """Live hosts after the plan never exceed max_hosts (unless already over), new spend
    stays within the budget, and only READY hosts without sandboxes are drained."""
    p = decide(hosts, pending, max_hosts=max_hosts, budget_per_hour=budget,
               idle_timeout_s=idle)
    live = [h for h in hosts if h.phase not in (HostPhase.TERMINATED, HostPhase.FAILED)]
    if p.launch:
        assert len(live) + len(p.launch) <= max_hosts
        spend = sum((h.price_per_hour for h in live), Decimal(0)) + sum(
            (PRICES[t] for t in p.launch), Decimal(0))
        assert spend <= budget
        assert p.drain == ()
    by_key = {h.host_key: h for h in hosts}
    for key in p.drain:
        h = by_key[key]
        assert h.phase is HostPhase.READY
        assert h.sandboxes == 0
        assert h.idle_since is not None
        assert NOW - h.idle_since >= idle
    assert len({sid for sid, _ in p.blocked}) == len(p.blocked)
