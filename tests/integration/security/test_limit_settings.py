"""The limits are configured from the environment and refuse nonsense with a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.runtimes.gvisor import GVisorRuntime
from byoc_agent.settings import AgentSettings
from control_plane.settings import SettingsError, load_settings


def test_the_sandbox_create_rate_comes_from_the_environment(tmp_path: Path) -> None:
    """Rate and burst are read from CORRAL_SANDBOX_CREATE_*; negatives name the variable."""
    base = {"CORRAL_ADMIN_TOKEN": "t" * 16, "CORRAL_HOME": str(tmp_path)}
    settings = load_settings(
        {**base, "CORRAL_SANDBOX_CREATE_RATE_PER_S": "0.5", "CORRAL_SANDBOX_CREATE_BURST": "3"}
    )
    assert (settings.sandbox_create_rate_per_s, settings.sandbox_create_burst) == (0.5, 3)
    defaults = load_settings(base)
    assert (defaults.sandbox_create_rate_per_s, defaults.sandbox_create_burst) == (5.0, 50)
    with pytest.raises(SettingsError, match="CORRAL_SANDBOX_CREATE_BURST"):
        load_settings({**base, "CORRAL_SANDBOX_CREATE_BURST": "-1"})
    with pytest.raises(SettingsError, match="CORRAL_SANDBOX_CREATE_RATE_PER_S"):
        load_settings({**base, "CORRAL_SANDBOX_CREATE_RATE_PER_S": "fast"})


def test_the_agent_reads_its_sandbox_limits_from_the_environment() -> None:
    """CORRAL_AGENT_SANDBOX_DISK_MB and _PIDS_MAX, with 10 GiB and 4096 by default."""
    settings = AgentSettings.from_env(
        {"CORRAL_AGENT_SANDBOX_DISK_MB": "2048", "CORRAL_AGENT_SANDBOX_PIDS_MAX": "0"}
    )
    assert (settings.sandbox_disk_mb, settings.sandbox_pids_max) == (2048, 0)
    assert (
        AgentSettings.from_env({}).sandbox_disk_mb,
        AgentSettings.from_env({}).sandbox_pids_max,
    ) == (10240, 4096)


@pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc is not on PATH")
@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"pids_max": 10}, "pids_max"),
        ({"pids_max": -1}, "must not be negative"),
        ({"disk_mb": 1}, "disk_mb"),
    ],
)
def test_the_runtime_refuses_limits_too_small_to_run_a_sandbox(
    tmp_path: Path, options: dict[str, int], words: str
) -> None:
    """A pids cap below a sandbox's own ~45 tasks, or a 1 MiB disk, is a clear error."""
    with pytest.raises(InvalidArgumentError, match=words):
        GVisorRuntime(tmp_path / "state", tmp_path / "templates", **options)
