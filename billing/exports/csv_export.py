"""CSV export: one line per :class:`ExportRow`, streamed in batches, read back exactly."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from billing.exports._batching import DEFAULT_BATCH_SIZE, Progress, batched
from billing.exports.rows import EXPORT_FIELDS, ExportRow, row_from_text, row_to_text


def write_csv(
    rows: Iterable[ExportRow],
    path: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> int:
    """Stream rows into a CSV file in batches; return how many rows were written."""
    written = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for batch in batched(rows, batch_size):
            writer.writerows(row_to_text(row) for row in batch)
            written += len(batch)
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
