"""An in-memory :class:`Publisher` for tests: records what would have gone to NATS."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Published:
    subject: str
    msg_id: str
    data: bytes


@dataclass(slots=True)
class MemoryPublisher:
    """Keeps every published job in order; ``fail`` makes the next publishes raise."""

    published: list[Published] = field(default_factory=list)
    fail: bool = False

    async def publish_job(self, subject: str, msg_id: str, data: bytes) -> None:
        if self.fail:
            raise ConnectionError("memory publisher set to fail")
        self.published.append(Published(subject=subject, msg_id=msg_id, data=data))
