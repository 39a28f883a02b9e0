"""Best-fit placement over online agents."""

from __future__ import annotations

import pytest

from byoc_agent.protocol.errors import CapacityError, TemplateNotFoundError
from control_plane.scheduler import Candidate, Request, choose, isolations_of

REQ = Request(tenant_id="t_1", template="base", cpu=2, memory_mb=1024)


def agent(agent_id: str, cpu: int, mem: int, templates: tuple[str, ...] = ("base",)) -> Candidate:
    return Candidate(
        agent_id=agent_id, templates=frozenset(templates), cpu_free=cpu, memory_mb_free=mem
    )


def test_the_tightest_fitting_agent_is_chosen() -> None:
    """The agent left with the least room after placement wins."""
    chosen = choose(REQ, [agent("a_big", 32, 65536), agent("a_snug", 3, 2048), agent("a_x", 1, 0)])
    assert chosen.agent_id == "a_snug"


def test_no_online_agent_is_a_capacity_error() -> None:
    """With nobody online the request is retryable (503), not a missing template."""
    with pytest.raises(CapacityError):
        choose(REQ, [])


def test_a_template_nobody_offers_is_not_found() -> None:
    """Online agents that lack the template make it a 404, not a 503."""
    with pytest.raises(TemplateNotFoundError):
        choose(REQ, [agent("a_1", 8, 8192, templates=("other",))])


def test_agents_without_room_are_a_capacity_error() -> None:
    """Agents offering the template but full are a capacity problem."""
    with pytest.raises(CapacityError):
        choose(REQ, [agent("a_1", 1, 8192), agent("a_2", 8, 512)])


def test_a_microvm_goes_only_to_an_agent_that_runs_microvms() -> None:
    """Isolation is a hard constraint: the only microVM-capable agent wins even if looser."""
    gvisor_only = agent("a_snug", 3, 2048)
    both = Candidate(
        agent_id="a_vm",
        templates=frozenset({"base"}),
        cpu_free=32,
        memory_mb_free=65536,
        isolations=isolations_of(["gvisor", "qemu-microvm"]),
    )
    vm_req = Request(tenant_id="t_1", template="base", cpu=2, memory_mb=1024, isolation="microvm")
    assert choose(vm_req, [gvisor_only, both]).agent_id == "a_vm"
    with pytest.raises(CapacityError, match="microvm"):
        choose(vm_req, [gvisor_only])


def test_isolation_classes_come_from_runtime_names() -> None:
    """Known runtimes map to their class; unknown names add nothing."""
    assert isolations_of(["gvisor"]) == {"gvisor"}
    assert isolations_of(["firecracker", "qemu-microvm"]) == {"microvm"}
    assert isolations_of(["something-new"]) == frozenset()
