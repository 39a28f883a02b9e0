"""A microVM's network: none by default; with an egress allow-list, the listed destinations
and nothing else. Every destination here is a listener this test starts: on 127.0.0.1 for the
runtime alone, on the host's own non-loopback address for the agent (which never grants
loopback). Nothing else is contacted."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from runtime_factories import MICROVM

from byoc_agent.agent import Agent, AgentConfig
from byoc_agent.egress import EgressCeiling
from byoc_agent.protocol import messages, signing, verify
from byoc_agent.runtimes.base import ExecRequest, Exit, SandboxHandle, SandboxSpec, Stdout
from byoc_agent.runtimes.qemu_microvm import QemuMicrovmRuntime, guest_address
from byoc_agent.state import AgentIdentity, AgentStateStore
from byoc_agent.transport.nats import NatsAgentTransport

pytestmark = [pytest.mark.microvm, pytest.mark.asyncio]

BANNER = b"corral-egress-banner"

# Runs in the guest: connect to each HOST:PORT argument, print what happened.
PROBE = r"""
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as s:
            s.settimeout(5)
            print(target, "open", s.recv(100).decode(errors="replace"), flush=True)
    except OSError as e:
        print(target, "refused", type(e).__name__, flush=True)
"""


class Listener:
    """A TCP listener (on 127.0.0.1 unless told) that greets, closes, and counts its
    connections."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        async def greet(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.accepted += 1
            w.write(BANNER)
            await w.drain()
            w.close()

        self.server = await asyncio.start_server(greet, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture
async def listeners() -> AsyncIterator[tuple[Listener, Listener]]:
    allowed, other = Listener(), Listener()
    await allowed.start()
    await other.start()
    try:
        yield allowed, other
    finally:
        await allowed.stop()
        await other.stop()


@pytest.fixture
def microvm(state_dir: Path, templates_root: Path) -> QemuMicrovmRuntime:
    reason = MICROVM.unavailable()
    if reason is not None:
        pytest.skip(reason)
    runtime = MICROVM.make(state_dir, templates_root)
    assert isinstance(runtime, QemuMicrovmRuntime)
    return runtime


async def _run(runtime: QemuMicrovmRuntime, handle: SandboxHandle, cmd: str) -> tuple[str, int]:
    out, code = b"", -1
    async for ev in runtime.exec(handle, ExecRequest(cmd=cmd, timeout_s=60)):
        if isinstance(ev, Stdout):
            out += ev.data
        elif isinstance(ev, Exit):
            code = ev.exit_code
    return out.decode(), code


async def _probe(runtime: QemuMicrovmRuntime, handle: SandboxHandle, *targets: str) -> dict[
    str, str
]:
    await runtime.write_file(handle, "/tmp/probe.py", PROBE.encode())
    out, code = await _run(runtime, handle, "python3 /tmp/probe.py " + " ".join(targets))
    assert code == 0, out
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if line}


def _spec(name: str, egress: tuple[str, ...] = ()) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id=f"egress-{name}-{os.getpid()}", tenant_id="tenant-egress", template="base",
        cpu=1, memory_mb=256, timeout_s=300, egress=egress,
    )  # fmt: skip


async def test_no_allow_list_means_no_network_but_loopback(microvm: QemuMicrovmRuntime) -> None:
    handle = await microvm.create(_spec("none"))
    try:
        out, code = await _run(microvm, handle, "ls /sys/class/net; test -e /run/corral/egress")
        assert out.split() == ["lo"]
        assert code == 1  # no mapping file either
    finally:
        await microvm.destroy(handle)


async def test_only_listed_destinations_are_reachable_across_pause_and_resume(
    microvm: QemuMicrovmRuntime, listeners: tuple[Listener, Listener]
) -> None:
    allowed, other = listeners
    handle = await microvm.create(_spec("list", (f"127.0.0.1:{allowed.port}",)))
    try:
        mapped = f"{guest_address(0)}:{allowed.port}"
        mapping = (await microvm.read_file(handle, "/run/corral/egress")).decode()
        assert mapping == f"{mapped} 127.0.0.1:{allowed.port}\n"
        # Not listed: the other listener through the gateway (without restrict=on QEMU would
        # carry this to the host's loopback), the forward's address on the other port, and
        # an address with no forward at all.
        denied = [
            f"10.0.2.2:{other.port}",
            f"{guest_address(0)}:{other.port}",
            f"{guest_address(1)}:{other.port}",
        ]
        for round_ in ("before pause", "after resume"):
            seen = await _probe(microvm, handle, mapped, *denied)
            assert seen[mapped] == f"open {BANNER.decode()}", (round_, seen)
            for target in denied:
                assert seen[target].startswith("refused"), (round_, target, seen)
            if round_ == "before pause":
                await microvm.pause(handle)
                await microvm.resume(handle)
        assert allowed.accepted == 2
        assert other.accepted == 0
    finally:
        await microvm.destroy(handle)


