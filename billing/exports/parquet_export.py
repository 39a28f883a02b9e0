"""Parquet export: typed columns (decimals, UTC timestamps), written one row group per batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from billing.columns import DEFAULT_BATCH_SIZE
from billing.exports._batching import Progress, Sink, opened
from billing.exports._format import format_decimal, format_timestamp, optional_text
from billing.exports.rows import EXPORT_FIELDS, ExportRow, row_from_text
from billing.rater import EXPORT_SCHEMA

SCHEMA = EXPORT_SCHEMA
"""Parquet columns: ``decimal128`` money and quantities, ``timestamp[s, UTC]`` times."""


def write_parquet(
    batches: Iterable[pa.RecordBatch], sink: Sink, *, progress: Progress | None = None
) -> int:
    """Stream export batches into Parquet (path or binary stream), a row group per batch."""
    written = 0
    with opened(sink) as handle, pq.ParquetWriter(handle, SCHEMA) as writer:
        for batch in batches:
            writer.write_batch(batch)
            written += batch.num_rows
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
