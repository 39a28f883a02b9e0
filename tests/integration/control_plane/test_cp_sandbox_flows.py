"""The control plane end to end: real uvicorn, real nats-server, a scripted fake agent."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from cp_fake_agent import Answer, FakeAgent, obedient

from byoc_agent.protocol.messages import SANDBOX_TOKEN_TYP, Job, SandboxState, SandboxToken
from byoc_agent.protocol.signing import SigningKey, public_key_from_text
from byoc_agent.protocol.verify import Keyring, verify_model
from control_plane.api import create_app
from control_plane.testing import ADMIN_TOKEN, make_settings
from corral.testing import NatsServer, eventually, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class ControlPlane:
    base_url: str
    nats_url: str
    http: httpx.AsyncClient
    agents: list[FakeAgent]

    async def tenant(self, name: str = "acme") -> tuple[str, dict[str, str]]:
        r = await self.http.post("/v1/tenants", json={"name": name}, headers=OPERATOR)
        assert r.status_code == 201
        body = r.json()
        return body["tenant"]["id"], {"Authorization": f"Bearer {body['api_key']['key']}"}

    async def agent(self, tenant_id: str, **kwargs: object) -> FakeAgent:
        r = await self.http.post(
            "/v1/agents/enrollment-tokens", json={"tenant_id": tenant_id}, headers=OPERATOR
        )
        agent = FakeAgent(
            base_url=self.base_url,
            nats_url=self.nats_url,
            enrollment_token=r.json()["token"],
            **kwargs,  # type: ignore[arg-type]
        )
        self.agents.append(agent)
        await agent.start()
        if agent.heartbeats:

            async def online() -> bool:
                got = await self.http.get(f"/v1/agents/{agent.agent_id}", headers=OPERATOR)
                return bool(got.json()["status"] == "online")

            await eventually(online)
        return agent


@contextlib.asynccontextmanager
async def control_plane(
    nats: NatsServer,
    database_url: str,
    home: Path,
    *,
    job_timeout_s: float = 10.0,
    heartbeat_offline_s: float = 15.0,
) -> AsyncIterator[ControlPlane]:
    settings = make_settings(
        home,
        database_url,
        nats_url=nats.url,
        job_timeout_s=job_timeout_s,
        heartbeat_offline_s=heartbeat_offline_s,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
        return server.started

    await eventually(started, within_s=30)
    base_url = f"http://127.0.0.1:{port}"
    cp = ControlPlane(base_url, nats.url, httpx.AsyncClient(base_url=base_url, timeout=30), [])
    try:
        yield cp
    finally:
        for agent in cp.agents:
            await agent.stop()
        await cp.http.aclose()
        server.should_exit = True
        async with asyncio.timeout(30):
            await task


async def test_a_sandbox_is_created_with_a_verifiable_token_then_killed(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """Create returns 201 with data-plane access; kill is 204 and idempotent."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        r = await cp.http.post(
            "/v1/sandboxes",
            json={
                "template": "base",
                "cpu": 2,
                "memory_mb": 1024,
                "timeout_s": 120,
                "env": {"SECRET": "hunter2"},
                "metadata": {"team": "red"},
            },
            headers=auth,
        )
        assert r.status_code == 201, r.text
        sb = r.json()
        assert sb["state"] == "running"
        assert sb["agent_id"] == agent.agent_id
        assert sb["data_plane_url"] == "http://10.1.2.3:7000"
        assert sb["metadata"] == {"team": "red"}
        assert sb["expires_at"] is not None
        keys = (await cp.http.get("/v1/signing-keys")).json()["keys"]
        ring = Keyring(keys={k["kid"]: public_key_from_text(k["public_key"]) for k in keys})
        _, token = verify_model(
            sb["access_token"].encode(), typ=SANDBOX_TOKEN_TYP, model=SandboxToken, keyring=ring
        )
        assert (token.sandbox_id, token.agent_id, token.tenant_id) == (
            sb["id"],
            agent.agent_id,
            tenant_id,
        )
        create_job = agent.received[0]
        assert create_job.msg_id == create_job.job.job_id
        assert create_job.job.body.kind == "create_sandbox"

        assert (await cp.http.delete(f"/v1/sandboxes/{sb['id']}", headers=auth)).status_code == 204
        got = (await cp.http.get(f"/v1/sandboxes/{sb['id']}", headers=auth)).json()
        assert (got["state"], got["end_reason"]) == ("killed", "killed")
        assert (await cp.http.delete(f"/v1/sandboxes/{sb['id']}", headers=auth)).status_code == 204
        assert [r.job.body.kind for r in agent.received] == ["create_sandbox", "kill_sandbox"]
        assert [r.job.seq for r in agent.received] == [1, 2]
        # The caller is answered as soon as the result arrives; the job row is updated by
        # the inbox, which may finish a moment later.
        async def job_succeeded() -> bool:
            r = await cp.http.get(f"/v1/jobs/{create_job.job.job_id}", headers=auth)
            return bool(r.json()["status"] == "succeeded")

        await eventually(job_succeeded)
        listed = (
            await cp.http.get("/v1/sandboxes", params={"metadata.team": "red"}, headers=auth)
        ).json()
        assert [s["id"] for s in listed["items"]] == [sb["id"]]


