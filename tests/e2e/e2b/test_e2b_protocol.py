"""envd's wire protocol on the data plane: binary protobuf, gzip, streams and access checks.

The SDKs use Connect's JSON codec; these calls use connectrpc's defaults (binary
protobuf, gzip-compressed requests) through the client stubs the ``e2b`` package ships,
and plain HTTP for ``/files``, to pin what any envd client may send.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b import Sandbox
from e2b.envd.filesystem import filesystem_connect, filesystem_pb
from e2b.envd.process import process_connect, process_pb
from protobuf import Oneof

from corral.testing.stack import StackInfo


@pytest.fixture(scope="module")
def pair(e2b_stack: StackInfo) -> Iterator[tuple[str, str, str]]:
    """Two sandboxes: (id of the first, its envd access token, id of the second)."""
    first = Sandbox.create(timeout=300)
    second = Sandbox.create(timeout=300)
    try:
        answer = httpx.post(
            f"{e2b_stack.api_url}/v2/sandboxes/{first.sandbox_id}/connect",
            headers={"X-API-KEY": e2b_stack.api_key},
            json={},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["sandboxID"] == first.sandbox_id
        assert body["envdVersion"]
        yield first.sandbox_id, body["envdAccessToken"], second.sandbox_id
    finally:
        first.kill()
        second.kill()


def _headers(sandbox_id: str, token: str) -> dict[str, str]:
    return {"X-Access-Token": token, "E2b-Sandbox-Id": sandbox_id}


def test_a_process_streams_in_binary_protobuf(
    e2b_stack: StackInfo, pair: tuple[str, str, str]
) -> None:
    """Start over ``application/connect+proto``: start, output and end events in order."""
    sandbox_id, token, _ = pair
    with process_connect.ProcessClientSync(e2b_stack.data_plane_url) as rpc:
        events = list(
            rpc.start(
                process_pb.StartRequest(
                    process=process_pb.ProcessConfig(
                        cmd="/bin/sh", args=["-c", "printf out; printf err >&2; exit 4"]
                    )
                ),
                headers=_headers(sandbox_id, token),
                timeout_ms=30_000,
            )
        )
    kinds = [e.event.event.field for e in events if e.event and e.event.event]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    out = b"".join(
        e.event.event.value.output.value
        for e in events
        if e.event and e.event.event and e.event.event.field == "data"
        and e.event.event.value.output.field == "stdout"
    )
    assert out == b"out"
    end = events[-1].event.event.value
    assert end.exit_code == 4
    assert end.exited is True


def test_filesystem_calls_work_in_binary_protobuf(
    e2b_stack: StackInfo, pair: tuple[str, str, str]
) -> None:
    """MakeDir, Stat and ListDir in protobuf; a missing path is Connect's not_found."""
    sandbox_id, token, _ = pair
    headers = _headers(sandbox_id, token)
    with filesystem_connect.FilesystemClientSync(e2b_stack.data_plane_url) as rpc:
        made = rpc.make_dir(filesystem_pb.MakeDirRequest(path="/srv/proto"), headers=headers)
        assert made.entry is not None
        assert made.entry.type == filesystem_pb.FileType.DIRECTORY
        stat = rpc.stat(filesystem_pb.StatRequest(path="/srv/proto"), headers=headers)
        assert stat.entry is not None
        assert stat.entry.path == "/srv/proto"
        assert stat.entry.owner == "root"
        assert stat.entry.permissions.startswith("d")
        listed = rpc.list_dir(filesystem_pb.ListDirRequest(path="/srv", depth=1), headers=headers)
        assert [e.name for e in listed.entries] == ["proto"]
        with pytest.raises(ConnectError) as err:
            rpc.stat(filesystem_pb.StatRequest(path="/srv/none"), headers=headers)
        assert err.value.code == Code.NOT_FOUND


def test_a_token_for_another_sandbox_is_refused(
    e2b_stack: StackInfo, pair: tuple[str, str, str]
) -> None:
    """One sandbox's access token does not open another: RPCs and /files both refuse."""
    _, token, other = pair
    with process_connect.ProcessClientSync(e2b_stack.data_plane_url) as rpc:
        with pytest.raises(ConnectError) as err:
            rpc.list(process_pb.ListRequest(), headers=_headers(other, token))
        assert err.value.code == Code.UNAUTHENTICATED
    got = httpx.get(
        f"{e2b_stack.data_plane_url}/files",
        params={"path": "/etc/hostname"},
        headers=_headers(other, token),
        timeout=30,
    )
    assert got.status_code == 401
    assert got.json()["code"] == 401


def test_a_missing_or_forged_token_is_refused(
    e2b_stack: StackInfo, pair: tuple[str, str, str]
) -> None:
    """No token, or one not signed by the control plane, gets 401 / unauthenticated."""
    sandbox_id, token, _ = pair
    forged = token[:-8] + ("A" * 8 if not token.endswith("A" * 8) else "B" * 8)
    for headers in ({"E2b-Sandbox-Id": sandbox_id}, _headers(sandbox_id, forged)):
        got = httpx.get(
            f"{e2b_stack.data_plane_url}/files", params={"path": "/etc/hostname"},
            headers=headers, timeout=30,
        )
        assert got.status_code == 401
    with filesystem_connect.FilesystemClientSync(e2b_stack.data_plane_url) as rpc:
        with pytest.raises(ConnectError) as err:
            rpc.stat(
                filesystem_pb.StatRequest(path="/"), headers=_headers(sandbox_id, forged)
            )
        assert err.value.code == Code.UNAUTHENTICATED


def test_unsupported_calls_say_so(e2b_stack: StackInfo, pair: tuple[str, str, str]) -> None:
    """PTYs, stdin streaming and directory watches are Connect's unimplemented."""
    sandbox_id, token, _ = pair
    headers = _headers(sandbox_id, token)
    with process_connect.ProcessClientSync(e2b_stack.data_plane_url) as rpc:
        with pytest.raises(ConnectError) as err:
            list(
                rpc.start(
                    process_pb.StartRequest(
                        process=process_pb.ProcessConfig(cmd="/bin/true"), stdin=True
                    ),
                    headers=headers,
                )
            )
        assert err.value.code == Code.UNIMPLEMENTED
        with pytest.raises(ConnectError) as err:
            rpc.send_input(
                process_pb.SendInputRequest(
                    process=process_pb.ProcessSelector(selector=Oneof("pid", 1)),
                    input=process_pb.ProcessInput(input=Oneof("stdin", b"x")),
                ),
                headers=headers,
            )
        assert err.value.code == Code.UNIMPLEMENTED
    with filesystem_connect.FilesystemClientSync(e2b_stack.data_plane_url) as rpc:
        with pytest.raises(ConnectError) as err:
            rpc.create_watcher(
                filesystem_pb.CreateWatcherRequest(path="/root"), headers=headers
            )
        assert err.value.code == Code.UNIMPLEMENTED
