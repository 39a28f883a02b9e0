"""Warm pools over a real nats-server and real gVisor: a create is served by a pre-started
sandbox that becomes the requested one (hostname, machine-id, env), the pool refills, and
billing starts at take time (ADR 0025)."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from byoc_agent.agent import Agent, AgentConfig
from byoc_agent.protocol import messages, signing, subjects, verify
from byoc_agent.protocol.messages import SandboxState, UsageReport
from byoc_agent.runtimes.base import ExecRequest, Exit, Runtime, SandboxHandle, Stdout
from byoc_agent.runtimes.gvisor import GVisorRuntime
from byoc_agent.runtimes.templates import ensure_template
from byoc_agent.state import AgentIdentity, AgentStateStore, SandboxRecord
from byoc_agent.transport.nats import NatsAgentTransport
from byoc_agent.warm_pool import POOL_ID_PREFIX, PoolKey
from corral.testing import NatsServer, eventually

pytestmark = [pytest.mark.gvisor, pytest.mark.nats, pytest.mark.microvm, pytest.mark.asyncio]

TENANT = "ten-wp"
AGENT = "agt-wp"
KEY = PoolKey("base", 1, 256, "gvisor")
TEMPLATES_ROOT = Path(__file__).resolve().parents[3] / ".corral" / "templates"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "warm-pool tests need root (gVisor sandboxes)"
    if shutil.which("runsc") is None:
        return "runsc is not on PATH (Debian package: runsc)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not on PATH (needed to build the base template)"
    return None


async def run(runtime: Runtime, handle: SandboxHandle, cmd: str) -> str:
    out = b""
    code = None
    async for ev in runtime.exec(handle, ExecRequest(cmd=cmd)):
        if isinstance(ev, Stdout):
            out += ev.data
        elif isinstance(ev, Exit):
            code = ev.exit_code
    assert code == 0, f"{cmd!r} exited {code}"
    return out.decode()


class Rig:
    def __init__(self, server: NatsServer, nc: Any, home: Path, runtime: Runtime) -> None:
        self.server, self.nc, self.home, self.runtime = server, nc, home, runtime
        self.cp_key = signing.SigningKey.generate()
        self.agent_key = signing.SigningKey.generate()
        self.seq = 0
        self.agent: Agent | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(
        self, sizes: dict[PoolKey, int], *, restore_pool: int = 0, cpu_total: int = 2
    ) -> Agent:
        transport = NatsAgentTransport(self.server.url, TENANT, AGENT)
        await transport.connect()
        self.agent = Agent(
            identity=AgentIdentity(AGENT, TENANT, self.agent_key.kid, self.server.url),
            signing_key=self.agent_key,
            keyring=verify.Keyring({self.cp_key.kid: self.cp_key.public_key}),
            state=AgentStateStore(self.home / "state.db"),
            runtime=self.runtime,
            transport=transport,
            config=AgentConfig(
                data_plane_url="http://127.0.0.1:1", cpu_total=cpu_total,
                memory_mb_total=1024 * cpu_total, heartbeat_interval_s=60,
                reaper_interval_s=0.2, usage_interval_s=1.0,
                snapshots_dir=self.home / "snapshots",
            ),
            warm_pool=sizes,
            warm_pool_ledger=self.home / "warm-pool.json",
            restore_pool=restore_pool,
        )
        self.task = asyncio.create_task(self.agent.run())
        return self.agent

    async def stop(self) -> None:
        """Cancel the agent, then drain it as main does (which destroys pool members)."""
        if self.agent is None or self.task is None:
            return
        self.task.cancel()
        await asyncio.wait({self.task}, timeout=10)
        await self.agent.drain()
        await self.agent.transport.close()
        self.agent.state.close()
        self.agent = None

    async def job(self, body: dict[str, Any]) -> None:
        self.seq += 1
        now = int(time.time())
        payload = {
            "schema": messages.JOB_SCHEMA, "job_id": f"job-{uuid.uuid4().hex[:12]}",
            "tenant_id": TENANT, "agent_id": AGENT, "iat": now, "exp": now + 300,
            "seq": self.seq, "body": body,
        }
        data = signing.sign(self.cp_key, messages.JOB_TYP, signing.canonical_json(payload))
        await self.nc.jetstream().publish(
            subjects.jobs(TENANT, AGENT), data, headers={"Nats-Msg-Id": payload["job_id"]}
        )

    def sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        assert self.agent is not None
        return self.agent.state.get_sandbox(sandbox_id)

    async def create(self, env: dict[str, str], *, cpu: int = 1, memory_mb: int = 256
                     ) -> SandboxRecord:
        sandbox_id = f"sbx-{uuid.uuid4().hex[:12]}"
        await self.job({
            "kind": "create_sandbox", "sandbox_id": sandbox_id, "template": "base", "cpu": cpu,
            "memory_mb": memory_mb, "timeout_s": 300, "env": env, "isolation": "gvisor",
        })
        await eventually(
            lambda: self.sandbox(sandbox_id) is not None, what="sandbox created", within_s=60
        )
        rec = self.sandbox(sandbox_id)
        assert rec is not None
        return rec

    async def restore(self, snapshot_id: str, env: dict[str, str]) -> SandboxRecord:
        sandbox_id = f"sbx-{uuid.uuid4().hex[:12]}"
        await self.job({
            "kind": "restore_sandbox", "sandbox_id": sandbox_id, "snapshot_id": snapshot_id,
            "timeout_s": 300, "env": env, "isolation": "gvisor",
        })
        await eventually(
            lambda: self.sandbox(sandbox_id) is not None, what="sandbox restored", within_s=60
        )
        rec = self.sandbox(sandbox_id)
        assert rec is not None
        return rec

    async def kill(self, sandbox_id: str) -> SandboxRecord:
        await self.job({"kind": "kill_sandbox", "sandbox_id": sandbox_id})

        def killed() -> bool:
            rec = self.sandbox(sandbox_id)
            return rec is not None and rec.state is SandboxState.KILLED

        await eventually(killed, what="sandbox killed", within_s=60)
        rec = self.sandbox(sandbox_id)
        assert rec is not None
        return rec

    async def usage(self) -> list[UsageReport]:
        js = self.nc.jetstream()
        last = (await js.stream_info(subjects.AGENT_OUT_STREAM)).state.last_seq
        ring = verify.Keyring({self.agent_key.kid: self.agent_key.public_key})
        out = []
        for seq in range(1, last + 1):
            msg = await js.get_msg(subjects.AGENT_OUT_STREAM, seq)
            if msg.subject == subjects.usage(TENANT, AGENT) and msg.data is not None:
                out.append(verify.verify_model(
                    msg.data, typ=messages.USAGE_TYP, model=UsageReport, keyring=ring)[1])
        return out


@pytest.fixture(scope="module")
def templates_root() -> Path:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    ensure_template(TEMPLATES_ROOT, "base")
    return TEMPLATES_ROOT


@pytest_asyncio.fixture
async def rig(nats_server: NatsServer, tmp_path: Path, templates_root: Path
              ) -> AsyncIterator[Rig]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name=subjects.JOBS_STREAM, subjects=[subjects.ALL_JOBS])
    await js.add_stream(
        name=subjects.AGENT_OUT_STREAM,
        subjects=[subjects.ALL_RESULTS, subjects.ALL_EVENTS, subjects.ALL_USAGE],
    )
    runtime = GVisorRuntime(tmp_path / "runtime", templates_root)
    r = Rig(nats_server, nc, tmp_path, runtime)
    try:
        yield r
    finally:
        await r.stop()
        sandboxes = tmp_path / "runtime" / "sandboxes"
        for leftover in sandboxes.iterdir() if sandboxes.exists() else []:
            await runtime.destroy(SandboxHandle(leftover.name, runtime.name, 0.0))
        await nc.close()


async def test_a_create_is_served_from_the_pool_and_becomes_its_own_sandbox(rig: Rig) -> None:
    """Pool hit: the record holds a pool member's handle; hostname, machine-id and env are
    the new sandbox's; the pool refills; usage starts at take time, never for members."""
    agent = await rig.start({KEY: 1})
    pool = agent.pool
    assert pool is not None
    await eventually(lambda: len(pool.ready(KEY)) == 1, what="pool member ready", within_s=60)
    member = pool.ready(KEY)[0]
    assert member.sandbox_id.startswith(POOL_ID_PREFIX)
    member_machine_id = (await rig.runtime.read_file(member, "/etc/machine-id")).strip()
    await asyncio.sleep(1.5)  # the member idles: none of this may be billed

    asked = time.time()
    rec = await rig.create({"GREETING": "hello from the pool"})
    assert pool.stats.hits == 1
    assert pool.stats.misses == 0
    assert rec.handle.sandbox_id == member.sandbox_id, "not served from the pool"
    assert rec.started_at >= asked > member.created_at

    out = await run(rig.runtime, rec.handle,
                    'echo "$GREETING"; hostname; cat /etc/hostname; cat /etc/machine-id')
    assert len(out.splitlines()) == 4, out
    greeting, hostname, etc_hostname, machine_id = out.splitlines()
    assert greeting == "hello from the pool"
    assert hostname == etc_hostname == rec.sandbox_id
    assert machine_id != member_machine_id.decode()
    assert len(machine_id) == 32

    await eventually(lambda: len(pool.ready(KEY)) == 1, what="pool refilled", within_s=60)
    refill = pool.ready(KEY)[0]
    assert refill.sandbox_id != member.sandbox_id
    assert await rig.runtime.read_file(refill, "/etc/hostname") != f"{rec.sandbox_id}\n".encode()

    ended = await rig.kill(rec.sandbox_id)
    assert ended.ended_at is not None

    async def final_delivered() -> list[UsageReport]:
        got = await rig.usage()
        return got if any(r.final and r.sandbox_id == rec.sandbox_id for r in got) else []

    records = await eventually(final_delivered, every_s=0.1, what="the final usage record")
    assert {r.sandbox_id for r in records} == {rec.sandbox_id}, "a pool member was billed"
    assert min(r.start for r in records) == math.floor(rec.started_at)
    assert max(r.end for r in records) == math.floor(ended.ended_at)


