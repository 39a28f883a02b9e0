"""The NATS operator, account and system nkey seeds, sealed with the master key."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from control_plane.store.base import Base, UTCDateTime, utcnow

__all__ = ["NatsKeyRow", "Session", "add", "get_all"]


class NatsKeyRow(Base):
    __tablename__ = "nats_keys"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    sealed_seed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


def get_all(s: Session) -> dict[str, bytes]:
    """Sealed seeds by kind (``operator``, ``account``, ``system``); empty before first use."""
    return {r.kind: r.sealed_seed for r in s.scalars(select(NatsKeyRow))}


def add(s: Session, kind: str, public_key: str, sealed_seed: bytes) -> None:
    s.add(NatsKeyRow(kind=kind, public_key=public_key, sealed_seed=sealed_seed,
                     created_at=utcnow()))
    s.flush()
