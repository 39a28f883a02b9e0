"""Parquet export: typed columns (decimals, UTC timestamps), written one row group per batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from billing.exports._batching import DEFAULT_BATCH_SIZE, Progress, batched
from billing.exports._format import format_decimal, format_timestamp, optional_text
from billing.exports.rows import EXPORT_FIELDS, ExportRow, row_from_text

_TIMESTAMP = pa.timestamp("s", tz="UTC")
_DECIMAL_SCALES = {
    "unit_seconds": 6,
    "quantity": 12,
    "unit_price": 10,
    "list_unit_price": 10,
    "contracted_cost": 10,
    "list_cost": 10,
    "billed_cost": 2,
}
_TIMESTAMPS = {
    "billing_period_start",
    "billing_period_end",
    "charge_period_start",
    "charge_period_end",
}


def _type_of(name: str) -> object:
    if name in _DECIMAL_SCALES:
        return pa.decimal128(38, _DECIMAL_SCALES[name])
    if name in _TIMESTAMPS:
        return _TIMESTAMP
    return pa.string()


SCHEMA = pa.schema([pa.field(name, _type_of(name), nullable=name == "gpu_model")
                    for name in EXPORT_FIELDS])


def write_parquet(
    rows: Iterable[ExportRow],
    path: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> int:
    """Stream rows into a Parquet file, one row group per batch; return how many were written."""
    written = 0
    with pq.ParquetWriter(str(path), SCHEMA) as writer:
        for batch in batched(rows, batch_size):
            columns = {name: [getattr(row, name) for row in batch] for name in EXPORT_FIELDS}
            writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=SCHEMA))
            written += len(batch)
            if progress is not None:
                progress(written)
    return written


def read_parquet(path: Path, *, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[ExportRow]:
    """Read a Parquet export back into rows, one batch in memory at a time."""
    parquet = pq.ParquetFile(str(path))
    if parquet.schema_arrow.names != list(EXPORT_FIELDS):
        raise ValueError("not a Corral Parquet export: unexpected columns")
    for record_batch in parquet.iter_batches(batch_size=batch_size):
        for values in record_batch.to_pylist():
            yield row_from_text({name: _text(values[name]) for name in EXPORT_FIELDS})


def _text(value: object) -> str:
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if value is None or isinstance(value, str):
        return optional_text(value)
    raise TypeError(f"unexpected Parquet value of type {type(value).__name__}")
