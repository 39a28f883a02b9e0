"""The agent verifies every job before acting, over a real nats-server.

Each rejection test publishes one bad job, then a good one with a higher seq; once the
good job's result arrives, the bad one has certainly been handled (the stream is ordered),
so asserting that only the good sandbox was created proves the bad one did nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
import structlog

from byoc_agent.agent import Agent, AgentConfig
from byoc_agent.protocol import cosign, messages, signing, subjects, verify
from byoc_agent.runtimes.memory import InMemoryRuntime
from byoc_agent.state import AgentIdentity, AgentStateStore
from byoc_agent.transport.nats import NatsAgentTransport
from corral.testing import NatsServer, eventually

pytestmark = [pytest.mark.nats, pytest.mark.asyncio, pytest.mark.security]

TENANT = "ten-a"
AGENT = "agt-a"


@dataclasses.dataclass
class Harness:
    nc: Any
    cp_key: signing.SigningKey
    agent_key: signing.SigningKey
    state_path: Path
    runtime: InMemoryRuntime
    agent: Agent | None = None
    task: asyncio.Task[None] | None = None
    results: asyncio.Queue[messages.JobResult] = dataclasses.field(
        default_factory=asyncio.Queue
    )
    seq: int = 0
    nats_url: str = ""
    cosign_policy: cosign.CosignPolicy = dataclasses.field(default_factory=cosign.CosignPolicy)
    egress_ceiling: tuple[str, ...] = ()
    data_plane_url: str = "http://127.0.0.1:1"

    def job(self, *, seq: int | None = None, **changes: Any) -> tuple[str, bytes]:
        """A signed create job; ``changes`` override payload fields."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        now = int(time.time())
        payload: dict[str, Any] = {
            "schema": messages.JOB_SCHEMA,
            "job_id": f"job-{uuid.uuid4().hex[:12]}",
            "tenant_id": TENANT,
            "agent_id": AGENT,
            "iat": now,
            "exp": now + 300,
            "seq": seq,
            "body": {
                "kind": "create_sandbox", "sandbox_id": f"sbx-{uuid.uuid4().hex[:12]}",
                "template": "base", "cpu": 1, "memory_mb": 256, "timeout_s": 60, "env": {},
                "isolation": "gvisor",
            },
        }
        key = changes.pop("key", self.cp_key)
        payload.update(changes)
        data = signing.sign(key, messages.JOB_TYP, signing.canonical_json(payload))
        return payload["job_id"], data

    async def publish(self, data: bytes, msg_id: str | None = None) -> None:
        js = self.nc.jetstream()
        await js.publish(
            subjects.jobs(TENANT, AGENT), data,
            headers={"Nats-Msg-Id": msg_id or uuid.uuid4().hex},
        )

    async def start_agent(self) -> Agent:
        state = AgentStateStore(self.state_path)
        transport = NatsAgentTransport(self.nats_url, TENANT, AGENT)
        await transport.connect()
        agent = Agent(
            identity=AgentIdentity(AGENT, TENANT, self.agent_key.kid, self.nats_url),
            signing_key=self.agent_key,
            keyring=verify.Keyring({self.cp_key.kid: self.cp_key.public_key}),
            state=state,
            runtime=self.runtime,
            transport=transport,
            config=AgentConfig(data_plane_url=self.data_plane_url, cpu_total=8,
                               memory_mb_total=8192, heartbeat_interval_s=60,
                               cosign_policy=self.cosign_policy,
                               egress_ceiling=self.egress_ceiling),
        )
        self.agent = agent
        self.task = asyncio.create_task(agent.run())
        return agent

    async def stop_agent(self) -> None:
        assert self.task is not None
        assert self.agent is not None
        self.task.cancel()
        done, _ = await asyncio.wait({self.task}, timeout=5)
        if not done:
            for t in asyncio.all_tasks():
                t.print_stack(file=sys.stderr)
            raise AssertionError("agent did not stop")
        with pytest.raises(asyncio.CancelledError):
            await self.task
        await self.agent.transport.close()
        self.agent.state.close()

    async def drained(self, stream_seq: int) -> None:
        """Wait until the agent's consumer has taken and acked every job up to stream_seq."""
        js = self.nc.jetstream()

        async def acked() -> bool:
            info = await js.consumer_info(subjects.JOBS_STREAM, f"agent-{AGENT}")
            return bool(info.delivered.stream_seq >= stream_seq and info.num_ack_pending == 0)

        await eventually(acked, within_s=30, what=f"jobs up to stream seq {stream_seq} acked")

    async def results_sent(self) -> None:
        """Wait until the agent's outbox holds no result, i.e. JetStream has acked every answer.

        An answer is an outbox entry keyed by its job's message id: a replay answered while
        the first answer is still in flight is that same entry, sent once.
        """
        assert self.agent is not None
        state, subject = self.agent.state, subjects.results(TENANT, AGENT)
        await eventually(
            lambda: all(s != subject for _, s, _ in state.pending_outbox()),
            within_s=30,
            what="the agent's results to leave its outbox",
        )

    async def result_for_sent(self, job_id: str, data: bytes) -> messages.JobResult:
        await self.publish(data)
        return await self.result_for(job_id)

    async def result_for(self, job_id: str, wait_s: float = 30) -> messages.JobResult:
        async with asyncio.timeout(wait_s):
            while True:
                r = await self.results.get()
                if r.job_id == job_id:
                    return r


