"""The lifecycle of a host the agent manages, as the agent records it.

::

     scale out      provision() returned     ready check passed     idle, no sandbox
    ─────────► REQUESTED ─────────► PROVISIONING ─────────► READY ─────────► DRAINING
                   │                     │                    │                  │
                   │ launch refused, or  │ not ready by the   │ gone at the      │ none placed:
                   │ no capacity by the  │ deadline: given    │ provider (lost)  │ terminate()
                   │ deadline            │ back and replaced  │                  │ until gone
                   ▼                     ▼                    ▼                  ▼
                 FAILED                FAILED               FAILED           TERMINATED

TERMINATED and FAILED never change again; a FAILED host has been given back to the
provider (or never existed) before the record says so. A REQUESTED host also fails when
the provider refuses the launch (quota, auth, unknown type) or has no capacity until the
deadline. Every phase is written to the agent's SQLite state *before* the next provider
call, so a restarted agent resumes from it: each step first measures (list by tag,
describe) and only then acts.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class HostPhase(StrEnum):
    REQUESTED = "requested"
    PROVISIONING = "provisioning"
    READY = "ready"
    DRAINING = "draining"
    TERMINATED = "terminated"
    FAILED = "failed"


ALLOWED: Mapping[HostPhase, frozenset[HostPhase]] = {
    HostPhase.REQUESTED: frozenset({HostPhase.PROVISIONING, HostPhase.FAILED}),
    HostPhase.PROVISIONING: frozenset({HostPhase.READY, HostPhase.FAILED}),
    HostPhase.READY: frozenset({HostPhase.DRAINING, HostPhase.FAILED}),
    HostPhase.DRAINING: frozenset({HostPhase.TERMINATED}),
    HostPhase.TERMINATED: frozenset(),
    HostPhase.FAILED: frozenset(),
}

LIVE = frozenset(
    {HostPhase.REQUESTED, HostPhase.PROVISIONING, HostPhase.READY, HostPhase.DRAINING}
)


def can_move(src: HostPhase, dst: HostPhase) -> bool:
    return src == dst or dst in ALLOWED[src]
