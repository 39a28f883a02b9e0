"""Tenants and their API keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from byoc_agent.protocol.errors import NotFoundError
from control_plane.errors import UnauthenticatedError
from control_plane.roles import DEFAULT_KEY_ROLE, KeyRole
from control_plane.store.base import Base, UTCDateTime, new_id, utcnow
from control_plane.store.credentials import mint_api_key, parse_api_key, same_hash, sha256_hex
from control_plane.store.pages import Page, page_of


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Policy: when set ("microvm"), every sandbox of the tenant must use this isolation.
    required_isolation: Mapped[str | None] = mapped_column(String(16), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    role: Mapped[str] = mapped_column(String(16), default=DEFAULT_KEY_ROLE.value)


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: str
    name: str
    created_at: datetime
    required_isolation: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    tenant_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    role: KeyRole = DEFAULT_KEY_ROLE


@dataclass(frozen=True, slots=True)
class ApiKeyCaller:
    """Who a live API key acts for, and in which role."""

    key_id: str
    tenant_id: str
    role: KeyRole


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """An API key just created; ``key`` is returned to the caller once and never stored."""

    record: ApiKeyRecord
    key: str

    def __repr__(self) -> str:
        return f"IssuedApiKey(id={self.record.id!r})"


def _tenant(row: Tenant) -> TenantRecord:
    return TenantRecord(
        id=row.id,
        name=row.name,
        created_at=row.created_at,
        required_isolation=row.required_isolation,
    )


def _key(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        role=_role(row.role),
    )


def _role(text: str) -> KeyRole:
    """A stored role; an unknown value (written by a newer version) gets the least: viewer."""
    try:
        return KeyRole(text)
    except ValueError:
        return KeyRole.VIEWER


def create_tenant(s: Session, name: str) -> tuple[TenantRecord, IssuedApiKey]:
    row = Tenant(id=new_id("t"), name=name, created_at=utcnow())
    s.add(row)
    s.flush()
    return _tenant(row), create_api_key(s, row.id, "default", KeyRole.OWNER)


def get_tenant(s: Session, tenant_id: str) -> TenantRecord:
    row = s.get(Tenant, tenant_id)
    if row is None:
        raise NotFoundError("no such tenant", tenant_id=tenant_id)
    return _tenant(row)


def set_required_isolation(s: Session, tenant_id: str, isolation: str | None) -> TenantRecord:
    """Require (or, with ``None``, stop requiring) one isolation class for a tenant's sandboxes."""
    row = s.get(Tenant, tenant_id)
    if row is None:
        raise NotFoundError("no such tenant", tenant_id=tenant_id)
    row.required_isolation = isolation
    s.flush()
    return _tenant(row)


def list_tenants(s: Session, *, after: str | None, limit: int) -> Page[TenantRecord]:
    q = select(Tenant).order_by(Tenant.id).limit(limit + 1)
    if after is not None:
        q = q.where(Tenant.id > after)
    rows = [_tenant(r) for r in s.scalars(q)]
    return page_of(rows, limit, lambda r: r.id)


def create_api_key(
    s: Session, tenant_id: str, name: str, role: KeyRole = DEFAULT_KEY_ROLE
) -> IssuedApiKey:
    get_tenant(s, tenant_id)
    secret = mint_api_key()
    row = ApiKey(
        id=secret.id,
        tenant_id=tenant_id,
        name=name,
        secret_hash=secret.hash,
        created_at=utcnow(),
        role=role.value,
    )
    s.add(row)
    s.flush()
    return IssuedApiKey(record=_key(row), key=secret.text)


def list_api_keys(s: Session, tenant_id: str) -> list[ApiKeyRecord]:
    get_tenant(s, tenant_id)
    q = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)
    return [_key(r) for r in s.scalars(q)]


def get_api_key(s: Session, tenant_id: str, key_id: str) -> ApiKeyRecord:
    """One of the tenant's keys; another tenant's key is "not found", like a missing one."""
    row = s.get(ApiKey, key_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFoundError("no such API key", tenant_id=tenant_id)
    return _key(row)


def revoke_api_key(s: Session, tenant_id: str, key_id: str) -> ApiKeyRecord:
    row = s.get(ApiKey, key_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFoundError("no such API key", tenant_id=tenant_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return _key(row)


def authenticate_api_key(s: Session, text: str) -> str:
    """The tenant id an API key acts for; raises UnauthenticatedError otherwise."""
    return authenticate(s, text).tenant_id


def authenticate(s: Session, text: str) -> ApiKeyCaller:
    """The tenant and role of a live API key; raises UnauthenticatedError otherwise."""
    key_id = parse_api_key(text)
    row = s.get(ApiKey, key_id) if key_id is not None else None
    if (
        row is None
        or row.revoked_at is not None
        or not same_hash(row.secret_hash, sha256_hex(text))
    ):
        raise UnauthenticatedError("invalid or revoked API key")
    return ApiKeyCaller(key_id=row.id, tenant_id=row.tenant_id, role=_role(row.role))
