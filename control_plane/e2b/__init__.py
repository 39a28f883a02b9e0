"""E2B-compatible lifecycle API: the part of E2B's REST API the ``e2b`` SDKs call.

Served by the control plane next to ``/v1`` (paths ``/sandboxes`` and ``/v2/sandboxes``),
authenticated by E2B's ``X-API-KEY`` header carrying a Corral tenant API key, and
implemented by the same :class:`~control_plane.sandbox_service.SandboxService` as
Corral's own API (placement, signed jobs, metering). Commands and files never come here:
the SDK takes them to the agent's data plane (``E2B_SANDBOX_URL``), see
``byoc_agent/dataplane/e2b``.
"""

from control_plane.e2b.routes import router

__all__ = ["router"]
