"""NATS subject names. Tenant and agent both appear so permissions can be per agent."""

from __future__ import annotations

from dataclasses import dataclass

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


# ---- NATS permissions: what one agent's NATS user may do (minted by the control plane) ----

JS_API = "$JS.API"


def jobs_consumer(agent_id: str) -> str:
    """The agent's durable pull consumer on ``CORRAL_JOBS``."""
    return f"agent-{agent_id}"


def agent_inbox_prefix(agent_id: str) -> str:
    """The agent's private reply-subject prefix (``_INBOX.<agent>``): replies to its
    JetStream requests land only where its own user may subscribe."""
    return f"_INBOX.{agent_id}"


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects a NATS user may publish to and subscribe to (allow lists; all else denied)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def agent_permissions(tenant_id: str, agent_id: str) -> Permissions:
    """Exactly the agent's own subjects and the JetStream calls for its own consumer.

    Consumer creation is allowed only through the subject form that names the filter
    (``CONSUMER.CREATE.<stream>.<consumer>.<filter>``): the server refuses a request whose
    body filters another subject, so the agent cannot point its consumer at another
    agent's jobs. Stream reads (``STREAM.MSG.GET``), other consumers and the legacy
    ``CONSUMER.DURABLE.CREATE`` form (whose filter is only in the body) are denied.
    """
    consumer = jobs_consumer(agent_id)
    own_jobs = jobs(tenant_id, agent_id)
    return Permissions(
        publish=(
            results(tenant_id, agent_id),
            events(tenant_id, agent_id),
            usage(tenant_id, agent_id),
            heartbeat(tenant_id, agent_id),
            f"{JS_API}.CONSUMER.CREATE.{JOBS_STREAM}.{consumer}.{own_jobs}",
            f"{JS_API}.CONSUMER.INFO.{JOBS_STREAM}.{consumer}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{JOBS_STREAM}.{consumer}",
            f"$JS.ACK.{JOBS_STREAM}.{consumer}.>",
        ),
        subscribe=(f"{agent_inbox_prefix(agent_id)}.>",),
    )
