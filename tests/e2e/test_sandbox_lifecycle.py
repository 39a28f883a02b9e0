"""Sandboxes through the whole stack: SDK → control plane → signed job → agent → gVisor."""

from __future__ import annotations

import time

import pytest

from corral import (
    AdminClient,
    CommandTimeoutError,
    FileNotFoundInSandboxError,
    Sandbox,
    SandboxNotRunningError,
)
from corral.testing import eventually_sync
from corral.testing.stack import LocalStack, StackInfo

pytestmark = [pytest.mark.e2e, pytest.mark.gvisor, pytest.mark.nats]


def _create(info: StackInfo, **kw: object) -> Sandbox:
    return Sandbox.create(api_url=info.api_url, api_key=info.api_key, **kw)  # type: ignore[arg-type]


def test_a_sandbox_runs_python_and_prints_42(info: StackInfo) -> None:
    """The smoke test from make up, through the SDK."""
    with _create(info) as sb:
        result = sb.commands.run('python3 -c "print(6*7)"')
    assert result.stdout == "42\n"
    assert result.exit_code == 0


def test_commands_stream_output_with_env_cwd_and_exit_codes(info: StackInfo) -> None:
    """Callbacks see chunks as they come; env, cwd and a non-zero exit code are honoured."""
    seen: list[str] = []
    with _create(info, env={"SANDBOX_VAR": "from-create"}) as sb:
        sb.files.make_dir("/work/sub")
        r = sb.commands.run(
            'echo "$SANDBOX_VAR $CMD_VAR $(pwd)"; echo oops >&2; exit 7',
            envs={"CMD_VAR": "from-run"},
            cwd="/work/sub",
            on_stdout=seen.append,
        )
    assert r.exit_code == 7
    assert r.stdout == "from-create from-run /work/sub\n"
    assert r.stderr == "oops\n"
    assert "".join(seen) == r.stdout


def test_files_round_trip_through_the_data_plane(info: StackInfo) -> None:
    """write/read/list/remove/make_dir work on text and bytes; a missing file is an error."""
    with _create(info) as sb:
        sb.files.make_dir("/data/nested")
        sb.files.write("/data/nested/hello.txt", "héllo")
        sb.files.write("/data/blob.bin", bytes(range(256)))
        assert sb.files.read("/data/nested/hello.txt") == "héllo"
        assert sb.files.read("/data/blob.bin", format="bytes") == bytes(range(256))
        names = sorted(e.name for e in sb.files.list("/data"))
        assert names == ["blob.bin", "nested"]
        sb.files.remove("/data/blob.bin")
        assert not sb.files.exists("/data/blob.bin")
        with pytest.raises(FileNotFoundInSandboxError, match=r"/data/blob\.bin"):
            sb.files.read("/data/blob.bin")


def test_list_filters_by_metadata_and_state(info: StackInfo) -> None:
    """Sandbox.list finds sandboxes by exact metadata and by state."""
    tag = f"run-{time.time_ns()}"
    with _create(info, metadata={"suite": tag, "role": "a"}) as a, _create(
        info, metadata={"suite": tag, "role": "b"}
    ):
        found = Sandbox.list(metadata={"suite": tag, "role": "a"}, api_url=info.api_url,
                             api_key=info.api_key)
        assert [s.id for s in found] == [a.id]
        running = Sandbox.list(metadata={"suite": tag}, state="running",
                               api_url=info.api_url, api_key=info.api_key)
        assert len(running) == 2
    killed = Sandbox.list(metadata={"suite": tag}, state="killed", api_url=info.api_url,
                          api_key=info.api_key)
    assert len(killed) == 2


def test_connect_reaches_a_running_sandbox_by_id(info: StackInfo) -> None:
    """Sandbox.connect(id) gives a working handle to a sandbox created elsewhere."""
    with _create(info) as sb:
        sb.files.write("/tmp/marker", "here")
        other = Sandbox.connect(sb.id, api_url=info.api_url, api_key=info.api_key)
        assert other.commands.run("cat /tmp/marker").stdout == "here"


def test_a_command_timeout_raises_and_the_sandbox_stays_usable(info: StackInfo) -> None:
    """A command over its timeout is killed with a clear error; the sandbox lives on."""
    with _create(info) as sb:
        with pytest.raises(CommandTimeoutError):
            sb.commands.run("sleep 30", timeout=1)
        assert sb.commands.run("echo still-here").stdout == "still-here\n"


def test_exec_in_a_killed_sandbox_is_refused(info: StackInfo) -> None:
    """After kill, the data plane refuses exec with SandboxNotRunningError."""
    sb = _create(info)
    sb_id = sb.id
    token_holder = Sandbox.connect(sb_id, api_url=info.api_url, api_key=info.api_key)
    sb.kill()
    with pytest.raises(SandboxNotRunningError):
        token_holder.commands.run("true")
    assert token_holder.get_info().state == "killed"


def test_a_sandbox_past_its_timeout_is_killed_and_recorded_as_timed_out(
    info: StackInfo,
) -> None:
    """The agent enforces the TTL and tells the control plane."""
    sb = _create(info, timeout=2)

    def ended() -> str | None:
        state = sb.get_info().state
        return None if state == "running" else state

    assert eventually_sync(ended, every_s=0.2, what="the sandbox to end") == "timed_out"


def test_set_timeout_extends_the_deadline(info: StackInfo) -> None:
    """set_timeout moves the deadline, so a short-lived sandbox survives past it."""
    with _create(info, timeout=3) as sb:
        first_deadline = time.monotonic() + 3
        sb.set_timeout(60)
        # Watch the sandbox until well past its first deadline: it must stay running.
        while time.monotonic() < first_deadline + 1.5:
            assert sb.get_info().state == "running"
            time.sleep(0.2)  # deliberate: it must stay running for all this time
        assert sb.commands.run("echo alive").stdout == "alive\n"


def test_sandboxes_survive_an_agent_crash_and_are_reattached(
    stack: LocalStack, info: StackInfo
) -> None:
    """kill -9 of the agent leaves sandboxes running; the restarted agent serves them."""
    with _create(info) as sb:
        sb.files.write("/root/before-crash", "kept")
        stack.kill_agent()
        stack.start()
        assert sb.commands.run("cat /root/before-crash").stdout == "kept"
        assert sb.get_info().state == "running"


def test_the_admin_sees_the_agent_online(admin: AdminClient, info: StackInfo) -> None:
    """The enrolled agent reports heartbeats and shows as online for its tenant."""
    agents = admin.list_agents()
    assert any(a.status == "online" and a.tenant_id == info.tenant_id for a in agents)
