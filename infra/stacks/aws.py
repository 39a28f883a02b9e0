"""AWS: a private VPC with NAT egress, a closed security group, a least-privilege role,
an IMDSv2-only launch template with an encrypted root volume, and one agent instance.

Access is through SSM Session Manager (``aws ssm start-session``): no SSH key, no port.

The agent's role may run instances only if they carry the ``corral:managed-by=corral`` tag
its host provider sets, stop/terminate only instances that carry it, launch only into this
VPC, and pass only the host role.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from byoc_agent.providers.base import MANAGED_BY, TAG_MANAGED_BY
from infra.base import BootFiles, Deployed, Permission
from infra.config import AgentInstall, AwsOptions
from infra.render import cloud_init, host_settings

# Debian's own AWS account, which publishes the official Debian 12 AMIs.
DEBIAN_AMI_OWNER = "136693071363"
SSM_CORE_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"


def ssm_agent_step(region: str) -> str:
    """Debian's AMIs do not ship the SSM agent; AWS publishes its .deb per region."""
    url = (f"https://s3.{region}.amazonaws.com/amazon-ssm-{region}/latest/debian_amd64/"
           "amazon-ssm-agent.deb")
    return (
        "dpkg-query -W amazon-ssm-agent >/dev/null 2>&1 || "
        f"(curl -fsSL --retry 5 -o /tmp/amazon-ssm-agent.deb {url} && "
        "dpkg -i /tmp/amazon-ssm-agent.deb && systemctl enable --now amazon-ssm-agent)"
    )


