"""E2B's JSON shapes (camelCase, as its OpenAPI names them) at the HTTP edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from byoc_agent.protocol.messages import MAX_ENV_VALUE, MAX_ENV_VARS, EnvName

# What the e2b SDKs read as the daemon's version: 0.5.7 has octet-stream uploads and a
# default user (no Basic auth header per call); 0.6.2+ would promise file metadata (xattrs).
ENVD_VERSION = "0.5.7"
DEFAULT_TIMEOUT_S = 15  # E2B's default when a create names no timeout


class NewSandbox(BaseModel):
    """``POST /v2/sandboxes``. Fields Corral cannot honour are refused, not ignored."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    template_id: StrictStr = Field(alias="templateID", min_length=1, max_length=256)
    timeout: StrictInt | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    env_vars: (
        dict[EnvName, Annotated[StrictStr, Field(max_length=MAX_ENV_VALUE)]] | None
    ) = Field(default=None, alias="envVars", max_length=MAX_ENV_VARS)
    auto_pause: StrictBool | None = Field(default=None, alias="autoPause")
    allow_internet_access: StrictBool | None = None


class ConnectSandbox(BaseModel):
    """``POST /v2/sandboxes/{id}/connect``."""

    model_config = ConfigDict(extra="allow")

    timeout: StrictInt | None = None


class SandboxTimeout(BaseModel):
    """``POST /sandboxes/{id}/timeout``."""

    model_config = ConfigDict(extra="forbid")

    timeout: StrictInt


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class SandboxOut(_Out):
    """What create and connect answer: enough for the SDK to reach the sandbox."""

    template_id: str = Field(serialization_alias="templateID")
    sandbox_id: str = Field(serialization_alias="sandboxID")
    client_id: str = Field(serialization_alias="clientID")
    envd_version: str = Field(default=ENVD_VERSION, serialization_alias="envdVersion")
    envd_access_token: str = Field(serialization_alias="envdAccessToken")
    traffic_access_token: None = Field(default=None, serialization_alias="trafficAccessToken")
    domain: None = None


class ListedSandboxOut(_Out):
    template_id: str = Field(serialization_alias="templateID")
    sandbox_id: str = Field(serialization_alias="sandboxID")
    client_id: str = Field(serialization_alias="clientID")
    started_at: datetime = Field(serialization_alias="startedAt")
    end_at: datetime = Field(serialization_alias="endAt")
    cpu_count: int = Field(serialization_alias="cpuCount")
    memory_mb: int = Field(serialization_alias="memoryMB")
    disk_size_mb: int = Field(default=0, serialization_alias="diskSizeMB")
    state: str
    envd_version: str = Field(default=ENVD_VERSION, serialization_alias="envdVersion")
    metadata: dict[str, str]


class SandboxDetailOut(ListedSandboxOut):
    domain: None = None
    allow_internet_access: bool = Field(default=False, serialization_alias="allowInternetAccess")
