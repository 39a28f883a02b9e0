"""MicroVM boot, restore and warm pools, each against its raw baseline in the same run.

Three comparisons (issue 7, point 6), runtime level (no control plane, no NATS on either side):

* **boot**: ``QemuMicrovmRuntime.create`` — QEMU ``microvm`` boot until the guest daemon
  answers (root disk mounted, ``guestd`` running) — against a raw QEMU boot of the same
  kernel and initramfs with ``corral.probe=1`` on the command line: the initramfs loads the
  virtio modules, prints ``corral-probe-ok`` and reboots (QEMU exits). Same machine
  arguments, same accelerator.
* **restore vs cold create**: ``runtime.restore(spec, snapshot)`` against
  ``runtime.create(spec)``, for gVisor and for the microVM (one snapshot taken first).
  Target: restore <= 0.5x cold create. For gVisor, also the floor under it: raw
  ``runsc restore -detach`` to the first successful ``exec /bin/true`` against raw
  ``runsc run -detach`` to the same (:mod:`bench.raw_runsc`; one raw checkpoint of an idle
  sandbox taken first; bundle preparation untimed on both sides). And, for gVisor, a restore
  served by the restore pool (ADR 0029: a copy of the snapshot restored ahead, taken and
  adopted as the new sandbox) against the same cold create; the pool refills between
  samples (untimed), and both sides' samples start once it is full and settled.
* **warm pool**: a :class:`~byoc_agent.warm_pool.WarmPool` take (adopt: hostname,
  machine-id, env) plus the first ``exec /bin/true``, against raw ``runsc run -detach`` to
  the first successful ``runsc exec /bin/true`` (:mod:`bench.raw_runsc`). Target:
  <= 0.3x raw cold start. The pool refills between samples (untimed), and both sides'
  samples start only once the pool is full and settled, so no refill runs beside either.
  For information, the same for a microVM pool against the raw QEMU boot of the first
  comparison.

Corral-side sandbox ids look like the control plane's (``sb_<hex>``): an id's ``_`` decides
how the new hostname can be set inside gVisor (Debian's ``hostname`` refuses it), so a
made-up id without one would measure a cheaper path than production takes.

Samples are interleaved (raw, Corral, raw, Corral...) so both sides see the same load;
medians are reported. Run as root from the repository root::

    .venv/bin/python -m bench.instant_sandboxes [--runs N] [--only boot,restore,pool]
        [--no-microvm]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import raw_runsc
from byoc_agent.runtimes.base import (
    ExecRequest,
    Exit,
    Runtime,
    SandboxHandle,
    SandboxSpec,
    Snapshotting,
)
from byoc_agent.runtimes.guest.image import ensure_boot
from byoc_agent.runtimes.gvisor import GVisorRuntime
from byoc_agent.runtimes.qemu_microvm import QemuMicrovmRuntime
from byoc_agent.runtimes.templates import ensure_template, template_rootfs
from byoc_agent.warm_pool import PoolKey, WarmPool

RESTORE_TARGET = 0.5
POOL_TARGET = 0.3


@dataclass(frozen=True, slots=True)
class Comparison:
    name: str
    corral: list[float]
    raw: list[float]
    target: float | None = None
    labels: tuple[str, str] = ("corral", "raw")

    @property
    def ratio(self) -> float:
        return statistics.median(self.corral) / statistics.median(self.raw)

    def lines(self) -> list[str]:
        def row(label: str, xs: Sequence[float]) -> str:
            ms = ", ".join(f"{x * 1000:.0f}" for x in xs)
            return f"  {label:<12} median {statistics.median(xs) * 1000:8.1f} ms   [{ms}]"

        verdict = ""
        if self.target is not None:
            met = "met" if self.ratio <= self.target else "NOT met"
            verdict = f"  (target <= {self.target}: {met})"
        a, b = self.labels
        return [self.name, row(a, self.corral), row(b, self.raw),
                f"  ratio {a}/{b} = {self.ratio:.2f}{verdict}"]  # fmt: skip


def sandbox_id() -> str:
    """An id shaped like the control plane's (``sb_`` + hex)."""
    return f"sb_{uuid.uuid4().hex[:20]}"


