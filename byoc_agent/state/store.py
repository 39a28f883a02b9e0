"""Durable agent state in a local SQLite file (WAL, synchronous=FULL).

The replay guard lives here so that a job applied before a restart is still refused
(or answered from its stored result) after it. So does the usage meter's cursor (the end
of the last usage record emitted per sandbox), written in the same transaction as the
record's outbox row: see :meth:`AgentStateStore.spool_usage`. And so do the hosts the
agent manages and which sandbox is placed on which host (see :mod:`byoc_agent.hosts`).

The schema evolves in numbered steps (``_MIGRATIONS``), recorded in SQLite's
``PRAGMA user_version``: opening a store applies, in order and each in its own
transaction, the steps it has not seen. Step 1 is the original schema (every statement
``IF NOT EXISTS``, so a file made before versioning, at version 0, upgrades in place).
A step is never edited once released; a change is a new step.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from byoc_agent.hosts.phases import HostPhase
from byoc_agent.protocol.messages import SandboxState
from byoc_agent.runtimes.base import SandboxHandle

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    agent_id TEXT NOT NULL, tenant_id TEXT NOT NULL, kid TEXT NOT NULL, nats_url TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS control_plane_keys (
    kid TEXT PRIMARY KEY, public_key TEXT NOT NULL, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS applied_jobs (
    job_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, status TEXT NOT NULL, result BLOB,
    job BLOB
);
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, runtime TEXT NOT NULL,
    handle TEXT NOT NULL, state TEXT NOT NULL, cpu INTEGER NOT NULL, memory_mb INTEGER NOT NULL,
    template TEXT NOT NULL, started_at REAL NOT NULL, deadline REAL NOT NULL,
    ended_at REAL, end_reason TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    msg_id TEXT PRIMARY KEY, subject TEXT NOT NULL, data BLOB NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_cursors (
    sandbox_id TEXT PRIMARY KEY, last_end INTEGER NOT NULL, final INTEGER NOT NULL
);
"""

# Step 2: hosts the agent provisions (host_key is also the provider's client token) and
# the placement of sandboxes on them (host_key NULL = waiting for room).
_HOSTS = """
CREATE TABLE hosts (
    host_key TEXT PRIMARY KEY, provider TEXT NOT NULL, instance_type TEXT NOT NULL,
    phase TEXT NOT NULL, provider_host_id TEXT, private_ip TEXT,
    vcpu INTEGER NOT NULL, memory_mb INTEGER NOT NULL, gpus INTEGER NOT NULL,
    kvm INTEGER NOT NULL, price_per_hour TEXT NOT NULL,
    requested_at REAL NOT NULL, phase_since REAL NOT NULL, ready_by REAL NOT NULL,
    idle_since REAL, reason TEXT, replaces TEXT
);
CREATE INDEX hosts_phase ON hosts (phase);
CREATE TABLE host_placements (
    sandbox_id TEXT PRIMARY KEY, host_key TEXT, cpu INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL, gpus INTEGER NOT NULL, isolation TEXT NOT NULL,
    submitted_at REAL NOT NULL
);
CREATE INDEX host_placements_host ON host_placements (host_key);
"""

# Step 3: what the agent needs to reach a host's worker (hostd): its pinned certificate
# and bearer secret, made before the host is provisioned and sent in its user data. The
# state file is readable by the agent's user only (see AgentStateStore.__init__).
_HOST_WORKERS = """
ALTER TABLE hosts ADD COLUMN worker TEXT
"""

_MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _SCHEMA), (2, _HOSTS), (3, _HOST_WORKERS))
SCHEMA_VERSION = _MIGRATIONS[-1][0]


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    agent_id: str
    tenant_id: str
    kid: str
    nats_url: str


@dataclass(frozen=True, slots=True)
class AppliedJob:
    job_id: str
    seq: int
    status: str  # "accepted" (executing) or "done" (result stored)
    result: bytes | None


