"""The agent's usage meter over a real nats-server (in-memory runtime, 1 s interval).

Records are read back from the ``CORRAL_AGENT_OUT`` stream itself, verified with the
agent's key, and deduplicated by ``record_id`` as a consumer would. Sleeps only let
usage accrue; every wait for a condition polls with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio

from byoc_agent.agent import Agent, AgentConfig
from byoc_agent.meter import usage_record_id
from byoc_agent.protocol import messages, signing, subjects, verify
from byoc_agent.protocol.errors import EnvelopeRejectedError
from byoc_agent.protocol.messages import SandboxState, UsageReport
from byoc_agent.runtimes.memory import InMemoryRuntime
from byoc_agent.state import AgentIdentity, AgentStateStore, SandboxRecord
from byoc_agent.transport.nats import NatsAgentTransport
from control_plane.transport.nats import NatsTransport
from corral.testing import NatsServer, eventually

pytestmark = [pytest.mark.nats, pytest.mark.asyncio]

TENANT = "ten-m"
AGENT = "agt-m"
HOST = "meter-host-1"
INTERVAL_S = 1.0
USAGE_SUBJECT = subjects.usage(TENANT, AGENT)


@dataclasses.dataclass
class Rig:
    server: NatsServer
    nc: Any
    cp_key: signing.SigningKey
    agent_key: signing.SigningKey
    state_path: Path
    runtime: InMemoryRuntime
    agent: Agent | None = None
    task: asyncio.Task[None] | None = None
    seq: int = 0

    async def start_agent(self) -> Agent:
        state = AgentStateStore(self.state_path)
        transport = NatsAgentTransport(self.server.url, TENANT, AGENT)
        await transport.connect()
        self.agent = Agent(
            identity=AgentIdentity(AGENT, TENANT, self.agent_key.kid, self.server.url),
            signing_key=self.agent_key,
            keyring=verify.Keyring({self.cp_key.kid: self.cp_key.public_key}),
            state=state,
            runtime=self.runtime,
            transport=transport,
            config=AgentConfig(
                data_plane_url="http://127.0.0.1:1", cpu_total=8, memory_mb_total=8192,
                heartbeat_interval_s=60, reaper_interval_s=0.1, usage_interval_s=INTERVAL_S,
                host=HOST,
            ),
        )
        self.task = asyncio.create_task(self.agent.run())
        return self.agent

    async def crash_agent(self) -> None:
        """Stop the agent the way ``kill -9`` would: cancel it mid-flight, no drain, no
        outbox flush; only what was already committed to the state file survives."""
        assert self.task is not None
        assert self.agent is not None
        self.task.cancel()
        done, _ = await asyncio.wait({self.task}, timeout=5)
        assert done, "agent did not stop"
        await self.agent.transport.close()
        self.agent.state.close()
        self.agent = None

    async def job(self, body: dict[str, Any]) -> None:
        self.seq += 1
        now = int(time.time())
        payload = {
            "schema": messages.JOB_SCHEMA, "job_id": f"job-{uuid.uuid4().hex[:12]}",
            "tenant_id": TENANT, "agent_id": AGENT, "iat": now, "exp": now + 300,
            "seq": self.seq, "body": body,
        }
        data = signing.sign(self.cp_key, messages.JOB_TYP, signing.canonical_json(payload))
        await self.nc.jetstream().publish(
            subjects.jobs(TENANT, AGENT), data, headers={"Nats-Msg-Id": payload["job_id"]}
        )

    def sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        assert self.agent is not None
        return self.agent.state.get_sandbox(sandbox_id)

    async def create(self, *, timeout_s: int = 60) -> SandboxRecord:
        sandbox_id = f"sbx-{uuid.uuid4().hex[:12]}"
        await self.job({
            "kind": "create_sandbox", "sandbox_id": sandbox_id, "template": "base", "cpu": 2,
            "memory_mb": 512, "timeout_s": timeout_s, "env": {}, "isolation": "gvisor",
        })
        await eventually(lambda: self.sandbox(sandbox_id) is not None, what="sandbox created")
        rec = self.sandbox(sandbox_id)
        assert rec is not None
        return rec

    async def kill(self, sandbox_id: str) -> SandboxRecord:
        await self.job({"kind": "kill_sandbox", "sandbox_id": sandbox_id})
        await eventually(lambda: _state(self.sandbox(sandbox_id)) is SandboxState.KILLED,
                         what="sandbox killed")
        rec = self.sandbox(sandbox_id)
        assert rec is not None
        assert rec.ended_at is not None
        return rec

    def pending_usage(self) -> int:
        assert self.agent is not None
        return sum(1 for _, subject, _ in self.agent.state.pending_outbox()
                   if subject == USAGE_SUBJECT)

    async def stream_usage(self) -> list[tuple[bytes, UsageReport]]:
        """Every usage message the stream accepted, in stream order, each verified with the
        agent's key (a message that does not verify fails the test)."""
        js = self.nc.jetstream()
        last = (await js.stream_info(subjects.AGENT_OUT_STREAM)).state.last_seq
        ring = verify.Keyring({self.agent_key.kid: self.agent_key.public_key})
        out = []
        for seq in range(1, last + 1):
            msg = await js.get_msg(subjects.AGENT_OUT_STREAM, seq)
            if msg.subject != USAGE_SUBJECT:
                continue
            assert msg.data is not None
            kid, report = verify.verify_model(
                msg.data, typ=messages.USAGE_TYP, model=UsageReport, keyring=ring
            )
            assert kid == self.agent_key.kid
            out.append((msg.data, report))
        return out

    async def delivered(self, sandbox_id: str, *, wait_s: float = 20.0) -> list[UsageReport]:
        """Wait until the sandbox's final record is in the stream and nothing is left in
        the outbox; return its records deduplicated by record_id (duplicates must be
        byte-identical), ordered by start."""

        async def final_delivered() -> list[tuple[bytes, UsageReport]]:
            try:
                got = await self.stream_usage()
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                return []  # the server is still coming back
            mine = [(d, r) for d, r in got if r.sandbox_id == sandbox_id]
            done = any(r.final for _, r in mine) and self.pending_usage() == 0
            return mine if done else []

        mine = await eventually(
            final_delivered,
            within_s=wait_s,
            every_s=0.1,
            what=f"the final usage record of {sandbox_id}",
        )
        by_id: dict[str, bytes] = {}
        for data, report in mine:
            assert by_id.setdefault(report.record_id, data) == data, "same id, other record"
        records = [verify.verify_model(d, typ=messages.USAGE_TYP, model=UsageReport,
                                       keyring=verify.Keyring({self.agent_key.kid:
                                                               self.agent_key.public_key}))[1]
                   for d in by_id.values()]
        return sorted(records, key=lambda r: r.start)