def spec(sandbox_id: str, isolation: str, env: dict[str, str] | None = None) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id=sandbox_id, tenant_id="bench", template="base", cpu=1, memory_mb=256,
        timeout_s=600, env=env or {}, isolation=isolation,
    )  # fmt: skip


async def first_exec(runtime: Runtime, handle: SandboxHandle) -> None:
    async for ev in runtime.exec(handle, ExecRequest(cmd="/bin/true")):
        if isinstance(ev, Exit) and ev.exit_code != 0:
            raise RuntimeError(f"/bin/true exited {ev.exit_code}")


# ---- (a) microVM boot vs raw QEMU boot --------------------------------------------------
def raw_qemu_boot(vm: QemuMicrovmRuntime, kernel: Path, initrd: Path, accel: str) -> float:
    """Seconds from starting QEMU to ``corral-probe-ok`` on its serial console."""
    argv = [
        shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
        *vm._machine_args(accel, 1, 256),
        "-kernel", str(kernel), "-initrd", str(initrd), "-serial", "stdio",
        "-append", vm._cmdline(accel, "probe") + " corral.probe=1",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if b"corral-probe-ok" in line:
                return time.perf_counter() - started
        raise RuntimeError("raw QEMU boot ended without corral-probe-ok")
    finally:
        proc.kill()
        proc.wait()


async def bench_boot(vm: QemuMicrovmRuntime, cache: Path, templates: Path,
                     runs: int) -> Comparison:  # fmt: skip
    boot = await asyncio.to_thread(ensure_boot, cache, templates, "base")
    accel = await vm.accel()
    corral: list[float] = []
    raw: list[float] = []
    for i in range(runs):
        raw.append(await asyncio.to_thread(raw_qemu_boot, vm, boot.kernel, boot.initrd, accel))
        started = time.perf_counter()
        handle = await vm.create(spec(f"bench-boot-{i}", "microvm"))
        corral.append(time.perf_counter() - started)
        await vm.destroy(handle)
    return Comparison(f"microVM boot to daemon-ready vs raw QEMU boot ({accel})", corral, raw,
                      labels=("corral boot", "raw qemu"))  # fmt: skip


# ---- (b) restore vs cold create ----------------------------------------------------------
async def bench_restore(runtime: Runtime, isolation: str, work: Path, runs: int) -> Comparison:
    assert isinstance(runtime, Snapshotting)
    source = await runtime.create(spec(f"bench-src-{isolation}", isolation))
    snap = work / f"snap-{isolation}"
    try:
        await runtime.snapshot(source, snap)
    finally:
        await runtime.destroy(source)
    cold: list[float] = []
    restored: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        h = await runtime.create(spec(sandbox_id(), isolation))
        cold.append(time.perf_counter() - started)
        await runtime.destroy(h)
        started = time.perf_counter()
        h = await runtime.restore(spec(sandbox_id(), isolation), snap)
        restored.append(time.perf_counter() - started)
        await runtime.destroy(h)
    shutil.rmtree(snap, ignore_errors=True)
    return Comparison(f"{isolation}: restore vs cold create", restored, cold, RESTORE_TARGET,
                      ("restore", "cold create"))  # fmt: skip


async def bench_restore_pool(runtime: GVisorRuntime, work: Path, runs: int) -> Comparison:
    """``WarmPool.take(spec, snapshot=...)`` (what the agent's restore does first) against
    ``runtime.create``, with one copy kept restored ahead."""
    source = await runtime.create(spec("bench-pool-src", "gvisor"))
    snap = work / "snap-pool"
    try:
        await runtime.snapshot(source, snap)
    finally:
        await runtime.destroy(source)
    key = PoolKey("base", 1, 256, "gvisor", snap.name)
    pool = WarmPool(runtime, {}, tenant_id="bench", free_capacity=lambda: (64, 65536),
                    restore_size=1)  # fmt: skip
    pool.keep_snapshot(key, snap)
    filler = asyncio.create_task(pool.run())
    cold: list[float] = []
    restored: list[float] = []
    try:
        for _ in range(runs):
            await pool_settled(pool, key)  # no refill beside the cold sample either
            started = time.perf_counter()
            h = await runtime.create(spec(sandbox_id(), "gvisor"))
            cold.append(time.perf_counter() - started)
            await runtime.destroy(h)
            await pool_settled(pool, key)
            started = time.perf_counter()
            got = await pool.take(spec(sandbox_id(), "gvisor"), snapshot=snap.name)
            restored.append(time.perf_counter() - started)
            assert got is not None, "restore pool miss"
            pool.confirm(got)
            await runtime.destroy(got)
    finally:
        filler.cancel()
        await pool.close()
        shutil.rmtree(snap, ignore_errors=True)
    return Comparison("gvisor: restore served by the restore pool vs cold create", restored,
                      cold, RESTORE_TARGET, ("pool restore", "cold create"))  # fmt: skip


def bench_restore_floor(templates: Path, work: Path, runs: int) -> Comparison:
    """Raw runsc, no Corral: restore of an idle sandbox's checkpoint vs a cold run, each to
    its first successful exec. What gVisor itself allows a restore to gain over a start."""
    template = template_rootfs(templates, "base")
    runsc = shutil.which("runsc")
    assert runsc is not None
    rs = raw_runsc.RawRunsc(runsc=runsc, root=work / "raw-floor")
    image = work / "raw-floor-image"
    src = raw_runsc.prepare_bundle(work, template, "floor-src")
    try:
        raw_runsc.start_to_first_exec(rs, src)
        time.sleep(0.5)  # idle, as the Corral side's snapshot source
        raw_runsc.checkpoint(rs, src, image)
    finally:
        raw_runsc.teardown(rs, src)
    cold: list[float] = []
    restored: list[float] = []
    try:
        for i in range(runs):
            for out, img in ((cold, None), (restored, image)):
                kind = "run" if img is None else "restore"
                b = raw_runsc.prepare_bundle(work, template, f"floor-{i}-{kind}")
                try:
                    out.append(raw_runsc.start_to_first_exec(rs, b, image=img))
                finally:
                    raw_runsc.teardown(rs, b)
    finally:
        shutil.rmtree(image, ignore_errors=True)
        raw_runsc_cleanup()
    return Comparison("gVisor floor: raw runsc restore + first exec vs raw runsc run + first exec",
                      restored, cold, RESTORE_TARGET, ("raw restore", "raw run"))  # fmt: skip


# ---- (c) warm-pool create -> first exec vs a raw cold start -------------------------------
async def pool_settled(pool: WarmPool, key: PoolKey) -> None:
    """Wait (untimed) until the pool holds a ready member and its start has settled."""
    deadline = time.monotonic() + 180
    while not pool.ready(key):
        if time.monotonic() > deadline:
            raise RuntimeError("the pool did not refill within 180 s")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)


