"""A host booted from its user data, as far as this machine can: the rendered #cloud-config
is parsed back and its files laid out for a real hostd (TLS, real gVisor); a restart of
hostd leaves its sandboxes running, and the next hostd finds them again."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from byoc_agent.hostd.credentials import new_host_credentials
from byoc_agent.hostd.testing import LocalHostd, free_port
from byoc_agent.hostd.userdata import HostdBootConfig, parse_user_data, render_user_data
from byoc_agent.runtimes.base import (
    ExecRequest,
    Exit,
    Liveness,
    Runtime,
    SandboxHandle,
    SandboxSpec,
    Stdout,
)
from byoc_agent.runtimes.templates import ensure_template
from byoc_agent.warm_pool import POOL_ID_PREFIX
from corral.testing import eventually

pytestmark = [pytest.mark.gvisor, pytest.mark.asyncio]

REPO = Path(__file__).resolve().parents[3]
TEMPLATES_ROOT = REPO / ".corral" / "templates"  # shared with the runtime contract suite


@pytest.fixture(scope="module")
def templates_root() -> Path:
    if os.geteuid() != 0 or shutil.which("runsc") is None or shutil.which("debootstrap") is None:
        pytest.skip("hostd with gVisor needs root, runsc and debootstrap (as the gvisor suite)")
    ensure_template(TEMPLATES_ROOT, "base")
    return TEMPLATES_ROOT


@pytest.fixture
def booted(tmp_path: Path, templates_root: Path) -> Iterator[LocalHostd]:
    """hostd started from what parse_user_data reads out of the rendered user data."""
    boot = HostdBootConfig(
        credentials=new_host_credentials("host-boot"),
        listen_port=free_port(),
        runtimes=("gvisor",),
        agent_id="agent-boot",
        tenant_id="tenant-boot",
    )
    local = LocalHostd(tmp_path / "host", templates_dir=templates_root,
                       boot=parse_user_data(render_user_data(boot)))  # fmt: skip
    local.start()
    try:
        yield local
    finally:
        local.stop()
        local.destroy_leftovers()


async def stdout(runtime: Runtime, handle: SandboxHandle, cmd: str) -> str:
    out = b""
    async for event in runtime.exec(handle, ExecRequest(cmd, timeout_s=30)):
        if isinstance(event, Stdout):
            out += event.data
        elif isinstance(event, Exit):
            assert event.exit_code == 0, (cmd, out)
    return out.decode()


async def test_a_restarted_hostd_finds_its_sandboxes_running(booted: LocalHostd) -> None:
    """Sandboxes made before hostd restarts keep running (their processes too); the new
    hostd process recovers them as RUNNING and serves their files and commands."""
    remote = booted.client()
    health = await remote.health()
    assert health.runtimes == ("gvisor",)
    assert "base" in health.templates
    spec = SandboxSpec(f"restart-{os.getpid()}", "tenant-boot", "base", 1, 256, 300)
    handle = await remote.create(spec)
    await remote.write_file(handle, "/work/before", b"kept across the restart")
    pid = (await stdout(remote, handle, "nohup sleep 1000 >/dev/null 2>&1 & echo $!")).strip()
    await remote.aclose()
    old_pid = booted.pid

    booted.restart()
    assert booted.pid != old_pid

    after = booted.client()
    try:
        assert await after.recover(handle) is Liveness.RUNNING
        assert await after.read_file(handle, "/work/before") == b"kept across the restart"
        assert (await stdout(after, handle, f"kill -0 {pid} && echo alive")).strip() == "alive"
        await after.destroy(handle)
        assert await after.inspect(handle) is Liveness.MISSING
    finally:
        await after.aclose()
    assert '"manager_agent_id": "agent-boot"' in booted.tail()


async def test_a_hostd_warm_pool_serves_a_create_and_its_members_go_with_hostd(
    tmp_path: Path, templates_root: Path
) -> None:
    """``warm_pool`` from the user data: a create is answered with a pre-started member
    that became the requested sandbox (hostname, env); when hostd stops, the members no
    one took are destroyed and the taken one runs on."""
    boot = HostdBootConfig(credentials=new_host_credentials("host-pool"),
                           listen_port=free_port(), runtimes=("gvisor",),
                           warm_pool="base:1:256:gvisor=1")  # fmt: skip
    local = LocalHostd(tmp_path / "host", templates_dir=templates_root,
                       boot=parse_user_data(render_user_data(boot)))  # fmt: skip
    sandboxes = local.config.runtime_dir / "gvisor" / "sandboxes"
    local.start()
    try:
        await eventually(lambda: "warm_pool_member_ready" in local.tail(100_000),
                         within_s=60, what="a member ready in hostd")  # fmt: skip
        remote = local.client()
        try:
            spec = SandboxSpec("sb_from_the_pool", "tenant-boot", "base", 1, 256, 300,
                               env={"WHO": "pooled"})  # fmt: skip
            handle = await remote.create(spec)
            assert handle.sandbox_id.startswith(POOL_ID_PREFIX)
            got = await stdout(remote, handle, 'hostname; echo "$WHO"')
            assert got.split() == ["sb_from_the_pool", "pooled"]
            await eventually(lambda: len(list(sandboxes.iterdir())) == 2, within_s=60,
                             what="the pool to refill")  # fmt: skip
        finally:
            await remote.aclose()
        local.stop()
        assert [d.name for d in sandboxes.iterdir()] == [handle.sandbox_id]
        local.start()
        after = local.client()
        try:
            assert await after.recover(handle) is Liveness.RUNNING
            await after.destroy(handle)
        finally:
            await after.aclose()
    finally:
        local.stop()
        await asyncio.to_thread(local.destroy_leftovers)  # it runs its own event loop
