"""The egress allow-list: what an entry may be, and what each runtime does with one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from byoc_agent.egress import EgressCeiling
from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.protocol.messages import CreateSandboxBody
from byoc_agent.runtimes.base import MAX_EGRESS, EgressRule, SandboxSpec, parse_egress
from byoc_agent.runtimes.firecracker import FirecrackerRuntime
from byoc_agent.runtimes.gvisor import GVisorRuntime
from byoc_agent.runtimes.qemu_microvm import QemuMicrovmRuntime, guest_address
from byoc_agent.settings import AgentSettings


def test_ipv4_and_port_entries_parse_in_order() -> None:
    assert parse_egress(["127.0.0.1:8080", "192.0.2.10:443"]) == (
        EgressRule("127.0.0.1", 8080),
        EgressRule("192.0.2.10", 443),
    )
    assert parse_egress([]) == ()


@pytest.mark.parametrize(
    "entry",
    [
        "example.com:443",  # hostnames are not resolved
        "127.0.0.1",  # no port
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:80-90",  # no ranges
        "127.0.0.1:+80",
        "127.0.0.1:080",
        "10.0.0.0/8:80",  # no networks
        "[::1]:80",  # no IPv6
        "::1:80",
        "1.2.3:80",
        "01.2.3.4:80",  # ambiguous leading zeros
        " 127.0.0.1:80",
        "0.0.0.0:80",  # nobody can connect there
        "224.0.0.1:80",
        "255.255.255.255:80",
    ],
)
def test_anything_else_is_refused_naming_the_entry(entry: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_egress(["127.0.0.1:1", entry])
    assert repr(entry) in str(info.value)


def test_duplicates_and_overlong_lists_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="listed twice"):
        parse_egress(["127.0.0.1:80", "127.0.0.1:80"])
    parse_egress([f"127.0.0.1:{p}" for p in range(1, MAX_EGRESS + 1)])
    with pytest.raises(InvalidArgumentError, match=f"at most {MAX_EGRESS}"):
        parse_egress([f"127.0.0.1:{p}" for p in range(1, MAX_EGRESS + 2)])


def test_no_allow_list_means_no_network_device() -> None:
    assert QemuMicrovmRuntime._network_args([]) == []


def test_each_destination_gets_its_own_restricted_forward() -> None:
    argv = QemuMicrovmRuntime._network_args(["127.0.0.1:8080", "192.0.2.10:443"])
    assert argv[0] == "-netdev"
    assert argv[2:] == ["-device", "virtio-net-device,netdev=net0"]
    options = argv[1].split(",")
    assert "restrict=on" in options
    assert "ipv6=off" in options
    forwards = [o for o in options if o.startswith("guestfwd=")]
    assert len(forwards) == 2
    assert forwards[0].startswith(f"guestfwd=tcp:{guest_address(0)}:8080-cmd:")
    assert forwards[0].endswith(" nc 127.0.0.1 8080")
    assert forwards[1].startswith(f"guestfwd=tcp:{guest_address(1)}:443-cmd:")
    assert forwards[1].endswith(" nc 192.0.2.10 443")


def test_the_guest_is_told_the_mapping_on_its_command_line() -> None:
    line = QemuMicrovmRuntime._cmdline("kvm", "sb-1", ["127.0.0.1:8080"])
    assert "corral.net=1" in line.split()
    assert f"corral.egress={guest_address(0)}:8080=127.0.0.1:8080" in line.split()
    assert "corral.net" not in QemuMicrovmRuntime._cmdline("kvm", "sb-1")


def _spec(egress: tuple[str, ...]) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id="egress-1", tenant_id="t-1", template="base", cpu=1, memory_mb=256,
        timeout_s=60, egress=egress,
    )  # fmt: skip


@pytest.mark.asyncio
async def test_gvisor_refuses_an_allow_list_instead_of_ignoring_it(tmp_path: Path) -> None:
    runtime = GVisorRuntime(tmp_path / "state", tmp_path / "templates", runsc="/bin/true",
                            disk_mb=0)  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="use isolation=microvm"):
        await runtime.create(_spec(("127.0.0.1:8080",)))
    assert not (tmp_path / "state" / "sandboxes" / "egress-1").exists()


@pytest.mark.asyncio
async def test_microvm_refuses_a_bad_entry_before_starting_anything(tmp_path: Path) -> None:
    runtime = QemuMicrovmRuntime(tmp_path / "state", tmp_path / "templates", qemu="/bin/true",
                                 accel="tcg", socket_root=tmp_path / "s")  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="'localhost:80'"):
        await runtime.create(_spec(("localhost:80",)))


def test_agent_setting_is_validated_when_the_agent_starts() -> None:
    settings = AgentSettings.from_env(
        {"CORRAL_AGENT_MICROVM_EGRESS": "127.0.0.1:8080, 192.0.2.10:443"}
    )
    assert settings.microvm_egress == ("127.0.0.1:8080", "192.0.2.10:443")
    assert AgentSettings.from_env({}).microvm_egress == ()
    with pytest.raises(InvalidArgumentError, match=re.escape("'127.0.0.1'")):
        AgentSettings.from_env({"CORRAL_AGENT_MICROVM_EGRESS": "127.0.0.1"})


def test_firecracker_refuses_an_allow_list_it_cannot_provide() -> None:
    """No per-sandbox network in the Firecracker runtime yet: refused, not silently dropped."""
    with pytest.raises(InvalidArgumentError, match="qemu-microvm"):
        FirecrackerRuntime._validate(_spec(("192.0.2.10:443",)))
    FirecrackerRuntime._validate(_spec(()))


def test_the_ceiling_grants_listed_entries_normalized_and_nothing_else() -> None:
    ceiling = EgressCeiling.of(["192.0.2.10:443", "192.0.2.11:5432"])
    assert ceiling.grant([]) == ()
    assert ceiling.grant(["192.0.2.11:5432", "192.0.2.10:443"]) == (
        "192.0.2.11:5432", "192.0.2.10:443",
    )  # fmt: skip
    with pytest.raises(InvalidArgumentError, match=r"'192\.0\.2\.10:80'.*operator must allow") as e:
        ceiling.grant(["192.0.2.10:443", "192.0.2.10:80"], job_id="job-1")
    assert e.value.fields == {"field": "egress", "job_id": "job-1"}
    with pytest.raises(InvalidArgumentError, match="'nope'"):
        ceiling.grant(["nope"])
    assert EgressCeiling().never_granted() == []


def test_host_addresses_in_the_ceiling_are_never_granted_and_named_at_start() -> None:
    ceiling = EgressCeiling.of(
        ["127.0.0.1:4222", "169.254.169.254:80", "0.0.0.1:1", "10.0.0.7:8788", "10.0.0.8:443"],
        own_hosts=["10.0.0.7", "agent.internal", None],
    )
    assert [str(r) for r in ceiling.never_granted()] == [
        "0.0.0.1:1", "10.0.0.7:8788", "127.0.0.1:4222", "169.254.169.254:80",
    ]  # fmt: skip
    for entry in ("127.0.0.1:4222", "169.254.169.254:80", "0.0.0.1:1", "10.0.0.7:8788"):
        with pytest.raises(InvalidArgumentError, match="no sandbox may reach"):
            ceiling.grant([entry])
    assert ceiling.grant(["10.0.0.8:443"]) == ("10.0.0.8:443",)


def test_the_create_job_omits_an_empty_egress_list() -> None:
    """Old agents and old golden bytes: a create without egress has no egress key at all."""
    body = CreateSandboxBody(sandbox_id="sbx-1", template="base", cpu=1, memory_mb=256,
                             timeout_s=60)  # fmt: skip
    assert "egress" not in body.model_dump(mode="json")
    with_list = body.model_copy(update={"egress": ["192.0.2.10:443"]})
    assert with_list.model_dump(mode="json")["egress"] == ["192.0.2.10:443"]
