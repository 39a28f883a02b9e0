"""NATS JetStream adapter: streams, job publishing, and the loops that feed the inbox.

The only control-plane module that imports ``nats``. Streams::

    CORRAL_JOBS       corral.v1.t.*.a.*.jobs                 control plane → agents
    CORRAL_AGENT_OUT  corral.v1.t.*.a.*.{results,events,usage}  agents → control plane

Both are file-backed with a ``Nats-Msg-Id`` dedupe window. The control plane reads
CORRAL_AGENT_OUT through one durable pull consumer with explicit ack and bounded
redelivery; heartbeats arrive on core NATS (they are only useful while fresh).
"""

from __future__ import annotations

import asyncio
import contextlib

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from byoc_agent.protocol import subjects
from byoc_agent.protocol.cancel import raise_if_cancelling
from control_plane.nats_auth import UserCredentials, sign_nonce
from control_plane.transport.base import Disposition, Inbox

log = structlog.get_logger("control_plane.transport")

CONSUMER = "control-plane"
DEDUPE_WINDOW_S = 120.0
MAX_DELIVER = 5
ACK_WAIT_S = 30.0
OP_TIMEOUT_S = 10.0
FETCH_BATCH = 64
FETCH_WAIT_S = 1.0


class NatsPublishError(ConnectionError):
    """JetStream did not acknowledge a publish."""


def stream_configs() -> list[StreamConfig]:
    return [
        StreamConfig(
            name=subjects.JOBS_STREAM,
            subjects=[subjects.ALL_JOBS],
            storage=StorageType.FILE,
            duplicate_window=DEDUPE_WINDOW_S,
            max_age=86400.0,
        ),
        StreamConfig(
            name=subjects.AGENT_OUT_STREAM,
            subjects=[subjects.ALL_RESULTS, subjects.ALL_EVENTS, subjects.ALL_USAGE],
            storage=StorageType.FILE,
            duplicate_window=DEDUPE_WINDOW_S,
            max_age=7 * 86400.0,
        ),
    ]


