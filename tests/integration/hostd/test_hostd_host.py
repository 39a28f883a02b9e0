"""A host booted from its user data, as far as this machine can: the rendered #cloud-config
is parsed back and its files laid out for a real hostd (TLS, real gVisor); a restart of
hostd leaves its sandboxes running, and the next hostd finds them again."""

from __future__ import annotations

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
