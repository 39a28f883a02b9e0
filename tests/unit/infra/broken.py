"""A deliberately insecure stack: every rule of infra/policy.py broken at least once.

Used only by the negative policy tests. Each resource's logical name says which rule
it breaks, so the tests can assert the policy points at exactly that resource.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_gcp as gcp
from pulumi_azure_native import compute, network

from infra.base import BootFiles, Deployed, Permission
from infra.config import AgentInstall


@dataclass(frozen=True, slots=True)
class BrokenHost:
    cloud: str = "broken"

    def permissions(self, agent: AgentInstall) -> list[Permission]:
        return []

    def deploy(self, parent: pulumi.Resource, agent: AgentInstall, boot: BootFiles) -> Deployed:
        opts = pulumi.ResourceOptions(parent=parent)
        tags = agent.tags()
        aws.ec2.SecurityGroup(
            "open-ingress-sg", tags=tags, opts=opts,
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=22, to_port=22,
                                                      cidr_blocks=["0.0.0.0/0"])])
        aws.ec2.SecurityGroup(
            "open-ingress-v6-sg", tags=tags, opts=opts,
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="-1", from_port=0, to_port=0,
                                                      ipv6_cidr_blocks=["::/0"])])
        lt = aws.ec2.LaunchTemplate(
            "imdsv1-unencrypted-public-keyed-plaintext-lt", tags=tags, opts=opts,
            key_name="ops-key",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_tokens="optional", http_put_response_hop_limit=2),
            block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name="/dev/xvda",
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(encrypted="false"))],
            network_interfaces=[aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                associate_public_ip_address="true")],
            # The token in plain text: base64 is not a secret.
            user_data=base64.b64encode(agent.enrollment_token.encode()).decode())
        aws.ec2.Instance("untagged-instance", opts=opts,
                         launch_template=aws.ec2.InstanceLaunchTemplateArgs(id=lt.id))
        aws.ec2.Subnet("public-subnet", vpc_id="vpc-1", cidr_block="10.0.0.0/24",
                       map_public_ip_on_launch=True, tags=tags, opts=opts)
        aws.ec2.Eip("stray-eip", domain="vpc", tags=tags, opts=opts)
        aws.ebs.Volume("unencrypted-volume", availability_zone="us-east-1a", size=10,
                       tags=tags, opts=opts)
        gcp.compute.Firewall(
            "open-ingress-fw", network="default", description="Corral", opts=opts,
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=["22"])],
            source_ranges=["0.0.0.0/0"])
        gcp.compute.Instance(
            "public-no-oslogin-vm", machine_type="e2-small", labels=tags, opts=opts,
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image="debian-cloud/debian-12")),
            network_interfaces=[gcp.compute.InstanceNetworkInterfaceArgs(
                network="default",
                access_configs=[gcp.compute.InstanceNetworkInterfaceAccessConfigArgs()])],
            metadata={"startup-script": agent.enrollment_token})
        gcp.compute.Network("undescribed-network", opts=opts)
        network.NetworkSecurityGroup(
            "open-ingress-nsg", resource_group_name="rg", tags=tags, opts=opts,
            security_rules=[network.SecurityRuleArgs(
                name="ssh", priority=100, direction="Inbound", access="Allow", protocol="Tcp",
                source_address_prefix="Internet", source_port_range="*",
                destination_address_prefix="*", destination_port_range="22")])
        pip = network.PublicIPAddress("vm-public-ip", resource_group_name="rg", tags=tags,
                                      opts=opts)
        network.NetworkInterface(
            "public-nic", resource_group_name="rg", tags=tags, opts=opts,
            ip_configurations=[network.NetworkInterfaceIPConfigurationArgs(
                name="ip", public_ip_address=network.PublicIPAddressArgs(id=pip.id))])
        compute.VirtualMachine(
            "password-vm", resource_group_name="rg", tags=tags, opts=opts,
            os_profile=compute.OSProfileArgs(
                admin_username="u", admin_password="hunter2-Hunter2",
                linux_configuration=compute.LinuxConfigurationArgs(
                    disable_password_authentication=False)),
            storage_profile=compute.StorageProfileArgs(os_disk=compute.OSDiskArgs(
                create_option="FromImage", vhd=compute.VirtualHardDiskArgs(uri="https://x/y"))))
        aws.s3.Bucket("unknown-type-bucket", tags=tags, opts=opts)
        return Deployed(host=None, private_address=None)
