"""NATS subject names. Tenant and agent both appear so permissions can be per agent."""

from __future__ import annotations

PREFIX = "corral.v1"
JOBS_STREAM = "CORRAL_JOBS"
AGENT_OUT_STREAM = "CORRAL_AGENT_OUT"


def jobs(tenant_id: str, agent_id: str) -> str:
    return f"{PREFIX}.t.{tenant_id}.a.{agent_id}.jobs"


def results(tenant_id: str, agent_id: str) -> str:
    return f"{PREFIX}.t.{tenant_id}.a.{agent_id}.results"


def events(tenant_id: str, agent_id: str) -> str:
    return f"{PREFIX}.t.{tenant_id}.a.{agent_id}.events"


def usage(tenant_id: str, agent_id: str) -> str:
    return f"{PREFIX}.t.{tenant_id}.a.{agent_id}.usage"


def heartbeat(tenant_id: str, agent_id: str) -> str:
    return f"{PREFIX}.t.{tenant_id}.a.{agent_id}.heartbeat"


ALL_JOBS = f"{PREFIX}.t.*.a.*.jobs"
ALL_RESULTS = f"{PREFIX}.t.*.a.*.results"
ALL_EVENTS = f"{PREFIX}.t.*.a.*.events"
ALL_USAGE = f"{PREFIX}.t.*.a.*.usage"
ALL_HEARTBEATS = f"{PREFIX}.t.*.a.*.heartbeat"


def parse_agent_subject(subject: str) -> tuple[str, str, str]:
    """``corral.v1.t.<tenant>.a.<agent>.<kind>`` → (tenant, agent, kind)."""
    parts = subject.split(".")
    if len(parts) != 7 or parts[:3] != ["corral", "v1", "t"] or parts[4] != "a":
        raise ValueError(f"not an agent subject: {subject!r}")
    return parts[3], parts[5], parts[6]
