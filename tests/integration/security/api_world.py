"""An in-process control plane with two tenants, their agents and some of everything.

The control plane is the real app (real database, real signing, real inbox); only NATS is
replaced by :class:`AnsweringPublisher`, a scripted agent that verifies each signed job
with the control plane's public keys and answers it with a result signed by the agent's
own enrolled key, fed to the real inbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from byoc_agent.protocol import subjects
from byoc_agent.protocol.messages import SandboxState
from byoc_agent.protocol.signing import SigningKey, public_key_from_text
from byoc_agent.protocol.verify import Keyring, verify_signed_job
from control_plane.api import create_app
from control_plane.api.services import Services
from control_plane.jobs.inbox import AgentInbox
from control_plane.settings import Settings
from control_plane.testing import (
    ADMIN_TOKEN,
    heartbeat_message,
    make_settings,
    result_message,
    usage_message,
)

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROLES = ("owner", "admin", "member", "viewer", "billing")
NOV_2026 = 1793491200  # 2026-11-01T00:00:00Z


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class AnsweringPublisher:
    """Stands in for NATS and the agent: verifies each job and answers it, signed."""

    agent_keys: dict[str, SigningKey] = field(default_factory=dict)
    keyring: Keyring = field(default_factory=Keyring)
    inbox: AgentInbox | None = None
    published: list[str] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def publish_job(self, subject: str, msg_id: str, data: bytes) -> None:
        job = verify_signed_job(data, keyring=self.keyring)
        assert subject == subjects.jobs(job.tenant_id, job.agent_id)
        self.published.append(job.job_id)
        task = asyncio.get_running_loop().create_task(self._answer(data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes) -> None:
        job = verify_signed_job(data, keyring=self.keyring)
        key = self.agent_keys[job.agent_id]
        kind = job.body.kind
        state = {
            "kill_sandbox": SandboxState.KILLED,
            "pause_sandbox": SandboxState.PAUSED,
        }.get(kind, SandboxState.RUNNING)
        reason = "killed" if kind == "kill_sandbox" else None
        answer = result_message(key, job, state=state, end_reason=reason)
        assert self.inbox is not None
        await self.inbox.handle(subjects.results(job.tenant_id, job.agent_id), answer)


@dataclass
class Tenant:
    id: str
    keys: dict[str, str]  # role -> secret
    key_ids: dict[str, str]  # role -> key id
    agent_id: str = ""
    sandbox_id: str = ""
    job_id: str = ""


@dataclass
class World:
    client: TestClient
    app: FastAPI
    publisher: AnsweringPublisher
    finance_key: str
    finance_key_id: str
    a: Tenant
    b: Tenant

    @property
    def svc(self) -> Services:
        svc = self.app.state.services
        assert isinstance(svc, Services)
        return svc

    def new_tenant(self, name: str) -> Tenant:
        r = self.client.post("/v1/tenants", json={"name": name}, headers=OPERATOR)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["api_key"]["role"] == "owner"
        tenant = Tenant(
            id=body["tenant"]["id"],
            keys={"owner": body["api_key"]["key"]},
            key_ids={"owner": body["api_key"]["id"]},
        )
        for role in ROLES[1:]:
            key = self.mint_key(tenant.id, role)
            tenant.keys[role] = key["key"]
            tenant.key_ids[role] = key["id"]
        tenant.agent_id = self.enroll_agent(tenant.id)
        return tenant

    def mint_key(self, tenant_id: str, role: str = "member") -> dict[str, str]:
        r = self.client.post(
            f"/v1/tenants/{tenant_id}/api-keys",
            json={"name": f"{role}-key", "role": role},
            headers=OPERATOR,
        )
        assert r.status_code == 201, r.text
        assert r.json()["role"] == role
        return dict(r.json())

    def enrollment_token(self, tenant_id: str) -> str:
        r = self.client.post(
            "/v1/agents/enrollment-tokens", json={"tenant_id": tenant_id}, headers=OPERATOR
        )
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def enroll_body(self, tenant_id: str, key: SigningKey) -> dict[str, object]:
        return {
            "token": self.enrollment_token(tenant_id),
            "name": "agent",
            "public_key": key.public_text,
            "data_plane_url": "http://127.0.0.1:1",
            "runtimes": ["gvisor"],
            "templates": ["base"],
            "capacity": {
                "cpu_total": 64,
                "cpu_free": 64,
                "memory_mb_total": 65536,
                "memory_mb_free": 65536,
            },
        }

    def enroll_agent(self, tenant_id: str) -> str:
        key = SigningKey.generate()
        r = self.client.post("/v1/agents/enroll", json=self.enroll_body(tenant_id, key))
        assert r.status_code == 201, r.text
        agent_id = str(r.json()["agent_id"])
        self.publisher.agent_keys[agent_id] = key
        self.deliver(
            subjects.heartbeat(tenant_id, agent_id),
            heartbeat_message(
                key, agent_id=agent_id, tenant_id=tenant_id, cpu_free=64, memory_mb_free=65536
            ),
        )
        return agent_id

    def deliver(self, subject: str, data: bytes) -> None:
        """Hand a message to the control plane's inbox, as the NATS consumer would."""
        assert self.client.portal is not None
        outcome = self.client.portal.call(self.svc.inbox.handle, subject, data)
        assert outcome == "applied", (subject, outcome)

    def sandbox(self, tenant: Tenant) -> str:
        """A running sandbox of ``tenant``, created through the API with its owner key."""
        r = self.client.post(
            "/v1/sandboxes",
            json={"template": "base", "cpu": 1, "memory_mb": 256},
            headers=bearer(tenant.keys["owner"]),
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def usage(self, tenant: Tenant, record_id: str) -> None:
        key = self.publisher.agent_keys[tenant.agent_id]
        self.deliver(
            subjects.usage(tenant.id, tenant.agent_id),
            usage_message(
                key,
                agent_id=tenant.agent_id,
                tenant_id=tenant.id,
                sandbox_id=tenant.sandbox_id,
                record_id=record_id,
                start=NOV_2026 + 3600,
                end=NOV_2026 + 7200,
            ),
        )


@contextmanager
def world(tmp_path: Path, database_url: str, settings: Settings | None = None) -> Iterator[World]:
    """Two tenants (A and B), each with a key per role, an online agent, a running
    sandbox, a job and a usage record; and a platform billing key."""
    publisher = AnsweringPublisher()
    base = make_settings(tmp_path, database_url, job_timeout_s=10.0, heartbeat_offline_s=3600)
    # Rate limiting is off unless the test asks for it (it has a test of its own).
    chosen = settings or dataclasses.replace(base, sandbox_create_rate_per_s=0)
    app = create_app(chosen, publisher=publisher)  # agents stay online for the whole test
    with TestClient(app, raise_server_exceptions=False) as client:
        svc = app.state.services
        publisher.inbox = svc.inbox
        keys = client.get("/v1/signing-keys").json()["keys"]
        publisher.keyring = Keyring(
            keys={k["kid"]: public_key_from_text(k["public_key"]) for k in keys}
        )
        r = client.post("/v1/billing/keys", json={"name": "finance"}, headers=OPERATOR)
        assert r.status_code == 201, r.text
        w = World(
            client=client,
            app=app,
            publisher=publisher,
            finance_key=r.json()["key"],
            finance_key_id=r.json()["id"],
            a=Tenant("", {}, {}),
            b=Tenant("", {}, {}),
        )
        for name in ("a", "b"):
            tenant = w.new_tenant(f"tenant-{name}")
            tenant.sandbox_id = w.sandbox(tenant)
            tenant.job_id = publisher.published[-1]
            w.usage(tenant, f"rec-{name}")
            setattr(w, name, tenant)
        yield w
