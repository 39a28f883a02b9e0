"""Signing-key rotation and revocation, end to end between the real control-plane app and
the agent's real keyring refresh loop (``byoc_agent.enroll.key_refresh_loop``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from byoc_agent.enroll import key_refresh_loop, refresh_keys
from byoc_agent.protocol import messages, signing, verify
from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason
from byoc_agent.state import AgentStateStore
from control_plane.api import create_app
from control_plane.api.services import Services
from control_plane.testing import ADMIN_TOKEN, make_settings
from control_plane.transport import MemoryPublisher
from corral.testing import eventually

pytestmark = [pytest.mark.security, pytest.mark.asyncio]

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REFRESH_S = 0.3


@dataclass
class Setup:
    app: FastAPI
    http: httpx.AsyncClient
    ring: verify.Keyring
    state: AgentStateStore

    @property
    def svc(self) -> Services:
        found = self.app.state.services
        assert isinstance(found, Services)
        return found

    def job_signed_with(self, key: signing.SigningKey) -> bytes:
        now = int(time.time())
        job = messages.Job(
            job_id="job-rot", tenant_id="ten-x", agent_id="agt-x", iat=now, exp=now + 60,
            seq=1, body=messages.KillSandboxBody(sandbox_id="sbx-rot"),
        )
        return signing.sign(key, messages.JOB_TYP, messages.to_json_bytes(job))

    def accepts(self, data: bytes) -> bool:
        try:
            verify.verify_signed_job(data, keyring=self.ring)
        except EnvelopeRejectedError:
            return False
        return True

    def reason(self, data: bytes) -> RejectReason:
        with pytest.raises(EnvelopeRejectedError) as e:
            verify.verify_signed_job(data, keyring=self.ring)
        return e.value.reason


@pytest_asyncio.fixture
async def setup(database_url: str, tmp_path: Path) -> AsyncIterator[Setup]:
    app = create_app(make_settings(tmp_path, database_url), publisher=MemoryPublisher())
    state = AgentStateStore(tmp_path / "agent-state.db")
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://control-plane"
    ) as http:
        ring = verify.Keyring()
        refresher = asyncio.create_task(key_refresh_loop(
            http, "http://control-plane", state, ring, interval_s=REFRESH_S
        ))
        try:
            yield Setup(app=app, http=http, ring=ring, state=state)
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            state.close()


async def test_rotation_overlaps_old_and_new_keys(setup: Setup) -> None:
    """After a rotation, jobs signed with the old (retired) key and the new key both verify."""
    old = setup.svc.keys.active
    before = setup.job_signed_with(old)
    await eventually(lambda: setup.accepts(before), within_s=5, what="first refresh")
    r = await setup.http.post("/v1/admin/signing-keys/rotate", headers=OPERATOR)
    assert r.status_code == 201
    new_kid = r.json()["kid"]
    assert new_kid != old.kid
    new = await setup.svc.keys.current()
    assert new.kid == new_kid
    after = setup.job_signed_with(new)
    await eventually(lambda: setup.accepts(after), within_s=5, what="the new key to be trusted")
    assert setup.accepts(before)  # overlap: the retired key still verifies
    listed = (await setup.http.get("/v1/admin/signing-keys", headers=OPERATOR)).json()["keys"]
    assert {k["kid"]: k["status"] for k in listed} == {old.kid: "retired", new_kid: "active"}


async def test_a_revoked_kid_is_refused_within_one_refresh_interval(setup: Setup) -> None:
    """Revoking the active key replaces it; agents refuse the old kid at their next refresh."""
    old = setup.svc.keys.active
    signed = setup.job_signed_with(old)
    await eventually(lambda: setup.accepts(signed), within_s=5, what="first refresh")
    r = await setup.http.post(f"/v1/admin/signing-keys/{old.kid}/revoke", headers=OPERATOR)
    assert r.status_code == 200
    body = r.json()
    assert body["revoked"]["status"] == "revoked"
    assert body["replaced_by"]["status"] == "active"
    # One interval plus the time a refresh takes on a loaded machine.
    await eventually(
        lambda: not setup.accepts(signed), within_s=REFRESH_S + 2.0, what="revocation"
    )
    assert setup.reason(signed) is RejectReason.REVOKED_KID
    fresh = setup.job_signed_with(await setup.svc.keys.current())
    await eventually(lambda: setup.accepts(fresh), within_s=5, what="the replacement key")
    # The agent keeps the revocation on disk for its next start.
    assert (old.kid, old.public_text, "revoked") in setup.state.control_plane_keys()


async def test_revoking_needs_the_operator_and_an_existing_kid(setup: Setup) -> None:
    """A tenant key gets 403, an unknown kid 404; both are harmless."""
    r = await setup.http.post("/v1/tenants", json={"name": "acme"}, headers=OPERATOR)
    tenant_auth = {"Authorization": f"Bearer {r.json()['api_key']['key']}"}
    kid = setup.svc.keys.active.kid
    assert (await setup.http.post(f"/v1/admin/signing-keys/{kid}/revoke",
                                  headers=tenant_auth)).status_code == 403
    assert (await setup.http.post("/v1/admin/signing-keys/rotate",
                                  headers=tenant_auth)).status_code == 403
    assert (await setup.http.post("/v1/admin/signing-keys/nope/revoke",
                                  headers=OPERATOR)).status_code == 404
    assert setup.svc.keys.active.kid == kid


async def test_a_revocation_survives_a_stale_or_forged_key_list(tmp_path: Path) -> None:
    """Once the agent has seen a kid revoked, a later list calling it active (a replayed
    old response, say) or leaving it out does not make it trusted again."""
    key = signing.SigningKey.generate()
    lists = [
        [{"kid": key.kid, "public_key": key.public_text, "status": "revoked"}],
        [{"kid": key.kid, "public_key": key.public_text, "status": "active"}],
        [],
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"keys": lists.pop(0)})

    state = AgentStateStore(tmp_path / "agent-state.db")
    ring = verify.Keyring()
    try:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            for _ in range(3):
                await refresh_keys(http, "http://control-plane", state, ring)
                assert key.kid in ring.revoked
                assert key.kid not in ring.keys
                assert (key.kid, key.public_text, "revoked") in state.control_plane_keys()
    finally:
        state.close()
