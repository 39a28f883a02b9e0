"""hostd's HTTP wire: the JSON bodies of its routes, shared by the server and the client.

One route per Runtime method, all ``POST`` with a JSON body except ``GET /v1/health`` and
``write_file`` (the raw file as body, the handle in the ``Corral-Handle`` header as
base64url JSON). Handles travel whole and unchanged: they are the host runtime's own.
Errors are ``{"error": {"code": <ErrorCode>, "message": ...}}`` with the status
:func:`byoc_agent.protocol.errors.http_status` gives; exec streams NDJSON
(:mod:`byoc_agent.runtimes.exec_stream`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from byoc_agent.dataplane.server import MAX_PATH
from byoc_agent.dataplane.server import ExecBody as _DataPlaneExecBody
from byoc_agent.protocol import messages
from byoc_agent.protocol.errors import CorralError, InvalidArgumentError
from byoc_agent.runtimes.base import (
    EndReason,
    FileInfo,
    FileType,
    Liveness,
    SandboxHandle,
    SandboxSpec,
)

HANDLE_HEADER = "corral-handle"

HEALTH = "/v1/health"
CREATE = "/v1/sandboxes/create"
RECOVER = "/v1/sandboxes/recover"
INSPECT = "/v1/sandboxes/inspect"
EXEC = "/v1/sandboxes/exec"
DESTROY = "/v1/sandboxes/destroy"
PAUSE = "/v1/sandboxes/pause"
RESUME = "/v1/sandboxes/resume"
STOP_REASON = "/v1/sandboxes/stop-reason"
ADOPT = "/v1/sandboxes/adopt"
WRITE_FILE = "/v1/files/write"
READ_FILE = "/v1/files/read"
LIST_DIR = "/v1/files/list"
REMOVE = "/v1/files/remove"
MAKE_DIR = "/v1/files/mkdir"
SNAPSHOT = "/v1/snapshots/create"
RESTORE = "/v1/snapshots/restore"
DELETE_SNAPSHOT = "/v1/snapshots/delete"
# Every route, as (method, path).
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", HEALTH),
    *(("POST", p) for p in (CREATE, RECOVER, INSPECT, EXEC, DESTROY, PAUSE, RESUME,
                            STOP_REASON, ADOPT, WRITE_FILE, READ_FILE, LIST_DIR, REMOVE,
                            MAKE_DIR, SNAPSHOT, RESTORE, DELETE_SNAPSHOT)),
)  # fmt: skip

def _no_nul(path: str) -> str:
    if "\x00" in path:
        raise ValueError("a path has no NUL bytes")
    return path


Path_ = Annotated[str, Field(min_length=1, max_length=MAX_PATH), AfterValidator(_no_nul)]
Short = Annotated[str, Field(max_length=256)]
_M = TypeVar("_M", bound=BaseModel)


def build(model: type[_M], **fields: object) -> _M:
    """A body from fields; invalid input is InvalidArgumentError naming the field (on
    either side: the client refuses what hostd would)."""
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidArgumentError(f"{where}: {first['msg']}") from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HandleModel(_Body):
    sandbox_id: Short
    runtime: Short
    created_at: float
    data: Annotated[dict[Short, Annotated[str, Field(max_length=MAX_PATH)]], Field(
        max_length=64
    )] = Field(default_factory=dict)

    @classmethod
    def of(cls, handle: SandboxHandle) -> HandleModel:
        return build(cls, sandbox_id=handle.sandbox_id, runtime=handle.runtime,
                     created_at=handle.created_at, data=dict(handle.data))  # fmt: skip

    def handle(self) -> SandboxHandle:
        return SandboxHandle(sandbox_id=self.sandbox_id, runtime=self.runtime,
                             created_at=self.created_at, data=dict(self.data))  # fmt: skip


class SpecModel(_Body):
    sandbox_id: Short
    tenant_id: Short
    template: Short
    cpu: int
    memory_mb: int
    timeout_s: int
    env: Annotated[dict[Short, str], Field(max_length=messages.MAX_ENV_VARS)] = Field(
        default_factory=dict
    )
    isolation: Short = "gvisor"
    egress: Annotated[list[Short], Field(max_length=64)] = Field(default_factory=list)

    @classmethod
    def of(cls, spec: SandboxSpec) -> SpecModel:
        return build(cls, sandbox_id=spec.sandbox_id, tenant_id=spec.tenant_id,
                     template=spec.template, cpu=spec.cpu, memory_mb=spec.memory_mb,
                     timeout_s=spec.timeout_s, env=dict(spec.env), isolation=spec.isolation,
                     egress=list(spec.egress))  # fmt: skip

    def spec(self) -> SandboxSpec:
        return SandboxSpec(sandbox_id=self.sandbox_id, tenant_id=self.tenant_id,
                           template=self.template, cpu=self.cpu, memory_mb=self.memory_mb,
                           timeout_s=self.timeout_s, env=dict(self.env),
                           isolation=self.isolation, egress=tuple(self.egress))  # fmt: skip


class HandleBody(_Body):
    handle: HandleModel


class PathBody(_Body):
    handle: HandleModel
    path: Path_


class ExecBody(_DataPlaneExecBody):
    """The data plane's exec request (stdin base64), plus the sandbox's handle."""

    handle: HandleModel


class AdoptBody(_Body):
    handle: HandleModel
    spec: SpecModel


class SnapshotBody(_Body):
    handle: HandleModel
    snapshot_id: messages.Id


class RestoreBody(_Body):
    spec: SpecModel
    snapshot_id: messages.Id


class SnapshotIdBody(_Body):
    snapshot_id: messages.Id


class LivenessReply(_Body):
    liveness: Liveness


class StopReasonReply(_Body):
    reason: EndReason | None


class FileInfoModel(_Body):
    name: str
    path: str
    type: FileType
    size: int
    mode: int
    mtime: float

    @classmethod
    def of(cls, info: FileInfo) -> FileInfoModel:
        return cls(name=info.name, path=info.path, type=info.type, size=info.size,
                   mode=info.mode, mtime=info.mtime)  # fmt: skip

    def info(self) -> FileInfo:
        return FileInfo(name=self.name, path=self.path, type=self.type, size=self.size,
                        mode=self.mode, mtime=self.mtime)  # fmt: skip


class ListReply(_Body):
    items: list[FileInfoModel]


class ErrorDetail(_Body):
    code: str
    message: str
    field: str | None = None


class ErrorReply(_Body):
    error: ErrorDetail

    @classmethod
    def of(cls, error: CorralError) -> ErrorReply:
        return cls(error=ErrorDetail(code=error.code.value, message=error.message))


class HealthReply(_Body):
    runtimes: list[str]
    templates: list[str]
    cpu: int
    memory_mib: int
    kvm: bool


@dataclass(frozen=True, slots=True)
class HostHealth:
    """What a host says about itself; the manager's ready check asks for it."""

    runtimes: tuple[str, ...]
    templates: tuple[str, ...]
    cpu: int
    memory_mib: int
    kvm: bool


def check_path(path: str) -> str:
    """A path as the runtime takes it: 1-4096 characters, no NUL. Raises InvalidArgumentError."""
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise InvalidArgumentError("path must be 1-4096 characters without NUL bytes")
    return path


def encode_handle_header(handle: SandboxHandle) -> str:
    raw = HandleModel.of(handle).model_dump_json().encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_handle_header(value: str | None) -> SandboxHandle:
    """Raises InvalidArgumentError for a missing or malformed header."""
    if not value or len(value) > 16384:
        raise InvalidArgumentError("missing or oversized Corral-Handle header")
    try:
        raw = base64.urlsafe_b64decode(value.encode("ascii"))
        return HandleModel.model_validate(json.loads(raw)).handle()
    except (ValueError, binascii.Error, ValidationError, UnicodeEncodeError):
        raise InvalidArgumentError("malformed Corral-Handle header") from None