async def test_a_create_that_needs_the_room_evicts_pool_members_and_misses(rig: Rig) -> None:
    """A size the pool does not keep is a miss; the members give way to it, and the pool
    refills only when the room is free again; members are gone after the agent stops."""
    agent = await rig.start({KEY: 2})
    pool = agent.pool
    assert pool is not None
    await eventually(
        lambda: len(pool.ready(KEY)) == 2, what="two pool members ready", within_s=90
    )
    members = pool.ready(KEY)

    rec = await rig.create({}, cpu=2, memory_mb=512)  # the agent has 2 vCPU in all
    assert pool.stats.misses == 1
    assert pool.stats.hits == 0
    assert not rec.handle.sandbox_id.startswith(POOL_ID_PREFIX)
    assert pool.stats.evicted == 2
    assert pool.ready(KEY) == []
    assert await run(rig.runtime, rec.handle, "echo ok") == "ok\n"

    await rig.kill(rec.sandbox_id)
    await eventually(
        lambda: len(pool.ready(KEY)) == 2, what="pool refilled after the kill", within_s=90
    )
    refilled = pool.ready(KEY)
    await rig.stop()
    for handle in [*members, *refilled]:
        assert not (rig.home / "runtime" / "sandboxes" / handle.sandbox_id).exists()


