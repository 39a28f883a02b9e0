"""The seam between the agent component and each place it can run.

A :class:`HostTarget` creates, under the :class:`~infra.component.CorralAgent` it is
given, the network, identity and machine for one cloud (or nothing, for bare metal),
and says which permissions it grants the agent. Targets live in ``infra/stacks/``,
one module per cloud, registered by name in ``infra.stacks.TARGETS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import pulumi

from infra.config import AgentInstall
from infra.render import render


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
    agent: AgentInstall

    @classmethod
    def of(cls, agent: AgentInstall,
           hosts: pulumi.Output[Mapping[str, str]] | None = None) -> BootFiles:
        """Render the install; ``hosts`` adds the ``CORRAL_AGENT_HOST*`` lines to agent.env
        once the resources they name (subnet, security group, image) are known."""
        source: pulumi.Output[Mapping[str, str]] = (
            hosts if hosts is not None else pulumi.Output.from_input({}))
        bundle = source.apply(lambda h: render(agent, h))
        return cls(
            cloud_init=pulumi.Output.secret(bundle.apply(lambda b: b.cloud_init)),
            install_script=pulumi.Output.secret(bundle.apply(lambda b: b.install_script)),
            agent_env=pulumi.Output.secret(bundle.apply(lambda b: b.agent_env)),
            systemd_unit=render(agent).systemd_unit,
            agent=agent,
        )

    def with_hosts(self, hosts: pulumi.Output[Mapping[str, str]]) -> BootFiles:
        """The same install, its agent.env also configuring the host provider."""
        return BootFiles.of(self.agent, hosts)


@dataclass(frozen=True, slots=True)
class Deployed:
    """What a target reports back; ``host`` is None when nothing runs in a cloud.
    ``boot``: the files the target booted the agent with, when not the ones it was given
    (:meth:`BootFiles.with_hosts`)."""

    host: pulumi.Output[str] | None
    private_address: pulumi.Output[str] | None
    boot: BootFiles | None = None


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
