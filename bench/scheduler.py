"""Placement decisions per second: Corral's best-fit index against a naive first-fit.

One run builds the same synthetic fleet and the same request stream (seeded) for both:

* **fleet** (``--hosts``, default 1,000): 40 % KVM metal hosts with 96 vCPU and 384 GiB,
  30 % with 96 vCPU and 192 GiB, 20 % hosts without KVM (48 vCPU, 384 GiB), 10 % GPU hosts
  without KVM (192 vCPU, 2 TiB, 8 GPUs);
* **requests** (``--sandboxes``, default 20,000): 1 to 8 vCPU and 0.5 to 4 GiB per vCPU
  (about two thirds of the fleet's cpu in all), 10 % microVMs (KVM hosts only), 0.5 %
  asking for 1 to 4 GPUs.

Two phases, both counted as decisions: **fill** places every request on the empty fleet;
**churn** then, ``--sandboxes`` times, ends a random placed sandbox and places a new one.

* **Corral**: :class:`byoc_agent.scheduling.BestFitScheduler` (bisect-sorted index by free
  cpu and memory per host class; best fit; GPU hosts kept for GPU requests).
* **baseline**: first fit — scan the hosts in a fixed order and take the first one with
  room (same hard rules: KVM for microVMs, GPUs, cpu, memory); one list, no index;
* **linear best-fit**: the same best-fit order as Corral's, found by scanning every host
  per decision (how a policy without an index scales).

It prints decisions per second for each, the ratios, how many hosts each needed after the
fill, how many sandboxes that asked for no GPU sit on GPU hosts (first fit fills the big
GPU hosts with CPU work, which is why it needs fewer hosts; best fit keeps them for GPU
requests), and how many requests found no room. The target is
≥ 10,000 decisions/s for Corral; it is printed, never enforced::

    .venv/bin/python -m bench.scheduler [--hosts 1000] [--sandboxes 20000] [--seed 7]
        [--no-linear]
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from dataclasses import dataclass

from byoc_agent.scheduling import (
    BestFitScheduler,
    HostCapacity,
    Isolation,
    Overcommit,
    SandboxRequest,
)

TARGET_PER_S = 10_000


def make_fleet(n: int, rng: random.Random) -> list[HostCapacity]:
    hosts = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.4:  # like m7i.metal-24xl
            hosts.append(HostCapacity(f"h{i:05d}", 96, 393_216, 0, True))
        elif roll < 0.7:  # like c5.metal
            hosts.append(HostCapacity(f"h{i:05d}", 96, 196_608, 0, True))
        elif roll < 0.9:  # a virtualized type without /dev/kvm
            hosts.append(HostCapacity(f"h{i:05d}", 48, 393_216, 0, False))
        else:  # like p5.48xlarge
            hosts.append(HostCapacity(f"h{i:05d}", 192, 2_097_152, 8, False))
    return hosts


def make_request(i: int, rng: random.Random) -> SandboxRequest:
    cpu = rng.choice((1, 1, 2, 2, 2, 4, 4, 8))
    mem = cpu * rng.choice((512, 1024, 2048, 4096))
    gpus = rng.choice((1, 2, 4)) if rng.random() < 0.005 else 0
    iso = Isolation.MICROVM if rng.random() < 0.1 else Isolation.GVISOR
    return SandboxRequest(f"s{i:06d}", cpu, mem, gpus, iso)


@dataclass(slots=True)
class _NaiveHost:
    host_id: str
    kvm: bool
    cpu: int
    mem: int
    gpus: int


class FirstFit:
    """The baseline: one list, scanned from the start for every decision."""

    def __init__(self, fleet: list[HostCapacity]) -> None:
        self.hosts = [_NaiveHost(h.host_id, h.kvm, h.cpu, h.memory_mb, h.gpus) for h in fleet]
        self.by_id = {h.host_id: h for h in self.hosts}
        self.placed: dict[str, tuple[str, SandboxRequest]] = {}

    def place(self, r: SandboxRequest) -> str | None:
        microvm = r.isolation is Isolation.MICROVM
        for h in self.hosts:
            if (
                h.cpu >= r.cpu
                and h.mem >= r.memory_mb
                and h.gpus >= r.gpus
                and (h.kvm or not microvm)
            ):
                return self._take(h, r)
        return None

    def _take(self, h: _NaiveHost, r: SandboxRequest) -> str:
        h.cpu -= r.cpu
        h.mem -= r.memory_mb
        h.gpus -= r.gpus
        self.placed[r.sandbox_id] = (h.host_id, r)
        return h.host_id

    def host_of(self, sandbox_id: str) -> str | None:
        placed = self.placed.get(sandbox_id)
        return placed[0] if placed else None

    def release(self, sandbox_id: str) -> None:
        host_id, r = self.placed.pop(sandbox_id)
        h = self.by_id[host_id]
        h.cpu += r.cpu
        h.mem += r.memory_mb
        h.gpus += r.gpus


class LinearBestFit(FirstFit):
    """Best fit by a full scan per decision (tightest cpu, then memory): the policy without
    an index, as the control plane's per-agent choice works today."""

    def place(self, r: SandboxRequest) -> str | None:
        microvm = r.isolation is Isolation.MICROVM
        chosen: _NaiveHost | None = None
        for h in self.hosts:
            if (
                h.cpu >= r.cpu
                and h.mem >= r.memory_mb
                and h.gpus >= r.gpus
                and (h.kvm or not microvm)
                and (chosen is None or (h.cpu, h.mem) < (chosen.cpu, chosen.mem))
            ):
                chosen = h
        return None if chosen is None else self._take(chosen, r)


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    fill_s: float
    churn_s: float
    decisions: int
    unplaced: int
    hosts_used_after_fill: int
    cpu_work_on_gpu_hosts: int  # sandboxes without GPUs placed on GPU hosts

    @property
    def per_s(self) -> float:
        return self.decisions / (self.fill_s + self.churn_s)


