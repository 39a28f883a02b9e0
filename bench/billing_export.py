"""Billing export throughput and memory: Corral's billing library against plain pyarrow.

One run generates ``N`` synthetic usage records deterministically (seeded, ~100 tenants,
sandboxes per tenant, whole seconds inside one UTC month) and processes them two ways:

* **Corral**: each record becomes a :class:`~billing.UsageRecord`, is ingested into a
  :class:`~billing.UsageLedger`, each tenant gets a draft invoice (:func:`~billing.build_draft`,
  default :class:`~billing.PriceBook`) and every cost line is streamed through
  :func:`~billing.exports.iter_export_rows` into :func:`~billing.exports.write_csv`.
  The library's invoices and export rows are computed *from a ledger*, so the records are
  held in memory; only the export rows stream.
* **baseline**: the same record tuples, batched into Arrow arrays; per tenant and resource
  the unit-seconds are summed with ``pyarrow.compute`` (``group_by().aggregate``), each
  sum is priced at the same rate and rounded half-even to the cent once per line (the
  rounding rule of ``docs/billing.md``), and the per-record rows are written with
  ``pyarrow.csv``. Only the per-batch arrays and the small per-tenant sums are held.

Each side of each size runs in its own subprocess, so its peak RSS (``ru_maxrss``, minus the
RSS after imports) is its own. Both sizes ``N`` and ``N/10`` are run, to show whether peak
memory depends on ``N``. The per-tenant totals of both sides must agree to the cent
(exit status 1 if not); the Corral/baseline time ratio is printed against a target of 2,
never enforced::

    .venv/bin/python -m bench.billing_export [--records N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import BinaryIO, cast

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pacsv  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from billing import DEFAULT_RATES, Invoice, Period, PriceBook, Resource
from billing.columns import TIMESTAMP, USAGE_SCHEMA
from billing.exports import write_csv
from billing.invoices import plan_sources
from billing.rater import InvoiceRater

TARGET_RATIO = 2.0
DEFAULT_RECORDS = 1_000_000
SEED = 20261126
RECORDS_PER_TENANT = 10_000
SANDBOXES_PER_TENANT = 40
AGENTS_PER_TENANT = 4
PERIOD = "2026-10"
MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)
MONTH_SECONDS = 31 * 24 * 3600
MAX_RECORD_SECONDS = 3600
VCPUS = (1, 2, 4, 8)
#: Memory sizes in micro-GiB (the library allows 6 decimal places of GiB).
MEMORY_MICRO_GIB = (500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000, 1_536_000)
GPU_SHARE = 0.02
BATCH = 10_000
MICRO = 1_000_000


@dataclass(frozen=True, slots=True)
class RawUsage:
    """One synthetic record before either side turns it into its own representation."""

    index: int
    tenant: int
    agent: int
    sandbox: int
    start_s: int
    seconds: int
    vcpu: int
    memory_micro_gib: int
    gpu_count: int


def tenants_for(n: int) -> int:
    """Tenants in a run of ``n`` records: one per 10,000 records, so every size has the same
    per-tenant shape and only the number of tenants grows with ``n``."""
    return max(1, n // RECORDS_PER_TENANT)


def synthetic_usage(n: int, seed: int = SEED) -> Iterator[RawUsage]:
    """Yield ``n`` records deterministically: same seed, same records, in the same order."""
    rng = random.Random(seed)
    tenants = tenants_for(n)
    for index in range(n):
        tenant = rng.randrange(tenants)
        sandbox = rng.randrange(SANDBOXES_PER_TENANT)
        start_s = rng.randrange(MONTH_SECONDS - 1)
        seconds = min(rng.randint(1, MAX_RECORD_SECONDS), MONTH_SECONDS - start_s)
        yield RawUsage(
            index=index,
            tenant=tenant,
            agent=sandbox % AGENTS_PER_TENANT,
            sandbox=sandbox,
            start_s=start_s,
            seconds=seconds,
            vcpu=rng.choice(VCPUS),
            memory_micro_gib=rng.choice(MEMORY_MICRO_GIB),
            gpu_count=1 if rng.random() < GPU_SHARE else 0,
        )


# ---------------------------------------------------------------------------- names


def _tenant(t: int) -> str:
    return f"tenant-{t:03d}"


def _agent(t: int, a: int) -> str:
    return f"agent-{t:03d}-{a}"


def _sandbox(t: int, s: int) -> str:
    return f"sbx-{t:03d}-{s:03d}"


def _record(i: int) -> str:
    return f"rec-{i:09d}"


# ---------------------------------------------------------------------------- the usage table


def write_usage_table(n: int, path: Path) -> None:
    """Write the synthetic records as a Parquet usage table, sorted by tenant then arrival.

    That is the order the control plane reads one tenant's usage in (``tenant_id``, then
    ``seq``); both sides read this file batch by batch, untimed work done once beforehand.
    """
    unsorted = path.with_suffix(".unsorted.parquet")
    schema = _TABLE_SCHEMA
    epoch = int(MONTH_START.timestamp())
    usage = synthetic_usage(n)
    with pq.ParquetWriter(str(unsorted), schema) as writer:
        while chunk := [raw for _, raw in zip(range(BATCH), usage, strict=False)]:
            starts = [epoch + r.start_s for r in chunk]
            writer.write_batch(pa.RecordBatch.from_arrays([
                pa.array([_tenant(r.tenant) for r in chunk]),
                pa.array([r.index + 1 for r in chunk], pa.int64()),
                pa.array([_agent(r.tenant, r.agent) for r in chunk]),
                pa.array([_record(r.index) for r in chunk]),
                pa.array([_sandbox(r.tenant, r.sandbox) for r in chunk]),
                pa.array(starts, pa.int64()).cast(TIMESTAMP),
                pa.array([s + r.seconds for s, r in zip(starts, chunk, strict=True)],
                         pa.int64()).cast(TIMESTAMP),
                pa.array([r.vcpu for r in chunk], pa.int64()),
                pa.array([r.memory_micro_gib for r in chunk], pa.int64()),
                pa.array([r.gpu_count for r in chunk], pa.int64()),
                pa.array(["H100" if r.gpu_count else None for r in chunk], pa.string()),
                pa.array(["gvisor"] * len(chunk)),
                pa.array(["base"] * len(chunk)),
                pa.array([f"host-{r.tenant % 8}" for r in chunk]),
            ], schema=schema))
    table = pq.read_table(str(unsorted)).sort_by([("tenant_id", "ascending"),
                                                  ("seq", "ascending")])
    pq.write_table(table, str(path), row_group_size=BATCH)
    unsorted.unlink()


_TABLE_SCHEMA = pa.schema([pa.field("tenant_id", pa.string(), nullable=False), *USAGE_SCHEMA])


def _usage_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The table, one row group (``BATCH`` rows) at a time; Parquet keeps times in ms, so they
    are cast back to seconds. (``ParquetFile.iter_batches`` holds more in memory the more row
    groups a file has, so row groups are read one by one.)"""
    parquet = pq.ParquetFile(str(path))
    for group in range(parquet.metadata.num_row_groups):
        for batch in parquet.read_row_group(group).to_batches(max_chunksize=BATCH):
            yield batch.cast(_TABLE_SCHEMA)


