"""Azure (azure-native): a VNet whose subnet egresses through a NAT gateway, an NSG that
denies inbound, a user-assigned managed identity with a custom role scoped to the
install's resource group, and a Trusted Launch VM with password login off, no public IP
and cloud-init custom data. People log in with Entra ID (``az ssh vm``).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import authorization, compute, managedidentity, network, resources

from infra.base import BootFiles, Deployed, Permission
from infra.config import AgentInstall, AzureOptions
from infra.errors import InstallConfigError
from infra.render import host_settings

ADMIN_USER = "corral"
# The agent's own image, as "publisher:offer:sku:version" for its AzureProvider.
HOST_IMAGE = "Debian:debian-12:12-gen2:latest"
AGENT_ACTIONS = (
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/virtualMachines/write",
    "Microsoft.Compute/virtualMachines/delete",
    "Microsoft.Compute/virtualMachines/start/action",
    "Microsoft.Compute/virtualMachines/deallocate/action",
    "Microsoft.Compute/disks/read",
    "Microsoft.Compute/disks/write",
    "Microsoft.Compute/disks/delete",
    "Microsoft.Network/networkInterfaces/read",
    "Microsoft.Network/networkInterfaces/write",
    "Microsoft.Network/networkInterfaces/delete",
    "Microsoft.Network/networkInterfaces/join/action",
    "Microsoft.Network/virtualNetworks/subnets/read",
    "Microsoft.Network/virtualNetworks/subnets/join/action",
    "Microsoft.Network/networkSecurityGroups/join/action",
)


@dataclass(frozen=True, slots=True)
class AzureHost:
    options: AzureOptions = field(default_factory=AzureOptions)
    cloud: str = "azure"

    def permissions(self, agent: AgentInstall) -> list[Permission]:
        return [Permission(f"managed identity {agent.name}-agent", action,
                           f"resource group {agent.name}-rg only",
                           f"custom role 'Corral agent {agent.name}'")
                for action in AGENT_ACTIONS]

    def deploy(
        self, parent: pulumi.Resource, agent: AgentInstall, boot: BootFiles
    ) -> Deployed:
        o = self.options
        if not o.ssh_public_key:
            raise InstallConfigError(
                "AzureOptions.ssh_public_key is required (corral install makes one)")
        if agent.hosts.enabled and not agent.hosts.prices:
            raise InstallConfigError(
                "hosts.prices is required for Azure hosts (VM size=$/hour, e.g. "
                "Standard_D8s_v5=0.384): the agent launches only sizes with a price")
        n = agent.name
        tags = agent.tags()
        about = f"Corral agent install {n}"
        opts = pulumi.ResourceOptions(parent=parent)

        rg = resources.ResourceGroup(f"{n}-rg", resource_group_name=f"{n}-rg",
                                     location=o.location, tags=tags, opts=opts)
        rgn, loc = rg.name, o.location
        nat_ip = network.PublicIPAddress(
            f"{n}-nat-ip", public_ip_address_name=f"{n}-nat-ip",
            sku=network.PublicIPAddressSkuArgs(name="Standard"),
            public_ip_allocation_method="Static",
            resource_group_name=rgn, location=loc, tags=tags, opts=opts)
        nat = network.NatGateway(
            f"{n}-nat", nat_gateway_name=f"{n}-nat",
            sku=network.NatGatewaySkuArgs(name="Standard"),
            public_ip_addresses=[network.SubResourceArgs(id=nat_ip.id)],
            resource_group_name=rgn, location=loc, tags=tags, opts=opts)
        rules = [network.SecurityRuleArgs(
            name="deny-all-inbound", priority=4096, direction="Inbound", access="Deny",
            protocol="*", source_address_prefix="*", source_port_range="*",
            destination_address_prefix="*", destination_port_range="*",
            description="Corral: nothing may connect in")]
        if agent.dataplane_clients:
            rules.append(network.SecurityRuleArgs(
                name="corral-dataplane", priority=100, direction="Inbound", access="Allow",
                protocol="Tcp", source_address_prefixes=list(agent.dataplane_clients),
                source_port_range="*", destination_address_prefix="VirtualNetwork",
                destination_port_range=str(agent.dataplane_port),
                description="Corral data plane from private clients"))
        nsg = network.NetworkSecurityGroup(
            f"{n}-nsg", network_security_group_name=f"{n}-nsg", security_rules=rules,
            resource_group_name=rgn, location=loc, tags=tags, opts=opts)
        vnet = network.VirtualNetwork(
            f"{n}-vnet", virtual_network_name=f"{n}-vnet",
            address_space=network.AddressSpaceArgs(address_prefixes=[o.vnet_cidr]),
            resource_group_name=rgn, location=loc, tags=tags,
            # The subnet is its own resource; the VNet must not fight it over `subnets`.
            opts=pulumi.ResourceOptions(parent=parent, ignore_changes=["subnets"]))
        subnet = network.Subnet(
            f"{n}-private", subnet_name="private", resource_group_name=rg.name,
            virtual_network_name=vnet.name, address_prefix=_first_24(o.vnet_cidr),
            network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id),
            nat_gateway=network.SubResourceArgs(id=nat.id),
            default_outbound_access=False, opts=opts)

        agent_asg = None
        hosts_subnet = hosts_nsg = None
        if agent.hosts.enabled:
            # The agent's NIC joins this group; the hosts' NSG admits the worker port from it.
            agent_asg = network.ApplicationSecurityGroup(
                f"{n}-agent-asg", application_security_group_name=f"{n}-agent-asg",
                resource_group_name=rgn, location=loc, tags=tags, opts=opts)
            hosts_prefix = _nth_24(o.vnet_cidr, 1)
            hosts_nsg = network.NetworkSecurityGroup(
                f"{n}-hosts-nsg", network_security_group_name=f"{n}-hosts-nsg",
                security_rules=[
                    network.SecurityRuleArgs(
                        name="corral-hostd-from-agent", priority=100, direction="Inbound",
                        access="Allow", protocol="Tcp",
                        source_application_security_groups=[
                            network.ApplicationSecurityGroupArgs(id=agent_asg.id)],
                        source_port_range="*", destination_address_prefix=hosts_prefix,
                        destination_port_range=str(agent.hosts.worker_port),
                        description="Corral: corral-hostd, from the agent only"),
                    network.SecurityRuleArgs(
                        name="deny-all-inbound", priority=4096, direction="Inbound",
                        access="Deny", protocol="*", source_address_prefix="*",
                        source_port_range="*", destination_address_prefix="*",
                        destination_port_range="*",
                        description="Corral: nothing else may connect in")],
                resource_group_name=rgn, location=loc, tags=tags, opts=opts)
            hosts_subnet = network.Subnet(
                f"{n}-hosts", subnet_name="hosts", resource_group_name=rg.name,
                virtual_network_name=vnet.name, address_prefix=hosts_prefix,
                network_security_group=network.NetworkSecurityGroupArgs(id=hosts_nsg.id),
                nat_gateway=network.SubResourceArgs(id=nat.id),
                default_outbound_access=False,
                # ARM updates one subnet of a VNet at a time.
                opts=pulumi.ResourceOptions(parent=parent, depends_on=[subnet]))

        identity = managedidentity.UserAssignedIdentity(
            f"{n}-agent", resource_name_=f"{n}-agent",
            resource_group_name=rgn, location=loc, tags=tags, opts=opts)
        role = authorization.RoleDefinition(
            f"{n}-agent-role", scope=rg.id, role_name=f"Corral agent {n}", description=about,
            role_type="CustomRole", assignable_scopes=[rg.id],
            permissions=[authorization.PermissionArgs(actions=list(AGENT_ACTIONS))], opts=opts)
        authorization.RoleAssignment(
            f"{n}-agent-role", scope=rg.id, principal_id=identity.principal_id,
            principal_type="ServicePrincipal", role_definition_id=role.id,
            description=about, opts=opts)

        nic = network.NetworkInterface(
            f"{n}-agent-nic", network_interface_name=f"{n}-agent-nic",
            ip_configurations=[network.NetworkInterfaceIPConfigurationArgs(
                name="primary", primary=True, private_ip_allocation_method="Dynamic",
                subnet=network.SubnetArgs(id=subnet.id),
                application_security_groups=[network.ApplicationSecurityGroupArgs(
                    id=agent_asg.id)] if agent_asg is not None else None)],
            network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id),
            resource_group_name=rgn, location=loc, tags=tags, opts=opts)
        if hosts_subnet is not None and hosts_nsg is not None:
            client = authorization.get_client_config_output()
            boot = boot.with_hosts(pulumi.Output.all(
                client.subscription_id, rg.name, hosts_subnet.id, hosts_nsg.id).apply(
                lambda a: host_settings(agent, "azure", {
                    "AZURE_SUBSCRIPTION_ID": a[0], "AZURE_RESOURCE_GROUP": a[1],
                    "AZURE_LOCATION": o.location, "IMAGE": HOST_IMAGE,
                    "AZURE_ADMIN_USERNAME": ADMIN_USER,
                    "AZURE_SSH_PUBLIC_KEY": o.ssh_public_key,
                    "SUBNET_ID": a[2], "SECURITY_GROUP_IDS": a[3]})))
        vm = compute.VirtualMachine(
            f"{n}-agent", vm_name=f"{n}-agent",
            hardware_profile=compute.HardwareProfileArgs(vm_size=o.vm_size),
            os_profile=compute.OSProfileArgs(
                computer_name=f"{n}-agent", admin_username=ADMIN_USER,
                custom_data=boot.cloud_init.apply(
                    lambda s: base64.b64encode(s.encode()).decode()),
                linux_configuration=compute.LinuxConfigurationArgs(
                    disable_password_authentication=True, provision_vm_agent=True,
                    ssh=compute.SshConfigurationArgs(public_keys=[compute.SshPublicKeyArgs(
                        path=f"/home/{ADMIN_USER}/.ssh/authorized_keys",
                        key_data=o.ssh_public_key)]))),
            storage_profile=compute.StorageProfileArgs(
                image_reference=compute.ImageReferenceArgs(
                    publisher="Debian", offer="debian-12", sku="12-gen2", version="latest"),
                os_disk=compute.OSDiskArgs(
                    create_option="FromImage", delete_option="Delete", disk_size_gb=o.os_disk_gb,
                    managed_disk=compute.ManagedDiskParametersArgs(
                        storage_account_type="Premium_LRS"))),
            network_profile=compute.NetworkProfileArgs(network_interfaces=[
                compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=True)]),
            identity=compute.VirtualMachineIdentityArgs(
                type=compute.ResourceIdentityType.USER_ASSIGNED,
                user_assigned_identities=[identity.id]),
            security_profile=compute.SecurityProfileArgs(
                security_type="TrustedLaunch",
                uefi_settings=compute.UefiSettingsArgs(
                    secure_boot_enabled=True, v_tpm_enabled=True)),
            resource_group_name=rgn, location=loc, tags=tags, opts=opts)
        compute.VirtualMachineExtension(
            f"{n}-entra-login", vm_extension_name="AADSSHLoginForLinux", vm_name=vm.name,
            publisher="Microsoft.Azure.ActiveDirectory", type="AADSSHLoginForLinux",
            type_handler_version="1.0", auto_upgrade_minor_version=True,
            resource_group_name=rgn, location=loc, tags=tags, opts=opts)
        return Deployed(host=vm.vm_id, private_address=nic.ip_configurations.apply(_first_ip),
                        boot=boot)


def _first_ip(configs: Sequence[network.outputs.NetworkInterfaceIPConfigurationResponse] | None
              ) -> str:
    return (configs[0].private_ip_address or "") if configs else ""


def _first_24(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).subnets(new_prefix=24)))


def _nth_24(cidr: str, index: int) -> str:
    """The index-th /24 inside the VNet's range (1: the hosts' subnet)."""
    net = ipaddress.ip_network(cidr)
    if net.prefixlen <= 24:
        for i, sub in enumerate(net.subnets(new_prefix=24)):
            if i == index:
                return str(sub)
    raise InstallConfigError(
        f"vnet_cidr {cidr} has no room for the hosts' subnet: use a /23 or larger")
