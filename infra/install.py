"""What ``corral install`` does: build the install's config, dry-run it offline, check
the policy, then either print the plan, write a bare-metal bundle, or run ``pulumi up``
through the Automation API (which needs the Pulumi CLI on PATH)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from infra import policy
from infra.base import HostTarget
from infra.config import (
    AgentInstall,
    AwsOptions,
    AzureOptions,
    BaremetalOptions,
    GcpOptions,
)
from infra.errors import InstallConfigError, PulumiNotFoundError
from infra.plan import Plan, RecordedResource, record
from infra.render import render
from infra.stacks import CLOUDS, program

PROJECT = "corral-install"
SSH_KEY_CONFIG = "corral:azureSshPublicKey"


@dataclass(frozen=True, slots=True)
class CloudChoice:
    """The per-cloud options the CLI takes; ``None`` keeps the cloud's default."""

    cloud: str
    region: str | None = None
    zone: str | None = None
    project: str | None = None
    size: str | None = None
    ssh_public_key: str | None = None


def _pick(options: Any, **values: str | None) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and hasattr(options, k)}


def make_target(choice: CloudChoice) -> HostTarget:
    """The :class:`HostTarget` for a cloud, with the CLI's options applied."""
    c = choice
    if c.cloud == "aws":
        from infra.stacks.aws import AwsHost

        return AwsHost(AwsOptions(**_pick(AwsOptions, region=c.region, instance_type=c.size)))
    if c.cloud == "gcp":
        from infra.stacks.gcp import GcpHost

        zone = c.zone or (f"{c.region}-a" if c.region else None)
        return GcpHost(GcpOptions(**_pick(GcpOptions, project=c.project, region=c.region,
                                          zone=zone, machine_type=c.size)))
    if c.cloud == "azure":
        from infra.stacks.azure import AzureHost

        key = c.ssh_public_key or throwaway_ssh_public_key()
        return AzureHost(AzureOptions(**_pick(AzureOptions, location=c.region, vm_size=c.size,
                                              ssh_public_key=key)))
    if c.cloud == "baremetal":
        from infra.stacks.baremetal import BaremetalHost

        return BaremetalHost(BaremetalOptions())
    raise InstallConfigError(f"unknown cloud {c.cloud!r}; choose one of: {', '.join(CLOUDS)}")


def throwaway_ssh_public_key() -> str:
    """An OpenSSH public key whose private half is never kept (Azure insists on one)."""
    public = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode() + " corral-no-private-key"


def dry_run(agent: AgentInstall, target: HostTarget) -> tuple[Plan, list[policy.Violation]]:
    """Offline: every resource the stack would create, and the policy's findings."""
    plan = record(agent, target)
    return plan, policy.check(plan, secret=agent.enrollment_token)


_SHOWN = {
    "aws:ec2/launchTemplate:LaunchTemplate": ("instanceType", "metadataOptions.httpTokens",
                                              "metadataOptions.httpPutResponseHopLimit"),
    "aws:ec2/vpc:Vpc": ("cidrBlock",),
    "aws:ec2/subnet:Subnet": ("cidrBlock", "mapPublicIpOnLaunch"),
    "gcp:compute/instance:Instance": ("machineType", "zone"),
    "gcp:compute/subnetwork:Subnetwork": ("ipCidrRange",),
    "gcp:compute/firewall:Firewall": ("direction", "priority"),
    "azure-native:compute:VirtualMachine": ("hardwareProfile.vmSize", "location"),
    "azure-native:network:VirtualNetwork": ("addressSpace.addressPrefixes",),
}


def _shown(value: Any) -> str:
    # Numbers cross the Pulumi wire as floats; 1.0 reads better as 1.
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _detail(r: RecordedResource) -> str:
    parts = [f"{p.split('.')[-1]}={_shown(r.get(p))}" for p in _SHOWN.get(r.type, ())
             if r.get(p) is not None]
    if r.secret_paths:
        parts.append("secret: " + ", ".join(sorted(r.secret_paths)))
    return " ".join(parts)


def print_plan(console: Console, plan: Plan, violations: list[policy.Violation]) -> None:
    resources = Table(title=f"Resources the {plan.cloud} stack would create")
    for col in ("#", "type", "name", "settings"):
        resources.add_column(col, overflow="fold")
    shown = [r for r in plan if not r.is_provider]
    for i, r in enumerate(shown, 1):
        resources.add_row(str(i), r.type, r.name, _detail(r))
    console.print(resources)
    perms = Table(title="Permissions requested for the agent")
    for col in ("principal", "action", "scope", "granted through / condition"):
        perms.add_column(col, overflow="fold")
    for p in plan.permissions:
        perms.add_row(p.principal, p.action, p.scope, p.condition)
    console.print(perms)
    if violations:
        console.print(f"[bold red]policy: {len(violations)} violation(s)[/bold red]")
        for v in violations:
            console.print(f"  [red]{v}[/red]", soft_wrap=True)
    else:
        console.print(f"policy: {len(shown)} resources pass every rule "
                      "(no open ingress, IMDSv2, encrypted disks, no public IP, "
                      "secrets, tags)")


def write_bundle(agent: AgentInstall, out: Path) -> list[Path]:
    """Write the bare-metal install bundle; the files holding the token are 0600/0700."""
    from infra.stacks.baremetal import refuse_hosts

    refuse_hosts(agent)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (text, mode) in render(agent).files().items():
        path = out / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)  # an existing file keeps its old mode through O_CREAT
        written.append(path)
    return written


def pulumi_cli() -> str | None:
    return shutil.which("pulumi")


def up(
    agent: AgentInstall,
    choice: CloudChoice,
    *,
    stack: str,
    on_output: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """``pulumi up`` through the Automation API; returns the stack's outputs.

    The policy runs on the offline plan first and stops the install on any violation.
    State goes wherever ``pulumi login`` points (``PULUMI_BACKEND_URL``); secrets are
    encrypted by that backend (``PULUMI_CONFIG_PASSPHRASE`` for a self-managed one).
    """
    if pulumi_cli() is None:
        raise PulumiNotFoundError(
            "the Pulumi CLI is not on PATH: install it (see docs/install/), or use "
            "--dry-run to see the plan offline")
    from pulumi import automation as auto

    work = work_dir or Path(tempfile.mkdtemp(prefix="corral-install-"))
    work.mkdir(parents=True, exist_ok=True)
    opts = auto.LocalWorkspaceOptions(env_vars=dict(env) if env else None, work_dir=str(work))
    if choice.cloud == "azure" and not choice.ssh_public_key:
        # Keep the first throwaway key, so later runs do not replace the VM.
        probe = auto.create_or_select_stack(stack, project_name=PROJECT, program=lambda: None,
                                            opts=opts)
        try:
            key = probe.get_config(SSH_KEY_CONFIG).value
        except auto.CommandError:
            key = throwaway_ssh_public_key()
            probe.set_config(SSH_KEY_CONFIG, auto.ConfigValue(key))
        choice = dataclasses.replace(choice, ssh_public_key=key)
    target = make_target(choice)
    policy.enforce(record(agent, target), secret=agent.enrollment_token)
    st = auto.create_or_select_stack(stack, project_name=PROJECT,
                                     program=program(agent, target), opts=opts)
    result = st.up(on_output=on_output)
    return {k: v.value for k, v in result.outputs.items()}

