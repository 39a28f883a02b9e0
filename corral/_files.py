"""Reading and writing files in a sandbox, streamed directly over the data plane."""

from __future__ import annotations

import builtins
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import IO, Literal, overload

import httpx

from corral._dataplane import DataPlane
from corral._http import About, RequestContent, converted, parse
from corral._wire import EntryListWire, EntryWire, utc
from corral.errors import FileNotFoundInSandboxError, InvalidArgumentError

CHUNK_SIZE = 64 * 1024


class FileType(StrEnum):
    """Kinds of directory entry; ``EntryInfo.type`` compares equal to these."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """One directory entry: ``type`` is a :class:`FileType` value, ``mtime`` is UTC."""

    name: str
    path: str
    type: str
    size: int
    mode: int
    mtime: datetime | None

    @classmethod
    def from_wire(cls, wire: EntryWire) -> EntryInfo:
        return cls(wire.name, wire.path, wire.type, wire.size, wire.mode, utc(wire.mtime))


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(CHUNK_SIZE):
        yield chunk


class Files:
    """``sandbox.files``: the sandbox filesystem. Paths are absolute POSIX paths."""

    def __init__(self, data_plane: DataPlane) -> None:
        self._dp = data_plane

    def _suffix(self, action: str = "") -> str:
        return f"/v1/sandboxes/{self._dp.sandbox_id}/files{action}"

    def _about(self, path: str) -> About:
        return About("data", resource="file", sandbox_id=self._dp.sandbox_id, path=path)

    def write(self, path: str, data: str | bytes | IO[bytes]) -> None:
        """Write ``data`` to ``path``, creating parent directories; file objects are streamed."""
        _check_path(path)
        factory: Callable[[], RequestContent]
        can_retry = True
        if isinstance(data, str):
            encoded = data.encode()
            factory = lambda: encoded  # noqa: E731 - a one-line body factory
        elif isinstance(data, bytes | bytearray | memoryview):
            raw = bytes(data)
            factory = lambda: raw  # noqa: E731
        else:
            source = data
            start = source.tell() if source.seekable() else None
            can_retry = start is not None

            def factory() -> RequestContent:
                if start is not None:
                    source.seek(start)
                return _chunks(source)

        self._dp.request(
            "PUT",
            self._suffix(),
            self._about(path),
            params={"path": path},
            content=factory,
            can_retry=can_retry,
        )

    @overload
    def read(self, path: str, format: Literal["text"] = "text") -> str: ...
    @overload
    def read(self, path: str, format: Literal["bytes"]) -> bytes: ...
    @overload
    def read(self, path: str, format: Literal["stream"]) -> Iterator[bytes]: ...

    def read(
        self, path: str, format: Literal["text", "bytes", "stream"] = "text"
    ) -> str | bytes | Iterator[bytes]:
        """Read ``path`` as text (UTF-8, bad bytes replaced), bytes, or a chunk iterator.

        A ``"stream"`` iterator holds the download open until it is exhausted or closed.
        """
        _check_path(path)
        if format == "stream":
            return self._stream(path)
        if format not in ("text", "bytes"):
            raise InvalidArgumentError(
                f"format must be 'text', 'bytes' or 'stream', got {format!r}.", field="format"
            )
        data = b"".join(self._stream(path))
        return data.decode("utf-8", errors="replace") if format == "text" else data

    def _stream(self, path: str) -> Iterator[bytes]:
        about = self._about(path)
        response = self._dp.open("GET", self._suffix(), about, params={"path": path})
        return _iterate(response, about)

    def list(self, path: str) -> builtins.list[EntryInfo]:
        """The entries of directory ``path``."""
        _check_path(path)
        about = self._about(path)
        response = self._dp.request("GET", self._suffix("/list"), about, params={"path": path})
        return [EntryInfo.from_wire(e) for e in parse(EntryListWire, response, about).items]

    def remove(self, path: str) -> None:
        """Remove the file, or the directory tree, at ``path``."""
        _check_path(path)
        self._dp.request("DELETE", self._suffix(), self._about(path), params={"path": path})

    def make_dir(self, path: str) -> None:
        """Create directory ``path`` and its parents (no error if it exists)."""
        _check_path(path)
        self._dp.request("POST", self._suffix("/mkdir"), self._about(path), params={"path": path})

    def exists(self, path: str) -> bool:
        """Whether anything exists at ``path``."""
        _check_path(path)
        normal = posixpath.normpath(path)
        if normal == "/":
            return True
        parent, name = posixpath.split(normal)
        try:
            return any(entry.name == name for entry in self.list(parent))
        except FileNotFoundInSandboxError:
            return False


def _check_path(path: str) -> None:
    if not path.startswith("/"):
        raise InvalidArgumentError(
            f"Sandbox paths must be absolute, got {path!r} (try '/home/user/{path}').",
            field="path",
        )


def _iterate(response: httpx.Response, about: About) -> Iterator[bytes]:
    try:
        with converted(about, str(response.request.url)):
            yield from response.iter_bytes(CHUNK_SIZE)
    finally:
        response.close()
