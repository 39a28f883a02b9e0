"""Operator actions on the control plane's signing keys: list, rotate, revoke.

The API (``/v1/admin/signing-keys``), ``corral admin keys`` and the console call these.

- **Rotate**: a new key becomes ``active`` (new jobs and sandbox tokens are signed with
  it); the previous active key becomes ``retired`` and stays trusted, so jobs already
  signed with it still verify (overlap). Agents learn the new key at their next refresh
  (``CORRAL_AGENT_KEY_REFRESH_INTERVAL_S``).
- **Revoke**: the key is listed as ``revoked`` and every agent refuses it (``revoked_kid``)
  from its next refresh on. Revoking the active key first rotates, so signing never stops.

Every change is written to the audit log in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from control_plane.jobs.keys import SigningKeys
from control_plane.store import Database, audit, signing_keys
from control_plane.store.audit import AuditEvent
from control_plane.store.signing_keys import KeyStatus, SigningKeyRecord


@dataclass(frozen=True, slots=True)
class Revoked:
    revoked: SigningKeyRecord
    replaced_by: SigningKeyRecord | None  # set when the active key was revoked


async def list_keys(db: Database) -> list[SigningKeyRecord]:
    """Every signing key, oldest first: kid, public key, status and times."""
    return await db.run(signing_keys.list_keys)


async def rotate_key(db: Database, keys: SigningKeys, *, actor: str) -> SigningKeyRecord:
    """Make a new active key; the old active one stays trusted as ``retired``."""

    def run(s: Session) -> SigningKeyRecord:
        previous = signing_keys.active_key(s)
        record = keys.rotate_in(s)
        audit.append(s, AuditEvent(
            action="signing_key.rotated", actor=actor, subject=record.kid,
            detail={"retired": previous.kid if previous else ""},
        ))
        return record

    return await db.run(run)


async def revoke_key(db: Database, keys: SigningKeys, kid: str, *, actor: str) -> Revoked:
    """Revoke ``kid`` (404 if unknown; idempotent). The active key is replaced first."""

    def run(s: Session) -> Revoked:
        current = signing_keys.get_key(s, kid)
        replacement = None
        if current.status is KeyStatus.ACTIVE:
            replacement = keys.rotate_in(s)
            audit.append(s, AuditEvent(
                action="signing_key.rotated", actor=actor, subject=replacement.kid,
                detail={"retired": kid, "why": "the active key is being revoked"},
            ))
        revoked = signing_keys.revoke_key(s, kid)
        if current.status is not KeyStatus.REVOKED:
            audit.append(s, AuditEvent(action="signing_key.revoked", actor=actor, subject=kid))
        return Revoked(revoked=revoked, replaced_by=replacement)

    return await db.run(run)
