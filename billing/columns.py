"""Usage as Arrow record batches: the schema rating reads, and exact integer column arithmetic.

Rating and exports work on batches of records (:data:`USAGE_SCHEMA`), one tenant at a
time, in arrival order — never on one Python object per record. Everything here is
integer arithmetic on ``int64`` columns, checked for overflow: times are whole UTC
seconds, memory is in micro-GiB (the six places a record may carry), and a ratio is
rounded half-even by :func:`round_ratio_column` with the same result as
:func:`billing.money.round_ratio` gives one value at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from math import gcd

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.compute as pc  # type: ignore[import-untyped]

from billing.errors import InvalidUsageError
from billing.usage import LedgerEntry

MICRO = 10**6
INT64_MAX = 2**63 - 1

TIMESTAMP = pa.timestamp("s", tz="UTC")

USAGE_SCHEMA = pa.schema([
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("agent_id", pa.string(), nullable=False),
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("sandbox_id", pa.string(), nullable=False),
    pa.field("start", TIMESTAMP, nullable=False),
    pa.field("end", TIMESTAMP, nullable=False),
    pa.field("vcpu", pa.int64(), nullable=False),
    pa.field("memory_micro_gib", pa.int64(), nullable=False),
    pa.field("gpu_count", pa.int64(), nullable=False),
    pa.field("gpu_model", pa.string()),
    pa.field("isolation", pa.string(), nullable=False),
    pa.field("template", pa.string(), nullable=False),
    pa.field("host", pa.string(), nullable=False),
])
"""One tenant's usage records with their arrival sequence numbers, in arrival order."""

DEFAULT_BATCH_SIZE = 10_000


def micro_gib(memory_gib: Decimal) -> int:
    """GiB with at most six places → whole micro-GiB, exactly."""
    value = memory_gib.scaleb(6)
    if value != value.to_integral_value():
        raise InvalidUsageError("memory_gib has more than 6 decimal places")
    return int(value)


def entries_to_batches(
    entries: Iterable[LedgerEntry], batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[pa.RecordBatch]:
    """Turn ledger entries (records with their sequence numbers) into usage batches."""
    chunk: list[LedgerEntry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) >= batch_size:
            yield _entries_batch(chunk)
            chunk = []
    if chunk:
        yield _entries_batch(chunk)


def _entries_batch(chunk: Sequence[LedgerEntry]) -> pa.RecordBatch:
    records = [entry.record for entry in chunk]
    return pa.RecordBatch.from_arrays(
        [
            pa.array([entry.seq for entry in chunk], pa.int64()),
            pa.array([r.agent_id for r in records], pa.string()),
            pa.array([r.record_id for r in records], pa.string()),
            pa.array([r.sandbox_id for r in records], pa.string()),
            pa.array([r.start for r in records], TIMESTAMP),
            pa.array([r.end for r in records], TIMESTAMP),
            pa.array([r.vcpu for r in records], pa.int64()),
            pa.array([micro_gib(r.memory_gib) for r in records], pa.int64()),
            pa.array([r.gpu_count for r in records], pa.int64()),
            pa.array([r.gpu_model for r in records], pa.string()),
            pa.array([r.isolation for r in records], pa.string()),
            pa.array([r.template for r in records], pa.string()),
            pa.array([r.host for r in records], pa.string()),
        ],
        schema=USAGE_SCHEMA,
    )


def check_usage_batch(batch: pa.RecordBatch) -> None:
    """Reject a batch that is not :data:`USAGE_SCHEMA` or holds an impossible record."""
    if not batch.schema.equals(USAGE_SCHEMA, check_metadata=False):
        raise InvalidUsageError("usage batch does not have the usage schema")
    if batch.num_rows == 0:
        return
    start = pc.cast(batch["start"], pa.int64())
    end = pc.cast(batch["end"], pa.int64())
    problems = {
        "end must be after start": pc.less_equal(end, start),
        "vcpu must not be negative": pc.less(batch["vcpu"], 0),
        "memory must not be negative": pc.less(batch["memory_micro_gib"], 0),
        "gpu_count must not be negative": pc.less(batch["gpu_count"], 0),
        "gpu_model is required when gpu_count > 0": pc.and_(
            pc.greater(batch["gpu_count"], 0), pc.is_null(batch["gpu_model"])
        ),
    }
    for reason, bad in problems.items():
        if pc.any(bad).as_py():
            raise InvalidUsageError(f"invalid usage record: {reason}")


def round_ratio_column(values: pa.Array, k: int, d: int) -> pa.Array:
    """``round_half_even(k * v / d)`` for every non-negative ``v``, exactly, as ``int64``.

    Computed as ``k*q + (k*r) // d`` with ``v = q*d + r``, so no intermediate exceeds
    ``max(k*q, k*d)``; an overflow raises :class:`pyarrow.ArrowInvalid` (callers fall back
    to Python integers). ``k*d`` must fit in 63 bits.
    """
    g = gcd(k, d)
    k, d = k // g, d // g
    if k * d > INT64_MAX:
        raise pa.ArrowInvalid("overflow: ratio constants too large for int64")
    if d == 1:
        return pc.multiply_checked(values, k)
    quotient = pc.divide(values, d)
    remainder = pc.subtract(values, pc.multiply(quotient, d))
    scaled = pc.multiply(remainder, k)
    whole = pc.add_checked(pc.multiply_checked(quotient, k), pc.divide(scaled, d))
    left = pc.subtract(scaled, pc.multiply(pc.divide(scaled, d), d))
    twice = pc.multiply(left, 2)
    odd = pc.equal(pc.bit_wise_and(whole, 1), 1)
    up = pc.or_(pc.greater(twice, d), pc.and_(pc.equal(twice, d), odd))
    return pc.add_checked(whole, pc.cast(up, pa.int64()))


def round_ratio_int(value: int, k: int, d: int) -> int:
    """``round_half_even(k * value / d)`` in Python integers (the column version's fallback)."""
    quotient, remainder = divmod(k * value, d)
    if 2 * remainder > d or (2 * remainder == d and quotient % 2 == 1):
        quotient += 1
    return quotient


def decimal_column(unscaled: pa.Array | Sequence[int], scale: int) -> pa.Array:
    """Exact ``decimal128(38, scale)`` values from unscaled integers (``int64`` or Python)."""
    target = pa.decimal128(38, scale)
    if isinstance(unscaled, pa.Array):
        return pc.cast(unscaled, pa.decimal128(38, 0)).view(target)
    return pa.array([Decimal(f"{value}E-{scale}") for value in unscaled], target)
