"""Enrollment, the audit log and customer co-signing through the real control-plane app
(in-memory job publisher, SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from byoc_agent.protocol import cosign, messages, subjects, verify
from byoc_agent.protocol.signing import SigningKey, public_key_from_text
from byoc_agent.transport.credentials import NatsUserFiles
from control_plane.api import create_app
from control_plane.api.services import Services
from control_plane.nats_auth import decode_jwt_claims
from control_plane.store import audit, utcnow
from control_plane.store.agents import EnrollmentToken
from control_plane.store.audit import AuditEntryRow
from control_plane.store.cosign_requests import CosignRequestRow
from control_plane.testing import ADMIN_TOKEN, heartbeat_message, make_settings, result_message
from control_plane.transport import MemoryPublisher
from corral.testing import eventually_sync

pytestmark = pytest.mark.security

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclasses.dataclass
class World:
    client: TestClient
    publisher: MemoryPublisher
    tmp: Path

    @property
    def svc(self) -> Services:
        found = self.client.app.state.services  # type: ignore[attr-defined]
        assert isinstance(found, Services)
        return found

    def tenant(self, name: str = "acme") -> tuple[str, dict[str, str]]:
        r = self.client.post("/v1/tenants", json={"name": name}, headers=OPERATOR)
        assert r.status_code == 201
        body = r.json()
        return body["tenant"]["id"], {"Authorization": f"Bearer {body['api_key']['key']}"}

    def token(self, tenant_id: str, ttl_s: int = 600) -> str:
        r = self.client.post("/v1/agents/enrollment-tokens",
                             json={"tenant_id": tenant_id, "ttl_s": ttl_s}, headers=OPERATOR)
        assert r.status_code == 201
        return str(r.json()["token"])

    def enroll_body(self, token: str, key: SigningKey, **extra: Any) -> dict[str, Any]:
        nats_user = NatsUserFiles.under(self.tmp / key.kid)
        return {
            "token": token, "name": "edge", "public_key": key.public_text,
            "data_plane_url": "http://10.0.0.5:8788", "runtimes": ["gvisor"],
            "templates": ["base"], "nats_public_key": nats_user.public_key(),
            "capacity": {"cpu_total": 16, "cpu_free": 16, "memory_mb_total": 32768,
                         "memory_mb_free": 32768, "sandboxes": 0},
            **extra,
        }

    def audit(self, headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
        r = self.client.get("/v1/audit", params={"limit": 200, **params}, headers=headers)
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[World]:
    settings = dataclasses.replace(make_settings(tmp_path, database_url), nats_auth="jwt")
    publisher = MemoryPublisher()
    app = create_app(settings, publisher=publisher)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield World(client=c, publisher=publisher, tmp=tmp_path)


# ---- enrollment -----------------------------------------------------------------------


def test_enrollment_returns_a_nats_user_for_the_agents_own_subjects_and_public_keys(
    world: World,
) -> None:
    """The agent sends only public keys and gets its NATS JWT and the signing keys."""
    tenant_id, _ = world.tenant()
    key = SigningKey.generate()
    body = world.enroll_body(world.token(tenant_id), key)
    r = world.client.post("/v1/agents/enroll", json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["tenant_id"] == tenant_id
    assert [k["status"] for k in out["control_plane_keys"]] == ["active"]
    for k in out["control_plane_keys"]:
        public_key_from_text(k["public_key"])  # public halves only
    claims = decode_jwt_claims(out["nats_jwt"])
    assert claims["sub"] == body["nats_public_key"]
    nats_claims = claims["nats"]
    assert isinstance(nats_claims, dict)
    expected = subjects.agent_permissions(tenant_id, out["agent_id"])
    assert nats_claims["pub"]["allow"] == list(expected.publish)
    assert nats_claims["sub"]["allow"] == list(expected.subscribe)
    assert "private" not in r.text.lower()


def test_a_used_or_expired_enrollment_token_is_refused_and_both_are_audited(
    world: World,
) -> None:
    """One use; an expired token is refused even if never used."""
    tenant_id, _ = world.tenant()
    token = world.token(tenant_id)
    first = world.client.post("/v1/agents/enroll",
                              json=world.enroll_body(token, SigningKey.generate()))
    assert first.status_code == 201
    again = world.client.post("/v1/agents/enroll",
                              json=world.enroll_body(token, SigningKey.generate()))
    assert again.status_code == 401
    expired = world.token(tenant_id)
    world.svc.db.run_sync(lambda s: s.execute(
        update(EnrollmentToken).where(EnrollmentToken.used_at.is_(None))
        .values(expires_at=utcnow() - timedelta(seconds=1))
    ))
    late = world.client.post("/v1/agents/enroll",
                             json=world.enroll_body(expired, SigningKey.generate()))
    assert late.status_code == 401
    actions = [e["action"] for e in world.audit(OPERATOR)]
    assert actions.count("agent.enroll_refused") == 2
    assert actions.count("agent.enrolled") == 1
    assert actions.count("enrollment_token.created") == 2


def test_an_enrollment_token_binds_the_agent_to_its_tenant(world: World) -> None:
    """The tenant comes from the token, never from the request."""
    tenant_a, auth_a = world.tenant("a")
    _, auth_b = world.tenant("b")
    r = world.client.post("/v1/agents/enroll",
                          json=world.enroll_body(world.token(tenant_a), SigningKey.generate()))
    agent_id = r.json()["agent_id"]
    assert world.client.get(f"/v1/agents/{agent_id}", headers=auth_a).status_code == 200
    assert world.client.get(f"/v1/agents/{agent_id}", headers=auth_b).status_code == 404


def test_enrollment_without_a_nats_key_is_refused_when_nats_has_per_agent_users(
    world: World,
) -> None:
    """The token is not spent by a request that could not get NATS credentials."""
    tenant_id, _ = world.tenant()
    token = world.token(tenant_id)
    body = world.enroll_body(token, SigningKey.generate())
    body.pop("nats_public_key")
    r = world.client.post("/v1/agents/enroll", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "nats_public_key"
    body = world.enroll_body(token, SigningKey.generate(), nats_public_key="U" + "A" * 55)
    assert world.client.post("/v1/agents/enroll", json=body).status_code == 400
    good = world.enroll_body(token, SigningKey.generate())
    assert world.client.post("/v1/agents/enroll", json=good).status_code == 201


# ---- audit log ------------------------------------------------------------------------


def online_agent(world: World, tenant_id: str, key: SigningKey, **extra: Any) -> str:
    r = world.client.post("/v1/agents/enroll",
                          json=world.enroll_body(world.token(tenant_id), key, **extra))
    assert r.status_code == 201, r.text
    agent_id = str(r.json()["agent_id"])
    hb = heartbeat_message(key, agent_id=agent_id, tenant_id=tenant_id, cpu_free=16,
                           memory_mb_free=32768)
    world.client.portal.call(  # type: ignore[union-attr]
        world.svc.inbox.handle, subjects.heartbeat(tenant_id, agent_id), hb
    )
    return agent_id


def answer(world: World, key: SigningKey, data: bytes, **kw: Any) -> None:
    job = verify.verify_signed_job(cosign.split(data)[0], keyring=verify.Keyring(
        {world.svc.keys.active.kid: world.svc.keys.active.public_key}))
    msg = result_message(key, job, **kw)
    world.client.portal.call(  # type: ignore[union-attr]
        world.svc.inbox.handle, subjects.results(job.tenant_id, job.agent_id), msg
    )


def test_jobs_are_audited_when_issued_delivered_verified_and_rejected(world: World) -> None:
    """Each job leaves issued → delivered → verified (or rejected, with the reason)."""
    tenant_id, auth = world.tenant()
    key = SigningKey.generate()
    online_agent(world, tenant_id, key)
    # Create: the publisher is in memory, so answer from a thread while the API waits.
    def agent_side() -> None:
        published = world.publisher.published
        create = eventually_sync(lambda: published[:1], every_s=0.01, what="the create job")
        answer(world, key, create[0].data, state=messages.SandboxState.RUNNING)
        kill = eventually_sync(lambda: published[1:2], every_s=0.01, what="the kill job")
        answer(world, key, kill[0].data, status="rejected", error_code="rejected")

    t = threading.Thread(target=agent_side)
    t.start()
    r = world.client.post("/v1/sandboxes", json={"template": "base"}, headers=auth)
    assert r.status_code == 201, r.text
    sandbox_id = r.json()["id"]
    killed = world.client.delete(f"/v1/sandboxes/{sandbox_id}", headers=auth)
    t.join()
    assert killed.status_code == 502  # the agent's rejection, answered, not a timeout
    entries = world.audit(auth)
    by_action: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_action.setdefault(e["action"], []).append(e)
    assert len(by_action["job.issued"]) == 2
    assert len(by_action["job.delivered"]) == 2
    assert by_action["job.verified"][0]["detail"]["outcome"] == "succeeded"
    assert by_action["job.rejected"][0]["actor"].startswith("agent:")
    assert all(e["tenant_id"] == tenant_id for e in entries)
    assert by_action["job.issued"][0]["actor"] == f"tenant:{tenant_id}"


def test_the_operator_sees_every_entry_and_a_tenant_only_its_own(world: World) -> None:
    """A tenant key never reads another tenant's audit entries, whatever it asks for."""
    a, auth_a = world.tenant("a")
    b, auth_b = world.tenant("b")
    world.token(a)
    world.token(b)
    world.client.post("/v1/admin/signing-keys/rotate", headers=OPERATOR)
    everything = world.audit(OPERATOR)
    assert {e["tenant_id"] for e in everything} >= {a, b, None}
    assert {e["tenant_id"] for e in world.audit(auth_a)} == {a}
    assert {e["tenant_id"] for e in world.audit(auth_a, tenant_id=b)} == {a}
    assert {e["tenant_id"] for e in world.audit(OPERATOR, tenant_id=b)} == {b}
    assert world.client.get("/v1/audit/verify", headers=auth_b).status_code == 403
    rotated = world.audit(OPERATOR, action="signing_key.rotated")
    assert len(rotated) == 1
    assert rotated[0]["actor"] == "operator"


