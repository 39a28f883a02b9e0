"""Billing keys: credentials for finance that read billing and nothing else.

A separate table from ``api_keys`` so every tenant-key code path stays as it was (a tenant
key always has a tenant); a billing key acts for no tenant. Keys read ``cbk_<id>_<secret>``
and, like API keys, only the SHA-256 of the whole key is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from byoc_agent.protocol.errors import NotFoundError
from control_plane.errors import UnauthenticatedError
from control_plane.store.base import Base, UTCDateTime, utcnow
from control_plane.store.credentials import (
    BILLING_KEY_PREFIX,
    mint_api_key,
    parse_api_key,
    same_hash,
    sha256_hex,
)


class BillingKey(Base):
    __tablename__ = "billing_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True, slots=True)
class BillingKeyRecord:
    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedBillingKey:
    """A billing key just created; ``key`` is returned to the caller once and never stored."""

    record: BillingKeyRecord
    key: str

    def __repr__(self) -> str:
        return f"IssuedBillingKey(id={self.record.id!r})"


def _record(row: BillingKey) -> BillingKeyRecord:
    return BillingKeyRecord(
        id=row.id, name=row.name, created_at=row.created_at, revoked_at=row.revoked_at
    )


def is_billing_key(text: str) -> bool:
    """Whether ``text`` is shaped like a billing key (it may still be unknown or revoked)."""
    return text.startswith(BILLING_KEY_PREFIX + "_")


def create_billing_key(s: Session, name: str) -> IssuedBillingKey:
    secret = mint_api_key(BILLING_KEY_PREFIX)
    row = BillingKey(id=secret.id, name=name, secret_hash=secret.hash, created_at=utcnow())
    s.add(row)
    s.flush()
    return IssuedBillingKey(record=_record(row), key=secret.text)


def list_billing_keys(s: Session) -> list[BillingKeyRecord]:
    q = select(BillingKey).order_by(BillingKey.created_at, BillingKey.id)
    return [_record(r) for r in s.scalars(q)]


def revoke_billing_key(s: Session, key_id: str) -> BillingKeyRecord:
    row = s.get(BillingKey, key_id)
    if row is None:
        raise NotFoundError("no such billing key")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return _record(row)


def authenticate_billing_key(s: Session, text: str) -> str:
    """The id of the live billing key ``text``; raises UnauthenticatedError otherwise."""
    key_id = parse_api_key(text, BILLING_KEY_PREFIX)
    row = s.get(BillingKey, key_id) if key_id is not None else None
    if (
        row is None
        or row.revoked_at is not None
        or not same_hash(row.secret_hash, sha256_hex(text))
    ):
        raise UnauthenticatedError("invalid or revoked billing key")
    return row.id
