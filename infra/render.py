"""The files that put the agent on a host: config, systemd unit, install script, cloud-init.

Pure text, no Pulumi: the cloud stacks wrap the result in secrets, the bare-metal stack
writes it to a directory, and a test runs the install script in a throwaway root.

Layout on the host::

    /etc/corral/agent.env                     CORRAL_AGENT_* settings, root:root 0600
    /etc/systemd/system/corral-agent.service  runs the `corral-agent` entry point
    /opt/corral/venv                          the agent, pip-installed into its own venv
    /var/lib/corral/agent                     the agent's key (0600) and state database
    /var/lib/corral/templates                 sandbox root filesystems (built by the unit)

The install script measures, then acts: every step checks whether it is done, so running
it again (GCP runs its startup script on every boot) changes nothing that is in place.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass

from infra.config import AgentInstall
from infra.errors import InstallConfigError

ENV_FILE = "/etc/corral/agent.env"
UNIT_FILE = "/etc/systemd/system/corral-agent.service"
VENV = "/opt/corral/venv"
AGENT_HOME = "/var/lib/corral/agent"
TEMPLATES = "/var/lib/corral/templates"
APT_PACKAGES = ("python3-venv", "runsc", "debootstrap", "iproute2")


@dataclass(frozen=True, slots=True)
class InstallBundle:
    """Everything a host needs; ``install_script`` and ``cloud_init`` hold the token."""

    agent_env: str
    systemd_unit: str
    install_script: str
    cloud_init: str

    def files(self) -> dict[str, tuple[str, int]]:
        """File name -> (contents, mode) for writing the bundle to a directory."""
        return {
            "agent.env": (self.agent_env, 0o600),
            "corral-agent.service": (self.systemd_unit, 0o644),
            "install.sh": (self.install_script, 0o700),
            "cloud-init.yaml": (self.cloud_init, 0o600),
        }


def host_settings(agent: AgentInstall, provider: str, where: Mapping[str, str]
                  ) -> dict[str, str]:
    """The ``CORRAL_AGENT_HOST*`` lines for an install with hosts (``agent.hosts``):
    ``where`` is the cloud's part (region, image, subnet, security group...), by the
    suffix after ``CORRAL_AGENT_HOST_``. Sandboxes run on the hosts (``WORKERS=hostd``),
    which install the same agent package as the agent."""
    h = agent.hosts
    env = {"CORRAL_AGENT_HOST_PROVIDER": provider}
    env.update({f"CORRAL_AGENT_HOST_{k}": v for k, v in where.items()})
    env.update({
        "CORRAL_AGENT_HOST_WORKERS": "hostd",
        "CORRAL_AGENT_HOST_WORKER_PORT": str(h.worker_port),
        "CORRAL_AGENT_HOST_WORKER_PACKAGE": agent.agent_package,
        "CORRAL_AGENT_HOSTS_MAX": str(h.max),
        "CORRAL_AGENT_HOSTS_BUDGET_PER_HOUR": h.budget_per_hour,
    })
    if h.prices:
        env["CORRAL_AGENT_HOST_INSTANCE_TYPES"] = ",".join(h.prices)
        env["CORRAL_AGENT_HOST_PRICES"] = ",".join(f"{t}={p}" for t, p in h.prices.items())
    return env


def agent_env(agent: AgentInstall, hosts: Mapping[str, str] | None = None) -> str:
    """The agent's settings as a systemd EnvironmentFile (read by AgentSettings.from_env).

    The data plane listens on every address of the host; the firewall, not the bind
    address, decides who may reach it (by default: nobody). The advertised URL is the
    host's private address, filled in by the install script.

    ``hosts``: the ``CORRAL_AGENT_HOST*`` settings a cloud stack computed from what it
    created (HostSettings.from_env), appended after the agent's own; None or empty for an
    install without hosts. None of them is a secret.
    """
    lines = [
        "# Corral agent settings (byoc_agent/settings.py). Contains a secret: mode 0600.",
        f"CORRAL_AGENT_HOME={AGENT_HOME}",
        f"CORRAL_AGENT_TEMPLATES_DIR={TEMPLATES}",
        f"CORRAL_AGENT_CONTROL_PLANE_URL={agent.control_plane_url}",
        f"CORRAL_AGENT_ENROLLMENT_TOKEN={agent.enrollment_token}",
        f"CORRAL_AGENT_NAME={agent.name}",
        "CORRAL_AGENT_DATAPLANE_HOST=0.0.0.0",
        f"CORRAL_AGENT_DATAPLANE_PORT={agent.dataplane_port}",
        "CORRAL_AGENT_RUNTIME=gvisor",
        f"CORRAL_AGENT_MEMORY_MB_TOTAL={agent.memory_mb_total}",
    ]
    for key, value in (hosts or {}).items():
        if not key.startswith("CORRAL_AGENT_HOST") or not key.replace("_", "").isalnum():
            raise InstallConfigError(f"{key!r} is not a CORRAL_AGENT_HOST* setting")
        # One line each in a systemd EnvironmentFile and a quoted heredoc: no line breaks,
        # quotes or backslashes (an SSH public key's spaces are fine there).
        if any(c in value for c in "\n\r'\"\\") or value != value.strip():
            raise InstallConfigError(f"{key}: {value!r} cannot be written to agent.env")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def systemd_unit() -> str:
    """The service. ``KillMode=process``: stopping the agent must not kill sandboxes,
    which the agent reattaches on its next start (byoc_agent/main.py drains and exits)."""
    return f"""\
