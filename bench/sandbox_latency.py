"""Corral's latency against raw ``runsc`` on the same machine, in one run.

Two metrics, each measured both ways, with runs interleaved (raw, Corral, raw, Corral...)
so that both see the same machine load:

* **start**: Corral — wall time from before ``Sandbox.create()`` to after the first
  ``sb.commands.run("true")`` that exits 0 (SDK → control plane → NATS → agent → runsc,
  then SDK → data plane → runsc exec). Raw — ``runsc run -detach`` to the first
  successful ``runsc exec /bin/true`` on the same kind of bundle
  (:mod:`bench.raw_runsc`).
* **exec**: Corral — one ``sb.commands.run("true")`` round trip. Raw — one
  ``runsc exec <id> /bin/true``.

It prints p50/p95 of each, the Corral/raw ratios against the 1.5 target (reported, never
enforced) and, as information, teardown times plus what splits the difference: raw
``runsc exec`` of the same ``timeout -s KILL <t> /bin/sh -c true`` wrapper Corral runs,
and Corral's start phase by phase, lined up from the control-plane and agent logs.

The Corral side is a private :class:`~corral.testing.stack.LocalStack` (nats-server,
control plane, gVisor agent) in a temporary directory on free loopback ports, stopped at
the end together with every sandbox it made. Run as root (runsc needs it)::

    .venv/bin/python -m bench.sandbox_latency [--runs N] [--execs M]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.raw_runsc import (
    CGROUP_PARENT,
    RawBundle,
    RawRunsc,
    exec_true,
    percentile,
    prepare_bundle,
    start_to_first_exec,
    teardown,
)
from byoc_agent.runtimes.templates import template_rootfs
from corral import Sandbox
from corral.testing.stack import LocalStack, StackInfo, free_port

TARGET_RATIO = 1.5
#: Upper bound on polling for the first successful command in a fresh Corral sandbox.
FIRST_RUN_DEADLINE_S = 30.0
#: The ``timeout`` the SDK sends by default; the agent wraps every command in it.
SDK_COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class CreateWindow:
    """Wall-clock (``time.time()``) marks of one Corral start, to line up with the logs."""

    sandbox_id: str
    before_create: float
    created: float
    first_ok: float


@dataclass(slots=True)
class Samples:
    """Seconds per operation, one entry per sample, for both sides of the comparison."""

    corral_start: list[float] = field(default_factory=list)
    corral_create: list[float] = field(default_factory=list)
    corral_exec: list[float] = field(default_factory=list)
    corral_kill: list[float] = field(default_factory=list)
    raw_prepare: list[float] = field(default_factory=list)
    raw_start: list[float] = field(default_factory=list)
    raw_exec: list[float] = field(default_factory=list)
    raw_exec_wrapped: list[float] = field(default_factory=list)
    raw_teardown: list[float] = field(default_factory=list)
    windows: list[CreateWindow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Ratio:
    metric: str
    p50: float
    p95: float

    @property
    def met(self) -> bool:
        return self.p50 <= TARGET_RATIO and self.p95 <= TARGET_RATIO


# ---------------------------------------------------------------------- Corral side


def corral_round(info: StackInfo, execs: int, samples: Samples | None) -> None:
    """One sandbox through the SDK: create → first ``true``, ``execs`` runs, kill.

    ``samples=None`` is a warm-up: same work, nothing recorded.
    """
    wall = time.time()
    started = time.perf_counter()
    sb = Sandbox.create(api_key=info.api_key, api_url=info.api_url, timeout=300)
    create_s = time.perf_counter() - started
    try:
        while sb.commands.run("true").exit_code != 0:
            if time.perf_counter() - started > FIRST_RUN_DEADLINE_S:
                raise RuntimeError(f"sandbox {sb.id}: no successful command in time")
        start_s = time.perf_counter() - started
        window = CreateWindow(sb.id, wall, wall + create_s, wall + start_s)
        exec_s: list[float] = []
        for _ in range(execs):
            t = time.perf_counter()
            sb.commands.run("true").check()
            exec_s.append(time.perf_counter() - t)
    finally:
        t = time.perf_counter()
        sb.kill()
        kill_s = time.perf_counter() - t
    if samples is not None:
        samples.corral_start.append(start_s)
        samples.corral_create.append(create_s)
        samples.windows.append(window)
        samples.corral_exec += exec_s
        samples.corral_kill.append(kill_s)


PHASES = (
    "SDK → sandbox placed (HTTP, auth, DB)",
    "placed → job signed + published",
    "job delivery (NATS) + verify on agent",
    "runtime create (mount, runsc run, ready)",
    "agent result → applied by control plane",
    "applied → SDK has reply (DB, token, HTTP)",
    "first run('true') over the data plane",
)

Event = dict[str, object]


def read_events(path: Path) -> list[Event]:
    """The JSON lines of a structlog log; other lines (access logs) are skipped."""
    events: list[Event] = []
    if not path.exists():
        return events
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(entry.get("timestamp"), str):
                events.append(entry)
    return events


def _ts(event: Event) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def create_breakdown(
    windows: Sequence[CreateWindow], control_plane_log: Path, agent_log: Path
) -> dict[str, list[float]]:
    """Split each Corral start into :data:`PHASES` (seconds) using the two processes' logs.

    Sandboxes whose log lines are missing are left out, never counted as zero.
    """
    placed: dict[str, float] = {}
    published: dict[str, float] = {}
    applied: dict[str, float] = {}
    for e in read_events(control_plane_log):
        name = e.get("event")
        if name == "sandbox_placed":
            placed[str(e.get("sandbox_id"))] = _ts(e)
        elif name == "job_published" and e.get("kind") == "create_sandbox":
            published[str(e.get("job_id"))] = _ts(e)
        elif name == "result_applied":
            applied.setdefault(str(e.get("job_id")), _ts(e))
    job_of: dict[str, str] = {}
    done: dict[str, float] = {}
    runtime: dict[str, float] = {}
    for e in read_events(agent_log):
        name, sid = e.get("event"), str(e.get("sandbox_id"))
        if name == "job_succeeded" and e.get("kind") == "create_sandbox":
            job_of[sid], done[sid] = str(e.get("job_id")), _ts(e)
        elif name == "sandbox_created" and isinstance(e.get("ms"), int | float):
            runtime[sid] = float(str(e["ms"])) / 1000
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    for w in windows:
        sid = w.sandbox_id
        job = job_of.get(sid, "")
        if not (sid in placed and job in published and sid in runtime and job in applied):
            continue
        durations = (
            placed[sid] - w.before_create,
            published[job] - placed[sid],
            done[sid] - published[job] - runtime[sid],
            runtime[sid],
            applied[job] - done[sid],
            w.created - applied[job],
            w.first_ok - w.created,
        )
        for phase, d in zip(PHASES, durations, strict=True):
            phases[phase].append(d)
    return phases


# ---------------------------------------------------------------------- raw side


def exec_wrapped(rs: RawRunsc, sandbox_id: str) -> float:
    """One raw ``runsc exec`` of the command line Corral's agent runs for ``run("true")``."""
    argv = ["timeout", "-s", "KILL", f"{SDK_COMMAND_TIMEOUT_S:.3f}", "/bin/sh", "-c", "true"]
    started = time.perf_counter()
    subprocess.run(
        rs.argv("exec", sandbox_id, *argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return time.perf_counter() - started


def raw_round(
    rs: RawRunsc, work: Path, template: Path, name: str, execs: int, samples: Samples | None
) -> None:
    """One raw runsc sandbox: prepare, run → first exec, ``execs`` execs, teardown."""
    t = time.perf_counter()
    bundle: RawBundle = prepare_bundle(work, template, name)
    prepare_s = time.perf_counter() - t
    try:
        start_s = start_to_first_exec(rs, bundle)
        exec_s = [exec_true(rs, bundle.sandbox_id) for _ in range(execs)]
        wrapped_s = [exec_wrapped(rs, bundle.sandbox_id) for _ in range(execs)]
    finally:
        teardown_s = teardown(rs, bundle)
    if samples is not None:
        samples.raw_prepare.append(prepare_s)
        samples.raw_start.append(start_s)
        samples.raw_exec += exec_s
        samples.raw_exec_wrapped += wrapped_s
        samples.raw_teardown.append(teardown_s)


def remove_bench_cgroups() -> None:
    """Remove the raw side's cgroup parents (empty once its sandboxes are deleted)."""
    for parent in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"):
        with contextlib.suppress(OSError):  # another raw benchmark may be using it
            parent.rmdir()


# ---------------------------------------------------------------------- driver


def measure(
    templates_root: Path, *, runs: int, execs: int, warmup: int, progress: Callable[[str], None]
) -> tuple[Samples, dict[str, list[float]]]:
    """Run both sides ``warmup`` + ``runs`` times, interleaved; return the samples and
    the Corral start split into phases."""
    runsc = shutil.which("runsc")
    if runsc is None:
        raise RuntimeError("runsc is not on PATH")
    template = template_rootfs(templates_root, "base")
    samples = Samples()
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        home = Path(tmp) / "stack"
        work = Path(tmp) / "raw"
        work.mkdir()
        rs = RawRunsc(runsc=runsc, root=work / "runsc")
        stack = LocalStack(
            home,
            ports={"nats": free_port(), "api": free_port(), "dataplane": free_port()},
            templates_dir=templates_root,
            progress=progress,
        )
        try:
            info = stack.start()
            for i in range(warmup + runs):
                kept = samples if i >= warmup else None
                label = f"run {i - warmup + 1}/{runs}" if kept else f"warm-up {i + 1}/{warmup}"
                progress(f"{label}: raw runsc")
                raw_round(rs, work, template, f"raw-{i}", execs, kept)
                progress(f"{label}: Corral")
                corral_round(info, execs, kept)
            phases = create_breakdown(
                samples.windows, stack.logs / "control-plane.log", stack.logs / "agent.log"
            )
        finally:
            stack.stop()
            remove_bench_cgroups()
    return samples, phases


def ms_row(name: str, values: Sequence[float]) -> str:
    if not values:
        return f"  {name:<46} unknown"
    p50, p95 = percentile(values, 50) * 1000, percentile(values, 95) * 1000
    return f"  {name:<46} n={len(values):<4} p50={p50:8.1f} ms  p95={p95:8.1f} ms"


def ratio(metric: str, corral: Sequence[float], raw: Sequence[float]) -> Ratio:
    return Ratio(
        metric,
        percentile(corral, 50) / percentile(raw, 50),
        percentile(corral, 95) / percentile(raw, 95),
    )


def report(samples: Samples, phases: dict[str, list[float]], runs: int, execs: int) -> str:
    ratios = [
        ratio("start → first exec", samples.corral_start, samples.raw_start),
        ratio("exec true round trip", samples.corral_exec, samples.raw_exec),
    ]
    lines = [
        f"sandbox latency — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"gVisor platform ptrace; {runs} sandboxes per side, {execs} execs each",
        "",
        "start → first successful command",
        ms_row("Corral  Sandbox.create → run('true') ok", samples.corral_start),
        ms_row("raw     run -detach → exec /bin/true ok", samples.raw_start),
        "exec round trip",
        ms_row("Corral  sb.commands.run('true')", samples.corral_exec),
        ms_row("raw     runsc exec /bin/true", samples.raw_exec),
        "",
        f"ratios Corral/raw (target ≤ {TARGET_RATIO})",
    ]
    for r in ratios:
        verdict = "met" if r.met else "NOT met"
        lines.append(f"  {r.metric:<24} p50 {r.p50:5.2f}x  p95 {r.p95:5.2f}x  target {verdict}")
    lines += [
        "",
        "information",
        ms_row("Corral  sb.kill()", samples.corral_kill),
        ms_row("raw     kill + delete -force", samples.raw_teardown),
        ms_row("Corral  Sandbox.create() alone", samples.corral_create),
        ms_row("raw     overlay mount + config.json (untimed)", samples.raw_prepare),
        ms_row("raw     exec timeout -s KILL 60 sh -c true", samples.raw_exec_wrapped),
        "",
        "Corral start, phase by phase (from the control-plane and agent logs)",
        *(ms_row(phase, values) for phase, values in phases.items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_latency")
    parser.add_argument("--runs", type=int, default=10, help="sandboxes per side (default 10)")
    parser.add_argument("--execs", type=int, default=30, help="execs per sandbox (default 30)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded rounds (default 1)")
    parser.add_argument("--templates-root", type=Path, default=Path(".corral/templates"))
    args = parser.parse_args(argv)
    if args.runs < 1 or args.execs < 1 or args.warmup < 0:
        parser.error("--runs and --execs must be at least 1, --warmup at least 0")
    if os.geteuid() != 0:
        print("sandbox_latency: run as root (runsc and overlay mounts need it)", file=sys.stderr)
        return 2

    def progress(msg: str) -> None:
        print(f"· {msg}", file=sys.stderr, flush=True)

    samples, phases = measure(
        args.templates_root.resolve(),
        runs=args.runs,
        execs=args.execs,
        warmup=args.warmup,
        progress=progress,
    )
    print(report(samples, phases, args.runs, args.execs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
