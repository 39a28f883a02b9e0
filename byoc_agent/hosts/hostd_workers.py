"""Hosts that run ``corral-hostd``: credentials made per host, sent in its user data, and the
pinned-TLS :class:`~byoc_agent.hostd.client.RemoteRuntime` that reaches it (ADR 0028).

``prepare`` makes the host's bearer secret and self-signed certificate before the host is
provisioned; the host record keeps them (the agent's state file is owner-only), so a launch
retried after a crash sends the same user data, and the agent can reach the host after a
restart. Nothing here is ever logged or reported to the control plane.
"""

from __future__ import annotations

import json

from byoc_agent.hostd.client import RemoteRuntime
from byoc_agent.hostd.credentials import HostCredentials, new_host_credentials
from byoc_agent.hostd.userdata import HostdBootConfig, render_user_data
from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.runtimes.base import Runtime
from byoc_agent.state import HostRecord


class HostdWorkers:
    def __init__(
        self,
        *,
        port: int,
        runtimes: tuple[str, ...],
        tenant_id: str,
        agent_id: str,
        package_spec: str = "corral",
        warm_pool: str = "",
    ) -> None:
        """``warm_pool``: what each host's hostd keeps pre-started (ADR 0025's format)."""
        self.port = port
        self.warm_pool = warm_pool
        self.runtimes = runtimes
        self.tenant_id = tenant_id
        self.agent_id = agent_id
        self.package_spec = package_spec
        self._clients: dict[str, RemoteRuntime] = {}

    def prepare(self, host_key: str) -> str | None:
        creds = new_host_credentials(host_key)
        return json.dumps(
            {
                "secret": creds.secret,
                "cert_pem": creds.cert_pem.decode(),
                "key_pem": creds.key_pem.decode(),
            }
        )

    @staticmethod
    def credentials(rec: HostRecord) -> HostCredentials:
        if rec.worker is None:
            raise InvalidArgumentError(
                f"host {rec.host_key} has no worker credentials (launched without hostd)"
            )
        raw = json.loads(rec.worker)
        return HostCredentials(
            secret=str(raw["secret"]),
            cert_pem=str(raw["cert_pem"]).encode(),
            key_pem=str(raw["key_pem"]).encode(),
        )

    def user_data(self, rec: HostRecord) -> str | None:
        return render_user_data(
            HostdBootConfig(
                listen_port=self.port,
                runtimes=self.runtimes,
                credentials=self.credentials(rec),
                tenant_id=self.tenant_id,
                agent_id=self.agent_id,
                package_spec=self.package_spec,
                warm_pool=self.warm_pool,
            )
        )

    def runtime(self, rec: HostRecord) -> Runtime:
        client = self._clients.get(rec.host_key)
        if client is None:
            if rec.private_ip is None:
                raise InvalidArgumentError(f"host {rec.host_key} has no private address yet")
            creds = self.credentials(rec)
            client = RemoteRuntime(
                f"https://{rec.private_ip}:{self.port}",
                cert_pem=creds.cert_pem,
                secret=creds.secret,
            )
            self._clients[rec.host_key] = client
        return client

    async def ready(self, rec: HostRecord) -> bool:
        client = self.runtime(rec)
        assert isinstance(client, RemoteRuntime)
        health = await client.health()
        return set(self.runtimes) <= set(health.runtimes)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()
