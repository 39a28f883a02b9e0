"""envd's ``filesystem.Filesystem`` service over the agent's runtime.

Each call is one small ``/bin/sh`` script run inside the sandbox through
``Runtime.exec`` (as the runtime's own file operations are), printing entries with GNU
``find -printf``; removal uses ``Runtime.remove``. Relative paths are relative to
``/root`` (commands run as root; E2B's ``user`` is accepted and ignored).

Not served (``unimplemented``): directory watching (``WatchDir``, ``CreateWatcher``,
``GetWatcherEvents``, ``RemoveWatcher``).
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from byoc_agent.dataplane.e2b.access import Caller, EnvdError, from_corral, resolve
from byoc_agent.dataplane.envd.filesystem import filesystem_connect, filesystem_pb
from byoc_agent.dataplane.server import SandboxAccess
from byoc_agent.protocol import messages
from byoc_agent.protocol.errors import CorralError
from byoc_agent.runtimes.base import ExecRequest, Exit, Stderr, Stdout

HOME = "/root"
MAX_PATH = 4096
MAX_DEPTH = 64
SCRIPT_TIMEOUT_S = 120.0
# path, own type, target type, size, mode (octal), permissions, owner, group, mtime, target
_FORMAT = r"%p\0%y\0%Y\0%s\0%m\0%M\0%u\0%g\0%T@\0%l\0"
_FIELDS = 10
_E_MISSING, _E_EXISTS, _E_NOT_DIR = 3, 4, 6

# "$1" path, "$2" find format, "$3" depth or destination
_STAT = '[ -e "$1" ] || [ -L "$1" ] || exit 3; exec find "$1" -maxdepth 0 -printf "$2"'
_LIST = (
    '[ -e "$1" ] || exit 3; [ -d "$1" ] || exit 6; '
    'exec find -H "$1" -mindepth 1 -maxdepth "$3" -printf "$2"'
)
_MKDIR = (
    '[ -d "$1" ] && exit 4; [ -e "$1" ] && exit 6; mkdir -p -- "$1" || exit 1; '
    'exec find "$1" -maxdepth 0 -printf "$2"'
)
_MOVE = (
    '[ -e "$1" ] || [ -L "$1" ] || exit 3; d=$(dirname -- "$3"); mkdir -p -- "$d" || exit 1; '
    'mv -f -T -- "$1" "$3" || exit 1; exec find "$3" -maxdepth 0 -printf "$2"'
)

_TYPES = {
    "f": filesystem_pb.FileType.FILE,
    "d": filesystem_pb.FileType.DIRECTORY,
    "l": filesystem_pb.FileType.SYMLINK,
}


@dataclass(frozen=True, slots=True)
class _Done:
    exit_code: int
    stdout: bytes
    stderr: bytes


def sandbox_path(path: str) -> str:
    """An absolute, normalized path inside the sandbox (relative ones start at /root)."""
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise ConnectError(Code.INVALID_ARGUMENT, "path must be 1-4096 characters without NUL")
    if not path.startswith("/"):
        path = f"{HOME}/{path}"
    return posixpath.normpath(path)


async def run_script(
    access: SandboxAccess, caller: Caller, script: str, *args: str
) -> _Done:
    """Run ``script`` with ``args`` as ``$1..`` inside the sandbox; collect its output."""
    request = ExecRequest(
        cmd=shlex.join(["/bin/sh", "-c", script, "sh", *args]), cwd="/", timeout_s=SCRIPT_TIMEOUT_S
    )
    out: list[bytes] = []
    err: list[bytes] = []
    code = -1
    try:
        async for event in access.runtime.exec(caller.handle, request):
            if isinstance(event, Stdout):
                out.append(event.data)
            elif isinstance(event, Stderr):
                err.append(event.data)
            elif isinstance(event, Exit):
                code = event.exit_code
    except CorralError as e:
        raise from_corral(e, caller.sandbox_id).connect() from e
    return _Done(code, b"".join(out), b"".join(err))


def _check(done: _Done, path: str) -> None:
    if done.exit_code == 0:
        return
    if done.exit_code == _E_MISSING:
        raise ConnectError(Code.NOT_FOUND, f"no such file or directory: {path}")
    if done.exit_code == _E_EXISTS:
        raise ConnectError(Code.ALREADY_EXISTS, f"directory already exists: {path}")
    if done.exit_code == _E_NOT_DIR:
        raise ConnectError(Code.INVALID_ARGUMENT, f"not a directory: {path}")
    message = done.stderr.decode(errors="replace").strip()[-300:]
    raise ConnectError(Code.INVALID_ARGUMENT, f"{path}: {message or done.exit_code}")


def parse_entries(raw: bytes) -> list[filesystem_pb.EntryInfo]:
    """Entries printed with :data:`_FORMAT`."""
    fields = raw.split(b"\0")
    entries = []
    for i in range(0, len(fields) - _FIELDS + 1, _FIELDS):
        path_b, own, target, size, mode, perms, owner, group, mtime, link = fields[i : i + _FIELDS]
        path = path_b.decode(errors="surrogateescape")
        is_link = own == b"l"
        kind = _TYPES.get((target if is_link else own).decode(), filesystem_pb.FileType.UNSPECIFIED)
        seconds, _, frac = mtime.decode().partition(".")
        entries.append(
            filesystem_pb.EntryInfo(
                name=posixpath.basename(path) or path,
                type=kind,
                path=path,
                size=int(size or b"0"),
                mode=int(mode or b"0", 8),
                permissions=perms.decode(),
                owner=owner.decode(),
                group=group.decode(),
                modified_time=Timestamp(
                    seconds=int(seconds or "0"), nanos=int((frac + "000000000")[:9])
                ),
                symlink_target=link.decode(errors="surrogateescape") if is_link else None,
                is_symlink=is_link,
            )
        )
    return entries


def _one(done: _Done, path: str) -> filesystem_pb.EntryInfo:
    _check(done, path)
    entries = parse_entries(done.stdout)
    if not entries:
        raise ConnectError(Code.INTERNAL, f"could not read the entry at {path}")
    return entries[0]


class FilesystemService(filesystem_connect.Filesystem):
    """The Connect handlers; each call is authorized by its own headers."""

    def __init__(self, access: SandboxAccess) -> None:
        self._access = access

    def _caller(self, headers: Mapping[str, str]) -> Caller:
        try:
            return resolve(self._access, headers, messages.Scope.FILES)
        except EnvdError as e:
            raise e.connect() from e

    async def stat(
        self,
        request: filesystem_pb.StatRequest,
        ctx: RequestContext[filesystem_pb.StatRequest, filesystem_pb.StatResponse],
    ) -> filesystem_pb.StatResponse:
        caller = self._caller(ctx.request_headers)
        path = sandbox_path(request.path)
        done = await run_script(self._access, caller, _STAT, path, _FORMAT)
        return filesystem_pb.StatResponse(entry=_one(done, path))

    async def make_dir(
        self,
        request: filesystem_pb.MakeDirRequest,
        ctx: RequestContext[filesystem_pb.MakeDirRequest, filesystem_pb.MakeDirResponse],
    ) -> filesystem_pb.MakeDirResponse:
        caller = self._caller(ctx.request_headers)
        path = sandbox_path(request.path)
        done = await run_script(self._access, caller, _MKDIR, path, _FORMAT)
        return filesystem_pb.MakeDirResponse(entry=_one(done, path))

    async def move(
        self,
        request: filesystem_pb.MoveRequest,
        ctx: RequestContext[filesystem_pb.MoveRequest, filesystem_pb.MoveResponse],
    ) -> filesystem_pb.MoveResponse:
        caller = self._caller(ctx.request_headers)
        source = sandbox_path(request.source)
        destination = sandbox_path(request.destination)
        done = await run_script(self._access, caller, _MOVE, source, _FORMAT, destination)
        return filesystem_pb.MoveResponse(entry=_one(done, source))

    async def list_dir(
        self,
        request: filesystem_pb.ListDirRequest,
        ctx: RequestContext[filesystem_pb.ListDirRequest, filesystem_pb.ListDirResponse],
    ) -> filesystem_pb.ListDirResponse:
        caller = self._caller(ctx.request_headers)
        path = sandbox_path(request.path)
        depth = request.depth or 1
        if depth > MAX_DEPTH:
            raise ConnectError(Code.INVALID_ARGUMENT, f"depth must be at most {MAX_DEPTH}")
        done = await run_script(self._access, caller, _LIST, path, _FORMAT, str(depth))
        _check(done, path)
        entries = sorted(parse_entries(done.stdout), key=lambda e: e.path)
        return filesystem_pb.ListDirResponse(entries=entries)

    async def remove(
        self,
        request: filesystem_pb.RemoveRequest,
        ctx: RequestContext[filesystem_pb.RemoveRequest, filesystem_pb.RemoveResponse],
    ) -> filesystem_pb.RemoveResponse:
        caller = self._caller(ctx.request_headers)
        path = sandbox_path(request.path)
        try:
            await self._access.runtime.remove(caller.handle, path)
        except CorralError as e:
            raise from_corral(e, caller.sandbox_id).connect() from e
        return filesystem_pb.RemoveResponse()