[Unit]
Description=Corral BYOC agent (signed jobs from the control plane, gVisor sandboxes)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile={ENV_FILE}
# Builds the base sandbox template the first time (debootstrap, about a minute);
# later starts find it current and return at once.
ExecStartPre={VENV}/bin/python -m byoc_agent.runtimes.templates build --root {TEMPLATES} --name base
ExecStart={VENV}/bin/corral-agent
Restart=on-failure
RestartSec=5
TimeoutStartSec=900
TimeoutStopSec=30
KillMode=process
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def install_script(agent: AgentInstall, hosts: Mapping[str, str] | None = None) -> str:
    """A bash script, run as root, that installs and starts the agent.

    ``CORRAL_PIP_ARGS`` (environment) adds pip options, e.g. ``--no-index --find-links
    DIR`` for a host without a package index; ``CORRAL_VENV_ARGS`` adds ``venv`` options.
    """
    env = agent_env(agent, hosts)
    unit = systemd_unit()
    packages = " ".join(APT_PACKAGES)
    return f"""\
#!/bin/bash
# Installs the Corral agent ({agent.name}). Rendered by `corral install`; safe to re-run.
set -euo pipefail
umask 077

missing=()
for p in {packages}; do
  dpkg-query -W -f='${{Status}}' "$p" 2>/dev/null | grep -q "install ok installed" \\
    || missing+=("$p")
done
if ((${{#missing[@]}})); then
  echo "corral: apt-get install ${{missing[*]}}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${{missing[@]}}"
fi

install -d -m 0755 /etc/corral /etc/systemd/system /opt/corral /var/lib/corral
install -d -m 0700 {AGENT_HOME}
install -d -m 0755 {TEMPLATES}

# The settings, with the one-use enrollment token: root only.
tmp=$(mktemp /etc/corral/.agent.env.XXXXXX)
cat > "$tmp" <<'CORRAL_AGENT_ENV'
{env}CORRAL_AGENT_ENV
addr=$(hostname -I 2>/dev/null | awk '{{print $1}}')
url="http://${{addr:-127.0.0.1}}:{agent.dataplane_port}"
echo "CORRAL_AGENT_DATAPLANE_PUBLIC_URL=$url" >> "$tmp"
chmod 0600 "$tmp"
mv -f "$tmp" {ENV_FILE}

if [ ! -x {VENV}/bin/corral-agent ]; then
  echo "corral: installing {agent.agent_package} into {VENV}"
  python3 -m venv ${{CORRAL_VENV_ARGS:-}} {VENV}
  {VENV}/bin/pip install -q --disable-pip-version-check ${{CORRAL_PIP_ARGS:-}} \\
    '{agent.agent_package}'
fi

cat > {UNIT_FILE}.tmp <<'CORRAL_AGENT_UNIT'
{unit}CORRAL_AGENT_UNIT
chmod 0644 {UNIT_FILE}.tmp
mv -f {UNIT_FILE}.tmp {UNIT_FILE}

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now corral-agent.service
  echo "corral: corral-agent.service started"
else
  echo "corral: systemd is not running here; start corral-agent.service at next boot"
fi
"""


def cloud_init(script: str, before: tuple[str, ...] = ()) -> str:
    """#cloud-config that writes the install script (root, 0700) and runs it once,
    after the shell commands in ``before`` (a cloud's own agents, e.g. AWS SSM)."""
    encoded = base64.b64encode(script.encode()).decode()
    pre = "".join(f"  - [bash, -c, {json.dumps(cmd)}]\n" for cmd in before)
    return f"""\
#cloud-config
# Corral agent install. Holds the enrollment token: keep this user data secret.
write_files:
  - path: /var/lib/corral-install/install.sh
    owner: root:root
    permissions: '0700'
    encoding: b64
    content: {encoded}
runcmd:
{pre}  - [bash, /var/lib/corral-install/install.sh]
"""


def render(agent: AgentInstall, hosts: Mapping[str, str] | None = None) -> InstallBundle:
    script = install_script(agent, hosts)
    return InstallBundle(
        agent_env=agent_env(agent, hosts),
        systemd_unit=systemd_unit(),
        install_script=script,
        cloud_init=cloud_init(script),
    )
