"""The four stacks, by name. Each is a :class:`~infra.base.HostTarget` that the one
:class:`~infra.component.CorralAgent` component deploys into."""

from __future__ import annotations

from collections.abc import Callable

import pulumi

from infra.base import HostTarget
from infra.component import CorralAgent
from infra.config import AgentInstall
from infra.errors import InstallConfigError

CLOUDS = ("aws", "gcp", "azure", "baremetal")


def default_target(cloud: str) -> HostTarget:
    """The target for ``cloud`` with default options (imports only that cloud's SDK)."""
    if cloud == "aws":
        from infra.stacks.aws import AwsHost

        return AwsHost()
    if cloud == "gcp":
        from infra.stacks.gcp import GcpHost

        return GcpHost()
    if cloud == "azure":
        from infra.stacks.azure import AzureHost

        return AzureHost()
    if cloud == "baremetal":
        from infra.stacks.baremetal import BaremetalHost

        return BaremetalHost()
    raise InstallConfigError(f"unknown cloud {cloud!r}; choose one of: {', '.join(CLOUDS)}")


def build(agent: AgentInstall, target: HostTarget) -> dict[str, object]:
    """Create the component; return the stack's outputs (exported by :func:`program`)."""
    comp = CorralAgent(agent.name, agent, target)
    outputs: dict[str, object] = {"cloud": target.cloud, "install_script": comp.install_script}
    if comp.host is not None:
        outputs["host"] = comp.host
    if comp.private_address is not None:
        outputs["private_address"] = comp.private_address
    return outputs


def program(agent: AgentInstall, target: HostTarget) -> Callable[[], None]:
    """The Pulumi program for one install, as the Automation API runs it."""

    def run() -> None:
        for name, value in build(agent, target).items():
            pulumi.export(name, value)

    return run
