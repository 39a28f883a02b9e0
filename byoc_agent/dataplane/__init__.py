"""The agent's in-VPC HTTP endpoint: exec streams and files, behind per-sandbox tokens."""

from byoc_agent.dataplane.server import SandboxAccess, create_dataplane_app, serve

__all__ = ["SandboxAccess", "create_dataplane_app", "serve"]
