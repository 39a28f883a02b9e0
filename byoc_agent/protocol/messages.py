"""Versioned messages that cross NATS or the data plane, and how to encode them.

Every message is a pydantic model at the edge (``extra="forbid"``, strict types) with a
``schema`` literal naming its version. Encoding uses :func:`canonical_json` and
:func:`signing.sign`; decoding goes through :mod:`byoc_agent.protocol.verify`.
Golden files in ``tests/unit/protocol/golden`` pin these shapes.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

JOB_TYP = "corral-job+json"
RESULT_TYP = "corral-result+json"
EVENT_TYP = "corral-event+json"
HEARTBEAT_TYP = "corral-heartbeat+json"
USAGE_TYP = "corral-usage+json"
SANDBOX_TOKEN_TYP = "corral-sandbox-token+json"  # noqa: S105 (a type name, not a secret)

JOB_SCHEMA = "corral.job/v1"
RESULT_SCHEMA = "corral.result/v1"
EVENT_SCHEMA = "corral.event/v1"
HEARTBEAT_SCHEMA = "corral.heartbeat/v1"
USAGE_SCHEMA = "corral.usage/v1"
SANDBOX_TOKEN_SCHEMA = "corral.sandbox-token/v1"  # noqa: S105 (a schema name)

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{2,63}$"
_ID_RE = re.compile(ID_PATTERN)

Id = Annotated[str, Field(pattern=ID_PATTERN)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]

MAX_ENV_VARS = 128
MAX_ENV_VALUE = 8192
MAX_EGRESS = 16  # destinations in one egress allow-list

# One egress destination, "a.b.c.d:port" (the shape only; runtimes.base.parse_egress decides).
EgressEntry = Annotated[str, Field(pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}:[0-9]{1,5}$")]


def is_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class JobKind(StrEnum):
    CREATE_SANDBOX = "create_sandbox"
    KILL_SANDBOX = "kill_sandbox"
    SET_TIMEOUT = "set_timeout"
    PAUSE_SANDBOX = "pause_sandbox"
    RESUME_SANDBOX = "resume_sandbox"
    SNAPSHOT_SANDBOX = "snapshot_sandbox"
    RESTORE_SANDBOX = "restore_sandbox"
    DELETE_SNAPSHOT = "delete_snapshot"


class CreateSandboxBody(_Wire):
    kind: Literal["create_sandbox"] = "create_sandbox"
    sandbox_id: Id
    template: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    cpu: Annotated[int, Field(ge=1, le=64)]
    memory_mb: Annotated[int, Field(ge=128, le=262144)]
    timeout_s: Annotated[int, Field(ge=1, le=86400)]
    env: Annotated[dict[EnvName, Annotated[str, Field(max_length=MAX_ENV_VALUE)]], Field(
        max_length=MAX_ENV_VARS
    )] = Field(default_factory=dict)
    isolation: Literal["gvisor", "microvm"] = "gvisor"
    # TCP destinations the sandbox may connect to (microvm only; ADR 0027). Omitted from the
    # wire when empty, so a create without egress has exactly the bytes it had before.
    egress: Annotated[list[EgressEntry], Field(max_length=MAX_EGRESS)] = Field(
        default_factory=list
    )

    @model_serializer(mode="wrap")
    def _omit_empty_egress(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        if not self.egress:
            data.pop("egress", None)
        return data


class KillSandboxBody(_Wire):
    kind: Literal["kill_sandbox"] = "kill_sandbox"
    sandbox_id: Id


class SetTimeoutBody(_Wire):
    kind: Literal["set_timeout"] = "set_timeout"
    sandbox_id: Id
    timeout_s: Annotated[int, Field(ge=1, le=86400)]


class PauseSandboxBody(_Wire):
    """Save the sandbox's memory and files to the agent's disk and stop it."""

    kind: Literal["pause_sandbox"] = "pause_sandbox"
    sandbox_id: Id


class ResumeSandboxBody(_Wire):
    kind: Literal["resume_sandbox"] = "resume_sandbox"
    sandbox_id: Id


class SnapshotSandboxBody(_Wire):
    """Save a running sandbox's memory and files as snapshot ``snapshot_id`` on the agent's
    disk; the sandbox stops briefly and runs on."""

    kind: Literal["snapshot_sandbox"] = "snapshot_sandbox"
    sandbox_id: Id
    snapshot_id: Id


class RestoreSandboxBody(_Wire):
    """Start a new sandbox (``sandbox_id``) from a snapshot on this agent. Template, cpu and
    memory are the snapshot's; the new sandbox gets its own id, hostname and machine-id."""

    kind: Literal["restore_sandbox"] = "restore_sandbox"
    sandbox_id: Id
    snapshot_id: Id
    timeout_s: Annotated[int, Field(ge=1, le=86400)]
    env: Annotated[dict[EnvName, Annotated[str, Field(max_length=MAX_ENV_VALUE)]], Field(
        max_length=MAX_ENV_VARS
    )] = Field(default_factory=dict)
    isolation: Literal["gvisor", "microvm"] = "gvisor"


class DeleteSnapshotBody(_Wire):
    """Delete a snapshot's files. ``sandbox_id`` is the sandbox it was taken from."""

    kind: Literal["delete_snapshot"] = "delete_snapshot"
    sandbox_id: Id
    snapshot_id: Id


JobBody = Annotated[
    CreateSandboxBody
    | KillSandboxBody
    | SetTimeoutBody
    | PauseSandboxBody
    | ResumeSandboxBody
    | SnapshotSandboxBody
    | RestoreSandboxBody
    | DeleteSnapshotBody,
    Field(discriminator="kind"),
]


