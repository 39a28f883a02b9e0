"""The secure-by-default policy over every recorded resource, and proof that it bites."""

from __future__ import annotations

from collections import defaultdict

import pytest

from infra.config import AgentInstall
from infra.errors import PolicyViolationError
from infra.plan import Plan, record
from infra.policy import TAG_RULES, check, enforce
from tests.unit.infra.broken import BrokenHost
from tests.unit.infra.infra_cases import TOKEN

pytestmark = pytest.mark.infra


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure", "baremetal"])
def test_every_stack_passes_every_rule(plans: dict[str, Plan], cloud: str) -> None:
    """No open ingress, IMDSv2, encrypted disks, no public IP, secrets, tags: all clean."""
    plan = plans[cloud]
    assert check(plan, secret=TOKEN) == []
    enforce(plan, secret=TOKEN)


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_every_recorded_resource_has_a_tagging_rule_and_carries_it(
    plans: dict[str, Plan], cloud: str
) -> None:
    """Each resource type the stacks create is listed, and tagged ones carry our tags."""
    for r in plans[cloud]:
        if r.is_provider:
            continue
        assert r.type in TAG_RULES, r.type
        if TAG_RULES[r.type] in ("tags", "labels"):
            have = r.get(TAG_RULES[r.type])
            assert have["corral-managed-by"] == "corral-installer", r.name
            assert have["corral-install"] == "acme-agent", r.name
            assert have["team"] == "platform", r.name


def test_the_token_appears_only_inside_secrets(plans: dict[str, Plan]) -> None:
    """The token does reach each cloud's boot data — and every place it does is secret."""
    holders = {c: sorted(r.name for r in p if r.secret_paths) for c, p in plans.items()}
    assert holders == {"aws": ["acme-agent-agent-lt"], "gcp": ["acme-agent-agent"],
                       "azure": ["acme-agent-agent"], "baremetal": []}


@pytest.fixture(scope="module")
def broken() -> Plan:
    agent = AgentInstall(control_plane_url="https://corral.example.com", enrollment_token=TOKEN)
    return record(agent, BrokenHost())


def test_the_policy_catches_a_deliberately_broken_stack(broken: Plan) -> None:
    """Every rule fires, each on the resource built to break it."""
    found: dict[str, set[str]] = defaultdict(set)
    for v in check(broken, secret=TOKEN):
        found[v.rule].add(v.resource.split()[-1])
    lt = "imdsv1-unencrypted-public-keyed-plaintext-lt"
    assert found["open-ingress"] == {"open-ingress-sg", "open-ingress-v6-sg", "open-ingress-fw",
                                     "open-ingress-nsg"}
    assert found["imdsv2"] == {lt, "untagged-instance"}
    assert found["disk-encryption"] == {lt, "unencrypted-volume", "password-vm"}
    assert found["public-ip"] == {lt, "public-subnet", "stray-eip", "public-no-oslogin-vm",
                                  "vm-public-ip", "public-nic"}
    assert found["login"] == {lt, "public-no-oslogin-vm", "password-vm"}
    assert found["secret"] == {lt, "public-no-oslogin-vm"}
    assert found["tags"] == {"untagged-instance", "undescribed-network", "unknown-type-bucket"}


def test_enforce_refuses_a_broken_plan_with_every_finding(broken: Plan) -> None:
    with pytest.raises(PolicyViolationError) as e:
        enforce(broken, secret=TOKEN)
    assert "[open-ingress]" in str(e.value)
    assert "[secret]" in str(e.value)