# ---------------------------------------------------------------------------- Corral side


def tenant_runs(path: Path) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Stream ``(tenant, usage batch)`` from the tenant-sorted table, like one query per tenant."""
    usage_names = USAGE_SCHEMA.names
    for batch in _usage_batches(path):
        runs = pc.run_end_encode(batch["tenant_id"])
        begin = 0
        for tenant, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
            yield tenant, batch.slice(begin, end - begin).select(usage_names)
            begin = end


def run_corral(n: int, usage: Path, out: BinaryIO | CountingSink) -> dict[str, str]:
    """Draft every tenant's invoice and stream its export rows into CSV, in one pass."""
    pricebook = PriceBook()
    drafts: list[Invoice] = []

    def rows() -> Iterator[pa.RecordBatch]:
        rater: InvoiceRater | None = None
        for tenant, batch in tenant_runs(usage):
            if rater is None or rater.tenant_id != tenant:
                if rater is not None:
                    drafts.append(rater.invoice(n))
                sources = plan_sources(tenant, Period.parse(PERIOD), n, ())
                rater = InvoiceRater(tenant, PERIOD, sources, pricebook)
            priced = rater.rows(batch)
            if priced is not None:
                yield priced
        if rater is not None:
            drafts.append(rater.invoice(n))

    write_csv(rows(), cast(BinaryIO, out))
    return {draft.tenant_id: str(draft.total) for draft in drafts}


