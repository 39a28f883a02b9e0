"""A real hostd process (TLS on a loopback port, the in-memory runtime behind it): only a
caller with the pinned certificate and the bearer secret gets anything from it."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from byoc_agent.hostd import wire
from byoc_agent.hostd.client import RemoteRuntime, pinned_ssl_context
from byoc_agent.hostd.credentials import new_host_credentials
from byoc_agent.hostd.testing import LocalHostd, free_port
from byoc_agent.hostd.userdata import HostdBootConfig
from byoc_agent.protocol.errors import CorralError, RetryableError
from byoc_agent.runtimes.base import ExecRequest, Exit, SandboxSpec

pytestmark = pytest.mark.asyncio

ROUTES = [*wire.ROUTES, ("GET", "/"), ("GET", "/docs"), ("DELETE", "/v1/anything")]
BARE_401 = {"error": {"code": "unauthenticated", "message": "unauthenticated"}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def hostd(tmp_path: Path) -> Iterator[LocalHostd]:
    """A hostd serving the in-memory runtime; stopped (and checked gone) afterwards."""
    local = LocalHostd(tmp_path / "host", templates_dir=tmp_path / "templates",
                       runtimes=("memory",))  # fmt: skip
    local.start()
    pid = local.pid
    assert pid is not None
    try:
        yield local
    finally:
        local.stop()
        assert not _alive(pid), "hostd outlived its fixture"


async def test_every_route_answers_401_without_the_secret(hostd: LocalHostd) -> None:
    """No header, a wrong secret, another scheme: 401 with the same bare body everywhere."""
    creds = hostd.boot.credentials
    context = pinned_ssl_context(creds.cert_pem)
    async with httpx.AsyncClient(base_url=hostd.base_url, verify=context) as http:
        for headers in ({}, {"authorization": "Bearer " + new_host_credentials("x").secret},
                        {"authorization": "Basic " + creds.secret}):  # fmt: skip
            for method, path in ROUTES:
                response = await http.request(method, path, headers=headers, content=b"{}")
                assert (response.status_code, response.json()) == (401, BARE_401), path
        ok = await http.get(wire.HEALTH, headers={"authorization": f"Bearer {creds.secret}"})
        assert ok.status_code == 200


async def test_the_right_secret_runs_a_sandbox_over_tls(hostd: LocalHostd) -> None:
    """With the pinned certificate and the secret, RemoteRuntime drives the host's runtime."""
    remote = hostd.client()
    try:
        assert (await remote.health()).runtimes == ("memory",)
        handle = await remote.create(SandboxSpec("sb-tls", "t", "base", 1, 256, 60))
        assert [e async for e in remote.exec(handle, ExecRequest("true"))] == [Exit(0)]
        await remote.destroy(handle)
    finally:
        await remote.aclose()


async def test_a_wrong_secret_is_refused_by_the_client_as_an_error(hostd: LocalHostd) -> None:
    """The client turns the 401 into a CorralError saying the secret was refused."""
    creds = hostd.boot.credentials
    remote = RemoteRuntime(hostd.base_url, cert_pem=creds.cert_pem,
                           secret=new_host_credentials("x").secret)  # fmt: skip
    try:
        with pytest.raises(CorralError, match="refused this manager's secret"):
            await remote.health()
    finally:
        await remote.aclose()


async def test_a_client_pinning_another_certificate_fails_the_handshake(
    hostd: LocalHostd,
) -> None:
    """A certificate for the same host name but another key is not the pinned one: the TLS
    handshake fails before any request (and before the secret) is sent."""
    impostor = new_host_credentials(f"local-{hostd.root.name}")  # same CN, another key
    remote = RemoteRuntime(hostd.base_url, cert_pem=impostor.cert_pem,
                           secret=hostd.boot.credentials.secret)  # fmt: skip
    try:
        with pytest.raises(RetryableError, match="CERTIFICATE_VERIFY_FAILED"):
            await remote.health()
    finally:
        await remote.aclose()
    # And the system's CAs do not vouch for it either.
    async with httpx.AsyncClient(verify=ssl.create_default_context()) as http:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(hostd.base_url + wire.HEALTH)


async def test_plain_http_to_the_tls_port_gets_nothing(hostd: LocalHostd) -> None:
    """Plain HTTP, even with the secret, gets no HTTP answer from the TLS port."""
    url = f"http://127.0.0.1:{hostd.config.listen_port}{wire.HEALTH}"
    headers = {"authorization": f"Bearer {hostd.boot.credentials.secret}"}
    async with httpx.AsyncClient(timeout=10) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(url, headers=headers)


async def test_hostd_logs_neither_its_secret_nor_its_key(hostd: LocalHostd) -> None:
    """After refused and accepted requests, hostd's log holds neither secret nor key."""
    await test_every_route_answers_401_without_the_secret(hostd)
    log = hostd.tail(limit=1 << 20)
    assert "hostd_started" in log
    creds = hostd.boot.credentials
    assert creds.secret not in log
    assert creds.key_pem.decode().splitlines()[1] not in log


@pytest.mark.parametrize("which", ["key", "secret"])
async def test_hostd_refuses_to_start_with_a_key_or_secret_others_can_read(
    tmp_path: Path, which: str
) -> None:
    """Mode 0644 on the key or the secret file: hostd exits at once and says why."""
    boot = HostdBootConfig(
        credentials=new_host_credentials("h"), listen_port=free_port(), runtimes=("memory",)
    )
    local = LocalHostd(tmp_path / "host", templates_dir=tmp_path / "templates", boot=boot)
    local.write_files(**{f"{which}_mode": 0o644})
    with pytest.raises(RuntimeError, match="hostd exited with 2") as caught:
        local.start()
    path = local.config.key_file if which == "key" else local.config.secret_file
    assert f"{path} has mode 0644" in str(caught.value)
    assert "chmod 600" in str(caught.value)
