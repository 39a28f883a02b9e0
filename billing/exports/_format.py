"""Text forms shared by the exports: UTC ``Z`` timestamps and plain-notation decimals.

One value at a time (readers) and a whole Arrow batch at a time (writers).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import BinaryIO

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pacsv  # type: ignore[import-untyped]

from billing.periods import is_utc

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_timestamp(moment: datetime) -> str:
    """Render a UTC instant as ``YYYY-MM-DDTHH:MM:SSZ``."""
    if not is_utc(moment):
        raise ValueError("export timestamps must be UTC")
    return moment.strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` into an aware UTC datetime."""
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def format_decimal(value: Decimal) -> str:
    """Render a decimal in plain notation (never ``1E-7``)."""
    return format(value, "f")


def optional_text(value: str | None) -> str:
    """Render a missing value as an empty cell."""
    return "" if value is None else value


def parse_optional(text: str) -> str | None:
    """Read an empty cell as a missing value."""
    return text or None


def text_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """An export batch with every column as text: ``…Z`` timestamps, plain-notation decimals.

    Missing values (``gpu_model`` of a vCPU row) stay null, which CSV writes as an empty cell.
    """
    arrays: list[pa.Array] = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_timestamp(field.type):
            arrays.append(timestamp_text(column))
        elif pa.types.is_decimal(field.type):
            arrays.append(decimal_text(column))
        else:
            arrays.append(column)
    names = batch.schema.names
    return pa.RecordBatch.from_arrays(arrays, schema=text_schema(names))


_SECONDS_PER_DAY = 86_400
_CLOCK: list[pa.Array] = []


def _clock() -> pa.Array:
    """``THH:MM:SSZ`` for every second of a day, built once, column-wise."""
    if not _CLOCK:
        second = pa.array(range(_SECONDS_PER_DAY), pa.int64())

        def two_digits(values: pa.Array) -> pa.Array:
            return pc.utf8_lpad(pc.cast(values, pa.string()), width=2, padding="0")

        hours = two_digits(pc.divide(second, 3600))
        minutes = two_digits(pc.divide(pc.subtract(second, pc.multiply(pc.divide(second, 3600),
                                                                        3600)), 60))
        seconds = two_digits(pc.subtract(second, pc.multiply(pc.divide(second, 60), 60)))
        _CLOCK.append(pc.binary_join_element_wise("T", hours, ":", minutes, ":", seconds, "Z",
                                                  ""))
    return _CLOCK[0]


def timestamp_text(column: pa.Array) -> pa.Array:
    """UTC second timestamps as ``YYYY-MM-DDTHH:MM:SSZ``: the few distinct days are formatted
    once, the time of day looked up, and the two joined (formatting every value is slower)."""
    seconds = pc.cast(pc.cast(column, pa.timestamp("s", tz="UTC")), pa.int64())
    if len(seconds) == 0:
        return pa.array([], pa.string())
    bounds = pc.min_max(seconds)
    if bounds["min"] == bounds["max"]:  # a constant column (billing period bounds)
        only = format_timestamp(column[0].as_py())
        return pa.repeat(pa.scalar(only, pa.string()), len(seconds))
    day = pc.divide(seconds, _SECONDS_PER_DAY)
    offset = pc.subtract(seconds, pc.multiply(day, _SECONDS_PER_DAY))
    negative = pc.less(offset, 0)
    day = pc.if_else(negative, pc.subtract(day, 1), day)
    offset = pc.if_else(negative, pc.add(offset, _SECONDS_PER_DAY), offset)
    days = pc.unique(day)
    dates = pc.strftime(pc.cast(pc.multiply(days, _SECONDS_PER_DAY), pa.int64()).cast(
        pa.timestamp("s", tz="UTC")), format="%Y-%m-%d")
    return pc.binary_join_element_wise(
        pc.take(dates, pc.index_in(day, value_set=days)), pc.take(_clock(), offset), ""
    )


def text_schema(names: list[str]) -> pa.Schema:
    """A schema of nullable text columns."""
    return pa.schema([pa.field(name, pa.string()) for name in names])


def decimal_text(column: pa.Array) -> pa.Array:
    """Decimals as plain-notation text: Arrow writes ``1E-10``; those few are redone exactly."""
    text = pc.cast(column, pa.string())
    scientific = pc.match_substring(text, "E")
    if not pc.any(scientific).as_py():
        return text
    values = text.to_pylist()
    for index in pc.indices_nonzero(scientific).to_pylist():
        values[index] = format_decimal(Decimal(values[index]))
    return pa.array(values, pa.string())


def csv_writer(handle: BinaryIO, schema: pa.Schema) -> pacsv.CSVWriter:
    """An Arrow CSV writer for text batches; the header (plain names) is written here, unquoted.

    Arrow quotes every text value (``"a"``); empty cells are nulls.
    """
    handle.write((",".join(schema.names) + "\n").encode())
    return pacsv.CSVWriter(handle, schema, write_options=pacsv.WriteOptions(include_header=False))
