"""What the agent must remember across restarts: identity, keys, applied jobs, sandboxes,
and where each sandbox's usage records stand."""

from byoc_agent.state.store import (
    AgentIdentity,
    AgentStateStore,
    AppliedJob,
    SandboxRecord,
    UsageCursor,
)

__all__ = ["AgentIdentity", "AgentStateStore", "AppliedJob", "SandboxRecord", "UsageCursor"]
