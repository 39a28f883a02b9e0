"""``CorralAgent``: one Pulumi component for the agent, wherever it runs.

It renders the install (infra/render.py), wraps every piece that holds the enrollment
token in :func:`pulumi.Output.secret`, and hands it to a :class:`~infra.base.HostTarget`
that creates the cloud's resources as its children. Outputs: ``host`` (instance id),
``private_address``, and the bundle (secret).
"""

from __future__ import annotations

import pulumi

from infra.base import BootFiles, HostTarget
from infra.config import AgentInstall

COMPONENT_TYPE = "corral:index:CorralAgent"


class CorralAgent(pulumi.ComponentResource):
    host: pulumi.Output[str] | None
    private_address: pulumi.Output[str] | None
    install_script: pulumi.Output[str]
    cloud_init: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        agent: AgentInstall,
        target: HostTarget,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        given = BootFiles.of(agent)
        deployed = target.deploy(self, agent, given)
        # A target that configures hosts boots the agent with host settings added.
        boot = deployed.boot or given
        self.host = deployed.host
        self.private_address = deployed.private_address
        self.install_script = boot.install_script
        self.cloud_init = boot.cloud_init
        outputs: dict[str, object] = {
            "cloud": target.cloud,
            "install_script": boot.install_script,
            "cloud_init": boot.cloud_init,
            "systemd_unit": boot.systemd_unit,
        }
        if deployed.host is not None:
            outputs["host"] = deployed.host
        if deployed.private_address is not None:
            outputs["private_address"] = deployed.private_address
        self.register_outputs(outputs)