def _state(rec: SandboxRecord | None) -> SandboxState | None:
    return rec.state if rec is not None else None


def assert_tiles(records: list[UsageReport], rec: SandboxRecord) -> int:
    """The records cover [floor(started_at), floor(ended_at)) exactly once, the last one
    (and only it) final; returns the billed seconds."""
    assert rec.ended_at is not None
    assert records, "no usage records"
    assert records[0].start == math.floor(rec.started_at)
    for a, b in itertools.pairwise(records):
        assert a.end == b.start, f"gap or overlap between {a} and {b}"
    for r in records:
        assert r.end >= r.start
        assert r.record_id == usage_record_id(r.sandbox_id, r.start)
    assert [r.final for r in records] == [False] * (len(records) - 1) + [True]
    assert records[-1].end == math.floor(rec.ended_at)
    billed = sum(r.end - r.start for r in records)
    assert abs(billed - (rec.ended_at - rec.started_at)) < 1.0
    return billed


@pytest_asyncio.fixture
async def rig(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Rig]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2)
    js = nc.jetstream()
    await js.add_stream(name=subjects.JOBS_STREAM, subjects=[subjects.ALL_JOBS])
    await js.add_stream(
        name=subjects.AGENT_OUT_STREAM,
        subjects=[subjects.ALL_RESULTS, subjects.ALL_EVENTS, subjects.ALL_USAGE],
    )
    r = Rig(server=nats_server, nc=nc, cp_key=signing.SigningKey.generate(),
            agent_key=signing.SigningKey.generate(), state_path=tmp_path / "state.db",
            runtime=InMemoryRuntime())
    await r.start_agent()
    yield r
    if r.agent is not None:
        await r.crash_agent()
    await nc.close()