class NatsTransport:
    """Connects to NATS, ensures streams, publishes jobs, and runs the inbound loops."""

    def __init__(
        self, url: str, *, client_name: str = "corral-control-plane",
        credentials: UserCredentials | None = None,
    ) -> None:
        self._url = url
        self._client_name = client_name
        self._credentials = credentials
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    def use_credentials(self, credentials: UserCredentials) -> None:
        """Connect as this NATS user (set before :meth:`connect`)."""
        self._credentials = credentials

    def __repr__(self) -> str:
        return f"NatsTransport(connected={self._nc is not None and self._nc.is_connected})"

    async def connect(self) -> None:
        creds = self._credentials
        auth: dict[str, object] = {}
        if creds is not None:
            auth = {
                "user_jwt_cb": lambda: creds.jwt.encode("ascii"),
                "signature_cb": lambda nonce: sign_nonce(creds.seed, nonce),
            }
        errors: list[str] = []
        connecting: asyncio.Future[Client] | None = None

        async def on_error(e: Exception) -> None:
            errors.append(str(e))
            log.warning("nats_error", error=str(e)[:200])
            # An authorization failure will not go away by retrying: stop connecting.
            if "authorization" in str(e).lower() and connecting is not None:
                connecting.cancel()

        connecting = asyncio.ensure_future(nats.connect(
            self._url,
            name=self._client_name,
            **auth,
            error_cb=on_error,
            connect_timeout=5,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
        ))
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                self._nc = await connecting
        except (TimeoutError, asyncio.CancelledError, nats.errors.Error, OSError) as e:
            connecting.cancel()
            task = asyncio.current_task()
            if isinstance(e, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # we are being cancelled, not refused
            last = errors[-1] if errors else type(e).__name__
            hint = ""
            if "authorization" in last.lower():
                hint = (
                    "; nats-server must trust this control plane's NATS account: write its "
                    "config with `python -m control_plane.nats_auth server-config` "
                    "(or set CORRAL_NATS_AUTH=none for a server without auth)"
                )
            raise ConnectionError(f"cannot connect to NATS at {self._url}: {last}{hint}") from e
        self._js = self._nc.jetstream(timeout=OP_TIMEOUT_S)
        log.info("nats_connected")

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("not connected to NATS")
        return self._js

    async def ensure_streams(self) -> None:
        """Create the streams (or bring their config up to date) and the durable consumer."""
        for config in stream_configs():
            async with asyncio.timeout(OP_TIMEOUT_S):
                try:
                    await self.js.stream_info(str(config.name))
                except nats.js.errors.NotFoundError:
                    await self.js.add_stream(config)
                else:
                    await self.js.update_stream(config)
        async with asyncio.timeout(OP_TIMEOUT_S):
            await self.js.add_consumer(
                subjects.AGENT_OUT_STREAM,
                ConsumerConfig(
                    durable_name=CONSUMER,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=ACK_WAIT_S,
                    max_deliver=MAX_DELIVER,
                ),
            )

    async def publish_job(self, subject: str, msg_id: str, data: bytes) -> None:
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                ack = await self.js.publish(
                    subject, data, timeout=OP_TIMEOUT_S, headers={"Nats-Msg-Id": msg_id}
                )
        except (nats.errors.Error, TimeoutError) as e:
            raise NatsPublishError(f"publish failed: {type(e).__name__}") from e
        if ack.stream != subjects.JOBS_STREAM:
            raise NatsPublishError(f"job landed in stream {ack.stream!r}")

    async def run(self, inbox: Inbox) -> None:
        """Feed results, events, usage and heartbeats to ``inbox`` until cancelled."""
        if self._nc is None:
            raise RuntimeError("not connected to NATS")

        async def on_heartbeat(msg: Msg) -> None:
            try:
                await inbox.handle(msg.subject, msg.data)
            except Exception:  # a transport handler: log and keep the subscription alive
                log.exception("heartbeat_handler_failed")

        async with asyncio.timeout(OP_TIMEOUT_S):
            sub = await self._nc.subscribe(subjects.ALL_HEARTBEATS, cb=on_heartbeat)
        try:
            await self._consume(inbox)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(OP_TIMEOUT_S):
                    await sub.unsubscribe()

    async def _consume(self, inbox: Inbox) -> None:
        async with asyncio.timeout(OP_TIMEOUT_S):
            psub = await self.js.pull_subscribe_bind(
                durable=CONSUMER, stream=subjects.AGENT_OUT_STREAM
            )
        while True:
            try:
                async with asyncio.timeout(FETCH_WAIT_S + OP_TIMEOUT_S):
                    msgs = await psub.fetch(batch=FETCH_BATCH, timeout=FETCH_WAIT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                raise_if_cancelling()  # nats-py can turn a cancellation into a timeout
                continue
            except nats.errors.Error as e:
                raise_if_cancelling()
                log.warning("fetch_failed", error=type(e).__name__)
                await asyncio.sleep(1.0)
                continue
            raise_if_cancelling()
            for msg in msgs:
                await self._dispatch(inbox, msg)

    @staticmethod
    async def _dispatch(inbox: Inbox, msg: Msg) -> None:
        try:
            disposition = await inbox.handle(msg.subject, msg.data)
        except Exception:  # a transport handler: never let one message stop the loop
            log.exception("inbox_failed")
            disposition = Disposition.RETRY
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                if disposition == Disposition.RETRY:
                    await msg.nak(delay=1.0)
                else:
                    await msg.ack()
        except (nats.errors.Error, TimeoutError) as e:
            log.warning("ack_failed", error=type(e).__name__)

    async def close(self) -> None:
        """Close the connection. Not drain: the loops are already stopped, every publish was
        acknowledged, and anything fetched but unacked is redelivered to the next process."""
        if self._nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(OP_TIMEOUT_S):
                    await self._nc.close()
            self._nc = None
            self._js = None
