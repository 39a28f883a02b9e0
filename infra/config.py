"""What an install needs: the agent's settings on the host and each cloud's options.

Frozen dataclasses, validated on construction, so a bad value fails before any Pulumi
program runs. The enrollment token is the only secret; it is wrapped as a Pulumi secret
(:func:`pulumi.Output.secret`) by the component, never written into state in plain text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

from infra.errors import InstallConfigError

# The same version as this package: the agent a host installs is the one that rendered it.
DEFAULT_AGENT_PACKAGE = "corral==0.1.0"
DRY_RUN_TOKEN = "cet_dry-run-placeholder"  # noqa: S105 - a placeholder, marked secret anyway

# GCP service account ids ("<name>-agent") are at most 30 characters: 24 + 6.
_NAME = re.compile(r"^[a-z][a-z0-9-]{1,22}[a-z0-9]$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:/@=+,~%-]*$")
_TAG_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _check_value(what: str, value: str) -> None:
    """Values go into a systemd EnvironmentFile and a shell heredoc: no quotes or spaces."""
    if not _SAFE_VALUE.fullmatch(value):
        raise InstallConfigError(
            f"{what} may contain only letters, digits and _.:/@=+,~%- (got {value!r})"
        )


# Ceilings a typo should not get past (the agent's own settings accept more).
MAX_HOSTS_CEILING = 100
DEFAULT_WORKER_PORT = 7443


def _dollars(what: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise InstallConfigError(f"{what}: {raw!r} is not an amount in $/hour") from None
    if not value.is_finite() or value < 0:
        raise InstallConfigError(f"{what}: {raw!r} must be a finite amount >= 0")
    return value


@dataclass(frozen=True, slots=True)
class HostsInstall:
    """Sandbox hosts the installed agent may launch in the same cloud (ADR 0028).

    Off by default (``max=0``): the agent runs its sandboxes on its own machine, as
    before, and the stack creates nothing for hosts. With ``max > 0`` the stack creates
    the hosts' network identity (a security group / firewall rule / NSG that admits only
    ``worker_port`` from the agent) and writes ``CORRAL_AGENT_HOST_*`` into agent.env.
    """

    max: int = 0
    budget_per_hour: str = "10"
    worker_port: int = DEFAULT_WORKER_PORT
    # Instance type -> $/hour. The agent launches only types with a price; AWS has list
    # prices built in for its default metal types, GCP and Azure need these.
    prices: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if isinstance(self.max, bool) or not 0 <= self.max <= MAX_HOSTS_CEILING:
            raise InstallConfigError(
                f"hosts.max={self.max!r}: use 0 (no hosts) to {MAX_HOSTS_CEILING}")
        budget = _dollars("hosts.budget_per_hour", self.budget_per_hour)
        if self.max and budget == 0:
            raise InstallConfigError(
                "hosts.budget_per_hour must be above 0 when hosts.max > 0 (no host fits a "
                "budget of $0/hour)")
        if not 1 <= self.worker_port <= 65535:
            raise InstallConfigError(f"hosts.worker_port {self.worker_port} is out of range")
        for itype, price in self.prices.items():
            _check_value("hosts.prices instance type", itype)
            if not itype or "," in itype or "=" in itype:
                raise InstallConfigError(f"hosts.prices: {itype!r} is not an instance type")
            _dollars(f"hosts.prices[{itype}]", price)

    @property
    def enabled(self) -> bool:
        return self.max > 0


@dataclass(frozen=True, slots=True)
class AgentInstall:
    """The agent's side of an install; becomes ``CORRAL_AGENT_*`` in /etc/corral/agent.env."""

    control_plane_url: str
    enrollment_token: str
    name: str = "corral-agent"
    agent_package: str = DEFAULT_AGENT_PACKAGE
    dataplane_port: int = 8788
    memory_mb_total: int = 4096
    # Private networks allowed to reach the data plane port; empty = no ingress at all.
    dataplane_clients: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    hosts: HostsInstall = field(default_factory=HostsInstall)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InstallConfigError(
                f"name {self.name!r}: use 3-24 lowercase letters, digits and '-', "
                "starting with a letter (it names cloud resources)"
            )
        if not self.control_plane_url.startswith(("https://", "http://")):
            raise InstallConfigError(
                f"control plane URL {self.control_plane_url!r} must start with https://"
            )
        _check_value("control plane URL", self.control_plane_url)
        if not self.enrollment_token:
            raise InstallConfigError(
                "an enrollment token is required: `corral admin enrollment-token --tenant ID`"
            )
        _check_value("enrollment token", self.enrollment_token)
        if not self.agent_package or any(c in self.agent_package for c in " '\"\n\\$`;&|"):
            raise InstallConfigError(
                f"agent package {self.agent_package!r} must be one pip requirement or wheel URL"
            )
        if not 1 <= self.dataplane_port <= 65535:
            raise InstallConfigError(f"data plane port {self.dataplane_port} is out of range")
        if self.memory_mb_total < 512:
            raise InstallConfigError("memory_mb_total must be at least 512")
        for cidr in self.dataplane_clients:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError as e:
                raise InstallConfigError(f"data plane client {cidr!r}: {e}") from None
            if not net.is_private or net.prefixlen == 0:
                raise InstallConfigError(
                    f"data plane client {cidr!r} is not a private network; the data plane "
                    "is never opened to the internet"
                )
        if self.hosts.enabled and self.hosts.worker_port == self.dataplane_port:
            raise InstallConfigError(
                f"hosts.worker_port {self.hosts.worker_port} is the data plane port; "
                "pick another")
        for k, v in self.labels.items():
            if not _TAG_KEY.fullmatch(k) or not re.fullmatch(r"[a-z0-9_-]{0,63}", v):
                raise InstallConfigError(
                    f"label {k}={v!r}: keys and values are lowercase letters, digits, _ and - "
                    "(the rules GCP labels impose, so one set works on every cloud)"
                )

    def tags(self) -> dict[str, str]:
        """The labels every resource carries: ours first, the customer's added."""
        return {"corral-managed-by": "corral-installer", "corral-install": self.name,
                **self.labels}


@dataclass(frozen=True, slots=True)
class AwsOptions:
    region: str = "us-east-1"
    instance_type: str = "m7i.large"
    vpc_cidr: str = "10.42.0.0/16"
    root_volume_gb: int = 50


@dataclass(frozen=True, slots=True)
class GcpOptions:
    project: str = "my-project"
    region: str = "us-central1"
    zone: str = "us-central1-a"
    machine_type: str = "n2-standard-4"
    subnet_cidr: str = "10.43.0.0/20"
    boot_disk_gb: int = 50


@dataclass(frozen=True, slots=True)
class AzureOptions:
    location: str = "eastus"
    vm_size: str = "Standard_D4s_v5"
    vnet_cidr: str = "10.44.0.0/16"
    os_disk_gb: int = 64
    # Azure requires one SSH key when password login is off. The installer makes one and
    # throws the private half away; people log in with Entra ID (`az ssh vm`).
    ssh_public_key: str = ""


@dataclass(frozen=True, slots=True)
class BaremetalOptions:
    """Nothing to create in a cloud: the install bundle is the whole output."""