class Job(_Wire):
    """What the control plane asks one agent to do. Signed by a control-plane key."""

    schema_: Literal["corral.job/v1"] = Field("corral.job/v1", alias="schema")
    job_id: Id
    tenant_id: Id
    agent_id: Id
    iat: Annotated[int, Field(ge=0)]
    exp: Annotated[int, Field(ge=0)]
    seq: Annotated[int, Field(ge=1)]
    body: JobBody

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class JobStatus(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"


class SandboxState(StrEnum):
    """Sandbox states as both sides record them. Transitions: see runtimes/base.py."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"  # memory and files saved on the agent; holds no CPU or memory
    KILLED = "killed"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


TERMINAL_STATES = frozenset({SandboxState.KILLED, SandboxState.TIMED_OUT, SandboxState.FAILED})


MAX_ERROR_MESSAGE = 2000


class WireError(_Wire):
    code: str
    message: Annotated[str, Field(max_length=MAX_ERROR_MESSAGE)]


class SandboxReport(_Wire):
    """Metadata about one sandbox that the agent may tell the control plane (allow-listed)."""

    sandbox_id: Id
    state: SandboxState
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None


class JobResult(_Wire):
    """The agent's answer to one job. Signed by the agent's enrolled key."""

    schema_: Literal["corral.result/v1"] = Field("corral.result/v1", alias="schema")
    job_id: Id
    tenant_id: Id
    agent_id: Id
    status: Literal["succeeded", "failed", "rejected"]
    at: float
    sandbox: SandboxReport | None = None
    error: WireError | None = None

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class SandboxEvent(_Wire):
    """A state change the agent observed on its own (timeout, exit). Signed by the agent."""

    schema_: Literal["corral.event/v1"] = Field("corral.event/v1", alias="schema")
    event_id: Id
    tenant_id: Id
    agent_id: Id
    at: float
    sandbox: SandboxReport

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class Capacity(_Wire):
    cpu_total: int
    cpu_free: int
    memory_mb_total: int
    memory_mb_free: int
    sandboxes: int


class HostSummary(_Wire):
    """One host an agent manages, as the control plane may see it (allow-listed fields:
    no address, no tags, nothing from the provider's credentials). ``*_free`` is the room
    left for new sandboxes after the agent's overcommit ratio, so with overcommit it can
    exceed ``*_total`` (the host's physical size); zero unless the host is ready."""

    host_id: Annotated[str, Field(min_length=1, max_length=128)]
    instance_type: Annotated[str, Field(min_length=1, max_length=64)]
    state: Literal["requested", "provisioning", "ready", "draining", "terminated", "failed"]
    cpu_total: Annotated[int, Field(ge=0)]
    cpu_free: Annotated[int, Field(ge=0)]
    memory_mb_total: Annotated[int, Field(ge=0)]
    memory_mb_free: Annotated[int, Field(ge=0)]
    gpus_total: Annotated[int, Field(ge=0)] = 0
    gpus_free: Annotated[int, Field(ge=0)] = 0
    kvm: bool = False
    sandboxes: Annotated[int, Field(ge=0)] = 0


class Heartbeat(_Wire):
    """Sent by the agent every few seconds on core NATS. Signed by the agent.

    ``hosts`` is present only when the agent manages hosts (ADR 0017): an agent without
    a host provider sends exactly the bytes it sent before the field existed.
    """

    schema_: Literal["corral.heartbeat/v1"] = Field("corral.heartbeat/v1", alias="schema")
    agent_id: Id
    tenant_id: Id
    at: float
    version: str
    data_plane_url: str
    runtimes: list[str]
    templates: list[str]
    capacity: Capacity
    running: list[Id] = Field(default_factory=list, max_length=10000)
    hosts: Annotated[list[HostSummary], Field(max_length=1000)] | None = None

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    @model_serializer(mode="wrap")
    def _omit_absent_hosts(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        if self.hosts is None:
            data.pop("hosts", None)
        return data


class UsageReport(_Wire):
    """What one sandbox held over one interval, as the agent's meter observed it.

    Signed by the agent. ``start``/``end`` are whole UTC seconds (Unix time) the agent
    observed; consecutive records of a sandbox tile its life without gaps or overlap.
    The dedupe key is (tenant_id, agent_id, record_id). Memory is in MiB (an integer, so
    no float crosses into billing); GPU fields are zero/None on CPU hosts.
    """

    schema_: Literal["corral.usage/v1"] = Field("corral.usage/v1", alias="schema")
    record_id: Id
    tenant_id: Id
    agent_id: Id
    sandbox_id: Id
    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(ge=0)]
    vcpu: Annotated[int, Field(ge=0, le=1024)]
    memory_mb: Annotated[int, Field(ge=0, le=16_777_216)]
    gpu_count: Annotated[int, Field(ge=0, le=64)] = 0
    gpu_model: Annotated[str, Field(max_length=64)] | None = None
    isolation: Literal["gvisor", "microvm"] = "gvisor"
    template: Annotated[str, Field(max_length=64)]
    host: Annotated[str, Field(max_length=255)]
    final: bool = False

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class Scope(StrEnum):
    EXEC = "exec"
    FILES = "files"


class SandboxToken(_Wire):
    """Grants the SDK direct data-plane access to one sandbox. Signed by the control plane."""

    schema_: Literal["corral.sandbox-token/v1"] = Field("corral.sandbox-token/v1", alias="schema")
    tenant_id: Id
    agent_id: Id
    sandbox_id: Id
    scopes: list[Scope]
    iat: int
    exp: int

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


def to_json_bytes(model: BaseModel) -> bytes:
    """Canonical payload bytes for a wire model (aliases, sorted keys, no spaces)."""
    from byoc_agent.protocol.signing import canonical_json

    return canonical_json(model.model_dump(mode="json", by_alias=True))
