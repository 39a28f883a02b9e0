"""Settings come from CORRAL_ variables, once, with safe development defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.settings import SettingsError, generate_master_key_text, load_settings

TOKEN = "operator-token-for-tests"


def test_defaults_put_sqlite_and_a_generated_master_key_under_home(tmp_path: Path) -> None:
    """Without overrides the database and the master key file live under CORRAL_HOME."""
    home = tmp_path / "home"
    settings = load_settings({"CORRAL_HOME": str(home), "CORRAL_ADMIN_TOKEN": TOKEN})
    assert settings.database_url == f"sqlite:///{home / 'control-plane.db'}"
    assert (home / "master.key").stat().st_mode & 0o777 == 0o600
    assert len(settings.master_key) == 32
    again = load_settings({"CORRAL_HOME": str(home), "CORRAL_ADMIN_TOKEN": TOKEN})
    assert again.master_key == settings.master_key
    assert settings.limits.cpu_max == 8
    assert settings.limits.memory_mb_min == 128
    assert settings.limits.memory_mb_max == 16384
    assert settings.limits.metadata_max_keys == 64


def test_an_inline_master_key_and_overrides_are_used(tmp_path: Path) -> None:
    """CORRAL_MASTER_KEY and numeric overrides are read and parsed."""
    key = generate_master_key_text()
    settings = load_settings(
        {
            "CORRAL_HOME": str(tmp_path),
            "CORRAL_ADMIN_TOKEN": TOKEN,
            "CORRAL_MASTER_KEY": key,
            "CORRAL_JOB_TIMEOUT_S": "2.5",
            "CORRAL_LISTEN_PORT": "9999",
            "CORRAL_NATS_URL": "nats://nats:4222",
        }
    )
    assert settings.job_timeout_s == 2.5
    assert settings.listen_port == 9999
    assert settings.public_nats_url == "nats://nats:4222"
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "CORRAL_ADMIN_TOKEN"),
        ({"CORRAL_ADMIN_TOKEN": TOKEN, "CORRAL_MASTER_KEY": "short"}, "CORRAL_MASTER_KEY"),
        ({"CORRAL_ADMIN_TOKEN": TOKEN, "CORRAL_LISTEN_PORT": "http"}, "CORRAL_LISTEN_PORT"),
    ],
)
def test_bad_settings_fail_naming_the_variable(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    """A missing or malformed variable is refused with its name in the message."""
    with pytest.raises(SettingsError, match=named):
        load_settings({"CORRAL_HOME": str(tmp_path), **env})


def test_the_settings_repr_shows_no_secret(tmp_path: Path) -> None:
    """Neither the operator token nor the master key appear when settings are printed."""
    settings = load_settings({"CORRAL_HOME": str(tmp_path), "CORRAL_ADMIN_TOKEN": TOKEN})
    assert TOKEN not in repr(settings)
    assert str(settings.master_key) not in repr(settings)
