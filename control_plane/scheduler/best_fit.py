"""Best-fit placement: the online agent with the template whose free room fits tightest.

Pure functions over frozen records, so the policy is tested without a database:

1. no online agent for the tenant            → CapacityError (503)
2. online agents, none offers the template   → TemplateNotFoundError (404)
3. none of those runs the isolation asked    → CapacityError (503), naming it
4. agents offer it, none has room            → CapacityError (503)
5. otherwise the one left with the least free CPU, then memory, then lowest id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from byoc_agent.protocol.errors import CapacityError, TemplateNotFoundError
from byoc_agent.runtimes.multi import ISOLATION_RUNTIMES


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
    fitting = [
        c for c in isolated if c.cpu_free >= request.cpu and c.memory_mb_free >= request.memory_mb
    ]
    if not fitting:
        raise CapacityError("no agent has room for this sandbox", tenant_id=request.tenant_id)
    return min(
        fitting,
        key=lambda c: (c.cpu_free - request.cpu, c.memory_mb_free - request.memory_mb, c.agent_id),
    )
