"""hostd's app in process (httpx's ASGI transport, the in-memory runtime): bearer auth on
every route, every Runtime call through RemoteRuntime, typed errors back as the same type."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from byoc_agent.hostd import wire
from byoc_agent.hostd.client import RemoteRuntime
from byoc_agent.hostd.credentials import new_host_credentials
from byoc_agent.hostd.pool import HostSandboxes, host_pool
from byoc_agent.hostd.server import create_hostd_app
from byoc_agent.protocol.errors import (
    CorralError,
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    NotFoundError,
    SandboxNotRunningError,
    TemplateNotFoundError,
)
from byoc_agent.runtimes.base import (
    ExecEvent,
    ExecRequest,
    Exit,
    Liveness,
    SandboxHandle,
    SandboxSpec,
    Stderr,
    Stdout,
)
from byoc_agent.runtimes.memory import InMemoryRuntime
from byoc_agent.runtimes.multi import RuntimeSet
from byoc_agent.warm_pool import PoolKey
from corral.testing import eventually

pytestmark = pytest.mark.asyncio

SECRET = new_host_credentials("unit").secret
ALL_ROUTES = [
    *wire.ROUTES, ("GET", "/no/such/route"), ("GET", "/openapi.json"), ("GET", "/docs"),
]


class TalkingRuntime(InMemoryRuntime):
    """The in-memory runtime, with an exec that says something (and can fail mid-stream)."""

    async def exec(self, handle: SandboxHandle, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        self._files(handle)
        yield Stdout(b"out\x00\xff")
        yield Stderr(request.cmd.encode())
        if request.cmd == "vanish":
            raise SandboxNotRunningError("sandbox stopped while the command ran")
        yield Exit(exit_code=3, timed_out=request.timeout_s < 1)


async def drain(events: AsyncIterator[ExecEvent], into: list[ExecEvent] | None = None) -> None:
    async for event in events:
        if into is not None:
            into.append(event)


def machine() -> wire.HealthReply:
    return wire.HealthReply(runtimes=[], templates=[], cpu=4, memory_mib=2048, kvm=False)


def app(tmp_path: Path) -> object:
    return create_hostd_app(
        RuntimeSet([TalkingRuntime()]),
        secret=SECRET,
        data_dir=tmp_path,
        templates=lambda: ["base"],
        machine=machine,
    )


@pytest_asyncio.fixture
async def remote(tmp_path: Path) -> AsyncIterator[RemoteRuntime]:
    runtime = RemoteRuntime(
        "http://hostd",
        cert_pem=new_host_credentials("unit").cert_pem,
        secret=SECRET,
        transport=httpx.ASGITransport(app=app(tmp_path)),  # type: ignore[arg-type]
    )
    yield runtime
    await runtime.aclose()


def spec(sandbox_id: str = "sb-1", template: str = "base") -> SandboxSpec:
    return SandboxSpec(sandbox_id, "t-1", template, cpu=1, memory_mb=256, timeout_s=60)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong", f"bearer {SECRET}",
                                    f"Bearer {SECRET} ", f"Basic {SECRET}", SECRET])
async def test_every_route_refuses_a_missing_or_wrong_secret_with_a_bare_401(
    tmp_path: Path, header: str | None
) -> None:
    """Known routes, unknown routes and the docs all answer 401 with the same bare body."""
    transport = httpx.ASGITransport(app=app(tmp_path))  # type: ignore[arg-type]
    headers = {} if header is None else {"authorization": header}
    async with httpx.AsyncClient(transport=transport, base_url="http://hostd") as http:
        for method, path in ALL_ROUTES:
            response = await http.request(method, path, headers=headers, content=b"{}")
            assert response.status_code == 401, (method, path)
            assert response.json() == {
                "error": {"code": "unauthenticated", "message": "unauthenticated"}
            }


async def test_health_names_runtimes_templates_and_the_machine(remote: RemoteRuntime) -> None:
    """The ready check's answer: the host's runtime names, built templates, CPUs, memory."""
    health = await remote.health()
    assert health == wire.HostHealth(
        runtimes=("memory",), templates=("base",), cpu=4, memory_mib=2048, kvm=False
    )


async def test_a_sandbox_round_trips_through_every_runtime_call(remote: RemoteRuntime) -> None:
    """create, inspect, recover, exec, files, stop_reason, adopt and destroy all cross over,
    and the handle comes back exactly as the host runtime made it."""
    handle = await remote.create(spec())
    assert (handle.sandbox_id, handle.runtime) == ("sb-1", "memory")
    assert await remote.inspect(handle) is Liveness.RUNNING
    assert await remote.recover(handle) is Liveness.RUNNING
    events = [e async for e in remote.exec(handle, ExecRequest("hello", stdin=b"\x00"))]
    assert events == [Stdout(b"out\x00\xff"), Stderr(b"hello"), Exit(3, timed_out=False)]
    await remote.write_file(handle, "/work/a.bin", bytes(range(256)))
    assert await remote.read_file(handle, "/work/a.bin") == bytes(range(256))
    assert [i.name for i in await remote.list_dir(handle, "/work")] == ["a.bin"]
    await remote.make_dir(handle, "/work/sub")
    await remote.remove(handle, "/work/a.bin")
    assert await remote.stop_reason(handle) is None
    await remote.adopt(handle, spec("sb-adopted"))
    await remote.destroy(handle)
    assert await remote.inspect(handle) is Liveness.MISSING


async def test_errors_come_back_as_the_same_typed_error(remote: RemoteRuntime) -> None:
    """The host's TemplateNotFound, FileNotFound, SandboxNotRunning and InvalidArgument
    errors are raised by the client as those very types, message intact."""
    with pytest.raises(TemplateNotFoundError, match="no-such"):
        await remote.create(spec(template="no-such"))
    handle = await remote.create(spec())
    with pytest.raises(FileNotFoundInSandboxError, match="/nope"):
        await remote.read_file(handle, "/nope")
    gone = SandboxHandle("sb-gone", "memory", 0.0)
    with pytest.raises(SandboxNotRunningError):
        await remote.read_file(gone, "/x")
    with pytest.raises(SandboxNotRunningError):
        await drain(remote.exec(gone, ExecRequest("true")))
    with pytest.raises(InvalidArgumentError, match="cannot pause or snapshot"):
        await remote.pause(handle)
    with pytest.raises(InvalidArgumentError, match="timeout_s"):
        await drain(remote.exec(handle, ExecRequest("true", timeout_s=0)))
    with pytest.raises(InvalidArgumentError, match="NUL"):
        await remote.read_file(handle, "/a\x00b")


async def test_an_error_mid_stream_ends_the_exec_with_that_error(remote: RemoteRuntime) -> None:
    """Output already sent arrives; then the stream's error line raises its typed error."""
    handle = await remote.create(spec())
    seen: list[ExecEvent] = []
    with pytest.raises(SandboxNotRunningError, match="stopped while"):
        await drain(remote.exec(handle, ExecRequest("vanish")), seen)
    assert seen == [Stdout(b"out\x00\xff"), Stderr(b"vanish")]


