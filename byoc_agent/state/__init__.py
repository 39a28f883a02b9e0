"""What the agent must remember across restarts: identity, keys, applied jobs, sandboxes,
where each sandbox's usage records stand, and the hosts the agent manages."""

from byoc_agent.state.store import (
    AgentIdentity,
    AgentStateStore,
    AppliedJob,
    HostRecord,
    Placement,
    SandboxRecord,
    UsageCursor,
)

__all__ = [
    "AgentIdentity",
    "AgentStateStore",
    "AppliedJob",
    "HostRecord",
    "Placement",
    "SandboxRecord",
    "UsageCursor",
]
