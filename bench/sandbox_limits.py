"""What the sandbox host limits cost: gVisor create with and without them, in one run.

Interleaved (limited, unlimited, limited, ...) so both see the same machine load:

* **limited** — ``GVisorRuntime`` as the agent runs it by default: a sparse ext4 image of
  ``disk_mb`` made with ``mkfs.ext4`` and loop-mounted for the overlay's writes, and
  ``pids.max`` written into the sandbox's cgroup once it is up.
* **baseline** — the same runtime with ``disk_mb=0, pids_max=0``: the overlay's writes on
  the agent's own disk and no process cap (what Corral did before the limits).

Both time ``create`` (until ``runsc exec /bin/true`` works) and ``destroy``. Prints p50/p95
and the limited/baseline ratio of each. Run as root with the base template built::

    .venv/bin/python -m bench.sandbox_limits [--runs N] [--disk-mb MB]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from byoc_agent.runtimes.base import SandboxSpec
from byoc_agent.runtimes.gvisor import DEFAULT_DISK_MB, DEFAULT_PIDS_MAX, GVisorRuntime
from byoc_agent.runtimes.templates import ensure_template

REPO = Path(__file__).resolve().parents[1]
PIDS_MAX = DEFAULT_PIDS_MAX


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _one(runtime: GVisorRuntime) -> tuple[float, float]:
    spec = SandboxSpec(f"bench-{uuid.uuid4().hex[:10]}", "bench", "base", 1, 256, 300)
    started = time.perf_counter()
    handle = await runtime.create(spec)
    created = time.perf_counter()
    await runtime.destroy(handle)
    return (created - started) * 1000, (time.perf_counter() - created) * 1000


async def main(runs: int, disk_mb: int) -> None:
    templates = REPO / ".corral" / "templates"
    ensure_template(templates, "base")
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        limited = GVisorRuntime(
            Path(tmp) / "limited", templates, disk_mb=disk_mb, pids_max=PIDS_MAX
        )
        baseline = GVisorRuntime(Path(tmp) / "baseline", templates, disk_mb=0, pids_max=0)
        times: dict[str, tuple[list[float], list[float]]] = {
            "limited": ([], []),
            "baseline": ([], []),
        }
        await _one(limited)  # warm the page cache for both
        await _one(baseline)
        for _ in range(runs):
            for name, runtime in (("limited", limited), ("baseline", baseline)):
                create_ms, destroy_ms = await _one(runtime)
                times[name][0].append(create_ms)
                times[name][1].append(destroy_ms)
    print(f"gVisor create/destroy, {runs} runs each, disk_mb={disk_mb}, pids_max={PIDS_MAX}")
    for i, what in enumerate(("create", "destroy")):
        lim, base = times["limited"][i], times["baseline"][i]
        print(
            f"  {what:8s} limited p50 {_p(lim, 0.5):7.1f} ms p95 {_p(lim, 0.95):7.1f} ms | "
            f"baseline p50 {_p(base, 0.5):7.1f} ms p95 {_p(base, 0.95):7.1f} ms | "
            f"ratio p50 {statistics.median(lim) / statistics.median(base):.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--disk-mb", type=int, default=DEFAULT_DISK_MB)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.disk_mb))