def test_entries_chain_and_any_tampering_is_detected(world: World) -> None:
    """Each entry hashes the previous; a changed, deleted or re-chained entry is found."""
    tenant_id, _ = world.tenant()
    for _ in range(4):
        world.token(tenant_id)
    entries = world.audit(OPERATOR)
    assert entries[0]["prev_hash"] == "0" * 64
    for before, after in itertools.pairwise(entries):
        assert after["prev_hash"] == before["hash"]
    ok = world.client.get("/v1/audit/verify", headers=OPERATOR).json()
    assert ok == {"ok": True, "entries": len(entries), "head_hash": entries[-1]["hash"],
                  "first_bad_seq": None, "problem": None}
    db = world.svc.db
    victim = entries[2]["seq"]
    db.run_sync(lambda s: s.execute(
        update(AuditEntryRow).where(AuditEntryRow.seq == victim)
        .values(actor="someone-else")
    ))
    bad = world.client.get("/v1/audit/verify", headers=OPERATOR).json()
    assert bad["ok"] is False
    assert bad["first_bad_seq"] == victim
    # Re-hashing the edited entry does not help: the next entry's link breaks instead.
    def rehash(s: Any) -> None:
        row = s.get(AuditEntryRow, victim)
        row.hash = audit.entry_hash(row.prev_hash, row.seq, row.at, row.actor, row.tenant_id,
                                    row.action, row.subject, row.detail)
    db.run_sync(rehash)
    assert world.client.get("/v1/audit/verify", headers=OPERATOR).json()["first_bad_seq"] == (
        victim + 1
    )


