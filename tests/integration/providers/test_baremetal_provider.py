"""BareMetalProvider on a loopback inventory: claims, capacity, persistence, readiness."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
from fake_http import Recorder, Reply, serve
from provider_cases import BM_TYPE, ProviderCase, loopback_hosts, write_inventory

from byoc_agent.main import resolve_capacity
from byoc_agent.protocol.errors import CorralError, InvalidArgumentError, RetryableError
from byoc_agent.providers.baremetal import (
    BareMetalProvider,
    inventory_capacity,
    read_inventory,
    this_machine,
)
from byoc_agent.providers.baremetal import write_inventory as write_local_inventory
from byoc_agent.providers.base import LOCAL, TAG_LOCAL, TAG_TENANT, HostState
from byoc_agent.providers.errors import CapacityUnavailableError, UnknownInstanceTypeError
from byoc_agent.settings import AgentSettings

pytestmark = pytest.mark.asyncio


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def case_for(provider: BareMetalProvider) -> ProviderCase:
    return ProviderCase(name="baremetal", provider=provider, instance_type=BM_TYPE)


async def test_a_json_inventory_offers_its_machines_by_shape(tmp_path: Path) -> None:
    """JSON works like TOML; the type is derived from cpu/memory/gpus when none is given."""
    hosts = loopback_hosts(None)
    hosts.append(
        {
            "id": "gpu-01",
            "address": "127.0.0.1",
            "cpu": 32,
            "memory_mib": 131072,
            "gpus": 2,
            "gpu_model": "L4",
            "instance_type": "bm.gpu",
            "kvm": False,
        }
    )
    provider = BareMetalProvider(write_inventory(tmp_path / "inventory.json", hosts))
    offerings = {o.instance_type: o for o in await provider.list_offerings()}
    assert set(offerings) == {BM_TYPE, "bm.gpu"}
    assert offerings[BM_TYPE].vcpu == 8
    assert offerings[BM_TYPE].kvm
    gpu = offerings["bm.gpu"]
    assert (gpu.gpu_count, gpu.gpu_model, gpu.bare_metal, gpu.kvm) == (2, "L4", True, False)


async def test_when_every_machine_is_claimed_provision_is_retryable_capacity(
    baremetal_case: ProviderCase,
) -> None:
    """Two machines, three requests: the third waits for a release, then succeeds."""
    provider = baremetal_case.provider
    first = await provider.provision(baremetal_case.spec("tok-1"))
    await provider.provision(baremetal_case.spec("tok-2"))
    with pytest.raises(CapacityUnavailableError) as caught:
        await provider.provision(baremetal_case.spec("tok-3"))
    assert isinstance(caught.value, RetryableError)
    assert caught.value.retryable
    assert "terminate" in str(caught.value)

    await provider.terminate(first.host_id)
    third = await provider.provision(baremetal_case.spec("tok-3"))
    assert third.host_id not in {first.host_id}
    assert third.state is HostState.READY


async def test_an_instance_type_not_in_the_inventory_is_unknown(
    baremetal_case: ProviderCase,
) -> None:
    """The error names the types the inventory does offer."""
    spec = dataclasses.replace(baremetal_case.spec("tok-x"), instance_type="bm.huge")
    with pytest.raises(UnknownInstanceTypeError) as caught:
        await baremetal_case.provider.provision(spec)
    assert BM_TYPE in str(caught.value)
    assert not caught.value.retryable


async def test_claims_survive_an_agent_restart(tmp_path: Path, loopback_port: int) -> None:
    """A new provider on the same files sees the same claims, and honours the same tokens."""
    inventory = write_inventory(tmp_path / "inv.toml", loopback_hosts(loopback_port))
    state = tmp_path / "state" / "claims.json"
    state.parent.mkdir()
    before = BareMetalProvider(inventory, state_path=state)
    host = await before.provision(case_for(before).spec("tok-restart", tenant="t-r"))

    after = BareMetalProvider(inventory, state_path=state)
    assert (await after.describe(host.host_id)).host_id == host.host_id
    assert [h.host_id for h in await after.list_by_tag(TAG_TENANT, "t-r")] == [host.host_id]
    again = await after.provision(case_for(after).spec("tok-restart", tenant="t-r"))
    assert again.host_id == host.host_id
    assert json.loads(state.read_text())["claims"][0]["client_token"] == "tok-restart"
    assert not (tmp_path / "inv.toml.claims.json").exists()


async def test_a_machine_whose_port_is_closed_is_provisioning_not_ready(tmp_path: Path) -> None:
    """Readiness is a real TCP connect: refused means the host is still coming up."""
    hosts = loopback_hosts(closed_port())[:1]
    provider = BareMetalProvider(write_inventory(tmp_path / "inv.json", hosts))
    host = await provider.provision(case_for(provider).spec("tok-closed"))
    assert host.state is HostState.PROVISIONING
    assert (await provider.describe(host.host_id)).state is HostState.PROVISIONING


@pytest.mark.parametrize(
    ("hosts", "complaint"),
    [
        ([{"id": "a", "address": "127.0.0.1", "cpu": 8}], "memory_mib"),
        ([{"id": "a", "address": "not-an-ip", "cpu": 8, "memory_mib": 1}], "not an IP"),
        (loopback_hosts(None)[:1] * 2, "appears twice"),
        ([{"id": "a", "address": "127.0.0.1", "cpu": 8, "memory_mib": 1, "port": 0}], "port"),
    ],
    ids=["missing-memory", "bad-address", "duplicate-id", "bad-port"],
)
async def test_a_bad_inventory_is_refused_with_a_message_naming_the_problem(
    tmp_path: Path, hosts: list[dict[str, object]], complaint: str
) -> None:
    """Errors point at the file, the host and the field to fix."""
    with pytest.raises(InvalidArgumentError, match=complaint):
        BareMetalProvider(write_inventory(tmp_path / "inv.json", hosts))


async def test_inventory_capacity_counts_only_ready_machines_in_service(
    tmp_path: Path, loopback_port: int
) -> None:
    """One ready, one cordoned, one whose port is closed: only the first adds capacity."""
    hosts: list[dict[str, object]] = [
        {"id": "up", "address": "127.0.0.1", "port": loopback_port, "cpu": 8,
         "memory_mib": 16384, "gpus": 1},
        {"id": "off", "address": "127.0.0.1", "cpu": 8, "memory_mib": 16384, "gpus": 1,
         "cordoned": True},
        {"id": "down", "address": "127.0.0.1", "port": closed_port(), "cpu": 8,
         "memory_mib": 16384, "gpus": 1},
    ]
    capacity = await inventory_capacity(write_inventory(tmp_path / "inv.json", hosts))
    assert (capacity.cpu, capacity.memory_mib, capacity.gpus) == (8, 16384, 1)
    assert capacity.ready_hosts == ("up",)
    assert capacity.not_ready_hosts == ("down",)


async def test_the_agent_offers_its_inventory_capacity_times_the_cpu_overcommit(
    tmp_path: Path,
) -> None:
    """CORRAL_AGENT_INVENTORY replaces the configured totals; no ready host stops the agent."""
    inventory = tmp_path / "agent" / "inventory.json"
    write_local_inventory(inventory, [this_machine("local")])
    settings = AgentSettings.from_env(
        {"CORRAL_AGENT_HOME": str(tmp_path / "agent"),
         "CORRAL_AGENT_INVENTORY": str(inventory),
         "CORRAL_AGENT_CPU_OVERCOMMIT": "4",
         "CORRAL_AGENT_CPU_TOTAL": "1", "CORRAL_AGENT_MEMORY_MB_TOTAL": "1"}
    )
    machine = this_machine("local")
    assert await resolve_capacity(settings) == (4 * int(str(machine["cpu"])),
                                                int(str(machine["memory_mib"])))

    write_inventory(inventory, loopback_hosts(closed_port())[:1])
    with pytest.raises(CorralError, match="baremetal check"):
        await resolve_capacity(settings)


async def test_a_machine_with_a_health_url_is_ready_only_while_it_answers_2xx(
    tmp_path: Path,
) -> None:
    """health_url replaces the TCP check: 503 keeps the host provisioning, 200 makes it ready."""
    answer = {"status": 503}
    recorder = Recorder()
    with serve(lambda _: Reply(answer["status"], {"status": "starting"}), recorder) as url:
        hosts: list[dict[str, object]] = [
            {"id": "h1", "address": "127.0.0.1", "cpu": 8, "memory_mib": 16384,
             "health_url": f"{url}/healthz"},
        ]
        provider = BareMetalProvider(write_inventory(tmp_path / "inv.json", hosts))
        host = await provider.provision(case_for(provider).spec("tok-health"))
        assert host.state is HostState.PROVISIONING
        answer["status"] = 200
        assert (await provider.describe(host.host_id)).state is HostState.READY
    assert {r.path for r in recorder.requests} == {"/healthz"}


async def test_the_agents_own_machine_is_tagged_local_and_no_other_is(tmp_path: Path) -> None:
    """``local = true`` (what ``make up`` writes) puts corral:local=true on the claimed host;
    list_by_tag finds it; another machine's host has no such tag even if the caller asked."""
    hosts = loopback_hosts(None)
    hosts[0]["local"] = True
    path = write_inventory(tmp_path / "inventory.toml", hosts)
    assert [h.local for h in read_inventory(path).hosts] == [True, False]
    provider = BareMetalProvider(path)
    local = await provider.provision(case_for(provider).spec("tok-local"))
    assert local.host_id.startswith("rack1-01.")
    assert local.tags[TAG_LOCAL] == LOCAL
    spec = dataclasses.replace(case_for(provider).spec("tok-remote"), tags={TAG_LOCAL: LOCAL})
    remote = await provider.provision(spec)
    assert remote.host_id.startswith("rack1-02.")
    assert TAG_LOCAL not in remote.tags
    assert [h.host_id for h in await provider.list_by_tag(TAG_LOCAL, LOCAL)] == [local.host_id]
    assert (await provider.describe(local.host_id)).tags[TAG_LOCAL] == LOCAL

    assert this_machine()["local"] is True
    write_local_inventory(tmp_path / "local.json", [this_machine("local")])
    assert read_inventory(tmp_path / "local.json").hosts[0].local