# ---------------------------------------------------------------------------- baseline


_CENT = Decimal("0.01")
_SCHEMA = pa.schema([
    ("tenant_id", pa.string()),
    ("agent_id", pa.string()),
    ("record_id", pa.string()),
    ("sandbox_id", pa.string()),
    ("start", pa.timestamp("s", tz="UTC")),
    ("end", pa.timestamp("s", tz="UTC")),
    ("vcpu", pa.int64()),
    ("memory_micro_gib", pa.int64()),
    ("gpu_count", pa.int64()),
    ("vcpu_seconds", pa.int64()),
    ("memory_micro_gib_seconds", pa.int64()),
    ("gpu_seconds", pa.int64()),
    ("cost_usd_approx", pa.float64()),
])


def _rate(resource_: Resource) -> Decimal:
    return next(r.per_hour for r in DEFAULT_RATES if r.resource is resource_)


def run_baseline(n: int, usage: Path, out: BinaryIO | CountingSink) -> dict[str, str]:
    """Sum unit-seconds per tenant with pyarrow compute, price per line, write CSV via Arrow."""
    rates = {name: float(_rate(res)) / 3600 for name, res in
             (("v", Resource.VCPU), ("m", Resource.MEMORY), ("g", Resource.GPU))}
    partials: list[pa.Table] = []
    with pacsv.CSVWriter(out, _SCHEMA) as writer:
        for batch in _usage_batches(usage):
            begin = pc.cast(batch["start"], pa.int64())
            seconds = pc.subtract(pc.cast(batch["end"], pa.int64()), begin)
            vcpu_s = pc.multiply(batch["vcpu"], seconds)
            mem_us = pc.multiply(batch["memory_micro_gib"], seconds)
            gpu_s = pc.multiply(batch["gpu_count"], seconds)
            approx = pc.add(pc.add(pc.multiply(pc.cast(vcpu_s, pa.float64()), rates["v"]),
                                   pc.multiply(pc.cast(mem_us, pa.float64()), rates["m"] / MICRO)),
                            pc.multiply(pc.cast(gpu_s, pa.float64()), rates["g"]))
            writer.write_batch(pa.RecordBatch.from_arrays(
                [batch["tenant_id"], batch["agent_id"], batch["record_id"], batch["sandbox_id"],
                 batch["start"], batch["end"], batch["vcpu"], batch["memory_micro_gib"],
                 batch["gpu_count"], vcpu_s, mem_us, gpu_s, approx],
                schema=_SCHEMA,
            ))
            table = pa.table({"tenant_id": batch["tenant_id"], "v": vcpu_s, "m": mem_us,
                              "g": gpu_s})
            partials.append(table.group_by("tenant_id").aggregate(
                [("v", "sum"), ("m", "sum"), ("g", "sum")]))
            if len(partials) >= 64:  # fold, so the partial sums stay bounded
                partials = [_fold(partials)]
    sums = _fold(partials).to_pylist() if partials else []
    return {row["tenant_id"]: str(_line_cents(row)) for row in sums}


def _fold(partials: list[pa.Table]) -> pa.Table:
    merged = pa.concat_tables(partials).group_by("tenant_id").aggregate(
        [("v_sum", "sum"), ("m_sum", "sum"), ("g_sum", "sum")])
    return pa.table({"tenant_id": merged["tenant_id"], "v_sum": merged["v_sum_sum"],
                     "m_sum": merged["m_sum_sum"], "g_sum": merged["g_sum_sum"]})


