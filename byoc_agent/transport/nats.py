"""NATS transport for the agent: one durable JetStream consumer for its jobs, publishers
for its signed results, events and heartbeats. Outbound connections only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from byoc_agent.protocol import subjects
from byoc_agent.protocol.cancel import raise_if_cancelling

log = structlog.get_logger(__name__)

ACK_BACKOFF_S = [30.0, 60.0, 120.0, 300.0]
MAX_DELIVER = 5
NETWORK_TIMEOUT_S = 5.0


@dataclass(slots=True)
class IncomingJob:
    """One delivered job message; ``data`` is the exact bytes received."""

    data: bytes
    num_delivered: int
    _msg: Msg

    async def ack(self) -> None:
        async with asyncio.timeout(NETWORK_TIMEOUT_S):
            await self._msg.ack()

    async def in_progress(self) -> None:
        async with asyncio.timeout(NETWORK_TIMEOUT_S):
            await self._msg.in_progress()


class TransportUnavailable(Exception):
    """NATS could not be reached or refused the operation; retry later."""


class NatsAgentTransport:
    def __init__(self, url: str, tenant_id: str, agent_id: str, *, name: str = "corral-agent",
                 credentials: tuple[str, str] | None = None) -> None:
        """``credentials`` is ``(user JWT file, nkey seed file)`` from enrollment, or None
        for a NATS server without auth (development only)."""
        self.url = url
        self.tenant_id = tenant_id
        self.agent_id = agent_id
        self._name = name
        self._credentials = credentials
        self._nc: Client | None = None

    async def connect(self) -> None:
        async def on_error(e: Exception) -> None:
            log.warning("nats_error", error=str(e))

        self._nc = await nats.connect(
            self.url,
            name=self._name,
            user_credentials=self._credentials,
            # Replies to this agent's JetStream requests land under its own prefix, the
            # only place its NATS user may subscribe.
            inbox_prefix=subjects.agent_inbox_prefix(self.agent_id),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=NETWORK_TIMEOUT_S,
            error_cb=on_error,
        )

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise TransportUnavailable("not connected")
        return self._nc

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                async with asyncio.timeout(NETWORK_TIMEOUT_S):
                    await self._nc.flush()
            await self._nc.close()
        self._nc = None

    async def jobs(self, batch_timeout: float = 1.0) -> AsyncIterator[IncomingJob]:
        """Delivered jobs, in stream order, forever. Reconnects the consumer on failure."""
        subject = subjects.jobs(self.tenant_id, self.agent_id)
        durable = subjects.jobs_consumer(self.agent_id)
        while True:
            try:
                js = self.nc.jetstream(timeout=NETWORK_TIMEOUT_S)
                sub = await js.pull_subscribe(
                    subject,
                    durable=durable,
                    stream=subjects.JOBS_STREAM,
                    config=ConsumerConfig(
                        # name + filter: created through CONSUMER.CREATE.<stream>.<name>.
                        # <filter>, the only consumer call the agent's NATS user may make.
                        name=durable,
                        durable_name=durable,
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL,
                        max_deliver=MAX_DELIVER,
                        backoff=ACK_BACKOFF_S,
                        filter_subject=subject,
                        max_ack_pending=1,  # strict seq order, even across crashes
                    ),
                )
            except (nats.errors.Error, nats.js.errors.Error, TransportUnavailable, OSError) as e:
                raise_if_cancelling()
                log.warning("job_consumer_unavailable", error=str(e))
                await asyncio.sleep(1.0)
                continue
            while True:
                try:
                    msgs = await sub.fetch(1, timeout=batch_timeout)
                except nats.errors.TimeoutError:
                    raise_if_cancelling()  # nats-py can turn a cancellation into a timeout
                    continue
                except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
                    raise_if_cancelling()
                    log.warning("job_fetch_failed", error=str(e))
                    await asyncio.sleep(0.5)
                    break
                raise_if_cancelling()
                for m in msgs:
                    meta = m.metadata
                    yield IncomingJob(data=m.data, num_delivered=meta.num_delivered, _msg=m)

    async def publish_durable(self, subject: str, data: bytes, msg_id: str) -> None:
        """Publish on JetStream and wait for the stream's ack (deduped by ``msg_id``)."""
        try:
            js = self.nc.jetstream(timeout=NETWORK_TIMEOUT_S)
            async with asyncio.timeout(NETWORK_TIMEOUT_S + 1):
                await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as e:
            raise_if_cancelling()
            raise TransportUnavailable(f"publish to {subject} failed: {e}") from e

    async def publish_heartbeat(self, data: bytes) -> None:
        try:
            await self.nc.publish(subjects.heartbeat(self.tenant_id, self.agent_id), data)
        except (nats.errors.Error, OSError) as e:
            raise_if_cancelling()
            raise TransportUnavailable(f"heartbeat failed: {e}") from e