def cut_seconds(rig: Rig, rec: SandboxRecord) -> int:
    """Seconds of the sandbox's life already cut into usage records by the agent."""
    if rig.agent is None:
        return 0
    cursor = rig.agent.state.usage_cursor(rec.sandbox_id)
    return 0 if cursor is None else cursor.last_end - math.floor(rec.started_at)


async def test_a_killed_sandbox_is_billed_its_observed_lifetime_in_records_that_tile_it(
    rig: Rig,
) -> None:
    """Interim records every interval and a final one at kill cover the life exactly once."""
    rec = await rig.create()
    await eventually(lambda: cut_seconds(rig, rec) >= 3, what="three seconds of interim records")
    ended = await rig.kill(rec.sandbox_id)
    records = await rig.delivered(rec.sandbox_id)
    billed = assert_tiles(records, ended)
    assert billed >= 3
    assert len(records) >= 3, "expected interim records before the final one"
    for r in records:
        assert (r.tenant_id, r.agent_id, r.sandbox_id) == (TENANT, AGENT, rec.sandbox_id)
        assert (r.vcpu, r.memory_mb, r.template, r.isolation) == (2, 512, "base", "gvisor")
        assert (r.host, r.gpu_count, r.gpu_model) == (HOST, 0, None)


async def test_a_sandbox_that_times_out_gets_its_final_record_at_the_deadline(rig: Rig) -> None:
    """The reaper's timed_out end closes the sandbox's usage like a kill does."""
    rec = await rig.create(timeout_s=2)
    await eventually(lambda: _state(rig.sandbox(rec.sandbox_id)) is SandboxState.TIMED_OUT,
                     what="timeout")
    ended = rig.sandbox(rec.sandbox_id)
    assert ended is not None
    assert_tiles(await rig.delivered(rec.sandbox_id), ended)


async def test_an_agent_killed_mid_interval_resumes_metering_without_gap_or_double_count(
    rig: Rig,
) -> None:
    """A crash (no drain) and restart on the same state file: the records still tile the
    sandbox's life, a record re-sent after the crash is the same record, none is lost."""
    rec = await rig.create()
    await eventually(lambda: rig.pending_usage() == 0 and rig.agent is not None
                     and rig.agent.state.usage_cursor(rec.sandbox_id) is not None,
                     what="a first record")
    cut = cut_seconds(rig, rec)
    await eventually(lambda: time.time() >= math.floor(rec.started_at) + cut + 0.5,
                     what="the middle of the next interval")
    await rig.crash_agent()
    first = [(d, r) for d, r in await rig.stream_usage() if r.sandbox_id == rec.sandbox_id]
    assert first, "records before the crash were delivered"
    # The worst crash point: JetStream acked a record but its outbox row was not deleted yet.
    data, report = first[-1]
    state = AgentStateStore(rig.state_path)
    state.enqueue(report.record_id, USAGE_SUBJECT, data)
    state.close()
    crashed_at = time.time()
    # The agent is down; the sandbox keeps running and accruing unmetered seconds.
    await eventually(lambda: time.time() >= crashed_at + 1.2, what="a second with the agent down")
    await rig.start_agent()
    # Only the restarted agent can cut past the crash: wait for four seconds of records.
    await eventually(lambda: cut_seconds(rig, rec) >= 4, what="records from the new agent")
    ended = await rig.kill(rec.sandbox_id)
    records = await rig.delivered(rec.sandbox_id)
    billed = assert_tiles(records, ended)
    assert billed >= 4
    stream_ids = [r.record_id for _, r in await rig.stream_usage()]
    assert len(stream_ids) == len(set(stream_ids)), "JetStream accepted a record twice"


