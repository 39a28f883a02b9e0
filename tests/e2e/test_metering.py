"""Usage metering through the whole stack, across an agent crash and a NATS outage.

Real nats-server, control plane and gVisor agent (its own stack, a 2 s usage interval).
Each test runs one sandbox through a fault, kills it with the SDK, then reads what the
control plane billed (``GET /v1/billing/usage``) and checks that the records tile the
sandbox's life: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from corral import Sandbox
from corral.testing import eventually_sync, free_port
from corral.testing.stack import LocalStack, StackInfo

pytestmark = [pytest.mark.e2e, pytest.mark.gvisor, pytest.mark.nats]

TEMPLATES = Path(__file__).resolve().parents[2] / ".corral" / "templates"
USAGE_INTERVAL_S = 2


@pytest.fixture(scope="module")
def metering_stack() -> Iterator[LocalStack]:
    """A stack of its own (it gets crashed and cut off from NATS), metering every 2 s."""
    if os.geteuid() != 0:
        pytest.skip("gVisor sandboxes need root (runsc and cgroups)")
    if shutil.which("runsc") is None:
        pytest.skip("runsc is not installed (make test installs it)")
    with tempfile.TemporaryDirectory(prefix="corral-e2e-metering-") as home:
        s = LocalStack(
            Path(home),
            ports={"nats": free_port(), "api": free_port(), "dataplane": free_port()},
            templates_dir=TEMPLATES,
            extra_env={"CORRAL_AGENT_USAGE_INTERVAL_S": str(USAGE_INTERVAL_S)},
        )
        try:
            s.start()
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def minfo(metering_stack: LocalStack) -> StackInfo:
    return metering_stack.start()


def _create(info: StackInfo) -> Sandbox:
    return Sandbox.create(api_url=info.api_url, api_key=info.api_key)



def _interim_records(info: StackInfo, sandbox_id: str) -> int:
    """How many usage records of the sandbox the control plane has ingested so far."""
    return len(_usage(info, sandbox_id))


def _spooled_usage(stack: LocalStack) -> int:
    """Usage records waiting in the agent's on-disk outbox (read-only look at its state)."""
    db = stack.home / "agent" / "agent-state.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT COUNT(*) FROM outbox WHERE subject LIKE '%.usage'").fetchone()
    return int(row[0])


def _lifetime(info: StackInfo, sandbox_id: str, timeout: float = 20) -> tuple[float, float]:
    """``(started_at, ended_at)`` of an ended sandbox as the control plane recorded them."""

    def ended() -> dict[str, object] | None:
        r = httpx.get(
            f"{info.api_url}/v1/sandboxes/{sandbox_id}",
            headers={"authorization": f"Bearer {info.api_key}"},
            timeout=5,
        )
        r.raise_for_status()
        body: dict[str, object] = r.json()
        return body if body.get("started_at") and body.get("ended_at") else None

    body = eventually_sync(
        ended, within_s=timeout, every_s=0.2, what=f"sandbox {sandbox_id}'s start and end"
    )
    assert body is not None
    return (
        datetime.fromisoformat(str(body["started_at"])).timestamp(),
        datetime.fromisoformat(str(body["ended_at"])).timestamp(),
    )


def _usage(info: StackInfo, sandbox_id: str) -> list[dict[str, object]]:
    """Every usage record of the sandbox this month, following pagination."""
    period = datetime.now(UTC).strftime("%Y-%m")
    items: list[dict[str, object]] = []
    cursor: str | None = None
    with httpx.Client(
        base_url=info.api_url,
        headers={"authorization": f"Bearer {info.admin_token}"},
        timeout=5,
    ) as client:
        while True:
            params = {"period": period, "tenant_id": info.tenant_id, "limit": "50"}
            if cursor:
                params["cursor"] = cursor
            r = client.get("/v1/billing/usage", params=params)
            r.raise_for_status()
            page = r.json()
            items += [u for u in page["items"] if u["sandbox_id"] == sandbox_id]
            cursor = page["next_cursor"]
            if not cursor:
                return items


