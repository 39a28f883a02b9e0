"""Test helpers shipped with the package: throwaway PostgreSQL databases, test settings."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from byoc_agent.protocol.messages import (
    EVENT_TYP,
    HEARTBEAT_TYP,
    RESULT_TYP,
    USAGE_TYP,
    Capacity,
    Heartbeat,
    Job,
    JobResult,
    SandboxEvent,
    SandboxReport,
    SandboxState,
    UsageReport,
    WireError,
    to_json_bytes,
)
from byoc_agent.protocol.signing import SigningKey, sign
from control_plane.settings import Limits, Settings

PG_ADMIN_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
PG_URL_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
ADMIN_TOKEN = "test-operator-token-0123456789"  # noqa: S105 (a test-only operator token)


def postgres_unavailable_reason() -> str | None:
    """Why PostgreSQL cannot be used here, or ``None`` when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    try:
        with psycopg.connect(PG_ADMIN_CONNINFO, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable: {type(e).__name__}"
    return None


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named database (dropped afterwards); yields its SQLAlchemy URL."""
    import psycopg

    name = f"corral_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_CONNINFO, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL_TEMPLATE.format(name=name)
    finally:
        with psycopg.connect(PG_ADMIN_CONNINFO, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(
    home: Path,
    database_url: str,
    *,
    nats_url: str = "nats://127.0.0.1:4222",
    job_timeout_s: float = 10.0,
    heartbeat_offline_s: float = 15.0,
    limits: Limits | None = None,
) -> Settings:
    """Settings for a test: fixed operator token, a random master key, short timeouts."""
    return Settings(
        home=home,
        database_url=database_url,
        nats_url=nats_url,
        public_nats_url=nats_url,
        admin_token=ADMIN_TOKEN,
        master_key=secrets.token_bytes(32),
        limits=limits or Limits(),
        job_timeout_s=job_timeout_s,
        heartbeat_offline_s=heartbeat_offline_s,
    )


# ---- what an agent would send, signed with its own key (for scripted fake agents) ----------


def heartbeat_message(
    key: SigningKey,
    *,
    agent_id: str,
    tenant_id: str,
    templates: Sequence[str] = ("base",),
    cpu_free: int = 8,
    memory_mb_free: int = 16384,
    data_plane_url: str = "http://127.0.0.1:1",
    at: float | None = None,
    runtimes: Sequence[str] = ("gvisor",),
) -> bytes:
    hb = Heartbeat(
        agent_id=agent_id,
        tenant_id=tenant_id,
        at=time.time() if at is None else at,
        version="test",
        data_plane_url=data_plane_url,
        runtimes=list(runtimes),
        templates=list(templates),
        capacity=Capacity(
            cpu_total=max(cpu_free, 8),
            cpu_free=cpu_free,
            memory_mb_total=max(memory_mb_free, 16384),
            memory_mb_free=memory_mb_free,
            sandboxes=0,
        ),
    )
    return sign(key, HEARTBEAT_TYP, to_json_bytes(hb))


def result_message(
    key: SigningKey,
    job: Job,
    *,
    status: str = "succeeded",
    state: SandboxState | None = None,
    end_reason: str | None = None,
    error_code: str | None = None,
    agent_id: str | None = None,
    error_message: str | None = None,
) -> bytes:
    """A result for ``job``; a sandbox report is included when ``state`` is given."""
    now = time.time()
    sandbox_id = getattr(job.body, "sandbox_id", None)
    report = (
        SandboxReport(
            sandbox_id=sandbox_id,
            state=state,
            started_at=now if state == SandboxState.RUNNING else None,
            ended_at=now if state not in (None, SandboxState.RUNNING) else None,
            end_reason=end_reason,
        )
        if state is not None and sandbox_id is not None
        else None
    )
    result = JobResult(
        job_id=job.job_id,
        tenant_id=job.tenant_id,
        agent_id=agent_id or job.agent_id,
        status=status,  # type: ignore[arg-type]  # a Literal at the wire edge
        at=now,
        sandbox=report,
        error=WireError(code=error_code, message=error_message or f"test: {error_code}")
        if error_code
        else None,
    )
    return sign(key, RESULT_TYP, to_json_bytes(result))


def event_message(
    key: SigningKey,
    *,
    agent_id: str,
    tenant_id: str,
    sandbox_id: str,
    state: SandboxState,
    end_reason: str | None,
) -> bytes:
    now = time.time()
    event = SandboxEvent(
        event_id=f"ev_{secrets.token_hex(8)}",
        tenant_id=tenant_id,
        agent_id=agent_id,
        at=now,
        sandbox=SandboxReport(
            sandbox_id=sandbox_id, state=state, ended_at=now, end_reason=end_reason
        ),
    )
    return sign(key, EVENT_TYP, to_json_bytes(event))


def usage_message(
    key: SigningKey,
    *,
    agent_id: str,
    tenant_id: str,
    sandbox_id: str,
    record_id: str,
    start: int,
    end: int,
    vcpu: int = 1,
    memory_mb: int = 1024,
    gpu_count: int = 0,
    gpu_model: str | None = None,
    template: str = "base",
    host: str = "host-1",
) -> bytes:
    """A signed usage report for ``[start, end)`` (Unix seconds)."""
    report = UsageReport(
        record_id=record_id,
        tenant_id=tenant_id,
        agent_id=agent_id,
        sandbox_id=sandbox_id,
        start=start,
        end=end,
        vcpu=vcpu,
        memory_mb=memory_mb,
        gpu_count=gpu_count,
        gpu_model=gpu_model,
        template=template,
        host=host,
    )
    return sign(key, USAGE_TYP, to_json_bytes(report))