async def test_timeout_changes_and_a_timed_out_event_are_recorded(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """set_timeout moves expires_at; the agent's timed_out event ends the sandbox."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        sb = (await cp.http.post("/v1/sandboxes", json={"template": "base"}, headers=auth)).json()
        r = await cp.http.post(
            f"/v1/sandboxes/{sb['id']}/timeout", json={"timeout_s": 3600}, headers=auth
        )
        assert r.status_code == 200
        assert r.json()["timeout_s"] == 3600
        assert r.json()["expires_at"] > sb["expires_at"]
        bad = await cp.http.post(
            f"/v1/sandboxes/{sb['id']}/timeout", json={"timeout_s": 0}, headers=auth
        )
        assert bad.json()["error"]["field"] == "timeout_s"
        token = await cp.http.post(f"/v1/sandboxes/{sb['id']}/token", headers=auth)
        assert token.json()["data_plane_url"] == "http://10.1.2.3:7000"

        await agent.emit_event(sb["id"], SandboxState.TIMED_OUT, "timed_out")

        async def timed_out() -> bool:
            got = await cp.http.get(f"/v1/sandboxes/{sb['id']}", headers=auth)
            return bool(got.json()["state"] == "timed_out")

        await eventually(timed_out)
        assert (await cp.http.delete(f"/v1/sandboxes/{sb['id']}", headers=auth)).status_code == 204
        assert len(agent.received) == 2  # create and set_timeout; no kill for a dead sandbox


async def test_no_online_agent_gives_503(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """An enrolled agent that never sent a heartbeat cannot take sandboxes."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        await cp.agent(tenant_id, heartbeats=False)
        r = await cp.http.post("/v1/sandboxes", json={"template": "base"}, headers=auth)
        assert r.status_code == 503


async def test_a_silent_agent_leaves_the_sandbox_pending_with_202(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """An agent that receives the job but does not answer within the job timeout: create
    answers 202 with the sandbox still pending (the caller keeps its id and can poll or
    kill it), where a kill on the same silent agent is a 504."""
    async with control_plane(nats_server, database_url, tmp_path, job_timeout_s=1.0) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id, answer=lambda job: None)
        r = await cp.http.post("/v1/sandboxes", json={"template": "base"}, headers=auth)
        assert r.status_code == 202, r.text
        sb = r.json()
        assert (sb["state"], sb["expires_at"]) == ("pending", None)
        assert len(agent.received) == 1
        assert agent.received[0].job.body.sandbox_id == sb["id"]
        got = await cp.http.get(f"/v1/sandboxes/{sb['id']}", headers=auth)
        assert got.json()["state"] == "pending"
        r = await cp.http.delete(f"/v1/sandboxes/{sb['id']}", headers=auth)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "timeout"


async def test_a_slow_start_answers_202_and_the_sandbox_runs_when_the_agent_answers(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """An agent that takes longer than the job timeout (it is adding a host): 202 pending
    at once, then running with its expiry set once the late result lands."""

    def slow(job: Job) -> Answer | None:
        answer = obedient(job)
        if answer is not None and job.body.kind == "create_sandbox":
            return dataclasses.replace(answer, delay_s=2.0)
        return answer

    async with control_plane(nats_server, database_url, tmp_path, job_timeout_s=0.5) as cp:
        tenant_id, auth = await cp.tenant()
        await cp.agent(tenant_id, answer=slow)
        r = await cp.http.post("/v1/sandboxes", json={"template": "base"}, headers=auth)
        assert r.status_code == 202, r.text
        sb = r.json()
        assert sb["state"] == "pending"

        async def running() -> dict[str, object] | None:
            got = (await cp.http.get(f"/v1/sandboxes/{sb['id']}", headers=auth)).json()
            return got if got["state"] == "running" else None

        got = await eventually(running, within_s=15, what="the late result applied")
        assert got["expires_at"] is not None


async def test_unknown_templates_give_404_from_the_scheduler_or_the_agent(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """A template no agent offers, or one the agent reports missing, is a 404."""

    def no_ghosts(job: Job) -> Answer | None:
        if job.body.kind == "create_sandbox" and job.body.template == "ghost":
            return Answer(status="failed", error_code="template_not_found")
        return obedient(job)

    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        await cp.agent(tenant_id, templates=("base", "ghost"), answer=no_ghosts)
        r = await cp.http.post("/v1/sandboxes", json={"template": "nope"}, headers=auth)
        assert r.status_code == 404
        r = await cp.http.post("/v1/sandboxes", json={"template": "ghost"}, headers=auth)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "template_not_found"
        failed = await cp.http.get("/v1/sandboxes", params={"state": "failed"}, headers=auth)
        assert [s["end_reason"] for s in failed.json()["items"]] == ["create_failed"]


async def test_another_tenants_key_gets_404_on_a_sandbox(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """Tenant B cannot see, kill, extend or get a token for tenant A's sandbox."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_a, auth_a = await cp.tenant("a")
        _, auth_b = await cp.tenant("b")
        await cp.agent(tenant_a)
        sb = (await cp.http.post("/v1/sandboxes", json={"template": "base"}, headers=auth_a)).json()
        path = f"/v1/sandboxes/{sb['id']}"
        assert (await cp.http.get(path, headers=auth_b)).status_code == 404
        assert (await cp.http.delete(path, headers=auth_b)).status_code == 404
        r = await cp.http.post(f"{path}/timeout", json={"timeout_s": 10}, headers=auth_b)
        assert r.status_code == 404
        assert (await cp.http.post(f"{path}/token", headers=auth_b)).status_code == 404
        assert (await cp.http.get("/v1/sandboxes", headers=auth_b)).json()["items"] == []
        assert (await cp.http.get(path, headers=auth_a)).json()["state"] == "running"


async def test_a_forged_result_is_ignored(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """A result signed by a key other than the agent's enrolled key changes nothing."""
    async with control_plane(nats_server, database_url, tmp_path, job_timeout_s=1.5) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id, result_key=SigningKey.generate())
        r = await cp.http.post("/v1/sandboxes", json={"template": "base"}, headers=auth)
        assert r.status_code == 202  # no valid answer in time: still pending
        job_id = agent.received[0].job.job_id
        job = (await cp.http.get(f"/v1/jobs/{job_id}", headers=auth)).json()
        assert job["status"] == "delivered"
        pending = await cp.http.get("/v1/sandboxes", params={"state": "pending"}, headers=auth)
        assert len(pending.json()["items"]) == 1


async def test_the_real_server_refuses_bad_bodies_and_revoked_keys(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """Through uvicorn: malformed JSON 400, oversized 413, out-of-range 400, revoked key 401."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        r = await cp.http.post(
            "/v1/sandboxes", content=b"{nope", headers={**auth, "content-type": "application/json"}
        )
        assert r.status_code == 400
        r = await cp.http.post("/v1/sandboxes", content=b"[" * (2 * 1024 * 1024), headers=auth)
        assert r.status_code == 413
        r = await cp.http.post("/v1/sandboxes", json={"template": "base", "cpu": 64}, headers=auth)
        assert (r.status_code, r.json()["error"]["field"]) == (400, "cpu")
        r = await cp.http.post(
            "/v1/sandboxes", json={"template": "base", "memory_mb": 1}, headers=auth
        )
        assert (r.status_code, r.json()["error"]["field"]) == (400, "memory_mb")
        keys = (await cp.http.get(f"/v1/tenants/{tenant_id}/api-keys", headers=OPERATOR)).json()
        await cp.http.delete(
            f"/v1/tenants/{tenant_id}/api-keys/{keys['items'][0]['id']}", headers=OPERATOR
        )
        assert (await cp.http.get("/v1/sandboxes", headers=auth)).status_code == 401
