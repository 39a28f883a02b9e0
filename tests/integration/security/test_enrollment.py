"""Enrollment end to end: the agent's own code against the real control plane (uvicorn) and
a real nats-server in operator mode that trusts only the control plane's NATS authority."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from byoc_agent.enroll import enroll, load_or_create_key
from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.state import AgentStateStore
from byoc_agent.transport.credentials import NatsUserFiles
from byoc_agent.transport.nats import NatsAgentTransport
from control_plane import nats_auth
from control_plane.api import create_app
from control_plane.settings import Settings
from control_plane.store import Database, upgrade_to_head
from control_plane.testing import ADMIN_TOKEN, heartbeat_message, make_settings
from corral import AdminClient
from corral.testing import NatsServer, eventually_sync
from tests.unit.sdk.fake_corral import ServedApp

pytestmark = [pytest.mark.nats, pytest.mark.security]


@dataclasses.dataclass
class ControlPlane:
    url: str
    settings: Settings
    nats: NatsServer


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """The control plane's NATS authority made first (as `nats_auth server-config` does),
    nats-server started trusting it, then the control plane serving on a free port."""
    db_url = f"sqlite:///{tmp_path / 'cp.db'}"
    base = make_settings(tmp_path / "cp", db_url)
    upgrade_to_head(db_url)
    db = Database(db_url)
    authority = nats_auth.load_or_create(db, base.master_key)
    db.dispose()
    with NatsServer(config=authority.server_config()) as server:
        settings = dataclasses.replace(base, nats_url=server.url, public_nats_url=server.url,
                                       nats_auth="jwt")
        served = ServedApp(create_app(settings), lifespan="on").start()
        try:
            yield ControlPlane(url=served.url, settings=settings, nats=server)
        finally:
            served.stop()


def _enroll(cp: ControlPlane, home: Path, token: str) -> tuple[str, str, AgentStateStore]:
    state = AgentStateStore(home / "agent-state.db")
    try:
        ident = enroll(
            control_plane_url=cp.url, token=token,
            key=load_or_create_key(home / "agent-key.pem"), name="edge-1",
            data_plane_url="http://127.0.0.1:18788", runtimes=["memory"], templates=["base"],
            cpu_total=4, memory_mb_total=4096, state=state, nats_user=NatsUserFiles.under(home),
        )
    except BaseException:
        state.close()
        raise
    return ident.agent_id, ident.tenant_id, state


def test_an_agent_enrolls_keeps_its_secrets_and_connects_as_its_own_nats_user(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Private key and nkey seed stay on the agent (mode 0600, in no control-plane file);
    the agent gets its NATS JWT and the signing keys, connects, and shows up online."""
    with AdminClient(ADMIN_TOKEN, api_url=control_plane.url) as admin:
        tenant = admin.create_tenant("acme").tenant
        token = admin.create_enrollment_token(tenant.id, ttl_s=600).token
        home = tmp_path / "agent"
        agent_id, tenant_id, state = _enroll(control_plane, home, token)
        assert tenant_id == tenant.id
        files = NatsUserFiles.under(home)
        for secret in (home / "agent-key.pem", files.seed_file, files.jwt_file):
            assert secret.stat().st_mode & 0o777 == 0o600, secret
        assert [status for _, _, status in state.control_plane_keys()] == ["active"]

        key = load_or_create_key(home / "agent-key.pem")
        secrets = [key.private_key.private_bytes_raw(), key.to_pem(),
                   files.seed_file.read_bytes().strip()]
        cp_files = [p for p in tmp_path.rglob("*") if p.is_file() and home not in p.parents]
        assert cp_files
        for path in cp_files:
            data = path.read_bytes()
            assert not any(s in data for s in secrets), f"agent secret found in {path}"

        async def heartbeat() -> None:
            transport = NatsAgentTransport(control_plane.nats.url, tenant_id, agent_id,
                                           credentials=files.credentials())
            await transport.connect()
            try:
                await transport.publish_heartbeat(
                    heartbeat_message(key, agent_id=agent_id, tenant_id=tenant_id)
                )
            finally:
                await transport.close()

        asyncio.run(heartbeat())
        eventually_sync(
            lambda: {a.id: a.status for a in admin.list_agents()}.get(agent_id) == "online",
            what="the agent to be listed online",
        )
        state.close()


def test_a_token_is_spent_by_its_first_use(control_plane: ControlPlane, tmp_path: Path) -> None:
    """A second agent with the same token is refused with a message saying what to do."""
    with AdminClient(ADMIN_TOKEN, api_url=control_plane.url) as admin:
        tenant = admin.create_tenant("acme").tenant
        token = admin.create_enrollment_token(tenant.id, ttl_s=600).token
    _, _, first = _enroll(control_plane, tmp_path / "one", token)
    first.close()
    with pytest.raises(InvalidArgumentError, match="new enrollment token"):
        _enroll(control_plane, tmp_path / "two", token)
    assert not (tmp_path / "two" / "nats-user.jwt").exists()
