"""The rendered bare-metal install script, run for real in a throwaway root.

bubblewrap gives the script its own mount, network and PID namespaces: the host's
``/usr`` read-only, and ``/etc``, ``/opt`` and ``/var`` as fresh directories of this test.
There is no network inside. The agent is installed from a wheel built here from a copy of
the source tree (``--no-index``); its dependencies are provided as the system Python's
site-packages (the way a host that packages them would), so pip resolves nothing online.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from byoc_agent.settings import AgentSettings
from infra.config import AgentInstall
from infra.install import write_bundle

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("corral", "byoc_agent", "control_plane", "billing", "infra")
SYSTEM_PYTHON = Path("/usr/bin/python3")
SYSTEM_SITE = Path("/usr/lib/python3/dist-packages")
ETC_FILES = ("passwd", "group", "nsswitch.conf", "hosts", "ld.so.cache", "ld.so.conf")
ETC_DIRS = ("alternatives", "ld.so.conf.d", "dpkg")


def _missing() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if not SYSTEM_PYTHON.exists() or not SYSTEM_SITE.is_dir():
        return "no Debian system python3 with /usr/lib/python3/dist-packages"
    probe = subprocess.run(
        ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"bwrap cannot create namespaces here: {probe.stderr.decode().strip()}"
    if subprocess.run([str(SYSTEM_PYTHON), "-c", "import ensurepip, venv"]).returncode != 0:
        return "the system python3 lacks venv/ensurepip (apt-get install python3-venv)"
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        return (f"the system python3 is {version}, this test's is {sys.version_info[:2]}: the "
                "dependencies it lends the throwaway root would not load")
    return None


def _wheel(tmp: Path) -> Path:
    """corral's wheel, built offline from a copy of the source tree."""
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=ignore)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, src / f)
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "-w", str(wheels), str(src)],
        check=True, capture_output=True,
    )
    assert list(wheels.glob("corral-*.whl")), "no wheel was built"
    return wheels


def _dependencies(tmp: Path) -> Path:
    """The agent's dependencies as a site-packages view: this venv's, minus corral itself."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    view = tmp / "dist-packages"
    view.mkdir()
    for entry in site.iterdir():
        if entry.name.startswith(("corral", "__editable__", "_corral")):
            continue
        (view / entry.name).symlink_to(entry)
    return site


def _root(tmp: Path) -> Path:
    root = tmp / "root"
    etc = root / "etc"
    etc.mkdir(parents=True)
    for f in ETC_FILES:
        if Path("/etc", f).exists():
            shutil.copy2(Path("/etc", f), etc / f)
    for d in ETC_DIRS:
        if Path("/etc", d).is_dir():
            shutil.copytree(Path("/etc", d), etc / d, symlinks=True)
    for d in ("opt", "var/lib/dpkg", "bundle"):
        (root / d).mkdir(parents=True)
    return root


def _bwrap(root: Path, tmp: Path, site: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    argv = [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
        "--ro-bind", "/usr", "/usr",
        # Mounted first: a later bind under /tmp (this checkout's venv may live there) must
        # not be hidden by the root's own empty /tmp.
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--bind", str(root / "etc"), "/etc",
        "--bind", str(root / "opt"), "/opt",
        "--bind", str(root / "var"), "/var",
        "--ro-bind", "/var/lib/dpkg", "/var/lib/dpkg",
        "--ro-bind", str(tmp / "dist-packages"), str(SYSTEM_SITE),
        "--ro-bind", str(site), str(site),
        "--ro-bind", str(tmp / "wheels"), "/wheels",
        "--ro-bind", str(root / "bundle"), "/bundle",
        "--clearenv", "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin",
        "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
        "--setenv", "CORRAL_VENV_ARGS", "--system-site-packages",
        # --no-deps: the dependencies are lent above; the root's own (Debian) pip may not read
        # the metadata of newer packages in that view, so it must not try to resolve them.
        "--setenv", "CORRAL_PIP_ARGS", "--no-index --find-links /wheels --no-deps",
        *cmd,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=240)


def test_the_install_script_installs_unit_config_and_agent(tmp_path: Path) -> None:
    """install.sh, run as root in a throwaway root with no network, leaves the systemd
    unit, a 0600 config the agent's own settings parser reads, and a working agent."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    _wheel(tmp_path)
    site = _dependencies(tmp_path)
    root = _root(tmp_path)
    agent = AgentInstall(control_plane_url="https://cp.example.com:8443",
                         enrollment_token="cet_bwrap-test-token", name="metal-1",
                         memory_mb_total=2048)
    write_bundle(agent, root / "bundle")

    run = _bwrap(root, tmp_path, site, "/bin/bash", "/bundle/install.sh")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "systemd is not running here" in run.stdout

    unit = root / "etc/systemd/system/corral-agent.service"
    assert unit.read_text() == (root / "bundle/corral-agent.service").read_text()
    assert "ExecStart=/opt/corral/venv/bin/corral-agent" in unit.read_text()
    env_file = root / "etc/corral/agent.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "var/lib/corral/agent").stat().st_mode) == 0o700
    values = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines()
        if line and not line.startswith("#")
    )
    settings = AgentSettings.from_env(values)
    assert settings.control_plane_url == "https://cp.example.com:8443"
    assert settings.enrollment_token == "cet_bwrap-test-token"
    assert settings.name == "metal-1"
    assert settings.memory_mb_total == 2048
    assert settings.home == Path("/var/lib/corral/agent")
    assert settings.advertised_dataplane_url == "http://127.0.0.1:8788"  # no address inside

    venv = root / "opt/corral/venv"
    assert os.access(venv / "bin/corral-agent", os.X_OK)
    check = _bwrap(
        root, tmp_path, site, "/opt/corral/venv/bin/python", "-c",
        "import byoc_agent, byoc_agent.main, byoc_agent.settings, sys; "
        "print(byoc_agent.__file__); print(sys.prefix)",
    )
    assert check.returncode == 0, check.stderr
    installed_at, prefix = check.stdout.split()
    assert installed_at.startswith("/opt/corral/venv/lib/"), installed_at
    assert prefix == "/opt/corral/venv"
    # The installed agent's own CLI runs (the unit's ExecStartPre uses it).
    templates = _bwrap(root, tmp_path, site, "/opt/corral/venv/bin/python", "-m",
                       "byoc_agent.runtimes.templates", "list", "--root",
                       "/var/lib/corral/templates")
    assert templates.returncode == 0, templates.stderr

    again = _bwrap(root, tmp_path, site, "/bin/bash", "/bundle/install.sh")
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stdout  # measured, found in place, left alone
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
