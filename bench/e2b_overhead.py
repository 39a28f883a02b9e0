"""The E2B-compatible path against Corral's own SDK, on one stack, in one run.

Both SDKs drive the same private :class:`~corral.testing.stack.LocalStack` (nats-server,
control plane, gVisor agent on free loopback ports), interleaved (Corral, e2b, Corral,
e2b, ...) so both see the same machine load:

* **create**: ``Sandbox.create`` until it returns (placement, signed job, runsc start).
* **exec**: one ``commands.run("true")`` round trip on a running sandbox. Corral runs
  ``true`` itself; the e2b SDK asks for ``/bin/bash -l -c true`` (a login shell, as on
  E2B) over Connect's server stream.
* **write 50 MB** / **read 50 MB**: ``files.write`` and ``files.read(format="bytes")``.

It prints p50/p95 and the e2b/Corral ratio of each (reported, never enforced). Run as
root (runsc needs it)::

    .venv/bin/python -m bench.e2b_overhead [--runs N] [--execs M]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from e2b import Sandbox as E2BSandbox  # reads E2B_* when a call is made, not at import

from bench.raw_runsc import percentile
from corral import Sandbox as CorralSandbox
from corral.testing.stack import LocalStack, free_port

TEMPLATES = Path(__file__).resolve().parents[1] / ".corral" / "templates"
MB50 = 50 * 1024 * 1024


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def line(name: str, corral: list[float], e2b: list[float]) -> str:
    c50, e50 = percentile(corral, 50), percentile(e2b, 50)
    c95, e95 = percentile(corral, 95), percentile(e2b, 95)
    return (
        f"{name:<14} corral p50={c50 * 1000:8.1f} ms p95={c95 * 1000:8.1f} ms | "
        f"e2b p50={e50 * 1000:8.1f} ms p95={e95 * 1000:8.1f} ms | "
        f"ratio p50={e50 / c50:5.2f}x"
    )


Times = dict[str, tuple[list[float], list[float]]]


def one_round(c: CorralSandbox, e: E2BSandbox, times: Times, execs: int, payload: bytes) -> None:
    """Interleaved commands and 50 MB transfers on one sandbox of each kind."""
    for _ in range(execs):
        times["exec"][0].append(timed(lambda: c.commands.run("true")))
        times["exec"][1].append(timed(lambda: e.commands.run("true")))
    times["write 50 MB"][0].append(timed(lambda: c.files.write("/root/big.bin", payload)))
    times["write 50 MB"][1].append(timed(lambda: e.files.write("/root/big.bin", payload)))
    times["read 50 MB"][0].append(timed(lambda: c.files.read("/root/big.bin", format="bytes")))
    times["read 50 MB"][1].append(
        timed(lambda: e.files.read("/root/big.bin", format="bytes", request_timeout=300))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="sandboxes created per SDK")
    parser.add_argument("--execs", type=int, default=20, help="commands per sandbox")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-e2b-") as home:
        stack = LocalStack(
            Path(home),
            ports={"nats": free_port(), "api": free_port(), "dataplane": free_port()},
            templates_dir=TEMPLATES,
        )
        try:
            info = stack.start()
            os.environ.update(
                E2B_API_URL=info.api_url, E2B_SANDBOX_URL=info.data_plane_url,
                E2B_API_KEY=info.api_key,
            )
            times: Times = {
                k: ([], []) for k in ("create", "exec", "write 50 MB", "read 50 MB")
            }
            payload = os.urandom(MB50)
            for _ in range(args.runs):
                started = time.perf_counter()
                c = CorralSandbox.create(api_url=info.api_url, api_key=info.api_key,
                                         timeout=600)
                times["create"][0].append(time.perf_counter() - started)
                started = time.perf_counter()
                e = E2BSandbox.create(timeout=600)
                times["create"][1].append(time.perf_counter() - started)
                try:
                    one_round(c, e, times, args.execs, payload)
                finally:
                    c.kill()
                    e.kill()
            print(f"runs={args.runs} execs={args.execs} cpus={os.cpu_count()}")
            for name, (corral, e2b) in times.items():
                print(line(name, corral, e2b))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
