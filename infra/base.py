"""The seam between the agent component and each place it can run.

A :class:`HostTarget` creates, under the :class:`~infra.component.CorralAgent` it is
given, the network, identity and machine for one cloud (or nothing, for bare metal),
and says which permissions it grants the agent. Targets live in ``infra/stacks/``,
one module per cloud, registered by name in ``infra.stacks.TARGETS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pulumi

from infra.config import AgentInstall


@dataclass(frozen=True, slots=True)
class Permission:
    """One grant to the agent's identity, as shown by ``corral install --dry-run``."""

    principal: str
    action: str
    scope: str
    condition: str = ""


@dataclass(frozen=True, slots=True)
class BootFiles:
    """The rendered install, each piece a secret Output (they hold the enrollment token)."""

    cloud_init: pulumi.Output[str]
    install_script: pulumi.Output[str]
    agent_env: pulumi.Output[str]
    systemd_unit: str


@dataclass(frozen=True, slots=True)
class Deployed:
    """What a target reports back; ``host`` is None when nothing runs in a cloud."""

    host: pulumi.Output[str] | None
    private_address: pulumi.Output[str] | None


class HostTarget(Protocol):
    """Why a Protocol: the component must not know any cloud SDK; each target is a module."""

    @property
    def cloud(self) -> str:
        """The stack's name: aws, gcp, azure or baremetal."""
        ...

    def permissions(self, agent: AgentInstall) -> list[Permission]:
        """Every grant this target gives the agent (the same data its IAM is built from)."""
        ...

    def deploy(
        self, parent: pulumi.Resource, agent: AgentInstall, boot: BootFiles
    ) -> Deployed:
        """Create this cloud's resources as children of ``parent``."""
        ...