async def take_and_exec(pool: WarmPool, runtime: Runtime, key: PoolKey) -> float:
    """Wait (untimed) for a ready member, then time take (adopt) + the first exec."""
    await pool_settled(pool, key)
    started = time.perf_counter()
    handle = await pool.take(spec(sandbox_id(), key.isolation, {"BENCH": "1"}))
    assert handle is not None, "pool miss"
    await first_exec(runtime, handle)
    elapsed = time.perf_counter() - started
    pool.confirm(handle)
    await runtime.destroy(handle)
    return elapsed


async def bench_pool(runtime: GVisorRuntime, templates: Path, work: Path,
                     runs: int) -> Comparison:  # fmt: skip
    key = PoolKey("base", 1, 256, "gvisor")
    pool = WarmPool(runtime, {key: 1}, tenant_id="bench", free_capacity=lambda: (64, 65536))
    filler = asyncio.create_task(pool.run())
    template = template_rootfs(templates, "base")
    runsc = shutil.which("runsc")
    assert runsc is not None
    rs = raw_runsc.RawRunsc(runsc=runsc, root=work / "raw-runsc")
    corral: list[float] = []
    raw: list[float] = []
    try:
        for i in range(runs):
            b = await asyncio.to_thread(raw_runsc.prepare_bundle, work, template, f"raw-{i}")
            await pool_settled(pool, key)  # no refill beside the raw sample either
            try:
                raw.append(await asyncio.to_thread(raw_runsc.start_to_first_exec, rs, b))
            finally:
                await asyncio.to_thread(raw_runsc.teardown, rs, b)
            corral.append(await take_and_exec(pool, runtime, key))
    finally:
        filler.cancel()
        await pool.close()
        await asyncio.to_thread(raw_runsc_cleanup)
    return Comparison("gVisor warm-pool create → first exec vs raw runsc run + first exec",
                      corral, raw, POOL_TARGET, ("warm pool", "raw runsc"))  # fmt: skip


