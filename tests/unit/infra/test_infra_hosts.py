"""Installs with hosts (``hosts.max > 0``): each cloud stack gives the hosts their own
network identity that admits only corral-hostd's worker port, only from the agent, and
writes the host provider's settings into agent.env.

Every plan here is the stack's real Pulumi program under ``pulumi.runtime.set_mocks``
(infra/plan.py), the same record the policy checks before ``pulumi up``.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path

import pytest

from byoc_agent.settings import AgentSettings, HostSettings
from infra.base import HostTarget
from infra.config import AgentInstall, AzureOptions, HostsInstall
from infra.errors import InstallConfigError
from infra.plan import DEPLOY_TIME_AMI, DEPLOY_TIME_SUBSCRIPTION, Plan, RecordedResource, record
from infra.policy import check, enforce
from infra.render import render
from infra.stacks import default_target
from infra.stacks.azure import AzureHost
from infra.stacks.baremetal import BaremetalHost
from tests.unit.infra.infra_cases import SSH_KEY, TOKEN

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[3]
PRICES = {"n2-standard-8": "0.39", "Standard_D8s_v5": "0.384"}
HOSTS = HostsInstall(max=3, budget_per_hour="12.5", prices=PRICES)


def _agent(hosts: HostsInstall = HOSTS) -> AgentInstall:
    return AgentInstall(control_plane_url="https://corral.example.com",
                        enrollment_token=TOKEN, name="acme-agent", hosts=hosts)


def _target(cloud: str) -> HostTarget:
    return (AzureHost(AzureOptions(ssh_public_key=SSH_KEY)) if cloud == "azure"
            else default_target(cloud))


@pytest.fixture(scope="module")
def hosted() -> dict[str, Plan]:
    agent = _agent()
    return {cloud: record(agent, _target(cloud)) for cloud in ("aws", "gcp", "azure")}


def one(plan: Plan, type_token: str, name: str) -> RecordedResource:
    found = [r for r in plan.of_type(type_token) if r.name == name]
    assert len(found) == 1, (type_token, name, [r.name for r in plan.of_type(type_token)])
    return found[0]


def _booted_env(plan: Plan) -> dict[str, str]:
    """agent.env as the agent's machine receives it: out of the secret boot data."""
    if plan.cloud == "aws":
        lt = one(plan, "aws:ec2/launchTemplate:LaunchTemplate", "acme-agent-agent-lt")
        assert "userData" in lt.secret_paths
        boot = base64.b64decode(lt.get("userData")).decode()
    elif plan.cloud == "gcp":
        vm = one(plan, "gcp:compute/instance:Instance", "acme-agent-agent")
        assert "metadata" in vm.secret_paths
        boot = vm.get("metadata")["startup-script"]
    else:
        vm = one(plan, "azure-native:compute:VirtualMachine", "acme-agent-agent")
        assert "osProfile" in vm.secret_paths
        boot = base64.b64decode(vm.get("osProfile.customData")).decode()
    if boot.startswith("#cloud-config"):
        encoded = boot.split("content: ", 1)[1].split()[0]
        boot = base64.b64decode(encoded).decode()
    text = boot.split("<<'CORRAL_AGENT_ENV'\n", 1)[1].split("CORRAL_AGENT_ENV\n", 1)[0]
    # The stack output is the same install script the machine boots.
    assert text in plan.outputs["install_script"]
    return dict(line.split("=", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_stack_with_hosts_passes_every_rule(hosted: dict[str, Plan], cloud: str) -> None:
    """Open ingress, IMDSv2, disks, public IPs, secrets, tags: still all clean."""
    assert check(hosted[cloud], secret=TOKEN) == []
    enforce(hosted[cloud], secret=TOKEN)


def test_aws_hosts_group_admits_only_the_worker_port_from_the_agents_group(
        hosted: dict[str, Plan]) -> None:
    p = hosted["aws"]
    sg_type = "aws:ec2/securityGroup:SecurityGroup"
    agent_sg = one(p, sg_type, "acme-agent-agent-sg")
    hosts_sg = one(p, sg_type, "acme-agent-hosts-sg")
    assert hosts_sg.get("vpcId") == "acme-agent-vpc-id"
    # One rule: TCP 7443 from the agent's group, by reference — no address range at all.
    assert hosts_sg.get("ingress") == [{
        "protocol": "tcp", "fromPort": 7443, "toPort": 7443,
        "securityGroups": [agent_sg.id],
        "description": "corral-hostd, from the Corral agent's security group"}]
    assert hosts_sg.get("egress") == agent_sg.get("egress")
    # The agent itself stays closed, and boots in its own group, not the hosts'.
    assert agent_sg.get("ingress") in (None, [])
    lt = one(p, "aws:ec2/launchTemplate:LaunchTemplate", "acme-agent-agent-lt")
    assert lt.get("networkInterfaces.0.securityGroups") == [agent_sg.id]


def test_aws_agent_may_launch_hosts_only_into_the_hosts_group(hosted: dict[str, Plan]) -> None:
    p = hosted["aws"]
    policy = json.loads(one(p, "aws:iam/rolePolicy:RolePolicy", "acme-agent-agent-hosts")
                        .get("policy"))
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["RunInHostsGroupOnly"]["Resource"] == [
        "arn:aws:ec2::000000000000:securityGroup/acme-agent-hosts-sg"]
    run_resources = [r for s in policy["Statement"] if "ec2:RunInstances" in s["Action"]
                     for r in s["Resource"]]
    assert not [r for r in run_resources if "security-group/*" in r]
    assert by_sid["PassHostRoleOnly"]["Resource"] == [
        "arn:aws:iam::000000000000:role/acme-agent-host"]


def test_gcp_hosts_rule_admits_only_the_worker_port_from_the_agents_tag(
        hosted: dict[str, Plan]) -> None:
    p = hosted["gcp"]
    fw_type = "gcp:compute/firewall:Firewall"
    deny = one(p, fw_type, "acme-agent-deny-ingress")
    assert deny.get("denies") == [{"protocol": "all"}]
    worker = one(p, fw_type, "acme-agent-hosts-worker")
    assert worker.get("direction") == "INGRESS"
    assert worker.get("allows") == [{"protocol": "tcp", "ports": ["7443"]}]
    assert worker.get("sourceTags") == ["corral-agent"]
    assert worker.get("targetTags") == ["corral-host"]
    assert worker.get("sourceRanges") is None
    # Lower number wins in GCP: the allow is evaluated before the deny-all.
    assert worker.get("priority") < deny.get("priority")
    # Allow rules on this network: the worker port, and nothing else (no data plane here).
    allows = [r.name for r in p.of_type(fw_type) if r.get("allows")]
    assert allows == ["acme-agent-hosts-worker"]
    vm = one(p, "gcp:compute/instance:Instance", "acme-agent-agent")
    assert vm.get("tags") == ["corral-agent"]


def test_azure_hosts_nsg_admits_only_the_worker_port_from_the_agents_asg(
        hosted: dict[str, Plan]) -> None:
    p = hosted["azure"]
    asg = one(p, "azure-native:network:ApplicationSecurityGroup", "acme-agent-agent-asg")
    nsg = one(p, "azure-native:network:NetworkSecurityGroup", "acme-agent-hosts-nsg")
    rules = {r["name"]: r for r in nsg.get("securityRules")}
    assert set(rules) == {"corral-hostd-from-agent", "deny-all-inbound"}
    allow = rules["corral-hostd-from-agent"]
    assert (allow["direction"], allow["access"], allow["protocol"]) == ("Inbound", "Allow", "Tcp")
    assert allow["destinationPortRange"] == "7443"
    assert allow["sourceApplicationSecurityGroups"] == [{"id": asg.id}]
    assert "sourceAddressPrefix" not in allow
    assert "sourceAddressPrefixes" not in allow
    deny = rules["deny-all-inbound"]
    assert (deny["access"], deny["sourceAddressPrefix"], deny["destinationPortRange"]) == (
        "Deny", "*", "*")
    assert allow["priority"] < deny["priority"]
    # Hosts get their own subnet behind that NSG (the agent's subnet NSG denies all).
    subnet = one(p, "azure-native:network:Subnet", "acme-agent-hosts")
    assert subnet.get("networkSecurityGroup.id") == nsg.id
    assert subnet.get("addressPrefix") == allow["destinationAddressPrefix"] == "10.44.1.0/24"
    assert subnet.get("natGateway.id") == "acme-agent-nat-id"
    nic = one(p, "azure-native:network:NetworkInterface", "acme-agent-agent-nic")
    assert nic.get("ipConfigurations.0.applicationSecurityGroups") == [{"id": asg.id}]


@pytest.mark.parametrize(("cloud", "where"), [
    ("aws", {"AWS_REGION": "us-east-1", "AWS_IMAGE_ID": DEPLOY_TIME_AMI,
             "SUBNET_ID": "acme-agent-private-1-id",
             "SECURITY_GROUP_IDS": "acme-agent-hosts-sg-id",
             "AWS_INSTANCE_PROFILE":
                 "arn:aws:iam::000000000000:instanceProfile/acme-agent-host"}),
    ("gcp", {"GCP_PROJECT": "my-project", "GCP_ZONE": "us-central1-a",
             "IMAGE": "projects/debian-cloud/global/images/family/debian-12",
             "SUBNET_ID": "https://compute.googleapis.com/acme-agent-private",
             "SECURITY_GROUP_IDS": "corral-host"}),
    ("azure", {"AZURE_SUBSCRIPTION_ID": DEPLOY_TIME_SUBSCRIPTION,
               "AZURE_RESOURCE_GROUP": "acme-agent-rg", "AZURE_LOCATION": "eastus",
               "IMAGE": "Debian:debian-12:12-gen2:latest", "AZURE_ADMIN_USERNAME": "corral",
               "AZURE_SSH_PUBLIC_KEY": SSH_KEY, "SUBNET_ID": "acme-agent-hosts-id",
               "SECURITY_GROUP_IDS": "acme-agent-hosts-nsg-id"}),
])
def test_booted_agent_env_configures_the_host_provider(
        hosted: dict[str, Plan], cloud: str, where: dict[str, str]) -> None:
    """The agent.env inside the boot data names what the stack created, and the agent's
    own settings parser takes it as a working host provider running sandboxes on hostd."""
    env = _booted_env(hosted[cloud])
    expected = {f"CORRAL_AGENT_HOST_{k}": v for k, v in where.items()}
    assert {k: env[k] for k in expected} == expected
    assert env["CORRAL_AGENT_HOST_PROVIDER"] == cloud
    hs = HostSettings.from_env(env)
    assert hs is not None
    assert (hs.provider, hs.workers, hs.worker_port) == (cloud, "hostd", 7443)
    assert (hs.max_hosts, hs.budget_per_hour) == (3, Decimal("12.5"))
    assert hs.worker_package == "corral==0.1.0"  # the agent's own package, never bare "corral"
    assert hs.prices["n2-standard-8"] == Decimal("0.39")
    assert hs.subnet_id == where["SUBNET_ID"]
    assert hs.security_group_ids == (where["SECURITY_GROUP_IDS"],)
    # Every host line is a name HostSettings.from_env reads (no typo goes unnoticed).
    source = (REPO / "byoc_agent/settings.py").read_text()
    for key in (k for k in env if k.startswith("CORRAL_AGENT_HOST")):
        assert f'p + "{key.removeprefix("CORRAL_AGENT_HOST")}"' in source, key
    if cloud == "aws":
        # The profile is the host role's, the one role the agent may pass.
        assert hs.aws_instance_profile == env["CORRAL_AGENT_HOST_AWS_INSTANCE_PROFILE"]
    if cloud == "gcp":
        # Hosts run as the stack's host service account (the agent may only use it).
        assert hs.gcp_service_account
        assert hs.gcp_service_account == env["CORRAL_AGENT_HOST_GCP_SERVICE_ACCOUNT"]
    settings = AgentSettings.from_env(env)
    assert settings.hosts == hs
    # Nothing secret was added: beside the agent's own lines, only host settings, and the
    # token is where it always was.
    plain = render(_agent(HostsInstall())).agent_env
    own = dict(line.split("=", 1) for line in plain.splitlines() if not line.startswith("#"))
    added = {k: v for k, v in env.items() if k not in own}
    assert added
    assert all(k.startswith("CORRAL_AGENT_HOST") for k in added)
    assert not [k for k, v in added.items() if TOKEN in v]
    assert [k for k, v in env.items() if TOKEN in v] == ["CORRAL_AGENT_ENROLLMENT_TOKEN"]


def test_without_hosts_nothing_changes(plans: dict[str, Plan]) -> None:
    """The default (hosts.max = 0): no hosts resources, no host lines in agent.env."""
    for cloud in ("aws", "gcp", "azure"):
        p = plans[cloud]
        assert not [r.name for r in p if "hosts-" in r.name or r.name.endswith("-asg")]
        assert "CORRAL_AGENT_HOST" not in p.outputs["install_script"]
    policy = json.loads(one(plans["aws"], "aws:iam/rolePolicy:RolePolicy",
                            "acme-agent-agent-hosts").get("policy"))
    assert "RunInHostsGroupOnly" not in {s["Sid"] for s in policy["Statement"]}


def test_a_different_worker_port_is_the_one_opened_and_configured() -> None:
    agent = _agent(HostsInstall(max=1, worker_port=9443, prices=PRICES))
    p = record(agent, default_target("gcp"))
    assert one(p, "gcp:compute/firewall:Firewall", "acme-agent-hosts-worker").get(
        "allows") == [{"protocol": "tcp", "ports": ["9443"]}]
    assert _booted_env(p)["CORRAL_AGENT_HOST_WORKER_PORT"] == "9443"
    assert check(p, secret=TOKEN) == []


@pytest.mark.parametrize(("hosts", "message"), [
    ({"max": -1}, "hosts.max=-1: use 0 (no hosts) to 100"),
    ({"max": 1000}, "hosts.max=1000"),
    ({"max": 2, "budget_per_hour": "lots"}, "'lots' is not an amount in $/hour"),
    ({"max": 2, "budget_per_hour": "-1"}, "must be a finite amount >= 0"),
    ({"max": 2, "budget_per_hour": "0"}, "must be above 0 when hosts.max > 0"),
    ({"max": 2, "worker_port": 70000}, "hosts.worker_port 70000 is out of range"),
    ({"max": 2, "prices": {"m7i.metal-24xl": "cheap"}}, "'cheap' is not an amount"),
    ({"max": 2, "prices": {"a b": "1"}}, "instance type may contain only"),
])
def test_bad_hosts_config_fails_with_a_clear_message(hosts: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(InstallConfigError, match=message.replace("$", r"\$")
                       .replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        HostsInstall(**hosts)  # type: ignore[arg-type]


def test_worker_port_must_not_be_the_data_plane_port() -> None:
    with pytest.raises(InstallConfigError, match="is the data plane port"):
        AgentInstall(control_plane_url="https://c.example.com", enrollment_token=TOKEN,
                     dataplane_port=7443, hosts=HostsInstall(max=1))


@pytest.mark.parametrize(("cloud", "message"), [
    ("gcp", "hosts.prices is required for GCP hosts"),
    ("azure", "hosts.prices is required for Azure hosts"),
    ("baremetal", "bare metal: hosts are not set up by the installer"),
])
def test_hosts_a_stack_cannot_configure_are_refused(cloud: str, message: str) -> None:
    """GCP and Azure have no built-in prices (the agent would launch nothing); bare metal
    takes an inventory the installer cannot know."""
    agent = _agent(HostsInstall(max=1))
    target = BaremetalHost() if cloud == "baremetal" else _target(cloud)
    with pytest.raises(InstallConfigError, match=message):
        record(agent, target)


def test_baremetal_bundle_refuses_hosts(tmp_path: Path) -> None:
    from infra.install import write_bundle

    with pytest.raises(InstallConfigError, match="inventory"):
        write_bundle(_agent(HostsInstall(max=1)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_azure_vnet_without_room_for_the_hosts_subnet_is_refused() -> None:
    target = AzureHost(AzureOptions(ssh_public_key=SSH_KEY, vnet_cidr="10.44.0.0/24"))
    with pytest.raises(InstallConfigError, match="no room for the hosts' subnet"):
        record(_agent(), target)
