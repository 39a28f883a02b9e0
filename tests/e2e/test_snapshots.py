"""Snapshot, restore and fork through the SDK on the real stack (control plane, agent, gVisor)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from corral import AdminClient, NotFoundError, Sandbox, cli, delete_snapshot, list_snapshots
from corral.testing import eventually_sync
from corral.testing.stack import LocalStack, StackInfo

pytestmark = [pytest.mark.e2e, pytest.mark.gvisor, pytest.mark.nats, pytest.mark.microvm]

# A shell counting in its own memory, writing each value to a file.
COUNTER = (
    "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /work/counter; sleep 0.2; done' "
    ">/dev/null 2>&1 & echo $!"
)



def _counter(sb: Sandbox) -> int:
    text = sb.files.read("/work/counter").strip()
    return int(text) if text else 0


def _identity(sb: Sandbox) -> tuple[str, str]:
    hostname = sb.commands.run("hostname").stdout.strip()
    machine_id = sb.commands.run("cat /etc/machine-id").stdout.strip()
    assert re.fullmatch("[0-9a-f]{32}", machine_id), (sb.id, machine_id)
    return hostname, machine_id


def _counting_on_from(sb: Sandbox, floor: int) -> None:
    """The counter process runs in ``sb`` and counts on from at least ``floor`` (its memory
    came along: a fresh process would start again at 1)."""
    first = _counter(sb)
    assert first >= floor
    eventually_sync(lambda: _counter(sb) > first, what="the counter moves on")


def test_snapshot_restore_and_fork_keep_files_and_memory_on_new_machines(
    info: StackInfo, stack: LocalStack, admin: AdminClient
) -> None:
    auth = {"api_url": info.api_url, "api_key": info.api_key}
    made: list[Sandbox] = []
    sb = Sandbox.create(timeout=300, **auth)  # type: ignore[arg-type]
    made.append(sb)
    try:
        sb.files.write("/work/kept.txt", "written before the snapshot")
        pid = sb.commands.run(COUNTER).stdout.strip()
        eventually_sync(lambda: _counter(sb) >= 5, what="the counter starts")
        parent_identity = _identity(sb)

        before = _counter(sb)
        snap = sb.snapshot()
        assert snap.sandbox_id == sb.id
        assert (snap.template, snap.isolation) == ("base", "gvisor")
        snap_dir = stack.home / "agent" / "snapshots" / snap.id
        assert (snap_dir / "corral-snapshot.json").is_file()
        assert snap.id in {s.id for s in list_snapshots(**auth)}  # type: ignore[arg-type]
        # The source runs on after its snapshot.
        _counting_on_from(sb, before)

        # Restore: the file and the running process (with its memory) are there.
        restored = Sandbox.create(snapshot=snap, **auth)  # type: ignore[arg-type]
        made.append(restored)
        assert restored.id != sb.id
        assert restored.info.state == "running"
        assert restored.files.read("/work/kept.txt") == "written before the snapshot"
        assert restored.commands.run(f"kill -0 {pid} && echo alive").stdout.strip() == "alive"
        _counting_on_from(restored, before)
        assert _identity(restored)[0] == restored.id
        assert _identity(restored)[1] != parent_identity[1]

        # Another tenant can neither restore nor delete it.
        other = admin.create_tenant("snapshot-outsider")
        with pytest.raises(NotFoundError):
            Sandbox.create(snapshot=snap.id, api_url=info.api_url, api_key=other.api_key.key)
        with pytest.raises(NotFoundError):
            delete_snapshot(snap, api_url=info.api_url, api_key=other.api_key.key)
        assert snap_dir.is_dir()

        # Fork: new sandbox ids, hostnames and machine-ids; the state came along.
        forks = sb.fork(2)
        made.extend(forks)
        ids = [sb.id, restored.id, *(f.id for f in forks)]
        assert len(set(ids)) == 4
        identities = [_identity(x) for x in (sb, restored, *forks)]
        assert len({h for h, _ in identities}) == 4
        assert len({m for _, m in identities}) == 4
        for fork in forks:
            assert fork.files.read("/work/kept.txt") == "written before the snapshot"
            _counting_on_from(fork, before)
        # ... and from then on they run apart.
        forks[0].files.write("/work/mine.txt", "fork 0")
        sb.files.write("/work/parent.txt", "parent")
        for x in (sb, forks[1]):
            assert "mine.txt" not in {e.name for e in x.files.list("/work")}
        assert "parent.txt" not in {e.name for e in forks[0].files.list("/work")}
        # The fork's own snapshot was removed once the forks ran.
        assert {s.id for s in list_snapshots(**auth)} == {snap.id}  # type: ignore[arg-type]

        delete_snapshot(snap, **auth)  # type: ignore[arg-type]
        assert not snap_dir.exists()
        with pytest.raises(NotFoundError):
            Sandbox.create(snapshot=snap, **auth)  # type: ignore[arg-type]
        # Restored sandboxes run on without the snapshot.
        assert restored.commands.run("cat /work/kept.txt").stdout == "written before the snapshot"

        # The CLI: `corral sandbox snapshot ID`, `create --snapshot`, `fork -n`.
        cli_env = {"CORRAL_API_URL": info.api_url, "CORRAL_API_KEY": info.api_key}
        runner = CliRunner()
        got = runner.invoke(cli.app, ["sandbox", "snapshot", sb.id], env=cli_env)
        assert got.exit_code == 0, got.output
        cli_snap = got.output.strip()
        got = runner.invoke(cli.app, ["sandbox", "create", "--snapshot", cli_snap], env=cli_env)
        assert got.exit_code == 0, got.output
        made.append(Sandbox.connect(got.output.strip(), **auth))  # type: ignore[arg-type]
        assert made[-1].files.read("/work/parent.txt") == "parent"
        got = runner.invoke(cli.app, ["sandbox", "fork", sb.id, "-n", "1"], env=cli_env)
        assert got.exit_code == 0, got.output
        made.append(Sandbox.connect(got.output.strip(), **auth))  # type: ignore[arg-type]
        assert made[-1].files.read("/work/parent.txt") == "parent"
        delete_snapshot(cli_snap, **auth)  # type: ignore[arg-type]
    finally:
        for x in made:
            x.kill()
