"""The agent grants a sandbox's egress list only within its operator's ceiling, over a real
nats-server (ADR 0027). The runtime is the in-memory one standing in for qemu-microvm, so
what reaches the runtime is exactly what the agent granted; the network itself is tested
against a real microVM in tests/integration/runtimes/test_microvm_egress.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import pytest_asyncio
from test_job_verification import Harness
from test_job_verification import harness as _harness  # noqa: F401 (the fixture, by this name)

from byoc_agent.runtimes.memory import InMemoryRuntime

pytestmark = [pytest.mark.nats, pytest.mark.asyncio, pytest.mark.security]

CEILING = ("192.0.2.10:443", "192.0.2.11:5432")


class StandInMicrovm(InMemoryRuntime):
    """The in-memory runtime under a microVM runtime's name: the agent treats its sandboxes
    as microvm isolation, and ``specs`` shows what the agent granted."""

    name = "qemu-microvm"


def _create(egress: list[str] | None = None, isolation: str = "microvm") -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "create_sandbox", "sandbox_id": f"sbx-{uuid.uuid4().hex[:12]}",
        "template": "base", "cpu": 1, "memory_mb": 256, "timeout_s": 60, "env": {},
        "isolation": isolation,
    }  # fmt: skip
    if egress is not None:
        body["egress"] = egress
    return body


@pytest_asyncio.fixture
async def verified_agent(_harness: Harness) -> Harness:  # noqa: F811 (the imported fixture)
    """test_job_verification's agent over a real nats-server, to be restarted as a microVM
    agent with a ceiling by :func:`_microvm_agent`."""
    return _harness


async def _microvm_agent(
    h: Harness, ceiling: tuple[str, ...], data_plane_url: str = "http://127.0.0.1:1"
) -> InMemoryRuntime:
    await h.stop_agent()
    h.runtime = StandInMicrovm()
    h.egress_ceiling = ceiling
    h.data_plane_url = data_plane_url
    await h.start_agent()
    return h.runtime


async def test_a_list_within_the_ceiling_reaches_the_runtime_and_none_means_no_network(
    verified_agent: Harness,
) -> None:
    """Entries the operator allows are granted as asked; a create without egress gets an
    empty list (no network), even on an agent with a ceiling."""
    runtime = await _microvm_agent(verified_agent, CEILING)
    job_id, data = verified_agent.job(body=_create(["192.0.2.11:5432"]))
    result = await verified_agent.result_for_sent(job_id, data)
    assert result.status == "succeeded", result.error
    assert result.sandbox is not None
    assert runtime.specs[result.sandbox.sandbox_id].egress == ("192.0.2.11:5432",)

    job_id, data = verified_agent.job(body=_create())
    result = await verified_agent.result_for_sent(job_id, data)
    assert result.status == "succeeded", result.error
    assert result.sandbox is not None
    assert runtime.specs[result.sandbox.sandbox_id].egress == ()


async def test_an_entry_outside_the_ceiling_fails_the_job_naming_it(
    verified_agent: Harness,
) -> None:
    """One entry the operator did not allow fails the whole create; nothing starts."""
    runtime = await _microvm_agent(verified_agent, CEILING)
    job_id, data = verified_agent.job(body=_create(["192.0.2.10:443", "192.0.2.10:8443"]))
    result = await verified_agent.result_for_sent(job_id, data)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.code == "invalid_argument"
    assert "'192.0.2.10:8443'" in result.error.message
    assert "agent operator must allow it" in result.error.message
    assert runtime.created == []


async def test_an_agent_without_a_ceiling_grants_no_egress(verified_agent: Harness) -> None:
    """No CORRAL_AGENT_MICROVM_EGRESS: every list is refused, an empty one still works."""
    runtime = await _microvm_agent(verified_agent, ())
    job_id, data = verified_agent.job(body=_create(["192.0.2.10:443"]))
    result = await verified_agent.result_for_sent(job_id, data)
    assert result.status == "failed"
    assert result.error is not None
    assert "'192.0.2.10:443'" in result.error.message
    job_id, data = verified_agent.job(body=_create([]))
    assert (await verified_agent.result_for_sent(job_id, data)).status == "succeeded"
    assert len(runtime.created) == 1


@pytest.mark.parametrize(
    "entry",
    ["127.0.0.1:4222", "127.8.9.10:8788", "169.254.169.254:80", "169.254.1.1:443",
     "0.1.2.3:80", "192.0.2.50:22", "192.0.2.50:8788"],
)  # fmt: skip
async def test_host_addresses_are_refused_even_when_the_ceiling_lists_them(
    verified_agent: Harness, entry: str
) -> None:
    """Loopback, link-local (the metadata service), 0.0.0.0/8 and the agent's own
    data-plane address (any port) are never granted, whatever the operator listed."""
    runtime = await _microvm_agent(
        verified_agent, (*CEILING, entry), data_plane_url="http://192.0.2.50:8788"
    )
    job_id, data = verified_agent.job(body=_create([CEILING[0], entry]))
    result = await verified_agent.result_for_sent(job_id, data)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.code == "invalid_argument"
    assert f"'{entry}'" in result.error.message
    assert "no sandbox may reach" in result.error.message
    assert runtime.created == []
