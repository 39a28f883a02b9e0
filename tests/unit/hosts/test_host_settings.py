"""CORRAL_AGENT_HOST* settings: off by default, clear errors naming the variable."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from byoc_agent.hosts.setup import build_fleet
from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.settings import DEFAULT_HOST_PRICES, AgentSettings, HostSettings
from byoc_agent.state import AgentIdentity, AgentStateStore

pytestmark = pytest.mark.providers


def test_an_agent_without_a_host_provider_manages_no_hosts() -> None:
    """No CORRAL_AGENT_HOST_PROVIDER: no fleet, and the heartbeat carries no hosts."""
    assert AgentSettings.from_env({}).hosts is None


def test_the_aws_knobs_are_read_with_prices_over_the_defaults() -> None:
    """Every knob lands in HostSettings; a configured price overrides the default one."""
    hs = HostSettings.from_env({
        "CORRAL_AGENT_HOST_PROVIDER": "aws",
        "CORRAL_AGENT_HOST_AWS_REGION": "eu-west-1",
        "CORRAL_AGENT_HOST_AWS_IMAGE_ID": "ami-0123",
        "CORRAL_AGENT_HOST_SUBNET_ID": "subnet-1",
        "CORRAL_AGENT_HOST_SECURITY_GROUP_IDS": "sg-1, sg-2",
        "CORRAL_AGENT_HOST_INSTANCE_TYPES": "c5.metal",
        "CORRAL_AGENT_HOSTS_MAX": "7",
        "CORRAL_AGENT_HOSTS_BUDGET_PER_HOUR": "30.50",
        "CORRAL_AGENT_HOSTS_IDLE_S": "120",
        "CORRAL_AGENT_HOSTS_OVERCOMMIT_CPU": "2",
        "CORRAL_AGENT_HOST_PRICES": "c5.metal=3.10,x1.metal=12",
    })
    assert hs is not None
    assert (hs.provider, hs.aws_region, hs.aws_image_id) == ("aws", "eu-west-1", "ami-0123")
    assert hs.security_group_ids == ("sg-1", "sg-2")
    assert hs.instance_types == ("c5.metal",)
    assert (hs.max_hosts, hs.budget_per_hour, hs.idle_timeout_s) == (7, Decimal("30.50"), 120)
    assert hs.overcommit_cpu == 2.0
    assert hs.prices["c5.metal"] == Decimal("3.10")
    assert hs.prices["x1.metal"] == Decimal(12)
    assert hs.prices["p5.48xlarge"] == DEFAULT_HOST_PRICES["p5.48xlarge"]
    # a cloud's hosts run the sandboxes themselves (hostd) unless told otherwise
    assert (hs.workers, hs.worker_port, hs.worker_runtimes) == ("hostd", 7443, ("gvisor",))


def test_worker_knobs_and_the_bare_metal_default() -> None:
    hs = HostSettings.from_env({
        "CORRAL_AGENT_HOST_PROVIDER": "aws",
        "CORRAL_AGENT_HOST_AWS_REGION": "eu-west-1",
        "CORRAL_AGENT_HOST_AWS_IMAGE_ID": "ami-0123",
        "CORRAL_AGENT_HOST_WORKER_PORT": "9443",
        "CORRAL_AGENT_HOST_WORKER_RUNTIMES": "gvisor,qemu-microvm",
        "CORRAL_AGENT_HOST_WORKER_PACKAGE": "corral==0.1.0",
        "CORRAL_AGENT_HOSTS_PLACE_TIMEOUT_S": "120",
    })
    assert hs is not None
    assert hs.worker_port == 9443
    assert hs.worker_runtimes == ("gvisor", "qemu-microvm")
    assert (hs.worker_package, hs.place_timeout_s) == ("corral==0.1.0", 120.0)
    bm = HostSettings.from_env({"CORRAL_AGENT_HOST_PROVIDER": "baremetal",
                                "CORRAL_AGENT_HOST_INVENTORY": "i.toml"})
    assert bm is not None
    assert bm.workers == "local"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CORRAL_AGENT_HOST_PROVIDER": "gcpp"}, "CORRAL_AGENT_HOST_PROVIDER"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "aws"}, "CORRAL_AGENT_HOST_AWS_IMAGE_ID"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "baremetal"}, "CORRAL_AGENT_HOST_INVENTORY"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "gcp", "CORRAL_AGENT_HOST_GCP_PROJECT": "p"},
         "CORRAL_AGENT_HOST_GCP_ZONE"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "azure", "CORRAL_AGENT_HOST_IMAGE": "a:b:c:d"},
         "CORRAL_AGENT_HOST_AZURE_SUBSCRIPTION_ID"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "baremetal", "CORRAL_AGENT_HOST_INVENTORY": "i.toml",
          "CORRAL_AGENT_HOSTS_MAX": "lots"}, "CORRAL_AGENT_HOSTS_MAX"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "baremetal", "CORRAL_AGENT_HOST_INVENTORY": "i.toml",
          "CORRAL_AGENT_HOST_PRICES": "c5.metal"}, "CORRAL_AGENT_HOST_PRICES"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "baremetal", "CORRAL_AGENT_HOST_INVENTORY": "i.toml",
          "CORRAL_AGENT_HOSTS_BUDGET_PER_HOUR": "-1"}, "CORRAL_AGENT_HOSTS_BUDGET_PER_HOUR"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "baremetal", "CORRAL_AGENT_HOST_INVENTORY": "i.toml",
          "CORRAL_AGENT_HOST_WORKERS": "hostd"}, "CORRAL_AGENT_HOST_WORKERS"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "baremetal", "CORRAL_AGENT_HOST_INVENTORY": "i.toml",
          "CORRAL_AGENT_HOST_WORKERS": "remote"}, "CORRAL_AGENT_HOST_WORKERS"),
        ({"CORRAL_AGENT_HOST_PROVIDER": "baremetal", "CORRAL_AGENT_HOST_INVENTORY": "i.toml",
          "CORRAL_AGENT_HOST_WORKER_PORT": "70000"}, "CORRAL_AGENT_HOST_WORKER_PORT"),
    ],
)
def test_bad_host_settings_fail_naming_the_variable(env: dict[str, str], names: str) -> None:
    """Each mistake is an InvalidArgumentError whose message names the variable."""
    with pytest.raises(InvalidArgumentError, match=names):
        HostSettings.from_env(env)


def test_build_fleet_gives_owned_inventory_hosts_a_zero_price(tmp_path: Path) -> None:
    """A bare-metal fleet is built from settings; its hosts cost 0 $/h unless priced."""
    inventory = tmp_path / "inventory.json"
    inventory.write_text(
        '{"hosts": [{"id": "rack1-01", "address": "127.0.0.1", "cpu": 8, '
        '"memory_mib": 16384}]}',
        encoding="utf-8",
    )
    hs = HostSettings.from_env({"CORRAL_AGENT_HOST_PROVIDER": "baremetal",
                                "CORRAL_AGENT_HOST_INVENTORY": str(inventory)})
    assert hs is not None
    store = AgentStateStore(tmp_path / "state.db")
    try:
        fleet = build_fleet(hs, store, AgentIdentity("agt-1", "ten-1", "kid", "nats://x"))
        assert fleet.provider.name == "baremetal"
        assert fleet.default_price == Decimal(0)
    finally:
        store.close()


def test_gcp_and_azure_settings_name_where_hosts_go(tmp_path: Path) -> None:
    """The cloud providers come from CORRAL_AGENT_HOST_* too; no credential is configured
    (the clients take the host's identity when built, which these tests never do: building
    one would look for a metadata server)."""
    gcp = HostSettings.from_env({
        "CORRAL_AGENT_HOST_PROVIDER": "gcp", "CORRAL_AGENT_HOST_GCP_PROJECT": "proj-1",
        "CORRAL_AGENT_HOST_GCP_ZONE": "europe-west4-a",
        "CORRAL_AGENT_HOST_IMAGE": "projects/debian-cloud/global/images/family/debian-12",
        "CORRAL_AGENT_HOST_LEDGER": str(tmp_path / "gcp-ledger.json"),
    })
    azure = HostSettings.from_env({
        "CORRAL_AGENT_HOST_PROVIDER": "azure",
        "CORRAL_AGENT_HOST_AZURE_SUBSCRIPTION_ID": "sub",
        "CORRAL_AGENT_HOST_AZURE_RESOURCE_GROUP": "rg",
        "CORRAL_AGENT_HOST_AZURE_LOCATION": "westeurope",
        "CORRAL_AGENT_HOST_IMAGE": "Debian:debian-12:12-gen2:latest",
        "CORRAL_AGENT_HOST_AZURE_SSH_PUBLIC_KEY": "ssh-ed25519 AAAA corral",
    })
    assert gcp is not None
    assert (gcp.gcp_project, gcp.gcp_zone, gcp.ledger) == (
        "proj-1", "europe-west4-a", tmp_path / "gcp-ledger.json"
    )
    assert azure is not None
    assert (azure.azure_resource_group, azure.azure_location, azure.azure_admin_username) == (
        "rg", "westeurope", "corral"
    )