async def test_snapshots_are_named_by_id_and_stay_on_the_host(
    remote: RemoteRuntime, tmp_path: Path
) -> None:
    """A snapshot path is only its id; a missing one is NotFound; ids are checked."""
    with pytest.raises(NotFoundError, match="snap-1"):
        await remote.restore(spec("sb-2"), tmp_path / "elsewhere" / "snap-1")
    with pytest.raises(InvalidArgumentError, match="id"):
        await remote.restore(spec("sb-2"), Path("/x/.."))
    await remote.delete_snapshot("snap-1")  # idempotent


async def test_a_write_without_a_handle_header_is_invalid(tmp_path: Path) -> None:
    """write_file's handle travels in a header; a missing or malformed one is a 400."""
    transport = httpx.ASGITransport(app=app(tmp_path))  # type: ignore[arg-type]
    headers = {"authorization": f"Bearer {SECRET}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://hostd") as http:
        for extra in ({}, {wire.HANDLE_HEADER: "!!"}):
            response = await http.post(
                wire.WRITE_FILE, params={"path": "/a"}, content=b"x", headers=headers | extra
            )
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "invalid_argument"


async def test_an_unreachable_host_is_retryable() -> None:
    """Nothing listening: the client raises RetryableError naming the host."""
    from byoc_agent.hostd.testing import free_port
    from byoc_agent.protocol.errors import RetryableError

    url = f"https://127.0.0.1:{free_port()}"
    runtime = RemoteRuntime(url, cert_pem=new_host_credentials("x").cert_pem, secret=SECRET)
    try:
        with pytest.raises(RetryableError, match="unreachable") as caught:
            await runtime.health()
        assert isinstance(caught.value, CorralError)
    finally:
        await runtime.aclose()


