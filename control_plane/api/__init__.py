"""HTTP API (OpenAPI at ``/openapi.json``): auth, RBAC, tenants, agents, sandboxes, jobs."""

from control_plane.api.app import create_app

__all__ = ["create_app"]