def _line_cents(row: dict[str, int]) -> Decimal:
    """A tenant's total: each resource line priced exactly and rounded half-even once."""
    lines = (
        (Decimal(row["v_sum"]), _rate(Resource.VCPU)),
        (Decimal(row["m_sum"]).scaleb(-6), _rate(Resource.MEMORY)),
        (Decimal(row["g_sum"]), _rate(Resource.GPU)),
    )
    total = Decimal(0)
    for unit_seconds, per_hour in lines:
        if unit_seconds:
            total += (unit_seconds * per_hour / 3600).quantize(_CENT, ROUND_HALF_EVEN)
    return total


# ---------------------------------------------------------------------------- processes


@dataclass(frozen=True, slots=True)
class SideResult:
    """What one worker subprocess reports."""

    side: str
    records: int
    seconds: float
    cpu_seconds: float
    peak_rss_kib: int
    base_rss_kib: int
    csv_bytes: int
    totals: dict[str, str]

    @property
    def peak_delta_mib(self) -> float:
        """Peak RSS above the RSS after imports, in MiB."""
        return (self.peak_rss_kib - self.base_rss_kib) / 1024


def _memory_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of this process, in KiB; unlike ``ru_maxrss``, the peak
    is that of this program only, not of the parent it was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class CountingSink(io.RawIOBase):
    """A write-only stream that keeps nothing and counts the bytes (``--to-disk`` off)."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.size += len(data)
        return len(data)


def _worker(side: str, n: int, usage: Path, to_disk: bool) -> None:
    base = _memory_kib("VmRSS")
    run = run_corral if side == "corral" else run_baseline
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        path = Path(tmp) / "export.csv"
        counted = CountingSink()
        began, began_cpu = time.perf_counter(), time.process_time()
        if to_disk:
            with path.open("wb") as handle:
                totals = run(n, usage, handle)
        else:
            totals = run(n, usage, counted)
        elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
        size = path.stat().st_size if to_disk else counted.size
    peak = _memory_kib("VmHWM")
    json.dump({"side": side, "records": n, "seconds": elapsed, "cpu_seconds": cpu,
               "peak_rss_kib": peak,
               "base_rss_kib": base, "csv_bytes": size, "totals": totals}, sys.stdout)


def _run_side(side: str, n: int, usage: Path, to_disk: bool, pool: str) -> SideResult:
    print(f"… {side} at {n:,} records", file=sys.stderr, flush=True)
    env = dict(os.environ)
    if pool != "default":
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    done = subprocess.run(
        [sys.executable, "-m", "bench.billing_export", "--worker", side, "--records", str(n),
         "--usage", str(usage), *(["--to-disk"] if to_disk else [])],
        check=False, capture_output=True, text=True, env=env,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{side} worker failed with exit status {done.returncode}")
    data = json.loads(done.stdout)
    return SideResult(**data)


def _best(runs: list[SideResult]) -> SideResult:
    """The fastest run's times, the highest peak memory of all runs."""
    fastest = min(runs, key=lambda r: r.seconds)
    return SideResult(
        side=fastest.side, records=fastest.records, seconds=fastest.seconds,
        cpu_seconds=min(r.cpu_seconds for r in runs),
        peak_rss_kib=max(r.peak_rss_kib - r.base_rss_kib for r in runs) + fastest.base_rss_kib,
        base_rss_kib=fastest.base_rss_kib, csv_bytes=fastest.csv_bytes, totals=fastest.totals,
    )