async def test_records_spooled_while_nats_is_down_are_delivered_once_it_is_back(
    rig: Rig,
) -> None:
    """Usage keeps being recorded on disk while NATS is unreachable, and every record
    reaches the stream exactly once after NATS returns."""
    rec = await rig.create(timeout_s=4)
    await eventually(lambda: rig.agent is not None
                     and rig.agent.state.usage_cursor(rec.sandbox_id) is not None,
                     what="a first record")
    rig.server.stop()
    try:
        await eventually(lambda: _state(rig.sandbox(rec.sandbox_id)) is SandboxState.TIMED_OUT,
                         what="timeout while NATS is down")
        assert rig.agent is not None
        cursor = rig.agent.state.usage_cursor(rec.sandbox_id)
        assert cursor is not None
        assert cursor.final, "the final record was spooled"
        assert rig.pending_usage() >= 1, "records wait in the outbox"
    finally:
        rig.server.start()
    ended = rig.sandbox(rec.sandbox_id)
    assert ended is not None
    records = await rig.delivered(rec.sandbox_id, wait_s=30)
    assert_tiles(records, ended)
    stream_ids = [r.record_id for _, r in await rig.stream_usage()]
    assert len(stream_ids) == len(set(stream_ids)), "JetStream accepted a record twice"


async def test_usage_records_are_signed_by_the_agent_and_verify_only_as_usage(rig: Rig) -> None:
    """Each record verifies with the agent's key under USAGE_TYP, and with nothing else."""
    rec = await rig.create()
    await eventually(lambda: cut_seconds(rig, rec) >= 1, what="an interim record")
    await rig.kill(rec.sandbox_id)
    await rig.delivered(rec.sandbox_id)
    raw = [d for d, r in await rig.stream_usage() if r.sandbox_id == rec.sandbox_id]
    ring = verify.Keyring({rig.agent_key.kid: rig.agent_key.public_key})
    stranger = signing.SigningKey.generate()
    for data in raw:
        kid, report = verify.verify_model(
            data, typ=messages.USAGE_TYP, model=UsageReport, keyring=ring
        )
        assert kid == rig.agent_key.kid
        assert messages.to_json_bytes(report) == signing.b64url_decode(
            data.split(b".")[1].decode()
        )
        with pytest.raises(EnvelopeRejectedError):
            verify.verify_model(data, typ=messages.RESULT_TYP, model=UsageReport, keyring=ring)
        with pytest.raises(EnvelopeRejectedError):
            verify.verify_model(data, typ=messages.USAGE_TYP, model=UsageReport,
                                keyring=verify.Keyring({stranger.kid: stranger.public_key}))


async def test_the_control_plane_adds_the_usage_subject_to_an_existing_out_stream(
    nats_server: NatsServer,
) -> None:
    """A CORRAL_AGENT_OUT created before usage existed is updated in place, and then takes
    usage records."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name=subjects.AGENT_OUT_STREAM,
                        subjects=[subjects.ALL_RESULTS, subjects.ALL_EVENTS])
    cp = NatsTransport(nats_server.url)
    await cp.connect()
    try:
        await cp.ensure_streams()
        await cp.ensure_streams()  # a second start finds it up to date
        info = await js.stream_info(subjects.AGENT_OUT_STREAM)
        assert subjects.ALL_USAGE in (info.config.subjects or [])
        ack = await js.publish(USAGE_SUBJECT, b"x", headers={"Nats-Msg-Id": "usage-x"})
        assert ack.stream == subjects.AGENT_OUT_STREAM
    finally:
        await cp.close()
        await nc.close()
