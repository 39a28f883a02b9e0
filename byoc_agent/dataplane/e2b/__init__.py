"""E2B-compatible surface of the data plane: what the ``e2b`` SDKs call inside a sandbox.

The e2b SDKs talk to a daemon in each sandbox (envd): two Connect RPC services,
``process.Process`` and ``filesystem.Filesystem``, plus ``GET/POST /files`` and
``GET /health``. Here the agent's data plane serves the same paths for every sandbox it
runs, routing by the ``E2b-Sandbox-Id`` header the SDK sends; the ``X-Access-Token``
header carries a Corral sandbox token (signed by the control plane, checked locally).
Every operation goes through the agent's :class:`~byoc_agent.runtimes.base.Runtime`.

    E2B_SANDBOX_URL ──► data plane ─┬─ /process.Process/*        processes.py (connectrpc)
                                    ├─ /filesystem.Filesystem/*  filesystem.py (connectrpc)
                                    └─ /files, /health           files.py (FastAPI)
"""

from byoc_agent.dataplane.e2b.app import envd_asgi

__all__ = ["envd_asgi"]
