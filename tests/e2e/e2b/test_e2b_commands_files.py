"""Commands and files through the unmodified ``e2b`` SDK against the agent's data plane."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import pytest
from e2b import CommandExitException, Sandbox
from e2b.exceptions import FileNotFoundException, TimeoutException
from e2b.sandbox.filesystem.filesystem import FileType

from corral.testing.stack import StackInfo


@pytest.fixture(scope="module")
def sbx(e2b_stack: StackInfo) -> Iterator[Sandbox]:
    """One sandbox for the module: these tests only touch their own paths in it."""
    sandbox = Sandbox.create(timeout=600, envs={"FROM_CREATE": "yes"})
    try:
        yield sandbox
    finally:
        sandbox.kill()


def test_run_with_envs_cwd_timeout_and_output_callbacks(sbx: Sandbox) -> None:
    """``commands.run`` streams stdout/stderr to the callbacks and honours envs and cwd."""
    sbx.files.make_dir("/data/run")
    out: list[str] = []
    err: list[str] = []
    result = sbx.commands.run(
        'echo "$FROM_CREATE $FROM_RUN $(pwd)"; echo warn >&2',
        envs={"FROM_RUN": "too"},
        cwd="/data/run",
        timeout=30,
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert result.exit_code == 0
    assert result.stdout == "yes too /data/run\n"
    assert result.stderr == "warn\n"
    assert "".join(out) == result.stdout
    assert "".join(err) == result.stderr


def test_a_non_zero_exit_raises_the_sdks_exit_exception(sbx: Sandbox) -> None:
    """A failing command is the SDK's ``CommandExitException`` with code and output."""
    with pytest.raises(CommandExitException) as err:
        sbx.commands.run("echo partial; echo broken >&2; exit 3")
    assert err.value.exit_code == 3
    assert err.value.stdout == "partial\n"
    assert err.value.stderr == "broken\n"


def test_a_command_past_its_timeout_raises_the_sdks_timeout(sbx: Sandbox) -> None:
    """``timeout=`` bounds the command; the SDK raises its ``TimeoutException``."""
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=2)
    assert time.monotonic() - started < 15


def test_background_command_waits_for_its_result(sbx: Sandbox) -> None:
    """``background=True`` returns a handle at once; ``wait()`` gives the result."""
    handle = sbx.commands.run("sleep 1; echo done-late", background=True)
    assert handle.pid > 0
    result = handle.wait()
    assert result.exit_code == 0
    assert result.stdout == "done-late\n"


def test_connect_attaches_to_a_running_command(sbx: Sandbox) -> None:
    """``commands.connect(pid)`` follows a command another handle started."""
    handle = sbx.commands.run(
        "for i in 1 2 3; do echo tick $i; sleep 0.5; done", background=True
    )
    follower = sbx.commands.connect(handle.pid)
    result = follower.wait()
    assert result.exit_code == 0
    assert "tick 3\n" in result.stdout
    assert handle.wait().stdout == "tick 1\ntick 2\ntick 3\n"


def test_background_command_can_be_killed_and_is_listed_until_then(sbx: Sandbox) -> None:
    """``commands.list()`` shows a running command; the handle's ``kill()`` ends it."""
    handle = sbx.commands.run("sleep 300", background=True, timeout=0)
    listed = {p.pid: p for p in sbx.commands.list()}
    assert handle.pid in listed
    assert listed[handle.pid].cmd == "/bin/bash"
    assert "sleep 300" in listed[handle.pid].args
    assert handle.kill() is True
    with pytest.raises(CommandExitException):
        handle.wait()
    assert handle.pid not in {p.pid for p in sbx.commands.list()}
    assert sbx.commands.kill(handle.pid) is False


def test_files_write_and_read_text_and_bytes(sbx: Sandbox) -> None:
    """``files.write``/``read`` carry text and arbitrary bytes unchanged."""
    info = sbx.files.write("/data/files/hello.txt", "héllo wörld\n")
    assert info.path == "/data/files/hello.txt"
    assert info.name == "hello.txt"
    blob = bytes(range(256)) * 4
    sbx.files.write("/data/files/blob.bin", blob)
    assert sbx.files.read("/data/files/hello.txt") == "héllo wörld\n"
    assert bytes(sbx.files.read("/data/files/blob.bin", format="bytes")) == blob
    with pytest.raises(FileNotFoundException):
        sbx.files.read("/data/files/missing.txt")


def test_files_gzip_uploads_several_files_and_streamed_reads(sbx: Sandbox) -> None:
    """gzip octet-stream uploads, multi-file multipart uploads and ``format="stream"``."""
    sbx.files.write("/data/gz/one.txt", "squeezed " * 1000, gzip=True)
    written = sbx.files.write_files(
        [{"path": "/data/gz/two.txt", "data": "2"}, {"path": "/data/gz/three.txt", "data": b"3"}]
    )
    assert sorted(w.path for w in written) == ["/data/gz/three.txt", "/data/gz/two.txt"]
    with sbx.files.read("/data/gz/one.txt", format="stream") as stream:
        assert b"".join(stream) == b"squeezed " * 1000
    assert sbx.files.read("/data/gz/three.txt") == "3"


def test_files_list_exists_remove_rename_and_make_dir(sbx: Sandbox) -> None:
    """The filesystem RPCs: make_dir, list, exists, rename, remove."""
    assert sbx.files.make_dir("/data/tree/sub") is True
    assert sbx.files.make_dir("/data/tree/sub") is False
    sbx.files.write("/data/tree/a.txt", "a")
    entries = {e.name: e for e in sbx.files.list("/data/tree")}
    assert set(entries) == {"a.txt", "sub"}
    assert entries["a.txt"].type == FileType.FILE
    assert entries["a.txt"].size == 1
    assert entries["sub"].type == FileType.DIR
    assert entries["a.txt"].path == "/data/tree/a.txt"
    assert sbx.files.exists("/data/tree/a.txt")
    moved = sbx.files.rename("/data/tree/a.txt", "/data/tree/sub/b.txt")
    assert moved.path == "/data/tree/sub/b.txt"
    assert not sbx.files.exists("/data/tree/a.txt")
    assert sbx.files.read("/data/tree/sub/b.txt") == "a"
    deep = {e.path for e in sbx.files.list("/data/tree", depth=2)}
    assert deep == {"/data/tree/sub", "/data/tree/sub/b.txt"}
    sbx.files.remove("/data/tree/sub")
    assert not sbx.files.exists("/data/tree/sub")
    with pytest.raises(FileNotFoundException):
        sbx.files.remove("/data/tree/sub")
    with pytest.raises(FileNotFoundException):
        sbx.files.list("/data/nowhere")


def test_a_50_mb_file_round_trips(sbx: Sandbox) -> None:
    """A 50 MB upload and download through ``/files`` arrive byte for byte."""
    data = os.urandom(50 * 1024 * 1024)
    sbx.files.write("/data/big.bin", data)
    size = sbx.commands.run("wc -c < /data/big.bin").stdout.strip()
    assert size == str(len(data))
    back = sbx.files.read("/data/big.bin", format="bytes", request_timeout=120)
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
