"""Best-fit placement: the online agent with the template whose free room fits tightest.

Pure functions over frozen records, so the policy is tested without a database:

1. no online agent for the tenant            → CapacityError (503)
2. online agents, none offers the template   → TemplateNotFoundError (404)
3. none of those runs the isolation asked    → CapacityError (503), naming it
4. agents offer it, none has room            → CapacityError (503)
5. otherwise the one left with the least free CPU, then memory, then lowest id.

Step 5 is :func:`byoc_agent.scheduling.best_fit`, the policy the agent uses to place
sandboxes on its hosts, with each agent as one bin (ADR 0017): one definition of "fits"
and of "tightest" for both sides. Isolation is decided per agent (step 3), by the
runtimes it runs, before that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from byoc_agent.protocol.errors import CapacityError, TemplateNotFoundError
from byoc_agent.runtimes.multi import ISOLATION_RUNTIMES
from byoc_agent.scheduling import Free, HostCapacity, SandboxRequest, best_fit
from byoc_agent.scheduling.placement import CPU_MILLI


@dataclass(frozen=True, slots=True)
class Request:
    tenant_id: str
    template: str
    cpu: int
    memory_mb: int
    isolation: str = "gvisor"


@dataclass(frozen=True, slots=True)
class Candidate:
    """An online agent and the room it has, after subtracting placements it has not seen."""

    agent_id: str
    templates: frozenset[str]
    cpu_free: int
    memory_mb_free: int
    isolations: frozenset[str] = frozenset({"gvisor"})


def isolations_of(runtimes: Sequence[str]) -> frozenset[str]:
    """The isolation classes an agent's runtimes provide (unknown runtime names add none)."""
    found = set()
    for name in runtimes:
        for isolation, names in ISOLATION_RUNTIMES.items():
            if name in names:
                found.add(isolation)
    return frozenset(found)


def choose(request: Request, candidates: Sequence[Candidate]) -> Candidate:
    if not candidates:
        raise CapacityError("no agent is online for this tenant", tenant_id=request.tenant_id)
    offering = [c for c in candidates if request.template in c.templates]
    if not offering:
        raise TemplateNotFoundError(
            f"no online agent offers template {request.template!r}", tenant_id=request.tenant_id
        )
    isolated = [c for c in offering if request.isolation in c.isolations]
    if not isolated:
        raise CapacityError(
            f"no online agent runs {request.isolation} sandboxes", tenant_id=request.tenant_id
        )
    if request.cpu >= 1 and request.memory_mb >= 1:
        by_id = {c.agent_id: c for c in isolated}
        bins = [
            (
                HostCapacity(c.agent_id, max(c.cpu_free, 0), max(c.memory_mb_free, 0)),
                Free(c.cpu_free * CPU_MILLI, c.memory_mb_free, 0),
            )
            for c in isolated
        ]
        chosen = best_fit(SandboxRequest("placement", request.cpu, request.memory_mb), bins)
        if chosen is not None:
            return by_id[chosen.host_id]
    raise CapacityError("no agent has room for this sandbox", tenant_id=request.tenant_id)
