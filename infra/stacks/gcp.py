"""GCP: a custom-mode VPC with one private subnet and Cloud NAT, a firewall that denies
all ingress, a service account with two custom roles (launch hosts; stop/delete only
instances named like the agent's hosts, by IAM condition), and a Shielded VM with no
external IP, OS Login and a startup script.

The agent may act as the host service account only (``iam.serviceAccountUser`` on that
one account, not the project) — GCP's counterpart of AWS ``iam:PassRole``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from infra.base import BootFiles, Deployed, Permission
from infra.config import AgentInstall, GcpOptions
from infra.errors import InstallConfigError
from infra.render import host_settings

IMAGE = "debian-cloud/debian-12"
# The same image family as the agent's, in the form the agent's GcpProvider takes.
HOST_IMAGE = "projects/debian-cloud/global/images/family/debian-12"
# Network tags: the firewall names the agent and its hosts by these.
AGENT_TAG = "corral-agent"
HOSTS_TAG = "corral-host"
# Launching a host: create it (with its disk, in our subnet, from a public image) and read.
AGENT_LAUNCH_PERMISSIONS = (
    "compute.instances.create", "compute.instances.get", "compute.instances.list",
    "compute.instances.setLabels", "compute.instances.setMetadata",
    "compute.instances.setTags",
    "compute.instances.setServiceAccount", "compute.disks.create",
    "compute.subnetworks.use", "compute.images.useReadOnly", "compute.machineTypes.get",
    "compute.zoneOperations.get",
)
# Changing a host's life: granted only on instances named like this install's hosts.
AGENT_MANAGE_PERMISSIONS = (
    "compute.instances.delete", "compute.instances.start", "compute.instances.stop",
    "compute.instances.reset",
)
AGENT_PROJECT_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter")


def _custom_role_id(name: str, kind: str) -> str:
    return "corral_" + name.replace("-", "_") + "_" + kind


# The agent's GcpProvider names every host it launches ``corral-<hash>``
# (byoc_agent/providers/gcp.py: instance_name); a test keeps the two in step.
HOST_NAME_PREFIX = "corral-"


def host_name_condition(o: GcpOptions) -> str:
    """IAM condition: only instances in the install's zone named like the agent's hosts."""
    return (f'resource.type == "compute.googleapis.com/Instance" && resource.name.startsWith('
            f'"projects/{o.project}/zones/{o.zone}/instances/{HOST_NAME_PREFIX}")')


@dataclass(frozen=True, slots=True)
class GcpHost:
    options: GcpOptions = field(default_factory=GcpOptions)
    cloud: str = "gcp"

    def permissions(self, agent: AgentInstall) -> list[Permission]:
        sa = f"serviceAccount {agent.name}-agent"
        o = self.options
        hosts = f"instances {o.zone}/{HOST_NAME_PREFIX}* only"
        return [
            *(Permission(sa, perm, f"project {o.project}",
                         f"custom role {_custom_role_id(agent.name, 'launch')}")
              for perm in AGENT_LAUNCH_PERMISSIONS),
            *(Permission(sa, perm, hosts,
                         f"custom role {_custom_role_id(agent.name, 'manage')}, IAM condition")
              for perm in AGENT_MANAGE_PERMISSIONS),
            *(Permission(sa, role, f"project {self.options.project}")
              for role in AGENT_PROJECT_ROLES),
            Permission(sa, "roles/iam.serviceAccountUser",
                       f"serviceAccount {agent.name}-host only"),
        ]

    def deploy(
        self, parent: pulumi.Resource, agent: AgentInstall, boot: BootFiles
    ) -> Deployed:
        o = self.options
        n = agent.name
        if agent.hosts.enabled and not agent.hosts.prices:
            raise InstallConfigError(
                "hosts.prices is required for GCP hosts (machine type=$/hour, e.g. "
                "n2-standard-8=0.39): the agent launches only types with a price")
        labels = agent.tags()
        about = f"Corral agent install {n}"
        provider = gcp.Provider(f"{n}-gcp", project=o.project, region=o.region, zone=o.zone,
                                opts=pulumi.ResourceOptions(parent=parent))
        opts = pulumi.ResourceOptions(parent=parent, provider=provider)

        network = gcp.compute.Network(f"{n}-vpc", name=f"{n}-vpc", description=about,
                                      auto_create_subnetworks=False, opts=opts)
        subnet = gcp.compute.Subnetwork(
            f"{n}-private", name=f"{n}-private", description=about, network=network.id,
            region=o.region, ip_cidr_range=o.subnet_cidr, private_ip_google_access=True,
            opts=opts)
        router = gcp.compute.Router(f"{n}-router", name=f"{n}-router", description=about,
                                    network=network.id, region=o.region, opts=opts)
        gcp.compute.RouterNat(
            f"{n}-nat", name=f"{n}-nat", router=router.name, region=o.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetworks=[gcp.compute.RouterNatSubnetworkArgs(
                name=subnet.id, source_ip_ranges_to_nats=["ALL_IP_RANGES"])],
            opts=opts)
        gcp.compute.Firewall(
            f"{n}-deny-ingress", name=f"{n}-deny-ingress", description=about + ": no inbound",
            network=network.id, direction="INGRESS", priority=1000,
            denies=[gcp.compute.FirewallDenyArgs(protocol="all")],
            source_ranges=["0.0.0.0/0"], opts=opts)
        if agent.dataplane_clients:
            gcp.compute.Firewall(
                f"{n}-dataplane", name=f"{n}-dataplane", description=about + ": data plane",
                network=network.id, direction="INGRESS", priority=900,
                allows=[gcp.compute.FirewallAllowArgs(
                    protocol="tcp", ports=[str(agent.dataplane_port)])],
                source_ranges=list(agent.dataplane_clients), target_tags=[AGENT_TAG],
                opts=opts)
        if agent.hosts.enabled:
            # Above the deny-all (lower number wins): only the agent reaches corral-hostd.
            gcp.compute.Firewall(
                f"{n}-hosts-worker", name=f"{n}-hosts-worker",
                description=about + ": corral-hostd on the hosts, from the agent only",
                network=network.id, direction="INGRESS", priority=900,
                allows=[gcp.compute.FirewallAllowArgs(
                    protocol="tcp", ports=[str(agent.hosts.worker_port)])],
                source_tags=[AGENT_TAG], target_tags=[HOSTS_TAG], opts=opts)

        host_sa = gcp.serviceaccount.Account(
            f"{n}-host", account_id=f"{n}-host", display_name="Corral sandbox hosts",
            description=about, opts=opts)
        agent_sa = gcp.serviceaccount.Account(
            f"{n}-agent", account_id=f"{n}-agent", display_name="Corral agent",
            description=about, opts=opts)
        launch = gcp.projects.IAMCustomRole(
            f"{n}-agent-launch", role_id=_custom_role_id(n, "launch"), project=o.project,
            title=f"Corral agent {n}: launch hosts", description=about,
            permissions=list(AGENT_LAUNCH_PERMISSIONS), opts=opts)
        gcp.projects.IAMMember(f"{n}-agent-launch", project=o.project, role=launch.name,
                               member=agent_sa.member, opts=opts)
        manage = gcp.projects.IAMCustomRole(
            f"{n}-agent-manage", role_id=_custom_role_id(n, "manage"), project=o.project,
            title=f"Corral agent {n}: manage its hosts", description=about,
            permissions=list(AGENT_MANAGE_PERMISSIONS), opts=opts)
        gcp.projects.IAMMember(
            f"{n}-agent-manage", project=o.project, role=manage.name, member=agent_sa.member,
            condition=gcp.projects.IAMMemberConditionArgs(
                title=f"corral-{n}-hosts-only", description=about + ": its own hosts only",
                expression=host_name_condition(o)),
            opts=opts)
        for r in AGENT_PROJECT_ROLES:
            gcp.projects.IAMMember(f"{n}-agent-{r.split('.')[-1].lower()}", project=o.project,
                                   role=r, member=agent_sa.member, opts=opts)
        gcp.serviceaccount.IAMMember(
            f"{n}-agent-uses-host", service_account_id=host_sa.name,
            role="roles/iam.serviceAccountUser", member=agent_sa.member, opts=opts)

        if agent.hosts.enabled:
            boot = boot.with_hosts(pulumi.Output.all(subnet.self_link, host_sa.email).apply(
                lambda a: host_settings(agent, "gcp", {
                    "GCP_PROJECT": o.project, "GCP_ZONE": o.zone, "IMAGE": HOST_IMAGE,
                    "SUBNET_ID": a[0], "SECURITY_GROUP_IDS": HOSTS_TAG,
                    "GCP_SERVICE_ACCOUNT": a[1]})))
        instance = gcp.compute.Instance(
            f"{n}-agent", name=f"{n}-agent", description=about, zone=o.zone,
            machine_type=o.machine_type,
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=IMAGE, size=o.boot_disk_gb, type="pd-balanced", labels=labels)),
            # No access_configs: no external IP. Egress goes through Cloud NAT.
            network_interfaces=[gcp.compute.InstanceNetworkInterfaceArgs(
                subnetwork=subnet.id)],
            service_account=gcp.compute.InstanceServiceAccountArgs(
                email=agent_sa.email, scopes=["cloud-platform"]),
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True),
            metadata={
                "enable-oslogin": "TRUE",
                "block-project-ssh-keys": "TRUE",
                "startup-script": boot.install_script,
            },
            tags=[AGENT_TAG], labels=labels, opts=opts)
        return Deployed(
            host=instance.instance_id,
            private_address=instance.network_interfaces[0].network_ip,
            boot=boot,
        )