@dataclass(frozen=True, slots=True)
class Statement:
    """One IAM policy statement; ``{host_role_arn}`` and ``{vpc_arn}`` are filled at deploy."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: dict[str, dict[str, str]] = field(default_factory=dict)


def agent_statements(agent: AgentInstall, region: str) -> list[Statement]:
    """What the agent's AwsProvider (byoc_agent/providers/aws.py) calls, and no more. It
    tags every instance and volume it launches ``corral:managed-by=corral`` and never
    touches an instance without that tag; the conditions hold it to that. With hosts
    configured (``agent.hosts``), ``{hosts_sg_arn}`` is the only security group allowed."""
    tag = {f"aws:RequestTag/{TAG_MANAGED_BY}": MANAGED_BY}
    owned = {f"aws:ResourceTag/{TAG_MANAGED_BY}": MANAGED_BY}
    ec2 = f"arn:aws:ec2:{region}:*"
    return [
        Statement(
            "RunTaggedHosts", ("ec2:RunInstances",),
            (f"{ec2}:instance/*", f"{ec2}:volume/*"),
            {"StringEquals": tag},
        ),
        Statement(
            "RunInOurVpc", ("ec2:RunInstances",),
            (f"{ec2}:subnet/*", f"{ec2}:network-interface/*")
            + (() if agent.hosts.enabled else (f"{ec2}:security-group/*",)),
            {"StringEquals": {"ec2:Vpc": "{vpc_arn}"}},
        ),
        # With hosts configured, they launch in the hosts security group and no other.
        *([Statement("RunInHostsGroupOnly", ("ec2:RunInstances",), ("{hosts_sg_arn}",))]
          if agent.hosts.enabled else []),
        Statement(
            "RunFromImagesAndTemplates", ("ec2:RunInstances",),
            (f"arn:aws:ec2:{region}::image/*", f"{ec2}:launch-template/*"),
        ),
        Statement(
            "TagAtLaunchOnly", ("ec2:CreateTags",),
            (f"{ec2}:instance/*", f"{ec2}:volume/*", f"{ec2}:network-interface/*"),
            {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
        ),
        Statement(
            "ManageOwnHosts",
            ("ec2:StartInstances", "ec2:StopInstances", "ec2:RebootInstances",
             "ec2:TerminateInstances"),
            (f"{ec2}:instance/*",),
            {"StringEquals": owned},
        ),
        Statement(
            "Describe",
            ("ec2:DescribeInstances", "ec2:DescribeInstanceStatus", "ec2:DescribeInstanceTypes",
             "ec2:DescribeImages", "ec2:DescribeSubnets", "ec2:DescribeLaunchTemplates"),
            ("*",),  # EC2 Describe actions support no resource-level permissions
        ),
        Statement(
            "PassHostRoleOnly", ("iam:PassRole",), ("{host_role_arn}",),
            {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        ),
    ]


def policy_document(statements: list[Statement], values: dict[str, str]) -> str:
    def fill(s: str) -> str:
        return s.format(**values) if "{" in s else s

    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": st.sid,
                "Effect": "Allow",
                "Action": list(st.actions),
                "Resource": [fill(r) for r in st.resources],
                **({"Condition": {op: {k: fill(v) for k, v in kv.items()}
                                  for op, kv in st.condition.items()}} if st.condition else {}),
            }
            for st in statements
        ],
    }, sort_keys=True)


def _assume_ec2() -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                       "Principal": {"Service": "ec2.amazonaws.com"}}],
    })


@dataclass(frozen=True, slots=True)
class AwsHost:
    options: AwsOptions = field(default_factory=AwsOptions)
    cloud: str = "aws"

    def permissions(self, agent: AgentInstall) -> list[Permission]:
        rows = [
            Permission(
                f"role {agent.name}-agent",
                ", ".join(st.actions),
                ", ".join(st.resources),
                " ".join(f"{k}={v}" for kv in st.condition.values() for k, v in kv.items()),
            )
            for st in agent_statements(agent, self.options.region)
        ]
        rows.append(Permission(f"role {agent.name}-agent", "AmazonSSMManagedInstanceCore",
                               "this instance (Session Manager access)"))
        rows.append(Permission(f"role {agent.name}-host", "AmazonSSMManagedInstanceCore",
                               "sandbox hosts the agent starts"))
        return rows

    def deploy(
        self, parent: pulumi.Resource, agent: AgentInstall, boot: BootFiles
    ) -> Deployed:
        o = self.options
        n = agent.name
        tags = agent.tags()
        provider = aws.Provider(f"{n}-aws", region=o.region,
                                opts=pulumi.ResourceOptions(parent=parent))
        opts = pulumi.ResourceOptions(parent=parent, provider=provider)
        invoke = pulumi.InvokeOptions(provider=provider)

        def named(suffix: str) -> dict[str, str]:
            return {**tags, "Name": f"{n}-{suffix}"}

        azs = aws.get_availability_zones_output(state="available", opts=invoke)
        vpc = aws.ec2.Vpc(f"{n}-vpc", cidr_block=o.vpc_cidr, enable_dns_hostnames=True,
                          enable_dns_support=True, tags=named("vpc"), opts=opts)
        # The VPC's default group gets no rules at all, so nothing can use it by accident.
        aws.ec2.DefaultSecurityGroup(f"{n}-default-sg", vpc_id=vpc.id, ingress=[], egress=[],
                                     tags=named("default-sg"), opts=opts)
        igw = aws.ec2.InternetGateway(f"{n}-igw", vpc_id=vpc.id, tags=named("igw"), opts=opts)
        # The one public subnet holds only the NAT gateway; nothing in it gets a public IP.
        nat_subnet = aws.ec2.Subnet(
            f"{n}-nat-subnet", vpc_id=vpc.id, cidr_block=_subnet(o.vpc_cidr, 0),
            availability_zone=azs.names[0], map_public_ip_on_launch=False,
            tags=named("nat"), opts=opts)
        eip = aws.ec2.Eip(f"{n}-nat-eip", domain="vpc", tags=named("nat-eip"), opts=opts)
        nat = aws.ec2.NatGateway(f"{n}-nat", allocation_id=eip.id, subnet_id=nat_subnet.id,
                                 connectivity_type="public", tags=named("nat"),
                                 opts=pulumi.ResourceOptions(parent=parent, provider=provider,
                                                             depends_on=[igw]))
        public_rt = aws.ec2.RouteTable(
            f"{n}-public-rt", vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags=named("public-rt"), opts=opts)
        aws.ec2.RouteTableAssociation(f"{n}-nat-subnet-rt", subnet_id=nat_subnet.id,
                                      route_table_id=public_rt.id, opts=opts)
        private_rt = aws.ec2.RouteTable(
            f"{n}-private-rt", vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
            tags=named("private-rt"), opts=opts)
        private = []
        for i in (1, 2):
            subnet = aws.ec2.Subnet(
                f"{n}-private-{i}", vpc_id=vpc.id, cidr_block=_subnet(o.vpc_cidr, i),
                availability_zone=azs.names[i - 1], map_public_ip_on_launch=False,
                tags=named(f"private-{i}"), opts=opts)
            aws.ec2.RouteTableAssociation(f"{n}-private-{i}-rt", subnet_id=subnet.id,
                                          route_table_id=private_rt.id, opts=opts)
            private.append(subnet)

        ingress = [
            aws.ec2.SecurityGroupIngressArgs(
                protocol="tcp", from_port=agent.dataplane_port, to_port=agent.dataplane_port,
                cidr_blocks=list(agent.dataplane_clients), description="Corral data plane")
        ] if agent.dataplane_clients else []
        sg = aws.ec2.SecurityGroup(
            f"{n}-agent-sg", vpc_id=vpc.id,
            description="Corral agent: no inbound; outbound to NATS, the control plane, apt/pip",
            ingress=ingress,
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0,
                                                    cidr_blocks=["0.0.0.0/0"])],
            tags=named("agent-sg"), opts=opts)
        hosts_sg = None
        if agent.hosts.enabled:
            port = agent.hosts.worker_port
            # The hosts' own group: the agent reaches corral-hostd, nothing else gets in.
            hosts_sg = aws.ec2.SecurityGroup(
                f"{n}-hosts-sg", vpc_id=vpc.id,
                description="Corral sandbox hosts: inbound only the worker port, from the agent",
                ingress=[aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=port, to_port=port, security_groups=[sg.id],
                    description="corral-hostd, from the Corral agent's security group")],
                egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0,
                                                        cidr_blocks=["0.0.0.0/0"])],
                tags=named("hosts-sg"), opts=opts)

        host_role = aws.iam.Role(f"{n}-host", assume_role_policy=_assume_ec2(),
                                 description="Sandbox hosts started by the Corral agent",
                                 tags=tags, opts=opts)
        aws.iam.RolePolicyAttachment(f"{n}-host-ssm", role=host_role.name,
                                     policy_arn=SSM_CORE_POLICY, opts=opts)
        host_profile = aws.iam.InstanceProfile(f"{n}-host", role=host_role.name, tags=tags,
                                               opts=opts)
        agent_role = aws.iam.Role(f"{n}-agent", assume_role_policy=_assume_ec2(),
                                  description="The Corral agent", tags=tags, opts=opts)
        aws.iam.RolePolicyAttachment(f"{n}-agent-ssm", role=agent_role.name,
                                     policy_arn=SSM_CORE_POLICY, opts=opts)
        statements = agent_statements(agent, o.region)
        aws.iam.RolePolicy(
            f"{n}-agent-hosts", role=agent_role.id,
            policy=pulumi.Output.all(host_role.arn, vpc.arn,
                                     hosts_sg.arn if hosts_sg else "").apply(
                lambda a: policy_document(statements, {"host_role_arn": a[0], "vpc_arn": a[1],
                                                       "hosts_sg_arn": a[2]})),
            opts=opts)
        profile = aws.iam.InstanceProfile(f"{n}-agent", role=agent_role.name, tags=tags,
                                          opts=opts)

        ami = aws.ec2.get_ami_output(
            owners=[DEBIAN_AMI_OWNER], most_recent=True,
            filters=[aws.ec2.GetAmiFilterArgs(name="name", values=["debian-12-amd64-*"]),
                     aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"])],
            opts=invoke)
        if hosts_sg is not None:
            # Hosts boot the same Debian image as the agent, in the agent's private subnet.
            # They run as the host role (the only role the agent may pass).
            boot = boot.with_hosts(pulumi.Output.all(
                ami.id, private[0].id, hosts_sg.id, host_profile.arn).apply(
                lambda a: host_settings(agent, "aws", {
                    "AWS_REGION": o.region, "AWS_IMAGE_ID": a[0], "SUBNET_ID": a[1],
                    "SECURITY_GROUP_IDS": a[2], "AWS_INSTANCE_PROFILE": a[3]})))
        template = aws.ec2.LaunchTemplate(
            f"{n}-agent-lt",
            image_id=ami.id,
            instance_type=o.instance_type,
            user_data=boot.install_script.apply(
                lambda s: base64.b64encode(
                    cloud_init(s, before=(ssm_agent_step(o.region),)).encode()).decode()),
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1,
                instance_metadata_tags="disabled"),
            block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name="/dev/xvda",
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    encrypted="true", volume_size=o.root_volume_gb, volume_type="gp3",
                    delete_on_termination="true"))],
            network_interfaces=[aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                associate_public_ip_address="false", subnet_id=private[0].id,
                security_groups=[sg.id], delete_on_termination="true")],
            monitoring=aws.ec2.LaunchTemplateMonitoringArgs(enabled=True),
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=t, tags=named("agent"))
                for t in ("instance", "volume", "network-interface")],
            update_default_version=True,
            tags=named("agent-lt"), opts=opts)
        instance = aws.ec2.Instance(
            f"{n}-agent",
            launch_template=aws.ec2.InstanceLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)),
            tags=named("agent"), volume_tags=named("agent"),
            # The instance reads its user data back from EC2: keep that secret in state too.
            opts=pulumi.ResourceOptions(parent=parent, provider=provider,
                                        additional_secret_outputs=["userData",
                                                                   "userDataBase64"]))
        return Deployed(host=instance.id, private_address=instance.private_ip, boot=boot)


def _subnet(vpc_cidr: str, index: int) -> str:
    """The index-th /20 inside the VPC's range (the VPC must be /18 or larger)."""
    net = ipaddress.ip_network(vpc_cidr)
    return str(list(net.subnets(new_prefix=20))[index])
