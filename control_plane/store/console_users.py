"""People who sign in to the web console, and their server-side sessions.

Passwords are stored only as argon2id hashes (:mod:`control_plane.console.passwords`).
A session is a random token in an HttpOnly cookie; the table holds its SHA-256, the user,
the CSRF token its forms carry, and when it expires. Logging out deletes the row, so a
copied cookie stops working at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, String, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from byoc_agent.protocol.errors import InvalidArgumentError, NotFoundError
from control_plane.errors import ConflictError
from control_plane.store.base import Base, UTCDateTime, new_id, utcnow
from control_plane.store.credentials import same_hash, sha256_hex

USERNAME_MAX = 64
USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._@-")


class ConsoleUser(Base):
    __tablename__ = "console_users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ConsoleSession(Base):
    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("console_users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True, slots=True)
class ConsoleUserRecord:
    id: str
    username: str
    role: str
    created_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A live session: who, with which role, and the CSRF token its forms must carry."""

    user: ConsoleUserRecord
    csrf_token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"SessionRecord(user={self.user.username!r})"


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session just opened; ``token`` goes into the cookie and is never stored."""

    token: str
    session: SessionRecord

    def __repr__(self) -> str:
        return f"NewSession(user={self.session.user.username!r})"


def _user(row: ConsoleUser) -> ConsoleUserRecord:
    return ConsoleUserRecord(
        id=row.id,
        username=row.username,
        role=row.role,
        created_at=row.created_at,
        disabled_at=row.disabled_at,
    )


def normalize_username(text: str) -> str:
    """Lower-case; letters, digits and ``._@-`` only, 1 to 64 characters."""
    name = text.strip().lower()
    if not name or len(name) > USERNAME_MAX or any(c not in USERNAME_CHARS for c in name):
        raise InvalidArgumentError(
            "username must be 1-64 characters of a-z, 0-9 and . _ @ -", field="username"
        )
    return name


def create_user(s: Session, username: str, password_hash: str, role: str) -> ConsoleUserRecord:
    name = normalize_username(username)
    if s.scalars(select(ConsoleUser).where(ConsoleUser.username == name)).first() is not None:
        raise ConflictError(f"console user {name!r} already exists")
    row = ConsoleUser(
        id=new_id("cu"), username=name, password_hash=password_hash, role=role, created_at=utcnow()
    )
    s.add(row)
    try:
        s.flush()
    except IntegrityError:  # a concurrent create of the same name
        raise ConflictError(f"console user {name!r} already exists") from None
    return _user(row)


def list_users(s: Session) -> list[ConsoleUserRecord]:
    return [_user(r) for r in s.scalars(select(ConsoleUser).order_by(ConsoleUser.username))]


def credentials(s: Session, username: str) -> tuple[ConsoleUserRecord, str] | None:
    """The live user of that name and its password hash, or ``None``."""
    try:
        name = normalize_username(username)
    except InvalidArgumentError:
        return None
    row = s.scalars(select(ConsoleUser).where(ConsoleUser.username == name)).first()
    if row is None or row.disabled_at is not None:
        return None
    return _user(row), row.password_hash


def set_password_hash(s: Session, user_id: str, password_hash: str) -> None:
    """Store a new hash (after a rehash with stronger parameters, or a password change)."""
    row = s.get(ConsoleUser, user_id)
    if row is None:
        raise NotFoundError("no such console user")
    row.password_hash = password_hash


def open_session(s: Session, user_id: str, ttl_s: int) -> NewSession:
    row_user = s.get(ConsoleUser, user_id)
    if row_user is None:
        raise NotFoundError("no such console user")
    token = secrets.token_urlsafe(32)
    now = utcnow()
    s.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))  # abandoned ones
    row = ConsoleSession(
        token_hash=sha256_hex(token),
        user_id=user_id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    s.add(row)
    s.flush()
    return NewSession(
        token=token,
        session=SessionRecord(_user(row_user), row.csrf_token, row.expires_at),
    )


def find_session(s: Session, token: str) -> SessionRecord | None:
    """The live session for a cookie value; expired ones are deleted on sight."""
    if not token or len(token) > 128:
        return None
    digest = sha256_hex(token)
    row = s.get(ConsoleSession, digest)
    if row is None or not same_hash(row.token_hash, digest):
        return None
    if row.expires_at <= utcnow():
        s.delete(row)
        return None
    user = s.get(ConsoleUser, row.user_id)
    if user is None or user.disabled_at is not None:
        return None
    return SessionRecord(_user(user), row.csrf_token, row.expires_at)


def close_session(s: Session, token: str) -> None:
    s.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == sha256_hex(token)))
