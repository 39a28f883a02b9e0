"""Each stack's program, run under Pulumi mocks: what it would create, input by input."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from infra.component import COMPONENT_TYPE
from infra.plan import Plan, RecordedResource
from infra.render import render
from tests.unit.infra.infra_cases import TOKEN

pytestmark = pytest.mark.infra


def one(plan: Plan, type_token: str, name: str | None = None) -> RecordedResource:
    found = [r for r in plan.of_type(type_token) if name is None or r.name == name]
    assert len(found) == 1, f"{type_token} {name}: {[r.name for r in found]}"
    return found[0]


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure", "baremetal"])
def test_every_stack_is_one_corral_agent_component(plans: dict[str, Plan], cloud: str) -> None:
    """Every stack registers exactly one CorralAgent, and exports the install as a secret."""
    plan = plans[cloud]
    assert [r.name for r in plan.of_type(COMPONENT_TYPE)] == ["acme-agent"]
    assert plan.outputs["cloud"] == cloud
    assert "install_script" in plan.secret_outputs
    assert TOKEN in plan.outputs["install_script"]


def test_baremetal_creates_nothing_in_a_cloud(plans: dict[str, Plan]) -> None:
    """Bare metal is the component alone: its outputs are the bundle."""
    assert [r.type for r in plans["baremetal"]] == [COMPONENT_TYPE]
    assert plans["baremetal"].permissions[0].condition == "no cloud credentials"


def test_aws_network_is_private_with_nat_egress_only(plans: dict[str, Plan]) -> None:
    """Private subnets route 0.0.0.0/0 to a NAT gateway; only the NAT subnet sees the IGW."""
    p = plans["aws"]
    subnets = {r.name: r for r in p.of_type("aws:ec2/subnet:Subnet")}
    assert set(subnets) == {"acme-agent-nat-subnet", "acme-agent-private-1",
                            "acme-agent-private-2"}
    assert all(s.get("mapPublicIpOnLaunch") is False for s in subnets.values())
    nat = one(p, "aws:ec2/natGateway:NatGateway")
    assert nat.get("subnetId") == "acme-agent-nat-subnet-id"
    private_rt = one(p, "aws:ec2/routeTable:RouteTable", "acme-agent-private-rt")
    assert private_rt.get("routes") == [{"cidrBlock": "0.0.0.0/0",
                                         "natGatewayId": "acme-agent-nat-id"}]
    assocs = {r.get("subnetId"): r.get("routeTableId")
              for r in p.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")}
    assert assocs == {"acme-agent-private-1-id": "acme-agent-private-rt-id",
                      "acme-agent-private-2-id": "acme-agent-private-rt-id",
                      "acme-agent-nat-subnet-id": "acme-agent-public-rt-id"}
    sg = one(p, "aws:ec2/securityGroup:SecurityGroup")
    assert sg.get("ingress") in (None, [])
    default_sg = one(p, "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert default_sg.get("ingress") in (None, [])
    assert default_sg.get("egress") in (None, [])


def _policy(p: Plan) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(one(p, "aws:iam/rolePolicy:RolePolicy").get("policy"))
    return {s["Sid"]: s for s in doc["Statement"]}


def test_aws_agent_role_is_conditioned_on_corral_tags(plans: dict[str, Plan]) -> None:
    """Run only tagged instances, manage only tagged ones, pass only the host role."""
    st = _policy(plans["aws"])
    assert st["RunTaggedHosts"]["Condition"] == {
        "StringEquals": {"aws:RequestTag/corral:managed-by": "corral"}}
    assert [r.split(":")[-1] for r in st["RunTaggedHosts"]["Resource"]] == [
        "instance/*", "volume/*"]
    assert st["ManageOwnHosts"]["Action"] == ["ec2:StartInstances", "ec2:StopInstances",
                                              "ec2:RebootInstances", "ec2:TerminateInstances"]
    assert st["ManageOwnHosts"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/corral:managed-by": "corral"}}
    assert st["TagAtLaunchOnly"]["Condition"] == {
        "StringEquals": {"ec2:CreateAction": "RunInstances"}}
    host_role_arn = "arn:aws:iam::000000000000:role/acme-agent-host"
    assert st["PassHostRoleOnly"]["Resource"] == [host_role_arn]
    assert st["PassHostRoleOnly"]["Action"] == ["iam:PassRole"]
    assert st["RunInOurVpc"]["Condition"]["StringEquals"]["ec2:Vpc"].endswith("acme-agent-vpc")
    # Nothing but Describe is granted on every resource.
    for sid, s in st.items():
        if s["Resource"] == ["*"]:
            assert all(a.startswith("ec2:Describe") for a in s["Action"]), sid
    allowed = {a for s in st.values() for a in s["Action"]}
    assert not {a for a in allowed if a.endswith("*")}


def test_aws_launch_template_imdsv2_encrypted_no_key_ssm(plans: dict[str, Plan]) -> None:
    """IMDSv2 with hop limit 1, encrypted gp3 root, no key pair, SSM core on the role,
    and user data that is a secret cloud-init running the install script."""
    p = plans["aws"]
    lt = one(p, "aws:ec2/launchTemplate:LaunchTemplate")
    assert lt.get("metadataOptions") == {"httpEndpoint": "enabled", "httpTokens": "required",
                                         "httpPutResponseHopLimit": 1,
                                         "instanceMetadataTags": "disabled"}
    assert lt.get("blockDeviceMappings.0.ebs.encrypted") == "true"
    assert lt.get("networkInterfaces.0.associatePublicIpAddress") == "false"
    assert lt.get("networkInterfaces.0.subnetId") == "acme-agent-private-1-id"
    assert lt.get("keyName") is None
    assert "userData" in lt.secret_paths
    cloud_init = base64.b64decode(lt.get("userData")).decode()
    assert cloud_init.startswith("#cloud-config")
    bundle = render_for(p)
    # The install script, after the SSM agent that Debian's AMIs lack.
    assert f"content: {base64.b64encode(bundle.install_script.encode()).decode()}" in cloud_init
    runcmd = cloud_init.split("runcmd:\n")[1].splitlines()
    assert "amazon-ssm-agent.deb" in runcmd[0]
    assert "s3.us-east-1.amazonaws.com" in runcmd[0]
    assert runcmd[1] == "  - [bash, /var/lib/corral-install/install.sh]"
    ssm = {r.get("role") for r in p.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
           if r.get("policyArn", "").endswith("AmazonSSMManagedInstanceCore")}
    assert ssm == {"acme-agent-agent", "acme-agent-host"}
    inst = one(p, "aws:ec2/instance:Instance")
    assert inst.get("launchTemplate.id") == lt.id


def test_the_grants_match_what_the_agents_host_providers_do() -> None:
    """The AWS tag and the GCP name prefix the conditions rely on are the ones the agent's
    providers actually set (byoc_agent/providers)."""
    from byoc_agent.providers.base import HostSpec
    from infra.stacks.gcp import HOST_NAME_PREFIX

    gcp_provider = pytest.importorskip("byoc_agent.providers.gcp")
    assert gcp_provider.instance_name("any-client-token").startswith(HOST_NAME_PREFIX)
    spec = HostSpec(tenant_id="t", agent_id="a", instance_type="m7i.metal-24xl",
                    client_token="c")
    assert spec.all_tags()["corral:managed-by"] == "corral"


def render_for(p: Plan) -> Any:
    from infra.config import AgentInstall

    return render(AgentInstall(control_plane_url="https://corral.example.com",
                               enrollment_token=TOKEN, name="acme-agent",
                               labels={"team": "platform"}))


def test_gcp_private_shielded_os_login_behind_cloud_nat(plans: dict[str, Plan]) -> None:
    """Custom VPC, Cloud NAT for the subnet, deny-all ingress, Shielded VM with no
    external IP, OS Login, and the install script as a secret startup script."""
    p = plans["gcp"]
    assert one(p, "gcp:compute/network:Network").get("autoCreateSubnetworks") is False
    nat = one(p, "gcp:compute/routerNat:RouterNat")
    assert nat.get("sourceSubnetworkIpRangesToNat") == "LIST_OF_SUBNETWORKS"
    assert nat.get("subnetworks.0.name") == "acme-agent-private-id"
    fw = one(p, "gcp:compute/firewall:Firewall")
    assert fw.get("direction") == "INGRESS"
    assert fw.get("denies") == [{"protocol": "all"}]
    assert not fw.get("allows")
    vm = one(p, "gcp:compute/instance:Instance")
    assert vm.get("shieldedInstanceConfig") == {"enableSecureBoot": True, "enableVtpm": True,
                                                "enableIntegrityMonitoring": True}
    assert vm.get("networkInterfaces") == [{"subnetwork": "acme-agent-private-id"}]
    assert vm.get("metadata.enable-oslogin") == "TRUE"
    assert vm.get("metadata.block-project-ssh-keys") == "TRUE"
    assert vm.get("metadata.startup-script") == render_for(p).install_script
    assert "metadata" in vm.secret_paths
    assert vm.get("serviceAccount.email") == "acme-agent-agent@project.iam.gserviceaccount.com"


def test_gcp_service_account_has_only_the_roles_it_needs(plans: dict[str, Plan]) -> None:
    """Two custom roles — launch, and manage only this install's hosts (IAM condition) —
    log/metric writers, and serviceAccountUser on the host account only."""
    p = plans["gcp"]
    roles = {r.get("roleId"): r.get("permissions")
             for r in p.of_type("gcp:projects/iAMCustomRole:IAMCustomRole")}
    assert set(roles) == {"corral_acme_agent_launch", "corral_acme_agent_manage"}
    assert "compute.instances.create" in roles["corral_acme_agent_launch"]
    assert "compute.instances.delete" not in roles["corral_acme_agent_launch"]
    assert set(roles["corral_acme_agent_manage"]) == {
        "compute.instances.delete", "compute.instances.start", "compute.instances.stop",
        "compute.instances.reset"}
    every = [x for perms in roles.values() for x in perms]
    assert not [x for x in every if x.startswith(("iam.", "resourcemanager.")) or "*" in x]
    bindings = {r.get("role"): r for r in p.of_type("gcp:projects/iAMMember:IAMMember")}
    assert sorted(bindings) == ["projects/project/roles/corral_acme_agent_launch",
                                "projects/project/roles/corral_acme_agent_manage",
                                "roles/logging.logWriter", "roles/monitoring.metricWriter"]
    manage = bindings["projects/project/roles/corral_acme_agent_manage"]
    assert manage.get("condition.expression") == (
        'resource.type == "compute.googleapis.com/Instance" && resource.name.startsWith('
        '"projects/my-project/zones/us-central1-a/instances/corral-")')
    assert bindings["projects/project/roles/corral_acme_agent_launch"].get("condition") is None
    sa_binding = one(p, "gcp:serviceaccount/iAMMember:IAMMember")
    assert sa_binding.get("role") == "roles/iam.serviceAccountUser"
    assert sa_binding.get("serviceAccountId").endswith("acme-agent-host@project.iam."
                                                       "gserviceaccount.com")


def test_azure_private_vm_with_scoped_identity(plans: dict[str, Plan]) -> None:
    """NAT gateway egress, an NSG denying inbound, a custom role assignable only in the
    resource group, password login off, no public IP, cloud-init as secret custom data."""
    p = plans["azure"]
    subnet = one(p, "azure-native:network:Subnet")
    assert subnet.get("natGateway.id") == "acme-agent-nat-id"
    assert subnet.get("networkSecurityGroup.id") == "acme-agent-nsg-id"
    assert subnet.get("defaultOutboundAccess") is False
    rules = one(p, "azure-native:network:NetworkSecurityGroup").get("securityRules")
    assert [(r["direction"], r["access"], r["sourceAddressPrefix"]) for r in rules] == [
        ("Inbound", "Deny", "*")]
    rg_id = "acme-agent-rg-id"
    role = one(p, "azure-native:authorization:RoleDefinition")
    assert role.get("assignableScopes") == [rg_id]
    assert role.get("scope") == rg_id
    assert not [a for a in role.get("permissions.0.actions") if "*" in a]
    assignment = one(p, "azure-native:authorization:RoleAssignment")
    assert assignment.get("scope") == rg_id
    assert assignment.get("roleDefinitionId") == role.id
    assert assignment.get("principalType") == "ServicePrincipal"
    vm = one(p, "azure-native:compute:VirtualMachine")
    assert vm.get("osProfile.linuxConfiguration.disablePasswordAuthentication") is True
    assert vm.get("osProfile.adminPassword") is None
    assert vm.get("identity.userAssignedIdentities") == ["acme-agent-agent-id"]
    assert vm.get("securityProfile.securityType") == "TrustedLaunch"
    nic = one(p, "azure-native:network:NetworkInterface")
    assert "publicIPAddress" not in nic.get("ipConfigurations.0")
    assert "osProfile" in vm.secret_paths
    custom = base64.b64decode(vm.get("osProfile.customData")).decode()
    assert custom == render_for(p).cloud_init


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_dataplane_clients_open_only_the_data_plane_port(cloud: str) -> None:
    """Given private client networks, the one new ingress rule is the data plane port."""
    from infra.config import AgentInstall, AzureOptions
    from infra.plan import record
    from infra.policy import check
    from infra.stacks import default_target
    from infra.stacks.azure import AzureHost
    from tests.unit.infra.infra_cases import SSH_KEY

    agent = AgentInstall(control_plane_url="https://c.example.com", enrollment_token=TOKEN,
                         dataplane_clients=("10.9.0.0/16",))
    target = AzureHost(AzureOptions(ssh_public_key=SSH_KEY)) if cloud == "azure" else (
        default_target(cloud))
    plan = record(agent, target)
    assert check(plan, secret=TOKEN) == []
    text = json.dumps([r.inputs for r in plan])
    assert "10.9.0.0/16" in text
    assert "8788" in text
