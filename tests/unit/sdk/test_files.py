"""Reading and writing sandbox files directly over the data plane."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest

from corral import (
    EntryInfo,
    FileNotFoundInSandboxError,
    FileType,
    InvalidArgumentError,
    Sandbox,
)

from .fake_corral import FakeCorral


@pytest.fixture
def sandbox(fake: FakeCorral) -> Iterator[Sandbox]:
    """A running sandbox on the fake, killed after the test."""
    with Sandbox.create() as sb:
        yield sb


def test_text_round_trips_through_write_and_read(sandbox: Sandbox) -> None:
    """Text written is read back equal, parents created on the way."""
    sandbox.files.write("/home/user/a/b/notes.txt", "héllo\nwörld")
    assert sandbox.files.read("/home/user/a/b/notes.txt") == "héllo\nwörld"


def test_bytes_round_trip_unchanged(sandbox: Sandbox) -> None:
    """Arbitrary bytes, including invalid UTF-8, come back byte for byte."""
    data = bytes(range(256)) * 4
    sandbox.files.write("/tmp/blob.bin", data)
    assert sandbox.files.read("/tmp/blob.bin", format="bytes") == data


def test_reading_invalid_utf8_as_text_replaces_bad_bytes(sandbox: Sandbox) -> None:
    """Text reads never fail on bad bytes; they become U+FFFD."""
    sandbox.files.write("/tmp/bad.txt", b"ok\xff")
    assert sandbox.files.read("/tmp/bad.txt") == "ok\ufffd"


def test_large_files_stream_up_from_a_file_object_and_down_in_chunks(
    sandbox: Sandbox,
) -> None:
    """A multi-megabyte file uploads from a file object and downloads as a chunk stream."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    sandbox.files.write("/tmp/big.bin", io.BytesIO(data))
    chunks = list(sandbox.files.read("/tmp/big.bin", format="stream"))
    assert len(chunks) > 1
    assert b"".join(chunks) == data


def test_list_describes_each_entry(sandbox: Sandbox) -> None:
    """list returns EntryInfo with name, path, type, size, mode and mtime."""
    sandbox.files.write("/home/user/proj/main.py", "print(1)\n")
    sandbox.files.make_dir("/home/user/proj/pkg")
    entries = sandbox.files.list("/home/user/proj")
    assert [(e.name, e.path, e.type) for e in entries] == [
        ("main.py", "/home/user/proj/main.py", FileType.FILE),
        ("pkg", "/home/user/proj/pkg", FileType.DIR),
    ]
    main = entries[0]
    assert isinstance(main, EntryInfo)
    assert main.size == 9
    assert main.mode & 0o400
    assert main.mtime is not None


def test_exists_reports_files_directories_and_absences(sandbox: Sandbox) -> None:
    """exists is true for files and directories and false for missing paths or parents."""
    sandbox.files.write("/home/user/x.txt", "x")
    assert sandbox.files.exists("/home/user/x.txt")
    assert sandbox.files.exists("/home/user")
    assert sandbox.files.exists("/")
    assert not sandbox.files.exists("/home/user/y.txt")
    assert not sandbox.files.exists("/nowhere/at/all")


def test_remove_deletes_files_and_trees(sandbox: Sandbox) -> None:
    """remove takes out a file, then a whole directory tree."""
    sandbox.files.write("/tmp/t/a.txt", "a")
    sandbox.files.write("/tmp/t/sub/b.txt", "b")
    sandbox.files.remove("/tmp/t/a.txt")
    assert not sandbox.files.exists("/tmp/t/a.txt")
    sandbox.files.remove("/tmp/t")
    assert not sandbox.files.exists("/tmp/t")


def test_reading_a_missing_file_raises_file_not_found_in_sandbox(sandbox: Sandbox) -> None:
    """A missing file raises FileNotFoundInSandboxError, also a builtin FileNotFoundError."""
    with pytest.raises(FileNotFoundError) as info:
        sandbox.files.read("/home/user/missing.txt")
    assert isinstance(info.value, FileNotFoundInSandboxError)
    assert info.value.path == "/home/user/missing.txt"
    assert "/home/user/missing.txt" in str(info.value)
    assert sandbox.id in str(info.value)


def test_relative_paths_are_rejected_with_a_suggestion(sandbox: Sandbox, fake: FakeCorral) -> None:
    """A relative path is refused before any request, suggesting an absolute one."""
    with pytest.raises(InvalidArgumentError, match=r"/home/user/notes\.txt"):
        sandbox.files.write("notes.txt", "x")
    assert fake.requests("data", "/files") == []


def test_files_go_directly_to_the_data_plane(sandbox: Sandbox, fake: FakeCorral) -> None:
    """File traffic never touches the control plane."""
    sandbox.files.write("/tmp/x", "x")
    sandbox.files.read("/tmp/x")
    assert fake.requests("control", "/files") == []
    assert len(fake.requests("data", "/files")) == 2
