"""``corral admin keys``, ``corral audit`` and ``corral cosign`` against the real control
plane app (uvicorn, SQLite, in-memory job publisher)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from byoc_agent.protocol import cosign, subjects
from byoc_agent.protocol.messages import CreateSandboxBody
from byoc_agent.protocol.signing import SigningKey
from control_plane.api import create_app
from control_plane.api.services import Services
from control_plane.store import agents, cosign_requests, tenants
from control_plane.store.agents import AgentReport, Capacity
from control_plane.store.audit import AuditEntryRow
from control_plane.testing import ADMIN_TOKEN, heartbeat_message, make_settings
from control_plane.transport import MemoryPublisher
from corral import CosignatureRequiredError, Sandbox
from corral.cli import app

from .fake_corral import ServedApp

pytestmark = pytest.mark.security


class Served:
    def __init__(self, tmp: Path) -> None:
        self.publisher = MemoryPublisher()
        settings = make_settings(tmp, f"sqlite:///{tmp / 'cp.db'}")
        self.app = create_app(settings, publisher=self.publisher)
        self.served = ServedApp(self.app, lifespan="on").start()

    @property
    def svc(self) -> Services:
        found = self.app.state.services
        assert isinstance(found, Services)
        return found


@pytest.fixture
def cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    served = Served(tmp_path)
    monkeypatch.setenv("CORRAL_API_URL", served.served.url)
    monkeypatch.setenv("CORRAL_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables are not wrapped
    yield served
    served.served.stop()


def run(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr. The in-process server's own log lines (structlog
    prints to stdout) are dropped from stdout."""
    result = CliRunner().invoke(app, list(args))
    out = "".join(line for line in result.stdout.splitlines(keepends=True)
                  if not line.startswith("20") or "[" not in line[:40])
    return result.exit_code, out, result.stderr


def test_keys_list_rotate_and_revoke(cp: Served) -> None:
    """Rotate keeps the old key as retired; revoking the active key names its replacement."""
    code, out, _ = run("admin", "keys", "list")
    assert code == 0
    first = cp.svc.keys.active.kid
    assert first in out
    assert "active" in out
    code, out, _ = run("admin", "keys", "rotate")
    assert code == 0
    second = out.strip()
    assert second != first
    code, out, _ = run("admin", "keys", "list")
    assert "retired" in out
    code, out, err = run("admin", "keys", "revoke", second)
    assert code == 0
    assert out.strip() == f"revoked {second}"
    assert "replaces it" in err
    code, _, err = run("admin", "keys", "revoke", "no-such-kid")
    assert code == 1
    assert "error" in err