@dataclass(frozen=True, slots=True)
class UsageCursor:
    """Where a sandbox's usage records stand: the end (whole UTC second) of the last one
    emitted, and whether that one was the final record."""

    last_end: int
    final: bool


@dataclass(frozen=True, slots=True)
class HostRecord:
    """One host the agent manages. ``host_key`` is Corral's id for it and the client token
    it was provisioned with; ``provider_host_id`` is the provider's id once known."""

    host_key: str
    provider: str
    instance_type: str
    phase: HostPhase
    vcpu: int
    memory_mb: int
    gpus: int
    kvm: bool
    price_per_hour: Decimal
    requested_at: float
    phase_since: float
    ready_by: float
    provider_host_id: str | None = None
    private_ip: str | None = None
    idle_since: float | None = None
    reason: str | None = None
    replaces: str | None = None
    # How to reach the host's worker (opaque to the store; see byoc_agent.hosts.workers).
    # Holds a secret: never logged, never reported.
    worker: str | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    """A sandbox's claim on host resources; ``host_key`` None while it waits for room."""

    sandbox_id: str
    host_key: str | None
    cpu: int
    memory_mb: int
    gpus: int
    isolation: str
    submitted_at: float


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    sandbox_id: str
    tenant_id: str
    handle: SandboxHandle
    state: SandboxState
    cpu: int
    memory_mb: int
    template: str
    started_at: float
    deadline: float
    ended_at: float | None = None
    end_reason: str | None = None