@pytest_asyncio.fixture
async def harness(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Harness]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name=subjects.JOBS_STREAM, subjects=[subjects.ALL_JOBS])
    await js.add_stream(
        name=subjects.AGENT_OUT_STREAM, subjects=[subjects.ALL_RESULTS, subjects.ALL_EVENTS]
    )
    h = Harness(
        nc=nc, cp_key=signing.SigningKey.generate(), agent_key=signing.SigningKey.generate(),
        state_path=tmp_path / "state.db", runtime=InMemoryRuntime(), nats_url=nats_server.url,
    )
    ring = verify.Keyring({h.agent_key.kid: h.agent_key.public_key})

    async def on_result(msg: Any) -> None:
        _, result = verify.verify_model(
            msg.data, typ=messages.RESULT_TYP, model=messages.JobResult, keyring=ring
        )
        await h.results.put(result)

    await nc.subscribe(subjects.results(TENANT, AGENT), cb=on_result)
    await h.start_agent()
    yield h
    if h.task is not None and not h.task.done():
        await h.stop_agent()
    await nc.close()


async def _rejected_then_good(h: Harness, bad: bytes) -> list[dict[str, Any]]:
    with structlog.testing.capture_logs() as logs:
        await h.publish(bad)
        good_id, good = h.job(seq=h.seq + 100)
        h.seq += 100
        await h.publish(good)
        result = await h.result_for(good_id)
    assert result.status == "succeeded"
    assert len(h.runtime.created) == 1, "only the good job may create a sandbox"
    return [e for e in logs if e.get("event") == "job_rejected"]


def _reasons(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["reason"]) for e in events]


async def test_a_valid_job_creates_one_sandbox_and_answers_with_a_signed_result(
    harness: Harness,
) -> None:
    """A well-formed job signed by a trusted key is executed once and answered."""
    job_id, data = harness.job()
    await harness.publish(data)
    result = await harness.result_for(job_id)
    assert result.status == "succeeded"
    assert result.sandbox is not None
    assert result.sandbox.state == "running"
    assert harness.runtime.created == [result.sandbox.sandbox_id]


async def test_a_flipped_signature_bit_is_rejected_as_bad_signature(harness: Harness) -> None:
    """Changing one bit of the signature makes the job unverifiable."""
    _, data = harness.job()
    head, payload, sig = data.split(b".")
    raw = bytearray(signing.b64url_decode(sig.decode()))
    raw[0] ^= 1
    bad = head + b"." + payload + b"." + signing.b64url_encode(bytes(raw)).encode()
    assert _reasons(await _rejected_then_good(harness, bad)) == ["bad_signature"]


