"""Running commands over the data plane's NDJSON exec stream."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest

from corral import (
    APIError,
    CommandExitError,
    CommandResult,
    CommandTimeoutError,
    InvalidArgumentError,
    Sandbox,
    SandboxNotRunningError,
    ServiceUnavailableError,
)

from .fake_corral import FakeCorral


@pytest.fixture
def sandbox(fake: FakeCorral) -> Iterator[Sandbox]:
    """A running sandbox on the fake, killed after the test."""
    with Sandbox.create() as sb:
        yield sb


def _out(data: bytes) -> str:
    return json.dumps({"type": "stdout", "data": base64.b64encode(data).decode()})


def test_run_returns_stdout_stderr_and_exit_code(sandbox: Sandbox) -> None:
    """A command's output and exit code come back in a CommandResult."""
    result = sandbox.commands.run("echo out; echo err >&2")
    assert result == CommandResult("out\n", "err\n", 0, "echo out; echo err >&2")
    assert result.ok


def test_non_zero_exit_is_returned_not_raised(sandbox: Sandbox) -> None:
    """A failing command returns its exit code; nothing is raised."""
    result = sandbox.commands.run("echo nope >&2; exit 3")
    assert result.exit_code == 3
    assert not result.ok


def test_check_raises_command_exit_error_with_the_last_stderr_line(sandbox: Sandbox) -> None:
    """check() turns a non-zero exit into CommandExitError naming the command and code."""
    result = sandbox.commands.run("echo first >&2; echo 'file missing' >&2; exit 2")
    with pytest.raises(CommandExitError, match=r"exited with code 2: file missing") as info:
        result.check()
    assert info.value.exit_code == 2
    assert "first" in info.value.stderr


def test_check_returns_the_result_on_success(sandbox: Sandbox) -> None:
    """check() on a zero exit returns the same result for chaining."""
    assert sandbox.commands.run("true").check().exit_code == 0


def test_callbacks_receive_chunks_while_the_command_runs(sandbox: Sandbox) -> None:
    """on_stdout sees the first line well before the command finishes."""
    arrivals: list[tuple[float, str]] = []
    start = time.monotonic()
    sandbox.commands.run(
        "echo first; sleep 0.6; echo second",
        on_stdout=lambda text: arrivals.append((time.monotonic() - start, text)),
    )
    elapsed = time.monotonic() - start
    assert "".join(t for _, t in arrivals) == "first\nsecond\n"
    assert arrivals[0][0] < elapsed - 0.4


def test_callbacks_see_stdout_and_stderr_in_the_order_they_were_written(
    sandbox: Sandbox,
) -> None:
    """Interleaved stdout and stderr reach the callbacks in the order the command wrote."""
    seen: list[str] = []
    result = sandbox.commands.run(
        "echo a; sleep 0.1; echo b >&2; sleep 0.1; echo c; sleep 0.1; echo d >&2",
        on_stdout=lambda t: seen.append(f"out:{t.strip()}"),
        on_stderr=lambda t: seen.append(f"err:{t.strip()}"),
    )
    assert seen == ["out:a", "err:b", "out:c", "err:d"]
    assert (result.stdout, result.stderr) == ("a\nc\n", "b\nd\n")


def test_envs_cwd_and_stdin_reach_the_command(sandbox: Sandbox) -> None:
    """Environment, working directory and stdin are passed through."""
    sandbox.files.make_dir("/work")
    result = sandbox.commands.run(
        'printf "%s:" "$GREETING"; basename "$(pwd)"; cat',
        envs={"GREETING": "hi"},
        cwd="/work",
        stdin="from stdin",
    )
    assert result.stdout == "hi:work\nfrom stdin"


def test_a_command_past_its_timeout_raises_command_timeout_error(sandbox: Sandbox) -> None:
    """A timed-out command raises CommandTimeoutError carrying what it printed."""
    with pytest.raises(CommandTimeoutError, match="timeout") as info:
        sandbox.commands.run("echo started; sleep 30", timeout=1)
    assert info.value.stdout == "started\n"
    assert info.value.retryable is False


def test_non_positive_timeout_is_rejected_before_any_request(
    sandbox: Sandbox, fake: FakeCorral
) -> None:
    """timeout=0 is refused locally."""
    with pytest.raises(InvalidArgumentError) as info:
        sandbox.commands.run("true", timeout=0)
    assert info.value.field == "timeout"
    assert fake.requests("data", "/exec") == []


def test_utf8_split_across_chunks_is_decoded_whole(sandbox: Sandbox, fake: FakeCorral) -> None:
    """A multi-byte character split between two chunks arrives intact."""
    snowman = "☃".encode()
    fake.exec_script = [
        _out(b"x" + snowman[:1]),
        _out(snowman[1:] + b"y\xff"),
        json.dumps({"type": "exit", "exit_code": 0, "timed_out": False}),
    ]
    chunks: list[str] = []
    result = sandbox.commands.run("ignored", on_stdout=chunks.append)
    assert result.stdout == "x☃y\ufffd"
    assert "".join(chunks) == result.stdout


def test_an_error_event_becomes_a_typed_exception(sandbox: Sandbox, fake: FakeCorral) -> None:
    """An error event in the stream raises the exception its code names."""
    fake.exec_script = [
        json.dumps({"type": "error", "code": "sandbox_not_running", "message": "it died"})
    ]
    with pytest.raises(SandboxNotRunningError, match="it died"):
        sandbox.commands.run("ignored")


def test_a_stream_that_ends_without_exit_raises_service_unavailable(
    sandbox: Sandbox, fake: FakeCorral
) -> None:
    """A stream cut short says so and suggests running the command again."""
    fake.exec_script = [_out(b"partial")]
    with pytest.raises(ServiceUnavailableError, match="ended before"):
        sandbox.commands.run("ignored")


def test_an_unreadable_stream_line_raises_api_error(sandbox: Sandbox, fake: FakeCorral) -> None:
    """Garbage in the stream raises APIError quoting it."""
    fake.exec_script = ["<html>proxy error</html>"]
    with pytest.raises(APIError, match="proxy error"):
        sandbox.commands.run("ignored")


def test_unknown_event_types_are_ignored(sandbox: Sandbox, fake: FakeCorral) -> None:
    """Events a newer agent may add do not break an older SDK."""
    fake.exec_script = [
        json.dumps({"type": "progress", "pct": 50}),
        _out(b"ok"),
        json.dumps({"type": "exit", "exit_code": 0, "timed_out": False}),
    ]
    assert sandbox.commands.run("ignored").stdout == "ok"


def test_exec_goes_directly_to_the_data_plane_with_the_sandbox_token(
    sandbox: Sandbox, fake: FakeCorral
) -> None:
    """Exec never touches the control plane and authenticates with the sandbox token."""
    sandbox.commands.run("true")
    assert fake.requests("control", "/exec") == []
    [call] = fake.requests("data", "/exec")
    assert call.authorization.startswith("Bearer sbt_")
    assert fake.acme_key not in call.authorization
