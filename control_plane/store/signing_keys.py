"""Control-plane signing keys: public half in clear, private half sealed with the master key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import LargeBinary, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from byoc_agent.protocol.errors import NotFoundError
from control_plane.store.base import Base, UTCDateTime, utcnow

__all__ = [
    "KeyStatus", "SealedKey", "Session", "SigningKeyRecord", "SigningKeyRow", "active_key",
    "add_active_key", "get_key", "list_keys", "revoke_key",
]


class KeyStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"
    REVOKED = "revoked"


class SigningKeyRow(Base):
    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    kid: str
    public_key: str
    status: KeyStatus
    created_at: datetime
    retired_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SealedKey:
    kid: str
    sealed_private_key: bytes = b""

    def __repr__(self) -> str:
        return f"SealedKey(kid={self.kid!r})"


def _record(row: SigningKeyRow) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=row.kid,
        public_key=row.public_key,
        status=KeyStatus(row.status),
        created_at=row.created_at,
        retired_at=row.retired_at,
        revoked_at=row.revoked_at,
    )


def list_keys(s: Session) -> list[SigningKeyRecord]:
    return [_record(r) for r in s.scalars(select(SigningKeyRow).order_by(SigningKeyRow.created_at))]


def active_key(s: Session) -> SealedKey | None:
    q = select(SigningKeyRow).where(SigningKeyRow.status == KeyStatus.ACTIVE.value)
    row = s.scalars(q.order_by(SigningKeyRow.created_at.desc()).limit(1)).first()
    return (
        None if row is None else SealedKey(kid=row.kid, sealed_private_key=row.sealed_private_key)
    )


def add_active_key(s: Session, kid: str, public_key: str, sealed: bytes) -> SigningKeyRecord:
    """Insert a new active key; any previous active key becomes retired (still trusted)."""
    now = utcnow()
    for row in s.scalars(
        select(SigningKeyRow).where(SigningKeyRow.status == KeyStatus.ACTIVE.value)
    ):
        row.status = KeyStatus.RETIRED.value
        row.retired_at = now
    row = SigningKeyRow(
        kid=kid,
        public_key=public_key,
        sealed_private_key=sealed,
        status=KeyStatus.ACTIVE.value,
        created_at=now,
    )
    s.add(row)
    s.flush()
    return _record(row)


def get_key(s: Session, kid: str) -> SigningKeyRecord:
    row = s.get(SigningKeyRow, kid)
    if row is None:
        raise NotFoundError("no such signing key", kid=kid[:64])
    return _record(row)


def revoke_key(s: Session, kid: str) -> SigningKeyRecord:
    """Mark a key revoked (idempotent); agents stop trusting it at their next refresh."""
    row = s.get(SigningKeyRow, kid)
    if row is None:
        raise NotFoundError("no such signing key", kid=kid[:64])
    if row.status != KeyStatus.REVOKED.value:
        row.status = KeyStatus.REVOKED.value
        row.revoked_at = utcnow()
    return _record(row)