def _seconds(u: dict[str, object], key: str) -> int:
    return int(datetime.fromisoformat(str(u[key])).timestamp())


def _covered_until(records: list[dict[str, object]], first: int) -> int | None:
    """The end of the gap-free run of records from ``first``; None if it does not start
    there or two records overlap."""
    at = first
    for u in sorted(records, key=lambda u: _seconds(u, "start")):
        if _seconds(u, "start") != at:
            return None
        at = _seconds(u, "end")
    return at


def _assert_billed_exactly_once(
    stack: LocalStack, info: StackInfo, sandbox_id: str, timeout: float = 20
) -> None:
    """The sandbox's usage records tile its observed life, once.

    The agent floors every instant it observes to the whole UTC second (start, each
    interim cut, the end), so the billed seconds are ``floor(ended_at) -
    floor(started_at)``. We compare with the control plane's sandbox record; both ends
    are allowed ±1 s because the record's timestamps went through another serialisation
    (the control plane's database and JSON) than the meter's floored integers, so an
    instant sitting on a second boundary may floor to the neighbouring second. Anything
    larger (a lost interval, or one counted twice) fails.
    """
    started_at, ended_at = _lifetime(info, sandbox_id)
    first, last = math.floor(started_at), math.floor(ended_at)

    def tiled() -> bool:
        """The records reach from the start to the end: the final one has arrived."""
        records = _usage(info, sandbox_id)
        starts = {_seconds(u, "start") for u in records}
        begin = min(starts, key=lambda s: abs(s - first)) if starts else first
        covered = _covered_until(records, begin) if abs(begin - first) <= 1 else None
        return covered is not None and covered >= last - 1

    eventually_sync(tiled, within_s=timeout, every_s=0.3,
                    what=f"usage of {sandbox_id} to tile [{first}, {last})")  # fmt: skip
    # Anything still in flight (a late duplicate, an overlapping re-cut) would show once
    # the agent's outbox has nothing left to send.
    eventually_sync(lambda: _spooled_usage(stack) == 0, what="the agent's outbox to drain")
    records = _usage(info, sandbox_id)
    ids = [str(u["record_id"]) for u in records]
    assert len(ids) == len(set(ids)), f"duplicate record ids: {ids}"
    spans = sorted((_seconds(u, "start"), _seconds(u, "end")) for u in records)
    for (_, prev_end), (start, end) in itertools.pairwise(spans):
        assert start == prev_end, f"gap or overlap between records: {spans}"
        assert end > start, f"empty record: {spans}"
    billed = sum(end - start for start, end in spans)
    assert abs(spans[0][0] - first) <= 1, (spans, started_at)
    assert abs(spans[-1][1] - last) <= 1, (spans, ended_at)
    assert abs(billed - (last - first)) <= 1, (billed, started_at, ended_at, spans)
    assert len(spans) >= 2, f"expected interim records every {USAGE_INTERVAL_S} s: {spans}"


def test_kill_9_of_the_agent_mid_interval_loses_and_doubles_nothing(
    metering_stack: LocalStack, minfo: StackInfo
) -> None:
    """SIGKILL between two usage cuts; the restarted agent reattaches and meters on from
    its spooled cursor, so the sandbox is billed once for all of its life."""
    sb = _create(minfo)
    eventually_sync(lambda: _interim_records(minfo, sb.id) >= 1, what="an interim usage record")
    metering_stack.kill_agent()
    down_since = time.monotonic()
    # The sandbox runs on unmetered while the agent is dead; give it at least one interval.
    eventually_sync(
        lambda: time.monotonic() - down_since >= USAGE_INTERVAL_S,
        what="an interval to pass with the agent down",
    )
    metering_stack.start()  # restarts the agent only; it reattaches to the sandbox
    assert sb.get_info().state == "running"
    seen = _interim_records(minfo, sb.id)
    eventually_sync(
        lambda: _interim_records(minfo, sb.id) > seen,
        what="a record cut by the restarted agent",
    )
    assert sb.kill()
    _assert_billed_exactly_once(metering_stack, minfo, sb.id)