def test_deleting_the_last_entries_is_detected(world: World) -> None:
    """The head row remembers the last hash, so truncating the log is found too."""
    tenant_id, _ = world.tenant()
    world.token(tenant_id)
    last = world.audit(OPERATOR)[-1]["seq"]
    world.svc.db.run_sync(lambda s: s.execute(
        delete(AuditEntryRow).where(AuditEntryRow.seq == last)
    ))
    bad = world.client.get("/v1/audit/verify", headers=OPERATOR).json()
    assert bad["ok"] is False
    assert bad["problem"] == "entries after the last one are missing"


# ---- customer co-signing --------------------------------------------------------------


def test_a_high_risk_sandbox_is_held_until_the_customer_cosigns(world: World) -> None:
    """The control plane publishes nothing until a valid cosignature arrives; then the job
    carries it, and the agent-side check accepts it."""
    tenant_id, auth = world.tenant()
    key = SigningKey.generate()
    customer = SigningKey.generate()
    agent_id = online_agent(world, tenant_id, key, cosign_rules=["create_sandbox:cpu>2"],
                            cosigner_keys=[customer.public_text])
    r = world.client.post("/v1/sandboxes", json={"template": "base", "cpu": 4}, headers=auth)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["state"] == "pending"
    request_id = created["cosign_request_id"]
    assert request_id
    assert world.publisher.published == []
    # env cannot wait in the control plane
    refused = world.client.post("/v1/sandboxes", json={"template": "base", "cpu": 4,
                                                       "env": {"A": "b"}}, headers=auth)
    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "env"
    held = world.client.get(f"/v1/cosign-requests/{request_id}", headers=auth).json()
    assert held["rule"] == "create_sandbox:cpu>2"
    body = cosign.parse_body(held["body"])
    assert cosign.body_digest(body) == held["body_sha256"]
    # A key the agent does not trust is refused with a clear 400.
    stranger = cosign.cosign(SigningKey.generate(), job_id=request_id, tenant_id=tenant_id,
                             agent_id=agent_id, body=body)
    r = world.client.post(f"/v1/cosign-requests/{request_id}/cosignature",
                          json={"cosignature": stranger.decode()}, headers=auth)
    assert r.status_code == 400
    assert world.publisher.published == []
    good = cosign.cosign(customer, job_id=request_id, tenant_id=tenant_id, agent_id=agent_id,
                         body=body)
    r = world.client.post(f"/v1/cosign-requests/{request_id}/cosignature",
                          json={"cosignature": good.decode()}, headers=auth)
    assert r.status_code == 202, r.text
    assert r.json()["job_id"] == request_id
    [published] = world.publisher.published
    job_bytes, cosigs = cosign.split(published.data)
    assert cosigs == [good]
    job = verify.verify_signed_job(job_bytes, keyring=verify.Keyring(
        {world.svc.keys.active.kid: world.svc.keys.active.public_key}))
    policy = cosign.CosignPolicy.from_config([customer.public_text], ["create_sandbox:cpu>2"])
    assert cosign.check(job, cosigs, policy) == customer.kid
    again = world.client.post(f"/v1/cosign-requests/{request_id}/cosignature",
                              json={"cosignature": good.decode()}, headers=auth)
    assert again.status_code == 409
    # The agent runs it; its result makes the sandbox running, with its deadline.
    answer(world, key, published.data, state=messages.SandboxState.RUNNING)
    sandbox = world.client.get(f"/v1/sandboxes/{created['id']}", headers=auth).json()
    assert sandbox["state"] == "running"
    assert sandbox["expires_at"] is not None
    actions = [e["action"] for e in world.audit(auth)]
    assert "job.held_for_cosignature" in actions
    assert "job.cosigned" in actions
    # another tenant cannot see or sign it
    _, other = world.tenant("other")
    assert world.client.get(f"/v1/cosign-requests/{request_id}", headers=other).status_code == 404
    small = world.client.get("/v1/cosign-requests", headers=other).json()
    assert small["items"] == []


