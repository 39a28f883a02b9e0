"""Per-agent NATS users on a real nats-server in operator (JWT) mode.

The server trusts only the control plane's NATS authority. Each agent connects as its own
user, with the JWT the control plane minted for the nkey the agent made itself; the tests
show what that user may and may not do.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.js.api import ConsumerConfig

from byoc_agent.protocol import subjects
from byoc_agent.transport.credentials import NatsUserFiles
from byoc_agent.transport.nats import NatsAgentTransport
from control_plane.nats_auth import NatsAuthority, decode_jwt_claims
from control_plane.transport.nats import NatsTransport
from corral.testing import NatsServer, eventually

pytestmark = [pytest.mark.nats, pytest.mark.security]

T1, T2 = "ten-one", "ten-two"
A, B, C = "agt-a", "agt-b", "agt-c"  # A and B in tenant one, C in tenant two


@pytest.fixture(scope="module")
def authority() -> NatsAuthority:
    return NatsAuthority.generate()


@pytest.fixture
def server(authority: NatsAuthority) -> Iterator[NatsServer]:
    with NatsServer(config=authority.server_config()) as srv:
        yield srv


@dataclass
class Conn:
    """A raw nats-py connection that records the errors the server sends it."""

    nc: Any
    errors: list[str] = field(default_factory=list)

    async def violation(self, needle: str, within_s: float = 5.0) -> str:
        """Wait for a permissions violation naming ``needle``; return its text."""

        def found() -> str | None:
            # nats-py lower-cases the server's -ERR text.
            return next(
                (e for e in self.errors
                 if "permissions violation" in e.lower() and needle.lower() in e.lower()),
                None,
            )  # fmt: skip

        text = await eventually(
            found, within_s=within_s, every_s=0.02, what=f"a permissions violation on {needle}"
        )
        assert text is not None
        return text


def agent_files(tmp: Path, authority: NatsAuthority, tenant: str, agent: str) -> NatsUserFiles:
    """What enrollment leaves on the agent's disk: its own seed and the minted JWT."""
    files = NatsUserFiles.under(tmp / agent)
    jwt = authority.user_jwt(
        files.public_key(), f"agent-{agent}", subjects.agent_permissions(tenant, agent)
    )
    files.save_jwt(jwt)
    return files


async def connect_as(server: NatsServer, creds: tuple[str, str] | None, *,
                     inbox_prefix: str = "_INBOX", **kw: Any) -> Conn:
    conn = Conn(nc=None)

    async def on_error(e: Exception) -> None:
        conn.errors.append(str(e))

    conn.nc = await nats.connect(
        server.url, user_credentials=creds, inbox_prefix=inbox_prefix, error_cb=on_error,
        allow_reconnect=False, connect_timeout=5, **kw,
    )
    return conn