async def test_a_job_signed_by_an_unknown_key_is_rejected(harness: Harness) -> None:
    """A key the agent was never given cannot sign jobs."""
    _, bad = harness.job(key=signing.SigningKey.generate())
    assert _reasons(await _rejected_then_good(harness, bad)) == ["unknown_kid"]


async def test_a_job_for_another_agent_is_rejected(harness: Harness) -> None:
    """The audience must be this agent."""
    _, bad = harness.job(agent_id="agt-other")
    assert _reasons(await _rejected_then_good(harness, bad)) == ["wrong_audience"]


async def test_a_job_for_another_tenant_is_rejected(harness: Harness) -> None:
    """The tenant must be the one this agent was enrolled for."""
    _, bad = harness.job(tenant_id="ten-other")
    assert _reasons(await _rejected_then_good(harness, bad)) == ["wrong_tenant"]


async def test_an_expired_job_is_rejected(harness: Harness) -> None:
    """A job past its exp (beyond the clock skew allowance) is refused."""
    now = int(time.time())
    _, bad = harness.job(iat=now - 600, exp=now - 120)
    assert _reasons(await _rejected_then_good(harness, bad)) == ["expired"]


async def test_a_job_issued_in_the_future_is_rejected(harness: Harness) -> None:
    """A job whose iat is beyond the clock skew allowance is not yet valid."""
    now = int(time.time())
    _, bad = harness.job(iat=now + 600, exp=now + 900)
    assert _reasons(await _rejected_then_good(harness, bad)) == ["not_yet_valid"]


async def test_a_replayed_job_id_is_not_executed_twice(harness: Harness) -> None:
    """The same signed job delivered again is answered from the stored result only."""
    job_id, data = harness.job()
    await harness.publish(data, msg_id="first")
    first = await harness.result_for(job_id)
    await harness.results_sent()  # else the replay's answer may merge with the first one
    with structlog.testing.capture_logs() as logs:
        await harness.publish(data, msg_id="second")  # a different msg id defeats dedupe
        await harness.drained(stream_seq=2)
        again = await harness.result_for(job_id)
    assert again == first
    assert len(harness.runtime.created) == 1
    assert "replayed" in _reasons([e for e in logs if e.get("event") == "job_rejected"])


async def test_a_seq_not_above_the_last_applied_is_rejected(harness: Harness) -> None:
    """Jobs must arrive in increasing seq order; an older seq is refused."""
    job_id, data = harness.job(seq=50)
    harness.seq = 50
    await harness.publish(data)
    await harness.result_for(job_id)
    old_id, old = harness.job(seq=10)
    with structlog.testing.capture_logs() as logs:
        await harness.publish(old)
        answer = await harness.result_for(old_id)
    assert answer.status == "rejected"
    assert len(harness.runtime.created) == 1
    assert _reasons([e for e in logs if e.get("event") == "job_rejected"]) == [
        "seq_not_increasing"
    ]


async def test_an_unknown_schema_version_is_rejected(harness: Harness) -> None:
    """A schema this agent does not speak is refused, even when correctly signed."""
    _, bad = harness.job(schema="corral.job/v9")
    assert _reasons(await _rejected_then_good(harness, bad)) == ["unknown_schema"]


async def test_a_malformed_envelope_is_rejected(harness: Harness) -> None:
    """Bytes that are not a compact signed message are refused."""
    assert _reasons(await _rejected_then_good(harness, b"{not a job}")) == ["malformed"]


async def test_a_signed_payload_with_a_wrong_field_type_is_rejected(harness: Harness) -> None:
    """Strict parsing: cpu as a string is not coerced."""
    _, bad = harness.job(body={"kind": "create_sandbox", "sandbox_id": "sbx-x1", "template":
                               "base", "cpu": "1", "memory_mb": 256, "timeout_s": 60})
    assert _reasons(await _rejected_then_good(harness, bad)) == ["malformed"]


async def test_an_oversized_envelope_is_rejected(harness: Harness) -> None:
    """A message over 64 KiB is refused before it is parsed."""
    _, bad = harness.job(body={"kind": "create_sandbox", "sandbox_id": "sbx-x2",
                               "template": "base", "cpu": 1, "memory_mb": 256,
                               "timeout_s": 60, "env": {"BIG": "x" * 8000} | {
                                   f"V{i}": "y" * 8000 for i in range(10)}})
    assert _reasons(await _rejected_then_good(harness, bad)) == ["oversized"]