async def test_an_inventory_with_two_local_machines_or_a_non_boolean_flag_is_refused(
    tmp_path: Path,
) -> None:
    """Only one machine is the agent's own; the message names the hosts and the fix."""
    hosts = [{**h, "local": True} for h in loopback_hosts(None)]
    with pytest.raises(InvalidArgumentError, match=r"'rack1-01', 'rack1-02'.*only one"):
        BareMetalProvider(write_inventory(tmp_path / "two.json", hosts))
    hosts = loopback_hosts(None)
    hosts[0]["local"] = "yes"
    with pytest.raises(InvalidArgumentError, match="'local' must be true or false"):
        BareMetalProvider(write_inventory(tmp_path / "bad.json", hosts))


async def test_user_data_is_refused_even_for_the_local_machine_and_nothing_is_claimed(
    tmp_path: Path,
) -> None:
    """The message says how such hosts are configured; the same token without it works."""
    hosts = loopback_hosts(None)
    hosts[0]["local"] = True
    path = write_inventory(tmp_path / "inventory.json", hosts)
    provider = BareMetalProvider(path)
    spec = case_for(provider).spec("tok-ud", user_data="#cloud-config\n")
    with pytest.raises(InvalidArgumentError) as caught:
        await provider.provision(spec)
    message = str(caught.value)
    assert "out of band" in message
    assert "health_url" in message
    assert "local = true" in message
    assert not path.with_name(path.name + ".claims.json").exists()
    empty = dataclasses.replace(spec, user_data="")
    host = await provider.provision(empty)
    assert host.tags[TAG_LOCAL] == LOCAL
