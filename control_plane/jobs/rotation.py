"""Signing-key rotation as the console triggers it: one small function, kept apart.

:meth:`SigningKeys.rotate` makes a new active key and leaves the previous one ``retired``
(still trusted by agents, which refresh ``/v1/signing-keys`` periodically). This wrapper
adds the audit log line. A fuller rotation service (grace periods, revocation, an API) is
built elsewhere; when it lands, the console's rotate action should call it instead.
"""

from __future__ import annotations

import structlog

from control_plane.jobs.keys import SigningKeys
from control_plane.store.signing_keys import SigningKeyRecord

log = structlog.get_logger("control_plane.keys")


async def rotate_signing_key(keys: SigningKeys, *, actor: str) -> SigningKeyRecord:
    """Make a new active signing key now; the old one stays trusted as ``retired``."""
    previous = keys.active.kid
    record = await keys.rotate()
    log.info("signing_key_rotated", kid=record.kid, previous_kid=previous, actor=actor)
    return record