async def test_reordered_json_keys_break_the_signature(harness: Harness) -> None:
    """Re-serializing the payload (same content, other key order) does not verify."""
    _, data = harness.job()
    head, payload, sig = data.split(b".")
    obj = json.loads(signing.b64url_decode(payload.decode()))
    reordered = json.dumps(dict(reversed(list(obj.items())))).encode()
    bad = head + b"." + signing.b64url_encode(reordered).encode() + b"." + sig
    assert _reasons(await _rejected_then_good(harness, bad)) == ["bad_signature"]


async def test_a_redelivered_create_makes_one_sandbox(harness: Harness) -> None:
    """The same create published twice (two stream messages) creates one sandbox."""
    job_id, data = harness.job()
    await harness.publish(data, msg_id="a")
    await harness.publish(data, msg_id="b")
    first = await harness.result_for(job_id)
    assert first.status == "succeeded"
    await harness.drained(stream_seq=2)
    assert len(harness.runtime.created) == 1


async def test_a_job_replayed_after_an_agent_restart_is_still_refused(harness: Harness) -> None:
    """The replay guard is on disk: a restarted agent does not run an old job again."""
    job_id, data = harness.job()
    await harness.publish(data, msg_id="before")
    await harness.result_for(job_id)
    await harness.stop_agent()
    await harness.start_agent()
    with structlog.testing.capture_logs() as logs:
        await harness.publish(data, msg_id="after")
        await harness.drained(stream_seq=2)
    assert len(harness.runtime.created) == 1
    assert "replayed" in _reasons([e for e in logs if e.get("event") == "job_rejected"])


async def test_a_job_cut_off_by_a_crash_is_finished_after_the_restart(harness: Harness) -> None:
    """A job accepted (and acked) but not executed before a crash runs once on restart."""
    assert harness.agent is not None
    await harness.stop_agent()
    job_id, data = harness.job()
    # Simulate the crash window: the job was verified and durably accepted, then the
    # process died before executing it. No stream message exists, so only recovery can run it.
    agent = await harness.start_agent()
    await harness.stop_agent()
    state = AgentStateStore(harness.state_path)
    state.accept_job(job_id, 1, data)
    state.close()
    del agent
    await harness.start_agent()
    result = await harness.result_for(job_id)
    assert result.status == "succeeded"
    assert len(harness.runtime.created) == 1


async def test_microvm_isolation_on_a_gvisor_only_agent_fails_with_a_clear_error(
    harness: Harness,
) -> None:
    """A job asking for a microVM is refused by an agent without a microVM runtime."""
    job_id, data = harness.job(body={
        "kind": "create_sandbox", "sandbox_id": "sbx-vm1", "template": "base", "cpu": 1,
        "memory_mb": 256, "timeout_s": 60, "env": {}, "isolation": "microvm"})
    await harness.publish(data)
    result = await harness.result_for(job_id)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.code == "invalid_argument"
    assert "microvm" in result.error.message
    assert harness.runtime.created == []


async def test_a_sandbox_that_died_on_its_own_is_recorded_as_failed(harness: Harness) -> None:
    """The liveness check notices a sandbox whose init is gone and reports it."""
    assert harness.agent is not None
    job_id, data = harness.job()
    await harness.publish(data)
    result = await harness.result_for(job_id)
    assert result.sandbox is not None
    sandbox_id = result.sandbox.sandbox_id
    harness.runtime.live.pop(sandbox_id)  # the sandbox vanished under the agent
    await harness.agent.reap_dead()
    rec = harness.agent.state.get_sandbox(sandbox_id)
    assert rec is not None
    assert rec.state == "failed"
    assert rec.end_reason == "exited"


# ---- customer co-signing ----------------------------------------------------------------

CUSTOMER = signing.SigningKey.generate()


