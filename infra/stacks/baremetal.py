"""Bare metal: nothing to create in a cloud. The stack's outputs are the install bundle
(cloud-init, systemd unit, install script), kept as secrets in Pulumi state;
``corral install baremetal --out DIR`` writes the same files for copying to the host."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from infra.base import BootFiles, Deployed, Permission
from infra.config import AgentInstall, BaremetalOptions


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
        return Deployed(host=None, private_address=None)
