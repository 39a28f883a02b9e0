"""Placement policy shared by the agent (sandboxes onto its hosts) and the control plane
(sandboxes onto agents). Pure: no I/O, no clock."""

from byoc_agent.scheduling.placement import (
    Aging,
    BestFitScheduler,
    Free,
    HostCapacity,
    Isolation,
    Overcommit,
    SandboxRequest,
    best_fit,
)

__all__ = [
    "Aging",
    "BestFitScheduler",
    "Free",
    "HostCapacity",
    "Isolation",
    "Overcommit",
    "SandboxRequest",
    "best_fit",
]
