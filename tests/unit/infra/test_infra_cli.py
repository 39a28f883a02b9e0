"""`corral install`: the dry run offline for every cloud, the bare-metal bundle, and
what happens without the Pulumi CLI."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli import app

pytestmark = pytest.mark.infra

WIDE = {"COLUMNS": "250", "CORRAL_ENROLLMENT_TOKEN": "", "CORRAL_API_URL": ""}


@pytest.mark.parametrize(("cloud", "resource", "permission"), [
    ("aws", "aws:ec2/launchTemplate:LaunchTemplate", "iam:PassRole"),
    ("gcp", "gcp:compute/instance:Instance", "roles/iam.serviceAccountUser"),
    ("azure", "azure-native:compute:VirtualMachine", "Microsoft.Compute/virtualMachines/write"),
    ("baremetal", "corral:index:CorralAgent", "runs install.sh once"),
])
def test_dry_run_prints_resources_and_permissions(cloud: str, resource: str,
                                                  permission: str) -> None:
    """Offline, no token needed: two tables and the policy's verdict, exit 0."""
    result = CliRunner().invoke(app, ["install", cloud, "--dry-run", "--region", "westeurope"
                                      if cloud == "azure" else "eu-west-1"] if cloud in (
        "aws", "azure") else ["install", cloud, "--dry-run"], env=WIDE)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"Resources the {cloud} stack would create" in out
    assert "Permissions requested for the agent" in out
    assert resource in out
    assert permission in out
    assert "pass every rule" in out
    assert "cet_" not in out  # the (placeholder) token is never printed
    if cloud == "aws":
        assert "arn:aws:ec2:eu-west-1" in out
        assert "httpTokens=required" in out


def test_dry_run_with_hosts_shows_the_hosts_network_and_grant() -> None:
    result = CliRunner().invoke(
        app, ["install", "gcp", "--dry-run", "--hosts-max", "2", "--hosts-budget", "5",
              "--host-price", "n2-standard-8=0.39"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "corral-agent-hosts-worker" in result.output
    assert "compute.instances.setTags" in result.output
    assert "pass every rule" in result.output


def test_baremetal_out_writes_the_bundle_with_tight_modes(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        app, ["install", "baremetal", "--out", str(out), "--name", "rack-3",
              "--agent-package", "https://wheels.example.com/corral-0.1.0-py3-none-any.whl",
              "--control-plane-url", "https://cp.example.com"],
        env={**WIDE, "CORRAL_ENROLLMENT_TOKEN": "cet_from_env"})
    assert result.exit_code == 0, result.output
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"agent.env": 0o600, "corral-agent.service": 0o644, "install.sh": 0o700,
                     "cloud-init.yaml": 0o600}
    assert "CORRAL_AGENT_ENROLLMENT_TOKEN=cet_from_env" in (out / "agent.env").read_text()
    script = (out / "install.sh").read_text()
    assert "CORRAL_AGENT_NAME=rack-3" in script
    assert "'https://wheels.example.com/corral-0.1.0-py3-none-any.whl'" in script


@pytest.mark.parametrize(("args", "message"), [
    (["install", "mars", "--dry-run"], "unknown cloud 'mars'"),
    (["install", "aws"], "set CORRAL_ENROLLMENT_TOKEN"),
    (["install", "aws", "--enrollment-token", "cet_x"], "pass --agent-package"),
    (["install", "aws", "--out", "x"], "--out is for baremetal"),
    (["install", "aws", "--dry-run", "--dataplane-client", "0.0.0.0/0"], "not a private"),
    (["install", "gcp", "--dry-run", "--label", "nokey"], "KEY=VALUE"),
    (["install", "aws", "--dry-run", "--hosts-max", "-1"], "hosts.max=-1"),
    (["install", "gcp", "--dry-run", "--hosts-max", "2"], "hosts.prices is required"),
    (["install", "aws", "--dry-run", "--hosts-max", "2", "--host-price", "m7i"], "KEY=VALUE"),
])
def test_bad_input_is_one_clear_error(args: list[str], message: str) -> None:
    env = {**WIDE, "CORRAL_ENROLLMENT_TOKEN": "cet_x"} if "--out" in args else WIDE
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code != 0
    assert message in " ".join(result.output.split()), result.output


def test_without_pulumi_cli_install_says_what_to_do(tmp_path: Path) -> None:
    """No `pulumi` on PATH: one clear error, nothing attempted."""
    result = CliRunner().invoke(
        app, ["install", "baremetal", "--agent-package", "corral==0.1.0"],
        env={**WIDE, "CORRAL_ENROLLMENT_TOKEN": "cet_x", "PATH": str(tmp_path)})
    assert result.exit_code == 1
    assert "Pulumi CLI is not on PATH" in " ".join(result.output.split())


@pytest.mark.skipif(shutil.which("pulumi") is None,
                    reason="the Pulumi CLI is not installed here (it cannot be downloaded "
                           "on this machine); `corral install` without --dry-run needs it")
def test_install_runs_pulumi_up_through_the_automation_api(tmp_path: Path) -> None:
    """With the CLI present: the bare-metal stack goes up against a local file backend,
    and its outputs come back with the install script kept secret in state."""
    from infra.config import AgentInstall
    from infra.install import CloudChoice, up

    env = {"PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
           "PULUMI_CONFIG_PASSPHRASE": "test-passphrase", "PULUMI_SKIP_UPDATE_CHECK": "1",
           "PATH": os.environ["PATH"]}
    (tmp_path / "state").mkdir()
    agent = AgentInstall(control_plane_url="https://cp.example.com",
                         enrollment_token="cet_automation-test")
    lines: list[str] = []
    outputs = up(agent, CloudChoice(cloud="baremetal"), stack="test", on_output=lines.append,
                 env=env, work_dir=tmp_path / "work")
    assert outputs["cloud"] == "baremetal"
    assert "cet_automation-test" in outputs["install_script"]
    state = "".join(p.read_text() for p in (tmp_path / "state").rglob("*.json"))
    assert "cet_automation-test" not in state  # encrypted in state
