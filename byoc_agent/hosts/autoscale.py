"""The autoscaler's decision, as a pure function: which hosts to launch, which to drain.

Scale out: the waiting sandboxes are placed, largest first, on the free room of READY
hosts and on the whole room of hosts already on their way (REQUESTED, PROVISIONING), with
the same best-fit policy the agent places with (:mod:`byoc_agent.scheduling`). What is
left gets new hosts: for each leftover request, the cheapest priced offering that can hold
it (KVM for a microVM, enough GPUs), and later leftovers fill those new hosts first. A
launch that would exceed ``max_hosts`` live hosts or ``budget_per_hour`` (the summed
$/hour of live hosts) is not made; the request is reported as blocked with the reason.

Floor: while fewer than ``min_hosts`` hosts are live, the cheapest allowed type is launched
(budget permitting), demand or not.

Scale in: a READY host with no sandbox, idle for ``idle_timeout_s`` and not needed by a
waiting request, is drained, longest idle first, keeping ``min_hosts``. A host with a
sandbox on it is never drained. Nothing is drained while the plan launches.

No I/O and no clock: :mod:`byoc_agent.hosts.fleet` gathers the inputs and applies the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from byoc_agent.hosts.phases import LIVE, HostPhase
from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.providers.base import Offering
from byoc_agent.scheduling import (
    BestFitScheduler,
    HostCapacity,
    Isolation,
    Overcommit,
    SandboxRequest,
)

# One agent's fleet; also the most hosts a heartbeat lists.
MAX_HOSTS = 1000


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """The autoscaling knobs (``CORRAL_AGENT_HOSTS_*``, see docs/hosts.md)."""

    max_hosts: int = 4
    min_hosts: int = 0
    budget_per_hour: Decimal = Decimal("50")
    idle_timeout_s: float = 600.0
    ready_timeout_s: float = 900.0
    # Instance types the autoscaler may launch; empty = every offering with a price.
    instance_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.min_hosts <= self.max_hosts <= MAX_HOSTS:
            raise InvalidArgumentError(
                f"hosts: need 0 <= min_hosts ({self.min_hosts}) <= max_hosts "
                f"({self.max_hosts}) <= {MAX_HOSTS}",
                field="max_hosts",
            )
        if self.budget_per_hour < 0:
            raise InvalidArgumentError(
                f"hosts: budget_per_hour must not be negative (got {self.budget_per_hour})",
                field="budget_per_hour",
            )
        if self.idle_timeout_s < 0 or self.ready_timeout_s <= 0:
            raise InvalidArgumentError(
                "hosts: idle_timeout_s must be >= 0 and ready_timeout_s > 0",
                field="idle_timeout_s",
            )


@dataclass(frozen=True, slots=True)
class HostView:
    """What the planner needs to know about one host."""

    host_key: str
    phase: HostPhase
    instance_type: str
    vcpu: int
    memory_mb: int
    gpus: int
    kvm: bool
    price_per_hour: Decimal
    used_cpu: int = 0
    used_memory_mb: int = 0
    used_gpus: int = 0
    sandboxes: int = 0
    idle_since: float | None = None


class BlockedReason(StrEnum):
    NO_OFFERING = "no_offering"  # no priced, allowed instance type can hold it
    MAX_HOSTS = "max_hosts"
    BUDGET = "budget"


@dataclass(frozen=True, slots=True)
class ScalePlan:
    launch: tuple[str, ...] = ()  # instance types, one entry per host
    drain: tuple[str, ...] = ()  # host keys
    blocked: tuple[tuple[str, BlockedReason], ...] = ()  # (sandbox_id, why)


def plan(
    *,
    hosts: Sequence[HostView],
    pending: Sequence[SandboxRequest],
    offerings: Sequence[Offering],
    prices: Mapping[str, Decimal],
    policy: ScalingPolicy,
    overcommit: Overcommit,
    now: float,
) -> ScalePlan:
    live = [h for h in hosts if h.phase in LIVE]
    count = len(live)
    spend = sum((h.price_per_hour for h in live), Decimal(0))
    sim = BestFitScheduler(overcommit=overcommit)
    for h in live:
        if h.phase is HostPhase.DRAINING:
            continue
        sim.add_host(HostCapacity(h.host_key, h.vcpu, h.memory_mb, h.gpus, h.kvm))
        if h.used_cpu or h.used_memory_mb or h.used_gpus:
            used = SandboxRequest(
                f"used:{h.host_key}", max(h.used_cpu, 1), max(h.used_memory_mb, 1), h.used_gpus
            )
            sim.place_at(used, h.host_key)

    allowed = set(policy.instance_types)
    choices = sorted(
        (
            (prices[o.instance_type], o.instance_type, o)
            for o in offerings
            if o.instance_type in prices and (not allowed or o.instance_type in allowed)
        ),
        key=lambda t: (t[0], t[1]),
    )
    launch: list[str] = []
    blocked: list[tuple[str, BlockedReason]] = []
    order = sorted(pending, key=lambda r: (-r.gpus, -r.cpu, -r.memory_mb, r.sandbox_id))
    for req in order:
        if sim.place(req) is not None:
            continue
        fitting = [
            (price, o)
            for price, _, o in choices
            if _could_hold(o, req, overcommit)
        ]
        if not fitting:
            blocked.append((req.sandbox_id, BlockedReason.NO_OFFERING))
            continue
        if count + 1 > policy.max_hosts:
            blocked.append((req.sandbox_id, BlockedReason.MAX_HOSTS))
            continue
        affordable = [(p, o) for p, o in fitting if spend + p <= policy.budget_per_hour]
        if not affordable:
            blocked.append((req.sandbox_id, BlockedReason.BUDGET))
            continue
        price, offering = affordable[0]
        key = f"new-{len(launch)}"
        sim.add_host(
            HostCapacity(key, offering.vcpu, offering.memory_mib, offering.gpu_count, offering.kvm)
        )
        sim.place_at(req, key)
        launch.append(offering.instance_type)
        count += 1
        spend += price

    # keep at least min_hosts live: the cheapest allowed type, budget permitting
    while count < policy.min_hosts:
        within = [(p, o) for p, _, o in choices if spend + p <= policy.budget_per_hour]
        if not within:
            break
        price, offering = within[0]
        launch.append(offering.instance_type)
        count += 1
        spend += price

    drain: list[str] = []
    if not launch:
        needed = {sim.host_of(r.sandbox_id) for r in pending}
        idle = sorted(
            (
                h
                for h in live
                if h.phase is HostPhase.READY
                and h.sandboxes == 0
                and h.idle_since is not None
                and now - h.idle_since >= policy.idle_timeout_s
                and h.host_key not in needed
            ),
            key=lambda h: (h.idle_since or 0.0, h.host_key),
        )
        room = max(0, count - policy.min_hosts)
        drain = [h.host_key for h in idle[:room]]
    return ScalePlan(launch=tuple(launch), drain=tuple(drain), blocked=tuple(blocked))


def _could_hold(o: Offering, req: SandboxRequest, overcommit: Overcommit) -> bool:
    if req.isolation is Isolation.MICROVM and not o.kvm:
        return False
    return (
        int(o.vcpu * overcommit.cpu) >= req.cpu
        and int(o.memory_mib * overcommit.memory) >= req.memory_mb
        and o.gpu_count >= req.gpus
    )