def run(name: str, scheduler: BestFitScheduler | FirstFit, fleet: list[HostCapacity],
        n: int, seed: int) -> Outcome:
    rng = random.Random(seed)
    fill = [make_request(i, rng) for i in range(n)]
    churn_new = [make_request(n + i, rng) for i in range(n)]
    churn_pick = [rng.random() for _ in range(n)]
    placed: list[str] = []
    unplaced = 0
    t0 = time.perf_counter()
    for r in fill:
        if scheduler.place(r) is None:
            unplaced += 1
        else:
            placed.append(r.sandbox_id)
    fill_s = time.perf_counter() - t0
    on: dict[str, list[SandboxRequest]] = {}
    by_id = {r.sandbox_id: r for r in fill}
    for sid in placed:
        host = scheduler.host_of(sid)
        if host is not None:
            on.setdefault(host, []).append(by_id[sid])
    used = len(on)
    gpu_ids = {h.host_id for h in fleet if h.gpus}
    gpu_cpu_only = sum(
        1 for h, reqs in on.items() if h in gpu_ids for r in reqs if not r.gpus
    )
    t1 = time.perf_counter()
    for pick, r in zip(churn_pick, churn_new, strict=True):
        if placed:
            j = int(pick * len(placed))
            placed[j], placed[-1] = placed[-1], placed[j]
            scheduler.release(placed.pop())
        if scheduler.place(r) is None:
            unplaced += 1
        else:
            placed.append(r.sandbox_id)
    churn_s = time.perf_counter() - t1
    return Outcome(name, fill_s, churn_s, 2 * n, unplaced, used, gpu_cpu_only)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--sandboxes", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-linear", action="store_true",
                    help="skip the linear best-fit (it is slow on large fleets)")
    args = ap.parse_args(argv)
    fleet = make_fleet(args.hosts, random.Random(args.seed))
    best = BestFitScheduler(overcommit=Overcommit())
    for h in fleet:
        best.add_host(h)
    corral = run("corral best-fit", best, fleet, args.sandboxes, args.seed + 1)
    naive = run("first-fit baseline", FirstFit(fleet), fleet, args.sandboxes, args.seed + 1)
    linear = None if args.no_linear else run(
        "linear best-fit", LinearBestFit(fleet), fleet, args.sandboxes, args.seed + 1
    )
    print(f"# scheduler: {args.hosts} hosts, {args.sandboxes} sandboxes, seed {args.seed}; "
          f"Python {platform.python_version()}")
    print(f"{'':22} {'decisions/s':>12} {'fill s':>8} {'churn s':>8} {'unplaced':>9} "
          f"{'hosts used':>11} {'CPU-only on GPU hosts':>22}")
    for o in (corral, naive, linear):
        if o is None:
            continue
        print(f"{o.name:22} {o.per_s:12,.0f} {o.fill_s:8.3f} {o.churn_s:8.3f} "
              f"{o.unplaced:9d} {o.hosts_used_after_fill:11d} {o.cpu_work_on_gpu_hosts:22d}")
    ratios = f"corral / first-fit throughput: {corral.per_s / naive.per_s:.1f}x"
    if linear is not None:
        ratios += f"; corral / linear best-fit: {corral.per_s / linear.per_s:.1f}x"
    print(ratios)
    met = "met" if corral.per_s >= TARGET_PER_S else "NOT met"
    print(f"target >= {TARGET_PER_S:,} decisions/s: {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