async def _with_cosign_rules(h: Harness, rules: list[str]) -> None:
    """Restart the agent with the customer's key and these high-risk rules."""
    await h.stop_agent()
    h.cosign_policy = cosign.CosignPolicy.from_config([CUSTOMER.public_text], rules)
    await h.start_agent()


def _cosigned(h: Harness, data: bytes, key: signing.SigningKey = CUSTOMER,
              **changes: Any) -> bytes:
    job = verify.verify_signed_job(data, keyring=verify.Keyring({h.cp_key.kid:
                                                                  h.cp_key.public_key}))
    fields: dict[str, Any] = {"job_id": job.job_id, "tenant_id": job.tenant_id,
                              "agent_id": job.agent_id, "body": job.body}
    fields.update(changes)
    return cosign.attach(data, [cosign.cosign(key, **fields)])


async def test_the_control_plane_alone_cannot_get_a_high_risk_job_executed(
    harness: Harness,
) -> None:
    """A job matching a customer rule, signed only by the control plane, is refused as
    missing_cosignature and answered as rejected; nothing is created."""
    await _with_cosign_rules(harness, ["create_sandbox:cpu>1"])
    job_id, data = harness.job(body={
        "kind": "create_sandbox", "sandbox_id": "sbx-risky", "template": "base", "cpu": 4,
        "memory_mb": 256, "timeout_s": 60, "env": {}, "isolation": "gvisor",
    })
    with structlog.testing.capture_logs() as logs:
        await harness.publish(data)
        result = await harness.result_for(job_id)
    assert result.status == "rejected"
    assert result.error is not None
    assert result.error.message.startswith("missing_cosignature")
    assert harness.runtime.created == []
    assert "missing_cosignature" in _reasons([e for e in logs if e.get("event") == "job_rejected"])


async def test_a_high_risk_job_with_the_customers_cosignature_runs(harness: Harness) -> None:
    """The same kind of job with a valid customer cosignature is executed."""
    await _with_cosign_rules(harness, ["create_sandbox:cpu>1"])
    job_id, data = harness.job(body={
        "kind": "create_sandbox", "sandbox_id": "sbx-approved", "template": "base", "cpu": 4,
        "memory_mb": 256, "timeout_s": 60, "env": {}, "isolation": "gvisor",
    })
    await harness.publish(_cosigned(harness, data))
    result = await harness.result_for(job_id)
    assert result.status == "succeeded"
    assert harness.runtime.created == ["sbx-approved"]


@pytest.mark.parametrize(
    "bad",
    ["stranger_key", "other_job", "other_body", "expired", "garbage", "control_plane_key"],
)
async def test_a_wrong_cosignature_does_not_unlock_a_high_risk_job(
    harness: Harness, bad: str
) -> None:
    """Another key (even the control plane's), another job's or body's approval, an expired
    approval or junk: all refused as missing_cosignature."""
    await _with_cosign_rules(harness, ["create_sandbox"])
    job_id, data = harness.job()
    if bad == "stranger_key":
        sent = _cosigned(harness, data, key=signing.SigningKey.generate())
    elif bad == "control_plane_key":
        sent = _cosigned(harness, data, key=harness.cp_key)
    elif bad == "other_job":
        sent = _cosigned(harness, data, job_id="job-someotherjob")
    elif bad == "other_body":
        sent = _cosigned(harness, data, body=messages.KillSandboxBody(sandbox_id="sbx-x"))
    elif bad == "expired":
        sent = _cosigned(harness, data, ttl_s=1, now=int(time.time()) - 600)
    else:
        sent = cosign.attach(data, [b"not.a.cosignature"])
    result = await harness.result_for_sent(job_id, sent)
    assert result.status == "rejected"
    assert result.error is not None
    assert result.error.message.startswith("missing_cosignature")
    assert harness.runtime.created == []


async def test_jobs_no_rule_marks_high_risk_run_without_a_cosignature(harness: Harness) -> None:
    """Rules are narrow: a small sandbox under a cpu>1 rule needs no customer."""
    await _with_cosign_rules(harness, ["create_sandbox:cpu>1"])
    job_id, data = harness.job()
    await harness.publish(data)
    assert (await harness.result_for(job_id)).status == "succeeded"
