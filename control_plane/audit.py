"""Recording audit events from async code (one transaction per event).

Where an event belongs to a state change (enrollment, a key rotation, a job issued or
answered) it is appended inside that change's own transaction instead, with
:func:`control_plane.store.audit.append`, so the two commit or roll back together.
"""

from __future__ import annotations

import structlog

from control_plane.store import Database, audit
from control_plane.store.audit import AuditEvent

log = structlog.get_logger("control_plane.audit")


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, event: AuditEvent) -> None:
        await self._db.run(lambda s: audit.append(s, event))