def _host_address() -> str | None:
    """This host's own non-loopback IPv4 address (a UDP "connect" sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.IPv4Address(address).is_loopback else address


async def test_the_agent_grants_a_sandbox_its_own_list_within_the_ceiling(
    microvm: QemuMicrovmRuntime, tmp_path: Path
) -> None:
    """Both listeners are in the agent's ceiling; the create job asks for A only: the
    microVM reaches A and not B (through neither a forward nor the gateway). A restore of
    its snapshot keeps A, and is refused once the ceiling no longer holds A."""
    host = _host_address()
    if host is None:
        pytest.skip("this host has no non-loopback IPv4 address to listen on")
    a, b = Listener(host), Listener(host)
    await a.start()
    await b.start()
    key = signing.SigningKey.generate()
    state = AgentStateStore(tmp_path / "agent-state.db")
    agent = Agent(
        identity=AgentIdentity("agt-egress", "ten-egress", key.kid, "nats://127.0.0.1:1"),
        signing_key=key,
        keyring=verify.Keyring({}),
        state=state,
        runtime=microvm,
        # execute() runs the job and stores its result; publishing it is not needed here
        # (the agent's NATS path is tested in tests/integration/agent/test_agent_egress.py).
        transport=NatsAgentTransport("nats://127.0.0.1:1", "ten-egress", "agt-egress"),
        config=AgentConfig(
            data_plane_url="http://127.0.0.1:1", cpu_total=2, memory_mb_total=2048,
            egress_ceiling=(a.address, b.address), snapshots_dir=tmp_path / "snapshots",
        ),
    )  # fmt: skip
    sandbox_id = f"egress-agent-{os.getpid()}"
    restored_id = f"egress-restored-{os.getpid()}"
    jobs = iter(range(1, 100))

    def job(body: messages.JobBody) -> messages.Job:
        seq, now = next(jobs), int(time.time())
        return messages.Job(
            job_id=f"job-egress-{os.getpid()}-{seq}", tenant_id="ten-egress",
            agent_id="agt-egress", iat=now, exp=now + 300, seq=seq, body=body,
        )  # fmt: skip

    try:
        result = await agent.execute(job(messages.CreateSandboxBody(
            sandbox_id=sandbox_id, template="base", cpu=1, memory_mb=256, timeout_s=300,
            isolation="microvm", egress=[a.address],
        )))  # fmt: skip
        assert result.status == "succeeded", result.error
        handle = agent.running_handle(sandbox_id)
        mapped = f"{guest_address(0)}:{a.port}"
        mapping = (await microvm.read_file(handle, "/run/corral/egress")).decode()
        assert mapping == f"{mapped} {a.address}\n"
        denied = [
            f"{guest_address(0)}:{b.port}",
            f"{guest_address(1)}:{b.port}",
            f"10.0.2.2:{b.port}",
        ]
        seen = await _probe(microvm, handle, mapped, *denied)
        assert seen[mapped] == f"open {BANNER.decode()}", seen
        for target in denied:
            assert seen[target].startswith("refused"), (target, seen)
        assert (a.accepted, b.accepted) == (1, 0)

        snapshot_id = f"snap-egress-{os.getpid()}"
        result = await agent.execute(job(messages.SnapshotSandboxBody(
            sandbox_id=sandbox_id, snapshot_id=snapshot_id)))  # fmt: skip
        assert result.status == "succeeded", result.error
        restore = messages.RestoreSandboxBody(
            sandbox_id=restored_id, snapshot_id=snapshot_id, timeout_s=300, isolation="microvm"
        )
        granted = agent.egress
        agent.egress = EgressCeiling.of([b.address])  # the operator narrowed the ceiling
        result = await agent.execute(job(restore))
        assert result.status == "failed"
        assert result.error is not None
        assert f"'{a.address}'" in result.error.message
        assert not microvm.sandbox_dir(restored_id).exists()
        agent.egress = granted
        result = await agent.execute(job(restore))
        assert result.status == "succeeded", result.error
        seen = await _probe(microvm, agent.running_handle(restored_id), mapped, *denied)
        assert seen[mapped] == f"open {BANNER.decode()}", seen
        assert (a.accepted, b.accepted) == (2, 0)
    finally:
        await microvm.destroy(SandboxHandle(restored_id, microvm.name, 0.0))
        await microvm.destroy(SandboxHandle(sandbox_id, microvm.name, 0.0))
        state.close()
        await a.stop()
        await b.stop()
