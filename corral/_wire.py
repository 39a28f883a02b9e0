"""Pydantic models for the JSON the two HTTP APIs send back, used only at the edge.

They ignore unknown fields (newer servers may add some) and are converted at once into the
frozen dataclasses the SDK hands out. Field names follow docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")


def utc(value: datetime | None) -> datetime | None:
    """The same instant in UTC; a naive value is taken to be UTC already."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class _Edge(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ErrorDetailWire(_Edge):
    code: str | None = None
    message: str = ""
    field: str | None = None


class ErrorBodyWire(_Edge):
    error: ErrorDetailWire


class Page(_Edge, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class AccessWire(_Edge):
    """``POST /v1/sandboxes/{id}/token``: a data-plane token for one sandbox."""

    access_token: str
    data_plane_url: str
    expires_at: datetime | None = None


class SandboxWire(_Edge):
    """A sandbox as the control plane reports it; create may include data-plane access."""

    id: str
    state: str
    template: str = ""
    isolation: str = "gvisor"
    cpu: int | None = None
    memory_mb: int | None = None
    timeout_s: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    egress: list[str] = Field(default_factory=list)
    agent_id: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    end_reason: str | None = None
    data_plane_url: str | None = None
    access_token: str | None = None
    access_token_expires_at: datetime | None = None
    cosign_request_id: str | None = None

    def initial_access(self) -> AccessWire | None:
        """The data-plane access that came with a create response, if any."""
        if self.access_token and self.data_plane_url:
            return AccessWire(
                access_token=self.access_token,
                data_plane_url=self.data_plane_url,
                expires_at=self.access_token_expires_at,
            )
        return None


class ForkWire(_Edge):
    """``POST /v1/sandboxes/{id}/fork``: the new sandboxes, each with data-plane access."""

    items: list[SandboxWire]


class SnapshotWire(_Edge):
    id: str
    sandbox_id: str
    agent_id: str | None = None
    template: str = ""
    isolation: str = "gvisor"
    cpu: int | None = None
    memory_mb: int | None = None
    created_at: datetime | None = None


class ExecEventWire(_Edge):
    """One NDJSON line of an exec stream."""

    type: str
    data: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    code: str = ""
    message: str = ""


class EntryWire(_Edge):
    name: str
    path: str
    type: str
    size: int = 0
    mode: int = 0
    mtime: datetime | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: object) -> object:
        if isinstance(value, str):
            return int(value, 8)
        return value


class EntryListWire(_Edge):
    items: list[EntryWire]


class TenantWire(_Edge):
    id: str
    name: str
    created_at: datetime | None = None
    required_isolation: str | None = None


class ApiKeyWire(_Edge):
    id: str
    name: str = ""
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    key: str | None = None
    role: str | None = None


class TenantCreatedWire(_Edge):
    """``POST /v1/tenants``: the tenant and its first API key (with its secret)."""

    tenant: TenantWire
    api_key: ApiKeyWire


class ConsoleUserWire(_Edge):
    id: str
    username: str
    role: str
    created_at: datetime | None = None
    disabled_at: datetime | None = None


class ConsoleUserListWire(_Edge):
    items: list[ConsoleUserWire]


class EnrollmentTokenWire(_Edge):
    token: str
    expires_at: datetime | None = None


class AgentWire(_Edge):
    id: str
    name: str = ""
    tenant_id: str = ""
    status: str = "unknown"
    data_plane_url: str | None = None
    last_heartbeat_at: datetime | None = None
    runtimes: list[str] = Field(default_factory=list)
    templates: list[str] = Field(default_factory=list)
