"""The ``corral`` command line, driven by typer's CliRunner against the fake servers."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from corral.cli import app

from .fake_corral import FakeCorral


@pytest.fixture
def runner() -> CliRunner:
    """A CLI runner; stderr is kept apart from stdout."""
    return CliRunner()


def test_sandbox_create_prints_only_the_new_id(fake: FakeCorral, runner: CliRunner) -> None:
    """create prints the id alone, so scripts can capture it."""
    result = runner.invoke(
        app,
        [
            "sandbox",
            "create",
            "--template",
            "python",
            "--cpu",
            "2",
            "--memory-mb",
            "1024",
            "--timeout",
            "60",
            "--env",
            "A=1",
            "--metadata",
            "team=ml",
            "--metadata",
            "x=y=z",
        ],
    )
    assert result.exit_code == 0, result.output
    sid = result.stdout.strip()
    stored = fake.sandboxes[sid]
    assert (stored.template, stored.cpu, stored.memory_mb, stored.timeout_s) == (
        "python",
        2,
        1024,
        60,
    )
    assert stored.env == {"A": "1"}
    assert stored.metadata == {"team": "ml", "x": "y=z"}
    assert stored.state == "running"


def test_sandbox_create_shows_a_slow_start_on_stderr(fake: FakeCorral, runner: CliRunner) -> None:
    """A sandbox answered as pending: stderr says it is starting, stdout still holds only
    the id once it runs."""
    fake.create_pending_polls = 3
    result = runner.invoke(app, ["sandbox", "create", "--start-timeout", "30"])
    assert result.exit_code == 0, result.output
    sid = result.stdout.strip()
    assert fake.sandboxes[sid].state == "running"
    assert f"{sid} is starting" in result.stderr


def test_sandbox_create_passes_each_egress_option_on(fake: FakeCorral, runner: CliRunner) -> None:
    """--egress is repeatable; the list reaches the API in order, with the isolation."""
    result = runner.invoke(
        app,
        ["sandbox", "create", "--isolation", "microvm",
         "--egress", "10.0.0.5:443", "--egress", "10.0.0.6:5432"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = fake.sandboxes[result.stdout.strip()]
    assert (stored.isolation, stored.egress) == ("microvm", ["10.0.0.5:443", "10.0.0.6:5432"])


def test_sandbox_create_rejects_a_malformed_pair(fake: FakeCorral, runner: CliRunner) -> None:
    """--env without '=' is a usage error naming the option."""
    result = runner.invoke(app, ["sandbox", "create", "--env", "NOEQUALS"])
    assert result.exit_code == 2
    assert "--env" in result.stderr
    assert fake.sandboxes == {}


def test_sandbox_ls_shows_a_table_filtered_by_state_and_metadata(
    fake: FakeCorral, runner: CliRunner
) -> None:
    """ls lists matching sandboxes with their state and metadata."""
    keep = fake.add_sandbox(metadata={"team": "ml"})
    gone = fake.add_sandbox(metadata={"team": "ml"}, state="killed")
    other = fake.add_sandbox(metadata={"team": "web"})
    result = runner.invoke(app, ["sandbox", "ls", "--state", "running", "--metadata", "team=ml"])
    assert result.exit_code == 0, result.output
    assert keep.id in result.stdout
    assert "team=ml" in result.stdout
    assert gone.id not in result.stdout
    assert other.id not in result.stdout
    assert "STATE" in result.stdout


def test_sandbox_ls_says_when_there_are_none(fake: FakeCorral, runner: CliRunner) -> None:
    """An empty list prints a sentence, not an empty table."""
    result = runner.invoke(app, ["sandbox", "ls"])
    assert result.exit_code == 0
    assert "No sandboxes." in result.stdout


def test_sandbox_exec_streams_output_and_exits_with_the_commands_code(
    fake: FakeCorral, runner: CliRunner
) -> None:
    """exec writes stdout and stderr through and exits with the command's exit code."""
    sb = fake.add_sandbox()
    result = runner.invoke(
        app, ["sandbox", "exec", sb.id, "--", "sh", "-c", "echo out; echo err >&2; exit 7"]
    )
    assert result.exit_code == 7
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_sandbox_exec_passes_a_single_argument_to_the_shell_as_is(
    fake: FakeCorral, runner: CliRunner
) -> None:
    """One quoted argument is run as a shell line, so pipes work."""
    sb = fake.add_sandbox()
    result = runner.invoke(app, ["sandbox", "exec", sb.id, "--", "printf 'a\\nb\\n' | wc -l"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "2"


def test_sandbox_exec_timeout_exits_124(fake: FakeCorral, runner: CliRunner) -> None:
    """A command past --timeout exits 124, like timeout(1)."""
    sb = fake.add_sandbox()
    result = runner.invoke(app, ["sandbox", "exec", "--timeout", "1", sb.id, "--", "sleep 20"])
    assert result.exit_code == 124
    assert "timeout" in result.stderr


def test_sandbox_kill_kills(fake: FakeCorral, runner: CliRunner) -> None:
    """kill ends the sandbox and says so."""
    sb = fake.add_sandbox()
    result = runner.invoke(app, ["sandbox", "kill", sb.id])
    assert result.exit_code == 0
    assert f"killed {sb.id}" in result.stdout
    assert fake.sandboxes[sb.id].state == "killed"


def test_errors_print_one_red_line_without_a_traceback(fake: FakeCorral, runner: CliRunner) -> None:
    """A missing sandbox prints a single actionable error line and exits 1."""
    result = runner.invoke(app, ["sandbox", "kill", "sb-missing"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: Sandbox sb-missing not found")
    assert "corral sandbox ls" in lines[0]
    assert "Traceback" not in result.output


def test_a_missing_api_key_is_reported_with_the_variable_to_set(
    fake: FakeCorral, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without CORRAL_API_KEY the CLI says to set it."""
    monkeypatch.delenv("CORRAL_API_KEY")
    result = runner.invoke(app, ["sandbox", "ls"])
    assert result.exit_code == 1
    assert "CORRAL_API_KEY" in result.stderr


def test_admin_tenant_create_prints_the_key_once_prominently(
    fake: FakeCorral, runner: CliRunner
) -> None:
    """tenant create shows the new API key on its own line with a store-it-now warning."""
    result = runner.invoke(app, ["admin", "tenant", "create", "initech"])
    assert result.exit_code == 0, result.output
    key = next(
        k
        for k, r in fake.keys.items()
        if r["name"] == "default" and fake.tenants[str(r["tenant_id"])]["name"] == "initech"
    )
    assert key in result.stdout.split()
    assert "shown once" in result.stdout


def test_admin_tenant_ls_lists_tenants(fake: FakeCorral, runner: CliRunner) -> None:
    """tenant ls shows every tenant's id and name."""
    result = runner.invoke(app, ["admin", "tenant", "ls"])
    assert result.exit_code == 0, result.output
    assert fake.acme_id in result.stdout
    assert "other" in result.stdout


def test_admin_apikey_create_ls_and_revoke(fake: FakeCorral, runner: CliRunner) -> None:
    """apikey create shows the secret once; ls never shows it; revoke marks it revoked."""
    created = runner.invoke(
        app, ["admin", "apikey", "create", "--tenant", fake.acme_id, "--name", "ci"]
    )
    assert created.exit_code == 0, created.output
    [record] = [r for r in fake.keys.values() if r["name"] == "ci"]
    assert str(record["key"]) in created.stdout
    listed = runner.invoke(app, ["admin", "apikey", "ls", "--tenant", fake.acme_id])
    assert listed.exit_code == 0, listed.output
    assert str(record["id"]) in listed.stdout
    assert str(record["key"]) not in listed.stdout
    revoked = runner.invoke(
        app, ["admin", "apikey", "revoke", "--tenant", fake.acme_id, str(record["id"])]
    )
    assert revoked.exit_code == 0, revoked.output
    assert record["revoked_at"] is not None


def test_admin_enrollment_token_prints_the_token(fake: FakeCorral, runner: CliRunner) -> None:
    """enrollment-token prints the token alone on stdout."""
    result = runner.invoke(app, ["admin", "enrollment-token", "--tenant", fake.acme_id])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("enr_")
    assert "One use" in result.stderr


def test_admin_agents_lists_agents_with_status(fake: FakeCorral, runner: CliRunner) -> None:
    """agents shows each agent and whether it is online."""
    result = runner.invoke(app, ["admin", "agents"])
    assert result.exit_code == 0, result.output
    assert "agent-1" in result.stdout
    assert "online" in result.stdout


def test_admin_commands_with_a_tenant_key_are_denied(
    fake: FakeCorral, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Using a tenant key as the admin token gives a permission error line."""
    monkeypatch.setenv("CORRAL_ADMIN_TOKEN", fake.acme_key)
    result = runner.invoke(app, ["admin", "tenant", "ls"])
    assert result.exit_code == 1
    assert "Permission denied" in result.stderr
