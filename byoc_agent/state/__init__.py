"""What the agent must remember across restarts: identity, keys, applied jobs, sandboxes."""

from byoc_agent.state.store import AgentIdentity, AgentStateStore, AppliedJob, SandboxRecord

__all__ = ["AgentIdentity", "AgentStateStore", "AppliedJob", "SandboxRecord"]
