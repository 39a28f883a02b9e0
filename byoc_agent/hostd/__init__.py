"""hostd: a host's sandboxes, run by the host and driven by its manager agent over HTTPS.

A manager agent launches hosts (:mod:`byoc_agent.hosts`); each runs ``corral-hostd``, which
serves the host's local Runtime (gVisor, QEMU microVMs) to the manager and nothing else.
The manager keeps every record, signs, meters and talks to NATS; a host holds no NATS
credential, only its TLS key and a bearer secret the manager made for it (ADR 0028).

- :mod:`.credentials` the host's certificate, key and secret
- :mod:`.userdata`    the ``#cloud-config`` that installs and starts hostd on a new host
- :mod:`.server`      the HTTPS app (``corral-hostd``: :mod:`.config`, ``__main__``)
- :mod:`.client`      :class:`RemoteRuntime`, the manager's side
- :mod:`.testing`     :class:`~.testing.LocalHostd`, a real hostd process for tests
"""

from byoc_agent.hostd.client import RemoteRuntime, pinned_ssl_context
from byoc_agent.hostd.credentials import HostCredentials, new_host_credentials
from byoc_agent.hostd.userdata import HostdBootConfig, parse_user_data, render_user_data
from byoc_agent.hostd.wire import HostHealth

__all__ = [
    "HostCredentials",
    "HostHealth",
    "HostdBootConfig",
    "RemoteRuntime",
    "new_host_credentials",
    "parse_user_data",
    "pinned_ssl_context",
    "render_user_data",
]