async def test_the_route_list_is_every_route_the_app_serves(tmp_path: Path) -> None:
    """wire.ROUTES (what the auth tests walk) is exactly what the app routes."""
    from fastapi.routing import APIRoute

    from byoc_agent.hostd.server import BearerAuth

    outer = app(tmp_path)
    assert isinstance(outer, BearerAuth)
    inner = outer.app
    assert hasattr(inner, "routes")
    served = {(m, r.path) for r in inner.routes if isinstance(r, APIRoute) for m in r.methods}
    assert served == set(wire.ROUTES)


async def test_a_hostd_with_a_warm_pool_serves_creates_from_it_within_its_room(
    tmp_path: Path,
) -> None:
    """A create of a pooled size gets the ready member adopted as the requested sandbox
    (the handle names the member); other sizes start cold after the members give way;
    every sandbox's size is recorded on disk, and removed when it is destroyed."""
    local = InMemoryRuntime()
    sandboxes = HostSandboxes(tmp_path / "sandboxes.json")
    key = PoolKey("base", 1, 256, "gvisor")
    pool = host_pool(local, "base:1:256:gvisor=1", data_dir=tmp_path, tenant_id="t-1",
                     machine=lambda: (4, 2048), sandboxes=sandboxes)  # fmt: skip
    assert pool is not None
    assert host_pool(local, "", data_dir=tmp_path, tenant_id="t-1",
                     machine=lambda: (4, 2048), sandboxes=sandboxes) is None  # fmt: skip
    hostd = create_hostd_app(local, secret=SECRET, data_dir=tmp_path, templates=lambda: ["base"],
                             machine=machine, pool=pool, sandboxes=sandboxes)  # fmt: skip
    remote = RemoteRuntime("http://hostd", cert_pem=new_host_credentials("unit").cert_pem,
                           secret=SECRET,
                           transport=httpx.ASGITransport(app=hostd))  # type: ignore[arg-type]
    filler = asyncio.create_task(pool.run(in_use=sandboxes.ids()))
    try:
        await eventually(lambda: len(pool.ready(key)) == 1, what="a member ready")
        member = pool.ready(key)[0]
        warm = await remote.create(spec("sb-warm"))
        assert warm.sandbox_id == member.sandbox_id
        assert local.adopted[member.sandbox_id].sandbox_id == "sb-warm"
        big = await remote.create(SandboxSpec("sb-big", "t-1", "base", cpu=3, memory_mb=1024,
                                              timeout_s=60))  # fmt: skip
        assert big.sandbox_id == "sb-big"  # cold: no pool of that size
        assert sandboxes.used() == (4, 1280)
        assert json.loads((tmp_path / "sandboxes.json").read_text()) == {
            member.sandbox_id: [1, 256], "sb-big": [3, 1024]}
        assert pool.ready(key) == []  # no room left for a member: none refills
        await remote.destroy(big)
        assert sandboxes.ids() == {member.sandbox_id}
        await eventually(lambda: len(pool.ready(key)) == 1, what="a refill after the room freed")
        assert HostSandboxes(tmp_path / "sandboxes.json").ids() == {member.sandbox_id}
    finally:
        filler.cancel()
        await pool.close()
        await remote.aclose()