def test_a_nats_outage_spools_usage_and_loses_and_doubles_nothing(
    metering_stack: LocalStack, minfo: StackInfo
) -> None:
    """nats-server down for ~4 s: the sandbox keeps running, usage spools in the agent's
    outbox; after the restart the agent and the control plane reconnect by themselves
    (JetStream's store is on disk) and every second is billed once."""
    sb = _create(minfo)
    eventually_sync(lambda: _interim_records(minfo, sb.id) >= 1, what="an interim usage record")
    metering_stack.stop_service("nats")
    assert not metering_stack.running()["nats"]
    eventually_sync(
        lambda: _spooled_usage(metering_stack) >= 2,
        what="usage spooled in the agent while NATS is down",
    )
    assert metering_stack.running()["agent"]
    assert metering_stack.running()["control-plane"]
    assert sb.commands.run("echo still-running").stdout == "still-running\n"  # data plane
    metering_stack.start()  # restarts nats-server only; waits for the agent's heartbeat
    eventually_sync(
        lambda: _spooled_usage(metering_stack) == 0,
        what="the spooled usage to be delivered",
    )
    assert sb.kill()
    _assert_billed_exactly_once(metering_stack, minfo, sb.id)


def test_a_paused_sandbox_keeps_its_files_and_is_not_billed_while_paused(
    minfo: StackInfo,
) -> None:
    """pause → (no usage) → resume: files and processes are kept; the paused seconds are
    in no usage record, and the records before and after the pause touch no paused second."""
    sb = _create(minfo)
    sid = sb.id
    try:
        sb.files.write("/work/kept.txt", "written before the pause")
        bg = sb.commands.run("nohup sleep 900 >/dev/null 2>&1 & echo $!").stdout.strip()
        eventually_sync(
            lambda: _interim_records(minfo, sid) >= 1, what="an interim record before the pause"
        )
        info = sb.pause()
        paused_at = time.time()
        assert info.state == "paused"
        assert Sandbox.list(state="paused", api_url=minfo.api_url, api_key=minfo.api_key)
        time.sleep(3 * USAGE_INTERVAL_S)  # three usage intervals with nothing to bill
        resumed_at = time.time()
        sb.close()
        sb = Sandbox.resume(sid, api_url=minfo.api_url, api_key=minfo.api_key)
        assert sb.get_info().state == "running"
        assert sb.files.read("/work/kept.txt") == "written before the pause"
        assert sb.commands.run(f"kill -0 {bg} && echo alive").stdout.strip() == "alive"
        eventually_sync(
            lambda: any(_seconds(u, "start") >= math.floor(resumed_at) for u in _usage(minfo, sid)),
            what="a usage record after the resume",
        )
    finally:
        sb.kill()
    started_at, ended_at = _lifetime(minfo, sid)
    expected = (math.floor(ended_at) - math.floor(started_at)) - (resumed_at - paused_at)

    def billed() -> float:
        return sum(_seconds(u, "end") - _seconds(u, "start") for u in _usage(minfo, sid))

    eventually_sync(
        lambda: any(_seconds(u, "end") >= math.floor(ended_at) - 1 for u in _usage(minfo, sid)),
        what="the last usage record",
    )
    records = _usage(minfo, sid)
    for u in records:  # no record covers the middle of the pause
        assert not (_seconds(u, "start") < paused_at + 1 < _seconds(u, "end") - 1), records
    # Pause and resume are each seen by the agent within about a second of the SDK call.
    assert abs(billed() - expected) <= 3, (billed(), expected, records)
