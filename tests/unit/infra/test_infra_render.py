"""The install bundle as text: the agent's own settings parser reads the config, the unit
runs the agent's console script, and bad input fails before anything is rendered."""

from __future__ import annotations

import base64
import re
import tomllib
from pathlib import Path

import pytest

from byoc_agent.settings import AgentSettings
from infra.config import AgentInstall
from infra.errors import InstallConfigError
from infra.render import VENV, render

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[3]


def _env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_agent_env_is_what_agent_settings_reads() -> None:
    """Every line is a CORRAL_AGENT_* setting that AgentSettings.from_env understands."""
    agent = AgentInstall(control_plane_url="https://cp.example.com", enrollment_token="cet_x1",
                         name="edge-7", dataplane_port=9000, memory_mb_total=8192)
    env = _env(render(agent).agent_env)
    assert all(k.startswith("CORRAL_AGENT_") for k in env)
    s = AgentSettings.from_env(env)
    assert (s.control_plane_url, s.enrollment_token, s.name) == (
        "https://cp.example.com", "cet_x1", "edge-7")
    assert (s.dataplane_port, s.memory_mb_total, s.runtime) == (9000, 8192, "gvisor")
    assert str(s.templates_root) == "/var/lib/corral/templates"
    known = set(re.findall(r'p \+ "([A-Z_]+)"', (REPO / "byoc_agent/settings.py").read_text()))
    assert {k.removeprefix("CORRAL_AGENT_") for k in env} <= known


def test_unit_runs_the_agents_console_script() -> None:
    """ExecStart is the `corral-agent` script pyproject declares, from the host's venv."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["corral-agent"] == "byoc_agent.main:main"
    unit = render(AgentInstall(control_plane_url="https://c.example", enrollment_token="t")
                  ).systemd_unit
    assert f"ExecStart={VENV}/bin/corral-agent\n" in unit
    assert "EnvironmentFile=/etc/corral/agent.env" in unit
    assert "KillMode=process" in unit  # stopping the agent leaves sandboxes running
    assert "byoc_agent.runtimes.templates build" in unit


def test_cloud_init_carries_the_install_script_root_only() -> None:
    bundle = render(AgentInstall(control_plane_url="https://c.example", enrollment_token="t"))
    content = re.search(r"content: (\S+)", bundle.cloud_init)
    assert content is not None
    assert base64.b64decode(content.group(1)).decode() == bundle.install_script
    assert "permissions: '0700'" in bundle.cloud_init
    assert bundle.files()["agent.env"][1] == 0o600


def test_cloud_init_is_valid_cloud_config_with_commands_before_the_install() -> None:
    """Parsed as YAML (cloud-init's own parser is PyYAML): one root-only file, then the
    extra commands in order, then the install script."""
    from infra.render import cloud_init

    yaml = pytest.importorskip("yaml")
    text = cloud_init("#!/bin/bash\necho hi\n", before=('echo "a" && test -x /bin/sh || true',))
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    (f,) = doc["write_files"]
    assert (f["path"], f["owner"], f["permissions"], f["encoding"]) == (
        "/var/lib/corral-install/install.sh", "root:root", "0700", "b64")
    assert base64.b64decode(f["content"]).decode() == "#!/bin/bash\necho hi\n"
    assert doc["runcmd"] == [["bash", "-c", 'echo "a" && test -x /bin/sh || true'],
                             ["bash", "/var/lib/corral-install/install.sh"]]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", "Bad_Name", "lowercase"),
    ("control_plane_url", "ftp://x", "https://"),
    ("control_plane_url", "https://x/$(reboot)", "may contain only"),
    ("enrollment_token", "", "enrollment token is required"),
    ("enrollment_token", "cet_x'; rm -rf /", "may contain only"),
    ("agent_package", "corral; curl evil", "one pip requirement"),
    ("dataplane_port", 0, "out of range"),
    ("dataplane_clients", ("0.0.0.0/0",), "not a private network"),
    ("dataplane_clients", ("8.8.8.0/24",), "not a private network"),
    ("dataplane_clients", ("10.0.0.0/33",), "data plane client"),
    ("labels", {"Team": "x"}, "lowercase"),
])
def test_bad_input_fails_with_a_clear_message(field: str, value: object, message: str) -> None:
    args: dict[str, object] = {"control_plane_url": "https://c.example",
                               "enrollment_token": "cet_ok", field: value}
    with pytest.raises(InstallConfigError, match=re.escape(message)):
        AgentInstall(**args)  # type: ignore[arg-type]