async def test_restores_of_a_snapshot_are_served_from_copies_restored_ahead(rig: Rig) -> None:
    """Restore pool (ADR 0029): after a snapshot the agent restores a copy in the
    background; a restore takes it and it becomes the new sandbox (files, a running
    process, its own hostname, machine-id and env); the pool refills with another copy,
    also after an agent restart; deleting the snapshot destroys the copies."""
    agent = await rig.start({}, restore_pool=1, cpu_total=4)
    pool = agent.pool
    assert pool is not None
    parent = await rig.create({})
    await rig.runtime.write_file(parent.handle, "/work/state", b"from the parent")
    pid = (await run(rig.runtime, parent.handle, "nohup sleep 3600 >/dev/null 2>&1 & echo $!"))
    parent_machine_id = (await rig.runtime.read_file(parent.handle, "/etc/machine-id")).strip()
    snapshot_id = f"snap-{uuid.uuid4().hex[:12]}"
    await rig.job({"kind": "snapshot_sandbox", "sandbox_id": parent.sandbox_id,
                   "snapshot_id": snapshot_id})  # fmt: skip
    key = PoolKey("base", 1, 256, "gvisor", snapshot_id)
    await eventually(lambda: len(pool.ready(key)) == 1, what="a copy restored ahead", within_s=90)
    member = pool.ready(key)[0]
    assert member.sandbox_id.startswith(POOL_ID_PREFIX)
    member_machine_id = (await rig.runtime.read_file(member, "/etc/machine-id")).strip()

    asked, misses = time.time(), pool.stats.misses  # the parent's create was a miss
    first = await rig.restore(snapshot_id, {"ROLE": "first copy"})
    assert first.handle.sandbox_id == member.sandbox_id, "not served from the restore pool"
    assert (pool.stats.hits, pool.stats.misses) == (1, misses)
    assert first.started_at >= asked  # billed from the take, not from the copy's restore
    out = await run(rig.runtime, first.handle,
                    f'cat /work/state; echo; echo "$ROLE"; hostname; cat /etc/hostname; '
                    f'cat /etc/machine-id; kill -0 {pid.strip()} && echo alive')  # fmt: skip
    state, role, hostname, etc_hostname, machine_id, alive = out.splitlines()
    assert (state, role, alive) == ("from the parent", "first copy", "alive")
    assert hostname == etc_hostname == first.sandbox_id
    assert machine_id.encode() not in (parent_machine_id, member_machine_id)

    def refilled() -> bool:
        ready = pool.ready(key)
        return len(ready) == 1 and ready[0].sandbox_id != member.sandbox_id

    await eventually(refilled, what="the restore pool refilled", within_s=90)
    second = await rig.restore(snapshot_id, {})
    assert pool.stats.hits == 2
    second_machine_id = (await rig.runtime.read_file(second.handle, "/etc/machine-id")).strip()
    assert second_machine_id != machine_id.encode()
    await run(rig.runtime, second.handle, "echo from the second > /work/state")
    assert await rig.runtime.read_file(first.handle, "/work/state") == b"from the parent"

    await eventually(lambda: len(pool.ready(key)) == 1, what="a third copy", within_s=90)

    # a restart destroys the copies with the agent; the new agent restores one again
    await rig.stop()
    agent = await rig.start({}, restore_pool=1, cpu_total=4)
    pool = agent.pool
    assert pool is not None
    await eventually(lambda: len(pool.ready(key)) == 1, what="a copy after the restart",
                     within_s=90)  # fmt: skip
    third = pool.ready(key)[0]
    await rig.job({"kind": "delete_snapshot", "sandbox_id": parent.sandbox_id,
                   "snapshot_id": snapshot_id})  # fmt: skip
    await eventually(lambda: not (rig.home / "snapshots" / snapshot_id).exists(),
                     what="the snapshot deleted", within_s=60)  # fmt: skip
    assert pool.ready(key) == []
    sandboxes = rig.home / "runtime" / "sandboxes"
    await eventually(lambda: not (sandboxes / third.sandbox_id).exists(),
                     what="the unused copy destroyed", within_s=60)  # fmt: skip
    for rec in (first, second):  # the sandboxes restored from it live on
        assert (await run(rig.runtime, rec.handle, "echo ok")) == "ok\n"
