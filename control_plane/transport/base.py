"""The two ports between the control plane and its message broker.

Why ``Protocol``s: the job issuer and the inbox must not know about NATS, so unit tests
can run them with :class:`~control_plane.transport.memory.MemoryPublisher` and call the
inbox directly, and the NATS adapter stays the only module that imports ``nats``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class Disposition(StrEnum):
    """What the transport should do with a message after the inbox looked at it."""

    APPLIED = "applied"  # ack
    DROPPED = "dropped"  # ack: bad or foreign, redelivery would not help
    RETRY = "retry"  # nak: a transient failure (database), deliver again later


class Publisher(Protocol):
    """Publishes one signed job durably; returns once the broker acknowledged it."""

    async def publish_job(self, subject: str, msg_id: str, data: bytes) -> None: ...


class Inbox(Protocol):
    """Handles one message from an agent (result, event or heartbeat), by subject."""

    async def handle(self, subject: str, data: bytes) -> Disposition: ...
