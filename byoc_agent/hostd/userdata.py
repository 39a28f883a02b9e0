"""The user data that turns a freshly launched host into a hostd worker.

:func:`render_user_data` makes a ``#cloud-config`` document that

- writes the host's certificate (0644), key (0600), secret (0600) and ``hostd.json``
  (0644) under ``/etc/corral/hostd/``, an install script (0700) and the systemd unit;
- runs the install script once: Debian packages for the runtimes, a venv at
  ``/opt/corral/venv`` with ``pip install <package_spec>`` (default ``corral``), then
  ``systemctl enable --now corral-hostd``.

The document body is JSON, which is YAML too (cloud-init reads it with its YAML loader), so
no YAML emitter is needed and no value can be mis-quoted; file contents are base64
(``encoding: b64``). The package spec reaches the install script as a ``runcmd`` argument
(an argv list, no shell). The whole document holds the host's key and secret: it is as
secret as they are, and it is never logged. It stays under :data:`MAX_USER_DATA` (AWS's
16 KiB limit on user data).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from byoc_agent.protocol.errors import InvalidArgumentError

from .config import DEFAULT_PORT, HostdConfig, parse_config
from .credentials import HostCredentials

MAX_USER_DATA = 16 * 1024
HEADER = "#cloud-config\n"

ETC = Path("/etc/corral/hostd")
CONFIG_FILE = ETC / "hostd.json"
CERT_FILE = ETC / "cert.pem"
KEY_FILE = ETC / "key.pem"
SECRET_FILE = ETC / "secret"
DATA_DIR = Path("/var/lib/corral/hostd")
TEMPLATES_DIR = Path("/var/lib/corral/templates")
VENV = Path("/opt/corral/venv")
INSTALL_SCRIPT = Path("/var/lib/corral-install/install-hostd.sh")
UNIT_FILE = Path("/etc/systemd/system/corral-hostd.service")

# Debian packages each runtime needs on the host (gVisor, and QEMU for microVMs).
RUNTIME_PACKAGES: dict[str, tuple[str, ...]] = {
    "gvisor": ("runsc", "debootstrap", "e2fsprogs"),
    "qemu-microvm": (
        "qemu-system-x86", "qemu-utils", "busybox-static", "cpio", "e2fsprogs", "debootstrap"
    ),
    "firecracker": ("busybox-static", "cpio", "e2fsprogs", "debootstrap"),
}


@dataclass(frozen=True, slots=True)
class HostdBootConfig:
    """What a host needs to start hostd. ``agent_id``/``tenant_id`` are the manager's, for
    hostd's log lines only."""

    credentials: HostCredentials
    listen_port: int = DEFAULT_PORT
    runtimes: tuple[str, ...] = ("gvisor",)
    agent_id: str = ""
    tenant_id: str = ""
    package_spec: str = "corral"
    warm_pool: str = ""

    def hostd_config(self) -> HostdConfig:
        """hostd.json as it lands on the host."""
        return HostdConfig(
            cert_file=CERT_FILE,
            key_file=KEY_FILE,
            secret_file=SECRET_FILE,
            data_dir=DATA_DIR,
            templates_dir=TEMPLATES_DIR,
            listen_port=self.listen_port,
            runtimes=self.runtimes,
            agent_id=self.agent_id,
            tenant_id=self.tenant_id,
            warm_pool=self.warm_pool,
        )


def systemd_unit() -> str:
    """``KillMode=process``: stopping hostd must not kill the sandboxes it started; the
    next start finds them again (``recover``)."""
    return f"""\
[Unit]
Description=Corral hostd (this host's sandboxes, served to its manager agent)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
# Builds the base sandbox template the first time (debootstrap, about a minute).
ExecStartPre={VENV}/bin/python -m byoc_agent.runtimes.templates build --root {TEMPLATES_DIR} --name base
ExecStart={VENV}/bin/corral-hostd --config {CONFIG_FILE}
Restart=on-failure
RestartSec=5
TimeoutStartSec=900
KillMode=process
UMask=0077

[Install]
WantedBy=multi-user.target
"""  # noqa: E501


def install_script(runtimes: tuple[str, ...]) -> str:
    """Run once as root with the package spec as ``$1``; safe to run again."""
    packages = sorted({"python3-venv", *(p for r in runtimes for p in RUNTIME_PACKAGES.get(r, ()))})
    return f"""\
#!/bin/bash
# Installs Corral's hostd; the package to install is $1. Safe to re-run.
set -euo pipefail
umask 077
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q {" ".join(packages)}
install -d -m 0700 {DATA_DIR}
install -d -m 0755 {TEMPLATES_DIR}
if [ ! -x {VENV}/bin/corral-hostd ]; then
  python3 -m venv {VENV}
  {VENV}/bin/pip install -q --disable-pip-version-check "$1"
fi
systemctl daemon-reload
systemctl enable --now corral-hostd.service
"""


def _file(path: Path, content: str | bytes, permissions: str) -> dict[str, str]:
    raw = content.encode() if isinstance(content, str) else content
    return {
        "path": str(path),
        "owner": "root:root",
        "permissions": permissions,
        "encoding": "b64",
        "content": base64.b64encode(raw).decode("ascii"),
    }


def render_user_data(cfg: HostdBootConfig) -> str:
    """The ``#cloud-config`` document (see the module docstring). Raises InvalidArgumentError
    when it would not fit in 16 KiB."""
    if not cfg.package_spec.strip() or "\n" in cfg.package_spec:
        raise InvalidArgumentError("package_spec must be one non-empty line")
    doc = {
        "write_files": [
            _file(CERT_FILE, cfg.credentials.cert_pem, "0644"),
            _file(KEY_FILE, cfg.credentials.key_pem, "0600"),
            _file(SECRET_FILE, cfg.credentials.secret, "0600"),
            _file(CONFIG_FILE, cfg.hostd_config().to_json(), "0644"),
            _file(UNIT_FILE, systemd_unit(), "0644"),
            _file(INSTALL_SCRIPT, install_script(cfg.runtimes), "0700"),
        ],
        "runcmd": [["bash", str(INSTALL_SCRIPT), cfg.package_spec]],
    }
    text = HEADER + json.dumps(doc, indent=1) + "\n"
    if len(text.encode()) > MAX_USER_DATA:
        raise InvalidArgumentError(
            f"hostd user data is {len(text.encode())} bytes, over the {MAX_USER_DATA} limit"
        )
    return text


def parse_user_data(text: str) -> HostdBootConfig:
    """The inverse of :func:`render_user_data`. Raises InvalidArgumentError."""
    if not text.startswith(HEADER):
        raise InvalidArgumentError("not hostd user data: no #cloud-config header")
    try:
        doc = json.loads(text[len(HEADER):])
        files = {
            f["path"]: base64.b64decode(f["content"], validate=True) for f in doc["write_files"]
        }
        command = doc["runcmd"][0]
        config = parse_config(files[str(CONFIG_FILE)].decode())
        credentials = HostCredentials(
            secret=files[str(SECRET_FILE)].decode(),
            cert_pem=files[str(CERT_FILE)],
            key_pem=files[str(KEY_FILE)],
        )
        package_spec = str(command[2])
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as e:
        raise InvalidArgumentError(f"malformed hostd user data ({type(e).__name__})") from None
    return HostdBootConfig(
        credentials=credentials,
        listen_port=config.listen_port,
        runtimes=config.runtimes,
        agent_id=config.agent_id,
        tenant_id=config.tenant_id,
        package_spec=package_spec,
        warm_pool=config.warm_pool,
    )
