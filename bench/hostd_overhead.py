"""What running a sandbox on a launched host costs over running it on the agent's machine.

One run, two paths to the same gVisor runtime code, interleaved so both see the same load:

* **hostd** — the manager's path to a host: ``RemoteRuntime`` over pinned TLS with the bearer
  secret to a real ``corral-hostd`` process (on a loopback port here), which runs gVisor.
* **baseline** — ``GVisorRuntime`` called in process, as an agent without hosts runs it.

Times ``create`` (until the sandbox answers), an ``exec("true")`` round trip, a 1 MiB file
write + read, and ``destroy``. Prints p50 per path and the hostd/baseline ratio. Run as root
with the base template built (``make up`` or ``make test`` builds it)::

    .venv/bin/python -m bench.hostd_overhead [--runs N] [--execs N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from byoc_agent.hostd.testing import LocalHostd
from byoc_agent.runtimes.base import ExecRequest, Exit, Runtime, SandboxSpec
from byoc_agent.runtimes.gvisor import GVisorRuntime
from byoc_agent.runtimes.templates import ensure_template

REPO = Path(__file__).resolve().parents[1]
MIB = b"x" * (1 << 20)


async def _one(runtime: Runtime, execs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"create": [], "exec": [], "file 1 MiB": [], "destroy": []}
    spec = SandboxSpec(f"sb_{uuid.uuid4().hex[:24]}", "bench", "base", 1, 256, 300)
    t0 = time.perf_counter()
    handle = await runtime.create(spec)
    out["create"].append((time.perf_counter() - t0) * 1000)
    try:
        for _ in range(execs):
            t0 = time.perf_counter()
            events = [e async for e in runtime.exec(handle, ExecRequest(cmd="true"))]
            out["exec"].append((time.perf_counter() - t0) * 1000)
            if events[-1] != Exit(0):
                raise RuntimeError(f"exec failed: {events[-1]}")
        t0 = time.perf_counter()
        await runtime.write_file(handle, "/root/bench.bin", MIB)
        if await runtime.read_file(handle, "/root/bench.bin") != MIB:
            raise RuntimeError("file round trip changed the bytes")
        out["file 1 MiB"].append((time.perf_counter() - t0) * 1000)
    finally:
        t0 = time.perf_counter()
        await runtime.destroy(handle)
        out["destroy"].append((time.perf_counter() - t0) * 1000)
    return out


async def main(runs: int, execs: int) -> None:
    templates = REPO / ".corral" / "templates"
    ensure_template(templates, "base")
    with tempfile.TemporaryDirectory(prefix="corral-bench-hostd-") as tmp:
        baseline = GVisorRuntime(Path(tmp) / "baseline", templates)
        hostd = LocalHostd(Path(tmp) / "host", templates_dir=templates)
        hostd.start()
        remote = hostd.client()
        try:
            paths: dict[str, Runtime] = {"hostd": remote, "baseline": baseline}
            times: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
            await _one(remote, 1)  # warm both (TLS session, first runsc start)
            await _one(baseline, 1)
            for i in range(runs):
                for name in (("hostd", "baseline") if i % 2 == 0 else ("baseline", "hostd")):
                    for step, values in (await _one(paths[name], execs)).items():
                        times[name].setdefault(step, []).extend(values)
        finally:
            await remote.aclose()
            hostd.stop()
            hostd.destroy_leftovers()
    print(f"{runs} sandboxes per path, {execs} execs each (p50, ms)")
    print(f"{'step':<12} {'hostd':>9} {'baseline':>9} {'ratio':>7}")
    for step in times["baseline"]:
        h = statistics.median(times["hostd"][step])
        b = statistics.median(times["baseline"][step])
        print(f"{step:<12} {h:>9.1f} {b:>9.1f} {h / b:>6.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--execs", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.execs))
