"""A RuntimeSet picks the runtime for a spec's isolation and routes by the handle's runtime."""

from __future__ import annotations

import pytest

from byoc_agent.protocol.errors import InvalidArgumentError, SandboxNotRunningError
from byoc_agent.runtimes.base import (
    EndReason,
    ExecRequest,
    Exit,
    KnowsStopReason,
    Liveness,
    SandboxSpec,
)
from byoc_agent.runtimes.memory import InMemoryRuntime
from byoc_agent.runtimes.multi import RuntimeSet, runtime_isolations, runtime_names

pytestmark = pytest.mark.asyncio


class StandInMicrovm(InMemoryRuntime):
    """An in-memory runtime registered under a microVM runtime's name (routing only)."""

    name = "qemu-microvm"


def spec(sandbox_id: str, isolation: str) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id=sandbox_id,
        tenant_id="t",
        template="base",
        cpu=1,
        memory_mb=256,
        timeout_s=60,
        isolation=isolation,
    )


async def test_create_goes_to_the_runtime_of_the_requested_isolation() -> None:
    plain, vm = InMemoryRuntime(), StandInMicrovm()
    both = RuntimeSet([plain, vm])
    assert runtime_names(both) == ["memory", "qemu-microvm"]
    assert runtime_isolations(both) == {"gvisor", "microvm"}
    a = await both.create(spec("a", "gvisor"))
    b = await both.create(spec("b", "microvm"))
    assert (a.runtime, b.runtime) == ("memory", "qemu-microvm")
    assert await plain.inspect(a) is Liveness.RUNNING
    assert await vm.inspect(a) is Liveness.MISSING
    assert await vm.inspect(b) is Liveness.RUNNING
    events = [e async for e in both.exec(b, ExecRequest("echo hi"))]
    assert isinstance(events[-1], Exit)
    await both.destroy(b)
    assert await vm.inspect(b) is Liveness.MISSING


async def test_an_isolation_the_agent_lacks_is_a_clear_error() -> None:
    only_gvisor = RuntimeSet([InMemoryRuntime()])
    with pytest.raises(InvalidArgumentError, match="microvm isolation"):
        await only_gvisor.create(spec("x", "microvm"))


async def test_a_handle_of_a_runtime_no_longer_present_is_missing_not_a_crash() -> None:
    first = RuntimeSet([InMemoryRuntime(), StandInMicrovm()])
    handle = await first.create(spec("v", "microvm"))
    restarted = RuntimeSet([InMemoryRuntime()])
    assert await restarted.recover(handle) is Liveness.MISSING
    with pytest.raises(SandboxNotRunningError, match="qemu-microvm"):
        await restarted.read_file(handle, "/etc/hostname")


class OomRuntime(InMemoryRuntime):
    """An in-memory runtime that says every sandbox of its ran out of memory."""

    async def stop_reason(self, handle: object) -> EndReason | None:
        return EndReason.OOM_KILLED


async def test_stop_reason_asks_the_sandboxs_own_runtime_when_it_can_tell() -> None:
    """A RuntimeSet knows stop reasons: its runtime's answer, or None when it cannot say."""
    both = RuntimeSet([OomRuntime(), StandInMicrovm()])
    assert isinstance(both, KnowsStopReason)
    a = await both.create(spec("a", "gvisor"))
    b = await both.create(spec("b", "microvm"))
    assert await both.stop_reason(a) is EndReason.OOM_KILLED
    assert await both.stop_reason(b) is None