@pytest_asyncio.fixture
async def world(
    server: NatsServer, authority: NatsAuthority, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    cp = NatsTransport(server.url)
    cp.use_credentials(authority.new_user("corral-control-plane", permissions=None))
    await cp.connect()
    await cp.ensure_streams()
    files = {
        a: agent_files(tmp_path, authority, t, a) for t, a in ((T1, A), (T1, B), (T2, C))
    }
    conns: list[Conn] = []

    async def raw(agent: str) -> Conn:
        c = await connect_as(server, files[agent].credentials(),
                             inbox_prefix=subjects.agent_inbox_prefix(agent))
        conns.append(c)
        return c

    try:
        yield {"cp": cp, "files": files, "raw": raw}
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                await c.nc.close()
        await cp.close()


def test_the_minted_jwt_allows_only_the_agents_own_subjects(authority: NatsAuthority,
                                                             tmp_path: Path) -> None:
    """The user JWT names the agent's own nkey and lists exactly its subjects."""
    files = agent_files(tmp_path, authority, T1, A)
    claims = decode_jwt_claims(files.jwt_file.read_text())
    assert claims["sub"] == files.public_key()
    assert claims["iss"] == authority.account_public
    nats_claims = claims["nats"]
    assert isinstance(nats_claims, dict)
    allowed = nats_claims["pub"]["allow"] + nats_claims["sub"]["allow"]
    assert all(f".a.{A}." in s or s.endswith(f".agent-{A}") or f"agent-{A}." in s
               or s.startswith(f"_INBOX.{A}.") for s in allowed)
    assert files.seed_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.asyncio
async def test_an_agent_receives_its_jobs_and_publishes_its_results(
    world: dict[str, Any], server: NatsServer
) -> None:
    """The real agent transport works under its restricted user: consumer, fetch, ack,
    durable results and heartbeats."""
    cp: NatsTransport = world["cp"]
    files: dict[str, NatsUserFiles] = world["files"]
    await cp.publish_job(subjects.jobs(T1, A), "job-1", b"job for a")
    transport = NatsAgentTransport(server.url, T1, A, credentials=files[A].credentials())
    await transport.connect()
    try:
        async with asyncio.timeout(15):
            async for incoming in transport.jobs():
                assert incoming.data == b"job for a"
                await incoming.ack()
                break
        await transport.publish_durable(subjects.results(T1, A), b"result", "result-job-1")
        await transport.publish_durable(subjects.usage(T1, A), b"usage", "usage-1")
        await transport.publish_heartbeat(b"heartbeat")
    finally:
        await transport.close()


@pytest.mark.parametrize(
    "subject",
    [subjects.jobs(T1, B), subjects.results(T1, B), subjects.jobs(T2, C),
     subjects.heartbeat(T2, C), "corral.>", "_INBOX.>", f"_INBOX.{B}.>"],
)
@pytest.mark.asyncio
async def test_subscribing_to_another_agents_or_tenants_subjects_is_a_violation(
    world: dict[str, Any], subject: str
) -> None:
    """Agent A may not listen to agent B (same tenant), tenant two, wildcards or other
    agents' reply inboxes."""
    a: Conn = await world["raw"](A)
    await a.nc.subscribe(subject)
    await a.nc.flush()
    await a.violation(subject)


@pytest.mark.parametrize(
    "subject",
    [subjects.results(T1, B), subjects.usage(T1, B), subjects.events(T1, B),
     subjects.heartbeat(T1, B), subjects.results(T2, C), subjects.usage(T2, C),
     subjects.jobs(T1, A)],
)
@pytest.mark.asyncio
async def test_publishing_in_another_agents_name_or_a_job_is_a_violation(
    world: dict[str, Any], subject: str
) -> None:
    """Agent A cannot send results or usage as B or C, nor put a job in its own stream."""
    a: Conn = await world["raw"](A)
    await a.nc.publish(subject, b"forged")
    await a.nc.flush()
    await a.violation(subject)


@pytest.mark.asyncio
async def test_a_forged_result_never_reaches_the_stream(world: dict[str, Any]) -> None:
    """A JetStream publish in B's name gets no ack, and the stream holds nothing from it."""
    a: Conn = await world["raw"](A)
    js = a.nc.jetstream(timeout=1.0)
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await js.publish(subjects.results(T1, B), b"forged", headers={"Nats-Msg-Id": "x"})
    cp: NatsTransport = world["cp"]
    info = await cp.js.stream_info(subjects.AGENT_OUT_STREAM)
    assert info.state.messages == 0


@pytest.mark.parametrize(
    ("name", "attempt"),
    [
        ("consumer on B's jobs", lambda js: js.add_consumer(
            subjects.JOBS_STREAM, ConsumerConfig(name=f"agent-{A}", durable_name=f"agent-{A}",
                                                 filter_subject=subjects.jobs(T1, B)))),
        ("legacy durable create", lambda js: js.add_consumer(
            subjects.JOBS_STREAM, ConsumerConfig(durable_name=f"agent-{A}",
                                                 filter_subject=subjects.jobs(T1, A)))),
        ("B's consumer", lambda js: js.consumer_info(subjects.JOBS_STREAM, f"agent-{B}")),
        ("direct stream read", lambda js: js.get_msg(subjects.JOBS_STREAM, 1)),
        ("stream list", lambda js: js.streams_info()),
        ("delete stream", lambda js: js.delete_stream(subjects.JOBS_STREAM)),
    ],
)
@pytest.mark.asyncio
async def test_jetstream_calls_beyond_its_own_consumer_are_refused(
    world: dict[str, Any], name: str, attempt: Callable[[Any], Any]
) -> None:
    """Only the agent's own consumer (created with its own filter), fetch and ack pass."""
    cp: NatsTransport = world["cp"]
    await cp.publish_job(subjects.jobs(T1, B), f"job-{uuid.uuid4().hex[:8]}", b"secret for b")
    a: Conn = await world["raw"](A)
    js = a.nc.jetstream(timeout=1.0)
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError,
                        nats.js.errors.Error)):
        await attempt(js)
    await a.violation("$JS.API")
    info = await cp.js.stream_info(subjects.JOBS_STREAM)
    assert info.state.messages >= 1  # nothing was deleted


@pytest.mark.asyncio
async def test_connecting_without_credentials_or_with_a_self_made_jwt_is_refused(
    world: dict[str, Any], server: NatsServer, tmp_path: Path
) -> None:
    """Only users signed by the control plane's account key get in."""
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await connect_as(server, None)
    rogue = NatsAuthority.generate()  # a different operator/account: not trusted
    files = NatsUserFiles.under(tmp_path / "rogue")
    files.save_jwt(rogue.user_jwt(files.public_key(), "rogue", None))
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await connect_as(server, files.credentials())


@pytest.mark.asyncio
async def test_the_control_plane_user_is_separate_and_unrestricted(
    world: dict[str, Any]
) -> None:
    """The control plane reads every agent's output; an agent user cannot."""
    cp: NatsTransport = world["cp"]
    files: dict[str, NatsUserFiles] = world["files"]
    b_conn: Conn = await world["raw"](B)
    js_b = b_conn.nc.jetstream(timeout=5.0)
    await js_b.publish(subjects.results(T1, B), b"from b", headers={"Nats-Msg-Id": "r-b"})
    info = await cp.js.stream_info(subjects.AGENT_OUT_STREAM)
    assert info.state.messages == 1
    assert decode_jwt_claims(files[A].jwt_file.read_text())["sub"] != decode_jwt_claims(
        files[B].jwt_file.read_text())["sub"]


@pytest.mark.asyncio
async def test_a_control_plane_the_server_does_not_trust_fails_with_what_to_do(
    server: NatsServer,
) -> None:
    """A control plane whose NATS authority is not in the server's config gets a clear
    error naming the command that writes the config, not a bare timeout."""
    stranger = NatsTransport(server.url)
    stranger.use_credentials(NatsAuthority.generate().new_user("cp", permissions=None))
    with pytest.raises(ConnectionError, match="nats_auth server-config"):
        await stranger.connect()
    await stranger.close()
