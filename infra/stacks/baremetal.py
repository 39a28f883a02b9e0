"""Bare metal: nothing to create in a cloud. The stack's outputs are the install bundle
(cloud-init, systemd unit, install script), kept as secrets in Pulumi state;
``corral install baremetal --out DIR`` writes the same files for copying to the host.

Hosts are not configured here: bare-metal hosts come from an inventory file that the
installer cannot know (``CORRAL_AGENT_HOST_INVENTORY``, docs/hosts.md), so an install
asking for hosts (``hosts.max > 0``) is refused rather than silently ignored."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from infra.base import BootFiles, Deployed, Permission
from infra.config import AgentInstall, BaremetalOptions
from infra.errors import InstallConfigError


def refuse_hosts(agent: AgentInstall) -> None:
    if agent.hosts.enabled:
        raise InstallConfigError(
            "bare metal: hosts are not set up by the installer; leave hosts.max at 0 and "
            "list the machines in an inventory (CORRAL_AGENT_HOST_INVENTORY, docs/hosts.md)")


@dataclass(frozen=True, slots=True)
class BaremetalHost:
    options: BaremetalOptions = field(default_factory=BaremetalOptions)
    cloud: str = "baremetal"

    def permissions(self, agent: AgentInstall) -> list[Permission]:
        return [Permission("root on the host", "runs install.sh once",
                           "this machine only", "no cloud credentials")]

    def deploy(
        self, parent: pulumi.Resource, agent: AgentInstall, boot: BootFiles
    ) -> Deployed:
        refuse_hosts(agent)
        return Deployed(host=None, private_address=None)