def test_audit_ls_and_verify_and_a_tampered_entry(
    cp: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator lists and verifies the chain; a tenant key lists only its own entries;
    after a row is edited in the database, `audit verify` exits 1 naming it."""
    run("admin", "keys", "rotate")
    code, out, _ = run("admin", "tenant", "create", "acme")
    assert code == 0
    tenant = next(iter(cp.svc.db.run_sync(
        lambda s: tenants.list_tenants(s, after=None, limit=10)).items))
    run("admin", "enrollment-token", "--tenant", tenant.id)
    code, out, _ = run("audit", "ls", "--json")
    assert code == 0
    entries = [json.loads(line) for line in out.splitlines()]
    actions = [e["action"] for e in entries]
    assert "signing_key.rotated" in actions
    assert "enrollment_token.created" in actions
    assert run("audit", "verify")[0] == 0
    key = cp.svc.db.run_sync(lambda s: tenants.create_api_key(s, tenant.id, "cli"))
    monkeypatch.delenv("CORRAL_ADMIN_TOKEN")
    monkeypatch.setenv("CORRAL_API_KEY", key.key)
    code, out, _ = run("audit", "ls", "--json")
    assert code == 0
    mine = [json.loads(line) for line in out.splitlines()]
    assert mine
    assert {e["tenant_id"] for e in mine} == {tenant.id}
    monkeypatch.setenv("CORRAL_ADMIN_TOKEN", ADMIN_TOKEN)
    victim = entries[0]["seq"]
    cp.svc.db.run_sync(lambda s: s.execute(
        update(AuditEntryRow).where(AuditEntryRow.seq == victim).values(action="nothing")
    ))
    code, _, err = run("audit", "verify")
    assert code == 1
    assert f"entry {victim}" in err


def test_cosign_keygen_ls_and_sign_release_the_held_job(
    cp: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer makes a key, sees the held job and co-signs it; the job goes out with
    the cosignature attached."""
    keyfile = tmp_path / "customer.pem"
    code, out, _ = run("cosign", "keygen", str(keyfile))
    assert code == 0
    public = out.strip()
    assert keyfile.stat().st_mode & 0o777 == 0o600
    assert run("cosign", "keygen", str(keyfile))[0] != 0  # never overwrites a key

    db = cp.svc.db
    tenant, api_key = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    report = AgentReport("http://10.0.0.5:8788", ("gvisor",), ("base",),
                         Capacity(8, 8, 8192, 8192, 0))
    agent = db.run_sync(lambda s: agents.enroll(
        s, token.token, "edge", SigningKey.generate().public_text, report,
        cosign_rules=("create_sandbox:cpu>2",), cosigner_keys=(public,)))
    body = CreateSandboxBody(sandbox_id="sbx-held", template="base", cpu=4, memory_mb=512,
                             timeout_s=60)
    db.run_sync(lambda s: cosign_requests.create(
        s, job_id="j-held-0001", tenant_id=tenant.id, agent_id=agent.id,
        sandbox_id=None, kind="create_sandbox", body=body.model_dump(mode="json"),
        body_sha256=cosign.body_digest(body), rule="create_sandbox:cpu>2", ttl_s=600))

    monkeypatch.delenv("CORRAL_ADMIN_TOKEN")
    monkeypatch.setenv("CORRAL_API_KEY", api_key.key)
    code, out, _ = run("cosign", "ls")
    assert code == 0
    assert "j-held-0001" in out
    code, out, err = run("cosign", "sign", "j-held-0001", "--key", str(keyfile), "--yes")
    assert code == 0, err
    assert out.strip() == "j-held-0001"
    assert '"cpu": 4' in err  # the customer saw what they approved
    [published] = cp.publisher.published
    _, cosigs = cosign.split(published.data)
    assert len(cosigs) == 1
    code, _, err = run("cosign", "sign", "j-held-0001", "--key", str(keyfile), "--yes")
    assert code == 1  # already released
    other_key = tmp_path / "other.pem"
    run("cosign", "keygen", str(other_key))
    assert "Nothing to co-sign" in run("cosign", "ls")[1]


def test_the_sdk_says_when_a_sandbox_waits_for_a_cosignature(
    cp: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sandbox.create raises CosignatureRequiredError at once, naming the request to sign,
    instead of polling a sandbox that stays pending."""
    db = cp.svc.db
    tenant, api_key = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    agent_key = SigningKey.generate()
    report = AgentReport("http://10.0.0.5:8788", ("gvisor",), ("base",),
                         Capacity(8, 8, 8192, 8192, 0))
    agent = db.run_sync(lambda s: agents.enroll(
        s, token.token, "edge", agent_key.public_text, report,
        cosign_rules=("create_sandbox",), cosigner_keys=(SigningKey.generate().public_text,)))
    hb = heartbeat_message(agent_key, agent_id=agent.id, tenant_id=tenant.id)
    asyncio.run(cp.svc.inbox.handle(subjects.heartbeat(tenant.id, agent.id), hb))
    with pytest.raises(CosignatureRequiredError, match="corral cosign sign") as e:
        Sandbox.create(api_key=api_key.key, api_url=cp.served.url)
    assert e.value.sandbox_id
    assert e.value.cosign_request_id
    assert cp.publisher.published == []