class AgentStateStore:
    """Thread-safe; every write is committed before the call returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Owner-only: the file holds the replay guard and the hosts' worker secrets.
        path.touch(mode=0o600, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        for name in (path.name, path.name + "-wal", path.name + "-shm"):
            side = path.with_name(name)
            if side.exists():
                side.chmod(0o600)

    def _migrate(self) -> None:
        """Apply the schema steps this file has not seen, each atomically with its number."""
        current = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"agent state schema {current} is newer than this agent knows "
                f"({SCHEMA_VERSION}); run the newer agent or restore a matching backup"
            )
        for version, script in _MIGRATIONS:
            if version <= current:
                continue
            statements = [f"{st.strip()};" for st in script.split(";") if st.strip()]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {version:d}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # identity -------------------------------------------------------------
    def identity(self) -> AgentIdentity | None:
        with self._lock:
            row = self._db.execute(
                "SELECT agent_id, tenant_id, kid, nats_url FROM identity WHERE id = 1"
            ).fetchone()
        return AgentIdentity(*row) if row else None

    def save_identity(self, ident: AgentIdentity) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO identity VALUES (1, ?, ?, ?, ?)",
                (ident.agent_id, ident.tenant_id, ident.kid, ident.nats_url),
            )

    # control-plane keys ---------------------------------------------------
    def control_plane_keys(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self._db.execute("SELECT kid, public_key, status FROM control_plane_keys"))

    def replace_control_plane_keys(self, keys: list[tuple[str, str, str]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM control_plane_keys")
            self._db.executemany("INSERT INTO control_plane_keys VALUES (?, ?, ?)", keys)
            self._db.execute("COMMIT")

    # replay guard ---------------------------------------------------------
    def seen(self, job_id: str) -> bool:
        return self.applied(job_id) is not None

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM applied_jobs").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def applied(self, job_id: str) -> AppliedJob | None:
        with self._lock:
            row = self._db.execute(
                "SELECT job_id, seq, status, result FROM applied_jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        return AppliedJob(row[0], row[1], row[2], row[3]) if row else None

    def accept_job(self, job_id: str, seq: int, job: bytes) -> None:
        """Arm the replay guard for this job and keep its signed bytes, so a job cut off
        by a crash can be finished after the restart without a redelivery."""
        with self._lock:
            self._db.execute(
                "INSERT INTO applied_jobs VALUES (?, ?, 'accepted', NULL, ?)",
                (job_id, seq, job),
            )

    def finish_job(self, job_id: str, result: bytes) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE applied_jobs SET status = 'done', result = ? WHERE job_id = ?",
                (result, job_id),
            )

    def unfinished_jobs(self) -> list[bytes]:
        """Signed bytes of jobs accepted but not finished (the agent stopped mid-way)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job FROM applied_jobs WHERE status = 'accepted' ORDER BY seq"
            ).fetchall()
        return [bytes(r[0]) for r in rows if r[0] is not None]

    # outbox: signed messages kept until the stream acked them -------------
    def enqueue(self, msg_id: str, subject: str, data: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, "
                "(SELECT COALESCE(MAX(created), 0) + 1 FROM outbox))",
                (msg_id, subject, data),
            )

    def pending_outbox(self, limit: int = 100) -> list[tuple[str, str, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT msg_id, subject, data FROM outbox ORDER BY created LIMIT ?", (limit,)
            ).fetchall()
        return [(str(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def outbox_done(self, msg_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE msg_id = ?", (msg_id,))

    # usage meter: cursor + spooled record, one transaction ----------------
    def usage_cursor(self, sandbox_id: str) -> UsageCursor | None:
        with self._lock:
            row = self._db.execute(
                "SELECT last_end, final FROM usage_cursors WHERE sandbox_id = ?", (sandbox_id,)
            ).fetchone()
        return UsageCursor(int(row[0]), bool(row[1])) if row else None

    def spool_usage(
        self,
        sandbox_id: str,
        *,
        start: int,
        end: int,
        final: bool,
        msg_id: str,
        subject: str,
        data: bytes,
    ) -> bool:
        """Put one signed usage record in the outbox and move the sandbox's cursor to
        ``end``, atomically (one fsynced transaction).

        Compare-and-set: it applies only if the cursor still ends at ``start`` (or does
        not exist yet) and is not final, so two emitters racing, or a caller working from
        a stale read, can never produce overlapping records. Returns whether it applied.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT last_end, final FROM usage_cursors WHERE sandbox_id = ?",
                    (sandbox_id,),
                ).fetchone()
                if row is not None and (bool(row[1]) or int(row[0]) != start):
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute(
                    "INSERT OR REPLACE INTO usage_cursors VALUES (?, ?, ?)",
                    (sandbox_id, end, int(final)),
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, "
                    "(SELECT COALESCE(MAX(created), 0) + 1 FROM outbox))",
                    (msg_id, subject, data),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def skip_usage(self, sandbox_id: str, *, start: int, to: int) -> bool:
        """Move a sandbox's cursor from ``start`` to ``to`` with no record: the seconds in
        between are not billed (it was paused). Compare-and-set like :meth:`spool_usage`."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT last_end, final FROM usage_cursors WHERE sandbox_id = ?",
                    (sandbox_id,),
                ).fetchone()
                if (row is not None and (bool(row[1]) or int(row[0]) != start)) or to < start:
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute(
                    "INSERT OR REPLACE INTO usage_cursors VALUES (?, ?, 0)", (sandbox_id, to)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    # sandboxes ------------------------------------------------------------
    def put_sandbox(self, rec: SandboxRecord) -> None:
        h = rec.handle
        handle_json = json.dumps(
            {"sandbox_id": h.sandbox_id, "runtime": h.runtime, "created_at": h.created_at,
             "data": dict(h.data)},
            sort_keys=True,
        )
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sandboxes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.sandbox_id, rec.tenant_id, h.runtime, handle_json, rec.state.value,
                 rec.cpu, rec.memory_mb, rec.template, rec.started_at, rec.deadline,
                 rec.ended_at, rec.end_reason),
            )

    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,)
            ).fetchone()
        return _record(row) if row else None

    def sandboxes(self, state: SandboxState | None = None) -> list[SandboxRecord]:
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT * FROM sandboxes").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM sandboxes WHERE state = ?", (state.value,)
                ).fetchall()
        return [_record(r) for r in rows]


    # hosts ----------------------------------------------------------------
    def put_host(self, rec: HostRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO hosts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.host_key, rec.provider, rec.instance_type, rec.phase.value,
                 rec.provider_host_id, rec.private_ip, rec.vcpu, rec.memory_mb, rec.gpus,
                 int(rec.kvm), str(rec.price_per_hour), rec.requested_at, rec.phase_since,
                 rec.ready_by, rec.idle_since, rec.reason, rec.replaces, rec.worker),
            )

    def get_host(self, host_key: str) -> HostRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM hosts WHERE host_key = ?", (host_key,)).fetchone()
        return _host_record(row) if row else None

    def hosts(self, phases: frozenset[HostPhase] | None = None) -> list[HostRecord]:
        """Hosts in request order, all or only those in ``phases``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM hosts ORDER BY requested_at, host_key"
            ).fetchall()
        recs = [_host_record(r) for r in rows]
        return recs if phases is None else [r for r in recs if r.phase in phases]

    # placements -----------------------------------------------------------
    def put_placement(self, p: Placement) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO host_placements VALUES (?,?,?,?,?,?,?)",
                (p.sandbox_id, p.host_key, p.cpu, p.memory_mb, p.gpus, p.isolation,
                 p.submitted_at),
            )

    def get_placement(self, sandbox_id: str) -> Placement | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM host_placements WHERE sandbox_id = ?", (sandbox_id,)
            ).fetchone()
        return _placement(row) if row else None

    def delete_placement(self, sandbox_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM host_placements WHERE sandbox_id = ?", (sandbox_id,))

    def placements(self, host_key: str | None = None) -> list[Placement]:
        """All placements (waiting ones included), or only those on ``host_key``."""
        with self._lock:
            if host_key is None:
                rows = self._db.execute(
                    "SELECT * FROM host_placements ORDER BY submitted_at, sandbox_id"
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM host_placements WHERE host_key = ? "
                    "ORDER BY submitted_at, sandbox_id",
                    (host_key,),
                ).fetchall()
        return [_placement(r) for r in rows]


def _placement(r: tuple[object, ...]) -> Placement:
    return Placement(
        sandbox_id=str(r[0]),
        host_key=_opt_str(r[1]),
        cpu=int(str(r[2])),
        memory_mb=int(str(r[3])),
        gpus=int(str(r[4])),
        isolation=str(r[5]),
        submitted_at=float(str(r[6])),
    )


def _opt_str(v: object) -> str | None:
    return None if v is None else str(v)


def _opt_float(v: object) -> float | None:
    return None if v is None else float(str(v))


def _host_record(row: tuple[object, ...]) -> HostRecord:
    return HostRecord(
        host_key=str(row[0]),
        provider=str(row[1]),
        instance_type=str(row[2]),
        phase=HostPhase(str(row[3])),
        provider_host_id=_opt_str(row[4]),
        private_ip=_opt_str(row[5]),
        vcpu=int(str(row[6])),
        memory_mb=int(str(row[7])),
        gpus=int(str(row[8])),
        kvm=bool(int(str(row[9]))),
        price_per_hour=Decimal(str(row[10])),
        requested_at=float(str(row[11])),
        phase_since=float(str(row[12])),
        ready_by=float(str(row[13])),
        idle_since=_opt_float(row[14]),
        reason=_opt_str(row[15]),
        replaces=_opt_str(row[16]),
        worker=_opt_str(row[17]),
    )


def _record(row: tuple[object, ...]) -> SandboxRecord:
    raw = json.loads(str(row[3]))
    handle = SandboxHandle(
        sandbox_id=raw["sandbox_id"],
        runtime=raw["runtime"],
        created_at=float(raw["created_at"]),
        data={str(k): str(v) for k, v in raw["data"].items()},
    )
    return SandboxRecord(
        sandbox_id=str(row[0]),
        tenant_id=str(row[1]),
        handle=handle,
        state=SandboxState(str(row[4])),
        cpu=int(str(row[5])),
        memory_mb=int(str(row[6])),
        template=str(row[7]),
        started_at=float(str(row[8])),
        deadline=float(str(row[9])),
        ended_at=float(str(row[10])) if row[10] is not None else None,
        end_reason=str(row[11]) if row[11] is not None else None,
    )