def test_cosign_rules_and_keys_are_validated_at_enrollment(world: World) -> None:
    """A malformed rule or key is a 400 naming the field."""
    tenant_id, _ = world.tenant()
    for extra, field in (({"cosign_rules": ["create_sandbox:cpu>>2"]}, "cosign_rules"),
                         ({"cosigner_keys": ["nope"]}, "cosigner_keys")):
        r = world.client.post("/v1/agents/enroll", json=world.enroll_body(
            world.token(tenant_id), SigningKey.generate(), **extra))
        assert r.status_code == 400
        assert field in r.json()["error"]["field"]


def test_an_unsigned_request_expires_and_its_sandbox_fails(world: World) -> None:
    """Past its deadline a held job can no longer be co-signed, and its pending sandbox
    fails instead of holding the agent's capacity forever."""
    tenant_id, auth = world.tenant()
    customer = SigningKey.generate()
    agent_id = online_agent(world, tenant_id, SigningKey.generate(),
                            cosign_rules=["create_sandbox"],
                            cosigner_keys=[customer.public_text])
    created = world.client.post("/v1/sandboxes", json={"template": "base"}, headers=auth).json()
    request_id = created["cosign_request_id"]
    world.svc.db.run_sync(lambda s: s.execute(
        update(CosignRequestRow).where(CosignRequestRow.id == request_id)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    ))
    body = cosign.parse_body(world.client.get(f"/v1/cosign-requests/{request_id}",
                                              headers=auth).json()["body"])
    late = cosign.cosign(customer, job_id=request_id, tenant_id=tenant_id, agent_id=agent_id,
                         body=body)
    r = world.client.post(f"/v1/cosign-requests/{request_id}/cosignature",
                          json={"cosignature": late.decode()}, headers=auth)
    assert r.status_code == 409
    world.client.post("/v1/sandboxes", json={"template": "base"}, headers=auth)
    first = world.client.get(f"/v1/sandboxes/{created['id']}", headers=auth).json()
    assert (first["state"], first["end_reason"]) == ("failed", "create_failed")
    status = world.client.get(f"/v1/cosign-requests/{request_id}", headers=auth).json()
    assert status["status"] == "expired"
    assert world.publisher.published == []
    assert "job.cosign_expired" in [e["action"] for e in world.audit(auth)]