async def bench_pool_microvm(vm: QemuMicrovmRuntime, cache: Path, templates: Path,
                             runs: int) -> Comparison:  # fmt: skip
    """The same for microVMs, against the raw QEMU boot of (a) (information: no target)."""
    boot = await asyncio.to_thread(ensure_boot, cache, templates, "base")
    accel = await vm.accel()
    key = PoolKey("base", 1, 256, "microvm")
    pool = WarmPool(vm, {key: 1}, tenant_id="bench", free_capacity=lambda: (64, 65536))
    filler = asyncio.create_task(pool.run())
    corral: list[float] = []
    raw: list[float] = []
    try:
        for _ in range(runs):
            raw.append(await asyncio.to_thread(raw_qemu_boot, vm, boot.kernel, boot.initrd,
                                               accel))  # fmt: skip
            corral.append(await take_and_exec(pool, vm, key))
    finally:
        filler.cancel()
        await pool.close()
    return Comparison(f"microVM warm-pool create → first exec vs raw QEMU boot ({accel})",
                      corral, raw, POOL_TARGET, ("warm pool", "raw qemu"))  # fmt: skip


def raw_runsc_cleanup() -> None:
    for parent in Path("/sys/fs/cgroup").glob(f"*/{raw_runsc.CGROUP_PARENT}"):
        parent.rmdir()  # empty once every raw sandbox is deleted


async def main_async(args: argparse.Namespace) -> list[Comparison]:
    templates = args.templates_root.resolve()
    await asyncio.to_thread(ensure_template, templates, "base")
    only = set(args.only.split(","))
    out: list[Comparison] = []
    with tempfile.TemporaryDirectory(prefix="bench-instant-") as tmp:
        work = Path(tmp)
        gv = GVisorRuntime(work / "gvisor", templates)
        vm = None
        if not args.no_microvm:
            vm = QemuMicrovmRuntime(work / "microvm", templates, cache_dir=args.microvm_cache,
                                    accel=args.accel)  # fmt: skip
        if "pool" in only:
            out.append(await bench_pool(gv, templates, work, args.runs))
            print("\n".join(out[-1].lines()), flush=True)
        if "restore" in only:
            out.append(await bench_restore(gv, "gvisor", work, args.runs))
            print("\n".join(out[-1].lines()), flush=True)
            out.append(await bench_restore_pool(gv, work, args.runs))
            print("\n".join(out[-1].lines()), flush=True)
            out.append(await asyncio.to_thread(bench_restore_floor, templates, work, args.runs))
            print("\n".join(out[-1].lines()), flush=True)
            if vm is not None:
                out.append(await bench_restore(vm, "microvm", work, args.microvm_runs))
                print("\n".join(out[-1].lines()), flush=True)
        if "boot" in only and vm is not None:
            out.append(await bench_boot(vm, args.microvm_cache, templates, args.microvm_runs))
            print("\n".join(out[-1].lines()), flush=True)
        if "pool" in only and vm is not None:
            out.append(await bench_pool_microvm(vm, args.microvm_cache, templates,
                                                args.microvm_runs))  # fmt: skip
            print("\n".join(out[-1].lines()), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instant_sandboxes")
    parser.add_argument("--templates-root", type=Path, default=Path(".corral/templates"))
    parser.add_argument("--microvm-cache", type=Path, default=Path(".corral/microvm"))
    parser.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    parser.add_argument("--runs", type=int, default=5, help="samples per gVisor comparison")
    parser.add_argument("--microvm-runs", type=int, default=3, help="samples per microVM one")
    parser.add_argument("--only", default="boot,restore,pool")
    parser.add_argument("--no-microvm", action="store_true", help="gVisor comparisons only")
    args = parser.parse_args(argv)
    args.microvm_cache = args.microvm_cache.resolve()
    results = asyncio.run(main_async(args))
    print("\nsummary (medians; the machine may be shared: compare ratios, not absolutes)")
    for c in results:
        print(f"  {c.name}: ratio {c.ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
