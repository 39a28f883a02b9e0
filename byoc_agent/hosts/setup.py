"""Build the agent's :class:`~byoc_agent.hosts.fleet.HostFleet` from its settings.

Provider modules are imported here by name, so a cloud SDK is loaded only when the agent
is configured to use that cloud.
"""

from __future__ import annotations

from decimal import Decimal

from byoc_agent.hosts.autoscale import ScalingPolicy
from byoc_agent.hosts.fleet import HostFleet
from byoc_agent.hosts.workers import HostWorkers
from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.providers.base import HostProvider
from byoc_agent.scheduling import Aging, Overcommit
from byoc_agent.settings import HostSettings
from byoc_agent.state import AgentIdentity, AgentStateStore


def build_provider(hs: HostSettings) -> HostProvider:
    if hs.provider == "aws":
        from byoc_agent.providers.aws import DEFAULT_INSTANCE_TYPES, AwsProvider

        if hs.aws_region is None or hs.aws_image_id is None:
            raise InvalidArgumentError("the aws host provider needs a region and an image id")
        return AwsProvider(
            region=hs.aws_region,
            image_id=hs.aws_image_id,
            instance_types=hs.instance_types or DEFAULT_INSTANCE_TYPES,
            instance_profile=hs.aws_instance_profile,
        )
    if hs.provider == "gcp":
        from byoc_agent.providers.gcp import GcpConfig, GcpProvider

        if hs.gcp_project is None or hs.gcp_zone is None or hs.image is None:
            raise InvalidArgumentError("the gcp host provider needs a project, a zone and an image")
        gcp = GcpConfig(
            project=hs.gcp_project,
            zone=hs.gcp_zone,
            image=hs.image,
            subnetwork=hs.subnet_id,
            network_tags=hs.security_group_ids,
            service_account=hs.gcp_service_account,
            **({"machine_types": hs.instance_types} if hs.instance_types else {}),  # type: ignore[arg-type]
        )
        return GcpProvider(gcp, ledger_path=hs.ledger)
    if hs.provider == "azure":
        from byoc_agent.providers.azure import AzureConfig, AzureProvider

        if (
            hs.azure_subscription_id is None
            or hs.azure_resource_group is None
            or hs.azure_location is None
            or hs.image is None
            or hs.azure_ssh_public_key is None
        ):
            raise InvalidArgumentError(
                "the azure host provider needs a subscription, resource group, location, "
                "image and SSH public key"
            )
        azure = AzureConfig(
            subscription_id=hs.azure_subscription_id,
            resource_group=hs.azure_resource_group,
            location=hs.azure_location,
            image=hs.image,
            admin_username=hs.azure_admin_username,
            ssh_public_key=hs.azure_ssh_public_key,
            subnet_id=hs.subnet_id,
            **({"vm_sizes": hs.instance_types} if hs.instance_types else {}),  # type: ignore[arg-type]
        )
        return AzureProvider(azure, ledger_path=hs.ledger)
    from byoc_agent.providers.baremetal import BareMetalProvider

    if hs.inventory is None:
        raise InvalidArgumentError("the baremetal host provider needs an inventory file")
    return BareMetalProvider(hs.inventory)


def build_fleet(
    hs: HostSettings,
    state: AgentStateStore,
    identity: AgentIdentity,
    *,
    workers: HostWorkers | None = None,
) -> HostFleet:
    provider = build_provider(hs)
    prices = dict(hs.prices)
    return HostFleet(
        state=state,
        provider=provider,
        tenant_id=identity.tenant_id,
        agent_id=identity.agent_id,
        policy=ScalingPolicy(
            max_hosts=hs.max_hosts,
            min_hosts=hs.min_hosts,
            budget_per_hour=hs.budget_per_hour,
            idle_timeout_s=hs.idle_timeout_s,
            ready_timeout_s=hs.ready_timeout_s,
            instance_types=hs.instance_types,
        ),
        prices=prices,
        # Owned machines cost nothing per hour unless a price is configured for them.
        default_price=Decimal(0) if hs.provider == "baremetal" else None,
        overcommit=Overcommit(cpu=hs.overcommit_cpu, memory=hs.overcommit_memory),
        aging=Aging(reserve_after_s=hs.reserve_after_s),
        subnet_id=hs.subnet_id,
        security_group_ids=hs.security_group_ids,
        workers=workers,
    )
