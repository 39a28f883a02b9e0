"""Baseline: raw ``runsc`` on the same kind of bundle GVisorRuntime uses, without Corral.

Same template (kernel overlayfs over the template rootfs), same config.json
(:func:`byoc_agent.runtimes.gvisor.oci_config`, cgroup limits included), same runsc
flags; plain blocking ``subprocess`` calls, no asyncio, no bookkeeping. What Corral adds
on top is the ratio ``bench/sandbox_latency.py`` reports.

Run as root: ``python -m bench.raw_runsc [--templates-root .corral/templates]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from byoc_agent.runtimes.base import SandboxSpec
from byoc_agent.runtimes.gvisor import oci_config
from byoc_agent.runtimes.templates import template_rootfs

CGROUP_PARENT = "corral-bench"


@dataclass(frozen=True, slots=True)
class RawBundle:
    """A prepared bundle: overlay mounted, config.json written, not yet started."""

    sandbox_id: str
    dir: Path
    bundle: Path
    rootfs: Path


@dataclass(frozen=True, slots=True)
class RawRunsc:
    """How to call runsc: binary and a private ``--root``."""

    runsc: str
    root: Path
    platform: str = "ptrace"

    def argv(self, *args: str) -> list[str]:
        return [
            self.runsc,
            "--root",
            str(self.root),
            f"--platform={self.platform}",
            "--network=none",
            *args,
        ]


@dataclass(frozen=True, slots=True)
class RawNumbers:
    """Seconds per operation, one entry per sample."""

    start_to_first_exec: list[float]
    exec_true: list[float]
    teardown: list[float]


def prepare_bundle(work: Path, template: Path, sandbox_id: str, *, cpu: int = 1) -> RawBundle:
    """Mount an overlay over ``template`` and write the same config.json Corral writes."""
    d = work / sandbox_id
    bundle, rootfs = d / "bundle", d / "bundle" / "rootfs"
    for p in (rootfs, d / "upper", d / "work"):
        p.mkdir(parents=True)
    opts = f"lowerdir={template},upperdir={d / 'upper'},workdir={d / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(rootfs)], check=True)
    (rootfs / "tmp").mkdir(exist_ok=True)
    spec = SandboxSpec(
        sandbox_id=sandbox_id, tenant_id="bench", template="base", cpu=cpu, memory_mb=512,
        timeout_s=300,
    )  # fmt: skip
    config = oci_config(spec, rootfs, f"/{CGROUP_PARENT}/{sandbox_id}")
    (bundle / "config.json").write_text(json.dumps(config))
    return RawBundle(sandbox_id, d, bundle, rootfs)


def start_to_first_exec(
    rs: RawRunsc, b: RawBundle, deadline_s: float = 30.0, *, image: Path | None = None
) -> float:
    """Seconds from ``runsc run -detach`` (with ``image``: ``runsc restore -detach`` from
    that checkpoint) to the first successful ``exec /bin/true``."""
    verb = ["run"] if image is None else ["restore", "--image-path", str(image)]
    started = time.perf_counter()
    with (b.dir / "runsc.log").open("ab") as log:
        subprocess.run(
            rs.argv(*verb, "-detach", "--bundle", str(b.bundle), b.sandbox_id),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            check=True,
            timeout=deadline_s,
        )
    while True:
        done = subprocess.run(
            rs.argv("exec", b.sandbox_id, "/bin/true"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=deadline_s,
        )
        if done.returncode == 0:
            return time.perf_counter() - started
        if time.perf_counter() - started > deadline_s:
            raise RuntimeError(f"no successful exec within {deadline_s} s: {done.stderr!r}")


def checkpoint(rs: RawRunsc, b: RawBundle, image: Path) -> None:
    """``runsc checkpoint`` a running sandbox into ``image`` (it stops), then delete it."""
    image.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        rs.argv("checkpoint", "--image-path", str(image), b.sandbox_id),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=60,
    )
    subprocess.run(
        rs.argv("delete", "-force", b.sandbox_id),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )


def exec_true(rs: RawRunsc, sandbox_id: str) -> float:
    """Seconds for one ``runsc exec <id> /bin/true`` round trip."""
    started = time.perf_counter()
    subprocess.run(
        rs.argv("exec", sandbox_id, "/bin/true"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return time.perf_counter() - started


def teardown(rs: RawRunsc, b: RawBundle) -> float:
    """Seconds for ``runsc kill`` + ``delete -force``; then unmount and remove (untimed)."""
    started = time.perf_counter()
    for args in (("kill", b.sandbox_id, "KILL"), ("delete", "-force", b.sandbox_id)):
        subprocess.run(rs.argv(*args), stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    elapsed = time.perf_counter() - started
    subprocess.run(["umount", str(b.rootfs)], capture_output=True, timeout=30)
    shutil.rmtree(b.dir, ignore_errors=True)
    return elapsed


def measure(templates_root: Path, *, runs: int = 5, execs: int = 20) -> RawNumbers:
    """Start ``runs`` sandboxes one after another; time start, ``execs`` execs and teardown."""
    template = template_rootfs(templates_root, "base")
    runsc = shutil.which("runsc")
    if runsc is None:
        raise RuntimeError("runsc is not on PATH")
    starts: list[float] = []
    execs_s: list[float] = []
    teardowns: list[float] = []
    with tempfile.TemporaryDirectory(prefix="raw-runsc-") as tmp:
        work = Path(tmp)
        rs = RawRunsc(runsc=runsc, root=work / "runsc")
        for i in range(runs):
            b = prepare_bundle(work, template, f"raw-{i}")
            try:
                starts.append(start_to_first_exec(rs, b))
                execs_s += [exec_true(rs, b.sandbox_id) for _ in range(execs)]
            finally:
                teardowns.append(teardown(rs, b))
    for parent in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"):
        parent.rmdir()  # empty once every sandbox is deleted
    return RawNumbers(starts, execs_s, teardowns)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(name: str, samples: Sequence[float]) -> str:
    p50, p95 = percentile(samples, 50) * 1000, percentile(samples, 95) * 1000
    mean = statistics.fmean(samples) * 1000
    return (
        f"{name:<24} n={len(samples):<4} p50={p50:8.1f} ms  p95={p95:8.1f} ms  mean={mean:8.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_runsc")
    parser.add_argument("--templates-root", type=Path, default=Path(".corral/templates"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--execs", type=int, default=20)
    args = parser.parse_args(argv)
    numbers = measure(args.templates_root.resolve(), runs=args.runs, execs=args.execs)
    print("raw runsc (baseline)")
    print(summary("run -detach→first exec", numbers.start_to_first_exec))
    print(summary("exec /bin/true", numbers.exec_true))
    print(summary("kill + delete -force", numbers.teardown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
