"""Pydantic models at the HTTP edge: request bodies (``extra="forbid"``) and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from byoc_agent.protocol.messages import (
    MAX_EGRESS,
    MAX_ENV_VALUE,
    MAX_ENV_VARS,
    EnvName,
    JobKind,
    JobStatus,
)
from byoc_agent.protocol.messages import SandboxState as WireSandboxState
from byoc_agent.protocol.signing import public_key_from_text
from control_plane.roles import DEFAULT_KEY_ROLE, KeyRole

TEMPLATE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
METADATA_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$"
NAME_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
MAX_METADATA_VALUE = 256

Name = Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
MetadataKey = Annotated[str, Field(pattern=METADATA_KEY_PATTERN)]
ListItem = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests -----------------------------------------------------------------------------


class CreateTenantRequest(_Body):
    name: Name


class CreateApiKeyRequest(_Body):
    name: Name
    role: KeyRole = DEFAULT_KEY_ROLE


Isolation = Literal["gvisor", "microvm"]


class TenantPolicyRequest(_Body):
    # "microvm": every sandbox of the tenant gets a kernel of its own; null: no requirement.
    required_isolation: Isolation | None


class CreateBillingKeyRequest(_Body):
    name: Name


class CreateEnrollmentTokenRequest(_Body):
    tenant_id: StrictStr = Field(max_length=64)
    ttl_s: Annotated[StrictInt, Field(ge=60, le=7 * 86400)] = 3600


class CapacityModel(_Body):
    cpu_total: Annotated[StrictInt, Field(ge=0, le=100_000)]
    cpu_free: Annotated[StrictInt, Field(ge=0, le=100_000)]
    memory_mb_total: Annotated[StrictInt, Field(ge=0, le=1 << 40)]
    memory_mb_free: Annotated[StrictInt, Field(ge=0, le=1 << 40)]
    sandboxes: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 0


class EnrollRequest(_Body):
    token: StrictStr = Field(min_length=1, max_length=256)
    name: Name
    public_key: StrictStr = Field(max_length=64)
    data_plane_url: StrictStr = Field(max_length=512, pattern=r"^https?://[^\s]+$")
    runtimes: list[ListItem] = Field(default_factory=list, max_length=32)
    templates: list[ListItem] = Field(default_factory=list, max_length=256)
    capacity: CapacityModel
    # The agent's own NATS user nkey (U…); the private seed never leaves the agent.
    nats_public_key: StrictStr | None = Field(default=None, max_length=64)
    # Customer co-signing the agent enforces: rules ("create_sandbox:cpu>8") and the
    # customer's Ed25519 public keys. The control plane holds matching jobs for a
    # cosignature instead of sending them to be refused.
    cosign_rules: list[StrictStr] = Field(default_factory=list, max_length=32)
    cosigner_keys: list[StrictStr] = Field(default_factory=list, max_length=16)

    @field_validator("cosign_rules")
    @classmethod
    def _rules(cls, value: list[str]) -> list[str]:
        from byoc_agent.protocol.cosign import CosignRule

        return [str(CosignRule.parse(v)) for v in value]

    @field_validator("cosigner_keys")
    @classmethod
    def _cosigners(cls, value: list[str]) -> list[str]:
        for v in value:
            try:
                public_key_from_text(v)
            except ValueError:
                raise ValueError("must be base64url Ed25519 public keys (32 bytes)") from None
        return value

    @field_validator("nats_public_key")
    @classmethod
    def _nkey(cls, value: str | None) -> str | None:
        from control_plane.nats_auth import is_user_public_key

        if value is not None and not is_user_public_key(value):
            raise ValueError("must be a NATS user public nkey (U…, 56 characters)")
        return value

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        try:
            public_key_from_text(value)
        except ValueError:
            raise ValueError("must be a base64url Ed25519 public key (32 bytes)") from None
        return value


class CreateSandboxRequest(_Body):
    # Required unless snapshot_id is given (a restore takes the snapshot's template).
    template: StrictStr | None = Field(default=None, pattern=TEMPLATE_PATTERN)
    # Start from a snapshot: template, isolation, cpu and memory_mb are the snapshot's.
    snapshot_id: StrictStr | None = Field(default=None, max_length=64)
    # None: the tenant's required isolation if it has one, else gvisor.
    isolation: Isolation | None = None
    cpu: StrictInt = 1
    memory_mb: StrictInt = 512
    timeout_s: StrictInt = 300
    env: dict[EnvName, Annotated[StrictStr, Field(max_length=MAX_ENV_VALUE)]] = Field(
        default_factory=dict, max_length=MAX_ENV_VARS
    )
    metadata: dict[MetadataKey, Annotated[StrictStr, Field(max_length=MAX_METADATA_VALUE)]] = Field(
        default_factory=dict
    )
    # TCP destinations "a.b.c.d:port" the sandbox may connect to (isolation microvm only,
    # and only those the agent's operator allows); empty: no network. ADR 0027.
    egress: list[Annotated[StrictStr, Field(max_length=21)]] = Field(
        default_factory=list, max_length=MAX_EGRESS
    )


class SetTimeoutRequest(_Body):
    timeout_s: StrictInt


class ForkRequest(_Body):
    count: StrictInt = 1


# ---- responses ----------------------------------------------------------------------------


class ErrorBody(_Out):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(_Out):
    error: ErrorBody


class TenantOut(_Out):
    id: str
    name: str
    created_at: datetime
    required_isolation: str | None = None


class ApiKeyOut(_Out):
    id: str
    tenant_id: str
    name: str
    role: KeyRole
    created_at: datetime
    revoked_at: datetime | None


class NewApiKeyOut(_Out):
    """A freshly created API key; ``key`` is shown this once."""

    id: str
    name: str
    key: str
    created_at: datetime


class NewTenantApiKeyOut(NewApiKeyOut):
    """A freshly created tenant API key with its role; ``key`` is shown this once."""

    role: KeyRole


class CreatedTenantOut(_Out):
    tenant: TenantOut
    api_key: NewTenantApiKeyOut


class TenantPage(_Out):
    items: list[TenantOut]
    next_cursor: str | None


class ApiKeyList(_Out):
    items: list[ApiKeyOut]


class BillingKeyOut(_Out):
    """A billing-role key as listed: never its secret."""

    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class BillingKeyList(_Out):
    items: list[BillingKeyOut]


class EnrollmentTokenOut(_Out):
    token: str
    tenant_id: str
    expires_at: datetime


class SigningKeyOut(_Out):
    kid: str
    public_key: str
    status: Literal["active", "retired", "revoked"]


class SigningKeyList(_Out):
    keys: list[SigningKeyOut]


class EnrolledAgentOut(_Out):
    agent_id: str
    tenant_id: str
    nats_url: str
    control_plane_keys: list[SigningKeyOut]
    # A user JWT for the agent's own nkey, allowed only its own subjects; null when the
    # control plane runs NATS without auth.
    nats_jwt: str | None = None


class SigningKeyAdminOut(_Out):
    kid: str
    public_key: str
    status: Literal["active", "retired", "revoked"]
    created_at: datetime
    retired_at: datetime | None
    revoked_at: datetime | None


class SigningKeyAdminList(_Out):
    keys: list[SigningKeyAdminOut]


class RevokedKeyOut(_Out):
    revoked: SigningKeyAdminOut
    replaced_by: SigningKeyAdminOut | None


class AuditEntryOut(_Out):
    seq: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    subject: str | None
    detail: dict[str, str]
    prev_hash: str
    hash: str


class AuditPage(_Out):
    items: list[AuditEntryOut]
    next_cursor: str | None


class AuditVerifyOut(_Out):
    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None
    problem: str | None


class CapacityOut(_Out):
    cpu_total: int
    cpu_free: int
    memory_mb_total: int
    memory_mb_free: int
    sandboxes: int


class AgentOut(_Out):
    id: str
    tenant_id: str
    name: str
    status: Literal["online", "offline"]
    data_plane_url: str
    runtimes: list[str]
    templates: list[str]
    version: str
    capacity: CapacityOut
    last_heartbeat_at: datetime | None
    enrolled_at: datetime


class AgentPage(_Out):
    items: list[AgentOut]
    next_cursor: str | None


class SandboxOut(_Out):
    id: str
    tenant_id: str
    agent_id: str
    template: str
    isolation: str
    cpu: int
    memory_mb: int
    timeout_s: int
    state: WireSandboxState
    end_reason: str | None
    metadata: dict[str, str]
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    expires_at: datetime | None
    # The egress allow-list it was created with (a restore or fork: its source's).
    egress: list[str] = Field(default_factory=list)


class SandboxCreatedOut(SandboxOut):
    data_plane_url: str
    access_token: str
    access_token_expires_at: datetime
    # Set when the agent's rules need a customer cosignature first: the sandbox stays
    # pending until `corral cosign sign <id>` (POST /v1/cosign-requests/{id}/cosignature).
    cosign_request_id: str | None = None


class CosignRequestOut(_Out):
    id: str
    tenant_id: str
    agent_id: str
    sandbox_id: str | None
    kind: str
    body: dict[str, object]
    body_sha256: str
    rule: str
    status: Literal["pending", "released", "expired"]
    created_at: datetime
    expires_at: datetime
    released_at: datetime | None


class CosignRequestPage(_Out):
    items: list[CosignRequestOut]
    next_cursor: str | None


class CosignatureRequest(_Body):
    cosignature: StrictStr = Field(min_length=1, max_length=2048)


class CosignReleasedOut(_Out):
    job_id: str
    status: str


class SnapshotOut(_Out):
    id: str
    tenant_id: str
    agent_id: str
    sandbox_id: str
    isolation: str
    template: str
    cpu: int
    memory_mb: int
    created_at: datetime


class SnapshotPage(_Out):
    items: list[SnapshotOut]
    next_cursor: str | None


class ForkOut(_Out):
    items: list[SandboxCreatedOut]


class SandboxPage(_Out):
    items: list[SandboxOut]
    next_cursor: str | None


class SandboxTokenOut(_Out):
    access_token: str
    expires_at: datetime
    data_plane_url: str


class JobErrorOut(_Out):
    code: str
    message: str | None


class JobOut(_Out):
    id: str
    tenant_id: str
    agent_id: str
    sandbox_id: str | None
    kind: JobKind
    seq: int
    status: JobStatus
    error: JobErrorOut | None
    created_at: datetime
    delivered_at: datetime | None
    completed_at: datetime | None


class Health(_Out):
    status: Literal["ok"] = "ok"


class UsageRecordOut(_Out):
    """A usage record as its agent reported it (whole-second UTC times, MiB)."""

    tenant_id: str
    agent_id: str
    record_id: str
    sandbox_id: str
    start: datetime
    end: datetime
    vcpu: int
    memory_mb: int
    gpu_count: int
    gpu_model: str | None
    isolation: str
    template: str
    host: str
    received_at: datetime


class UsagePage(_Out):
    items: list[UsageRecordOut]
    next_cursor: str | None


class InvoiceLineOut(_Out):
    """One priced line; money and quantities are decimal strings, never floats."""

    line_id: str
    kind: Literal["usage", "adjustment"]
    usage_period: str
    resource: str
    gpu_model: str | None
    description: str
    unit_price: str
    price_id: str
    quantity_hours: str
    amount: str


class InvoiceOut(_Out):
    tenant_id: str
    period: str
    status: Literal["draft", "finalized"]
    currency: str
    total: str
    watermark: int
    lines: list[InvoiceLineOut]
    content_hash: str | None
    finalized_at: datetime | None


class InvoiceList(_Out):
    items: list[InvoiceOut]
