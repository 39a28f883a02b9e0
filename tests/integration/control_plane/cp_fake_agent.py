"""A scripted fake agent: enrolls over HTTP, verifies jobs from JetStream, answers signed.

It speaks the real wire format with nats-py against a real nats-server; what it answers
is scripted per test through ``answer`` (return ``None`` to stay silent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import nats
from nats.js.api import AckPolicy, ConsumerConfig

from byoc_agent.protocol import subjects
from byoc_agent.protocol.cancel import raise_if_cancelling
from byoc_agent.protocol.messages import Job, SandboxState
from byoc_agent.protocol.signing import SigningKey, public_key_from_text
from byoc_agent.protocol.verify import Audience, Keyring, verify_job
from control_plane.testing import (
    event_message,
    heartbeat_message,
    result_message,
    usage_message,
)


@dataclass(frozen=True, slots=True)
class Answer:
    status: str = "succeeded"
    state: SandboxState | None = None
    error_code: str | None = None
    end_reason: str | None = None
    delay_s: float = 0.0  # how long the agent works before it answers


def obedient(job: Job) -> Answer | None:
    """Does what it is told, successfully."""
    kind = job.body.kind
    if kind == "create_sandbox":
        return Answer(state=SandboxState.RUNNING)
    if kind == "kill_sandbox":
        return Answer(state=SandboxState.KILLED, end_reason="killed")
    return Answer(state=SandboxState.RUNNING)


@dataclass(slots=True)
class Received:
    job: Job
    msg_id: str | None


@dataclass
class FakeAgent:
    base_url: str
    nats_url: str
    enrollment_token: str
    templates: tuple[str, ...] = ("base",)
    runtimes: tuple[str, ...] = ("gvisor",)
    answer: Callable[[Job], Answer | None] = obedient
    result_key: SigningKey | None = None  # sign results with another key (a forgery)
    heartbeats: bool = True
    key: SigningKey = field(default_factory=SigningKey.generate)
    received: list[Received] = field(default_factory=list)
    agent_id: str = ""
    tenant_id: str = ""
    _applied: set[str] = field(default_factory=set)
    _last_seq: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _nc: nats.aio.client.Client | None = None

    # ReplayGuard
    def seen(self, job_id: str) -> bool:
        return job_id in self._applied

    def last_seq(self) -> int:
        return self._last_seq

    async def start(self) -> FakeAgent:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as http:
            r = await http.post(
                "/v1/agents/enroll",
                json={
                    "token": self.enrollment_token,
                    "name": "fake",
                    "public_key": self.key.public_text,
                    "data_plane_url": "http://10.1.2.3:7000",
                    "runtimes": list(self.runtimes),
                    "templates": list(self.templates),
                    "capacity": {
                        "cpu_total": 8,
                        "cpu_free": 8,
                        "memory_mb_total": 16384,
                        "memory_mb_free": 16384,
                        "sandboxes": 0,
                    },
                },
            )
            r.raise_for_status()
        body = r.json()
        self.agent_id, self.tenant_id = body["agent_id"], body["tenant_id"]
        self.keyring = Keyring(
            keys={
                k["kid"]: public_key_from_text(k["public_key"]) for k in body["control_plane_keys"]
            }
        )
        async with asyncio.timeout(10):
            self._nc = await nats.connect(body["nats_url"])
        js = self._nc.jetstream(timeout=10)
        durable = f"fake-{self.agent_id}"
        async with asyncio.timeout(10):
            await js.add_consumer(
                subjects.JOBS_STREAM,
                ConsumerConfig(
                    durable_name=durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    filter_subject=subjects.jobs(self.tenant_id, self.agent_id),
                ),
            )
            self._psub = await js.pull_subscribe_bind(durable=durable, stream=subjects.JOBS_STREAM)
        self._js = js
        self._tasks.append(asyncio.create_task(self._jobs()))
        if self.heartbeats:
            await self.beat()
            self._tasks.append(asyncio.create_task(self._beat_forever()))
        return self

    async def beat(self) -> None:
        assert self._nc is not None
        data = heartbeat_message(
            self.key,
            agent_id=self.agent_id,
            tenant_id=self.tenant_id,
            templates=self.templates,
            data_plane_url="http://10.1.2.3:7000",
            runtimes=self.runtimes,
        )
        async with asyncio.timeout(5):
            await self._nc.publish(subjects.heartbeat(self.tenant_id, self.agent_id), data)
            await self._nc.flush()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)  # the heartbeat interval
            await self.beat()
            raise_if_cancelling()  # nats-py's flush swallows a cancellation

    async def _jobs(self) -> None:
        while True:
            try:
                async with asyncio.timeout(5):
                    msgs = await self._psub.fetch(batch=10, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                raise_if_cancelling()  # nats-py can turn a cancellation into a timeout
                continue
            raise_if_cancelling()
            for msg in msgs:
                job = verify_job(
                    msg.data,
                    keyring=self.keyring,
                    audience=Audience(agent_id=self.agent_id, tenant_id=self.tenant_id),
                    replay=self,
                )
                self._applied.add(job.job_id)
                self._last_seq = job.seq
                self.received.append(Received(job, (msg.headers or {}).get("Nats-Msg-Id")))
                answer = self.answer(job)
                if answer is not None and answer.delay_s:
                    await asyncio.sleep(answer.delay_s)  # deliberate: a slow agent
                if answer is not None:
                    data = result_message(
                        self.result_key or self.key,
                        job,
                        status=answer.status,
                        state=answer.state,
                        end_reason=answer.end_reason,
                        error_code=answer.error_code,
                    )
                    async with asyncio.timeout(5):
                        await self._js.publish(
                            subjects.results(self.tenant_id, self.agent_id),
                            data,
                            headers={"Nats-Msg-Id": f"r-{job.job_id}"},
                        )
                async with asyncio.timeout(5):
                    await msg.ack()

    async def emit_event(self, sandbox_id: str, state: SandboxState, end_reason: str) -> None:
        data = event_message(
            self.key,
            agent_id=self.agent_id,
            tenant_id=self.tenant_id,
            sandbox_id=sandbox_id,
            state=state,
            end_reason=end_reason,
        )
        async with asyncio.timeout(5):
            await self._js.publish(subjects.events(self.tenant_id, self.agent_id), data)

    async def emit_usage(
        self,
        sandbox_id: str,
        record_id: str,
        start: int,
        end: int,
        *,
        key: SigningKey | None = None,
        **fields: object,
    ) -> None:
        """Publish a signed usage report (with ``key``, another key: a forgery)."""
        data = usage_message(
            key or self.key,
            agent_id=self.agent_id,
            tenant_id=self.tenant_id,
            sandbox_id=sandbox_id,
            record_id=record_id,
            start=start,
            end=end,
            **fields,  # type: ignore[arg-type]
        )
        async with asyncio.timeout(5):
            await self._js.publish(subjects.usage(self.tenant_id, self.agent_id), data)

    async def stop(self) -> None:
        """Stop the loops and close the connection; a loop that will not end fails the test
        within seconds instead of hanging it (idempotent)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=10)
            assert not pending, f"fake agent loops ignored their cancellation: {pending}"
        self._tasks.clear()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._nc.close()
