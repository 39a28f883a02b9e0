"""CSV export: one line per export row, written a batch at a time by Arrow, read back exactly."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information

from billing.exports._batching import Progress, Sink, opened
from billing.exports._format import csv_writer, text_batch, text_schema
from billing.exports.rows import EXPORT_FIELDS, ExportRow, row_from_text


def write_csv(
    batches: Iterable[pa.RecordBatch], sink: Sink, *, progress: Progress | None = None
) -> int:
    """Stream export batches into CSV (a path or a binary stream); return the rows written."""
    written = 0
    with opened(sink) as handle, csv_writer(handle, text_schema(list(EXPORT_FIELDS))) as writer:
        for batch in batches:
            writer.write_batch(text_batch(batch))
            written += batch.num_rows
            if progress is not None:
                progress(written)
    return written


def read_csv(path: Path) -> Iterator[ExportRow]:
    """Read a CSV export back into rows, one at a time."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != EXPORT_FIELDS:
            raise ValueError("not a Corral CSV export: unexpected header")
        for cells in reader:
            yield row_from_text(cells)