def _compare(corral: SideResult, baseline: SideResult) -> list[str]:
    problems = []
    for tenant in sorted(set(corral.totals) | set(baseline.totals)):
        ours, theirs = corral.totals.get(tenant), baseline.totals.get(tenant)
        if ours is None or theirs is None or Decimal(ours) != Decimal(theirs):
            problems.append(f"{tenant}: corral {ours} vs baseline {theirs}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS)
    parser.add_argument("--small", type=int, default=None,
                        help="the second, smaller size (default: a quarter of --records)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each side at each size; the fastest is reported")
    parser.add_argument("--to-disk", action="store_true",
                        help="write the CSV files to disk (default: encode them and count the "
                             "bytes, so the disk's speed is not measured)")
    parser.add_argument("--memory-pool", choices=("default", "system", "jemalloc", "mimalloc"),
                        default="default",
                        help="Arrow's allocator in both workers (ARROW_DEFAULT_MEMORY_POOL); "
                             "mimalloc, the default, keeps freed memory longer")
    parser.add_argument("--worker", choices=("corral", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--usage", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.records < 10:
        parser.error("--records must be at least 10")
    if args.worker:
        _worker(args.worker, args.records, args.usage, args.to_disk)
        return 0

    sizes = (args.records, args.small or args.records // 4)
    results: dict[tuple[str, int], SideResult] = {}
    with tempfile.TemporaryDirectory(prefix="corral-bench-usage-") as tmp:
        for n in sizes:
            usage = Path(tmp) / f"usage-{n}.parquet"
            print(f"… writing {n:,} usage records", file=sys.stderr, flush=True)
            write_usage_table(n, usage)
            runs: dict[str, list[SideResult]] = {"baseline": [], "corral": []}
            for _ in range(max(1, args.repeat)):
                for side in ("baseline", "corral"):  # interleaved: both see the same load
                    runs[side].append(
                        _run_side(side, n, usage, args.to_disk, args.memory_pool))
            for side, done in runs.items():
                results[(side, n)] = _best(done)
            usage.unlink()
    failed = False
    print(f"billing export: {platform.machine()}, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, pyarrow {pa.__version__}, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"best of {max(1, args.repeat)} runs per side and size; wall and CPU time "
          "(the machine may be shared: CPU time is the steadier of the two); CSV "
          + ("written to disk" if args.to_disk else "encoded, bytes counted, not written")
          + f"; Arrow memory pool: {args.memory_pool} ({pa.default_memory_pool().backend_name} "
          "when not set)")
    for n in sizes:
        corral, baseline = results[("corral", n)], results[("baseline", n)]
        ratio = corral.seconds / baseline.seconds
        cpu_ratio = corral.cpu_seconds / baseline.cpu_seconds
        problems = _compare(corral, baseline)
        failed = failed or bool(problems)
        grand = sum((Decimal(v) for v in corral.totals.values()), Decimal(0))
        print(f"\n{n:,} records, {len(corral.totals)} tenants, total {grand} USD")
        for name, side in (("corral", corral), ("baseline", baseline)):
            print(f"  {name:8s} {side.seconds:7.2f} s wall  {side.cpu_seconds:7.2f} s CPU  "
                  f"{n / side.seconds:9,.0f} rec/s  peak +{side.peak_delta_mib:6.1f} MiB  "
                  f"csv {side.csv_bytes / 2**20:6.1f} MiB")
        for what, value in (("wall", ratio), ("CPU", cpu_ratio)):
            verdict = "met" if value <= TARGET_RATIO else "not met"
            print(f"  ratio corral/baseline ({what}) {value:.2f}x "
                  f"(target <= {TARGET_RATIO:g}x: {verdict})")
        print(f"  per-tenant totals agree to the cent: {'yes' if not problems else 'NO'}")
        for problem in problems[:10]:
            print(f"    {problem}")
    big, small = sizes
    print("\npeak memory (RSS above the post-import RSS):")
    for side in ("corral", "baseline"):
        at_big, at_small = results[(side, big)], results[(side, small)]
        print(f"  {side:8s} {at_small.peak_delta_mib:7.1f} MiB at {small:,}, "
              f"{at_big.peak_delta_mib:7.1f} MiB at {big:,} "
              f"({at_big.peak_delta_mib / max(at_small.peak_delta_mib, 0.1):.1f}x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
