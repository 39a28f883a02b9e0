"""Billing exports for one period: stored usage → :mod:`billing` export rows → a stream, bounded.

Tenants are taken one at a time (those with usage in the period or a finalized invoice
for it). A tenant's rows come from its finalized invoice of the period when there is one
(so the export reconciles with it to the cent), else from the live draft, late-usage
adjustments included, rated in the same single pass that writes them
(:func:`billing.exports.draft_batches`). Usage is read by
:class:`control_plane.invoicing.StoredUsageSource` (one streamed query per tenant), and the
chosen writer encodes one Arrow batch at a time. Memory holds one batch of records and
rows, whatever the size of the period or of a tenant's history.

:func:`stream_export` runs the export in a worker thread that writes into a small bounded
queue of byte chunks, which the HTTP layer sends as they come (a slow client slows the
export; a client that goes away stops it).
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, cast

import anyio.to_thread
import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import structlog
from sqlalchemy.orm import Session

from billing import Invoice, Period, PriceBook
from billing.exports import draft_batches, invoice_batches, write_csv, write_focus
from billing.exports.parquet_export import write_parquet
from byoc_agent.protocol.errors import InvalidArgumentError
from control_plane.invoicing import (
    READ_BATCH,
    InvoiceService,
    StoredUsageSource,
    memory_gib,
    usage_record,
)
from control_plane.store import Database

__all__ = [
    "ExportFormat",
    "UsageExporter",
    "memory_gib",
    "parse_format",
    "parse_period",
    "stream_export",
    "usage_record",
]

log = structlog.get_logger("control_plane.usage_export")

CHUNK_BYTES = 256 * 1024
"""Bytes per chunk handed to the HTTP response."""

QUEUED_CHUNKS = 8
"""Chunks the export may run ahead of the client: at most ~2 MiB in flight."""


class ExportFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    FOCUS = "focus"

    @property
    def media_type(self) -> str:
        if self is ExportFormat.PARQUET:
            return "application/vnd.apache.parquet"
        return "text/csv; charset=utf-8"

    @property
    def suffix(self) -> str:
        return "parquet" if self is ExportFormat.PARQUET else "csv"


_WRITERS = {ExportFormat.CSV: write_csv, ExportFormat.FOCUS: write_focus,
            ExportFormat.PARQUET: write_parquet}


def parse_period(text: str) -> Period:
    """``YYYY-MM`` → :class:`billing.Period`; anything else is a 400 naming ``period``."""
    try:
        return Period.parse(text)
    except InvalidArgumentError:
        raise InvalidArgumentError(
            f"period must be a month as YYYY-MM, got {text[:16]!r}", field="period"
        ) from None


def parse_format(text: str) -> ExportFormat:
    try:
        return ExportFormat(text)
    except ValueError:
        choices = ", ".join(f.value for f in ExportFormat)
        raise InvalidArgumentError(
            f"format must be one of {choices}, got {text[:16]!r}", field="format"
        ) from None


class UsageExporter:
    """Streams a period's export rows from the stored usage into a writer."""

    def __init__(
        self, db: Database, pricebook: PriceBook | None = None, *, read_batch: int = READ_BATCH
    ) -> None:
        self._db = db
        self._invoices = InvoiceService(db, pricebook)
        self._pricebook = self._invoices.pricebook
        self._read_batch = read_batch

    def tenants(self, period: Period) -> list[str]:
        return self._invoices.tenants(period)

    def check(self, period: Period) -> list[str]:
        """The period's tenants, after checking every finalized invoice involved against its
        hash (so a tampered invoice is an error before any byte is sent)."""
        tenants = self.tenants(period)
        for tenant_id in tenants:
            self._invoices.finalized(tenant_id)
        return tenants

    def batches(self, s: Session, tenant_id: str, period: Period) -> Iterator[pa.RecordBatch]:
        """One tenant's export rows for the period: its finalized invoice's, else its draft's."""
        source = StoredUsageSource(s, self._read_batch)
        finalized = self._invoices.finalized(tenant_id)
        stored: Invoice | None = next(
            (invoice for invoice in finalized if invoice.period == str(period)), None
        )
        if stored is not None:
            return invoice_batches(stored, source, self._pricebook)
        return draft_batches(tenant_id, str(period), source, self._pricebook, finalized)

    def write(
        self,
        period: Period,
        fmt: ExportFormat,
        sink: Path | BinaryIO,
        *,
        tenants: list[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Write the period's export to ``sink`` (a path or binary stream); return its rows."""
        chosen = self.tenants(period) if tenants is None else tenants

        def run(s: Session) -> int:
            def every_tenant() -> Iterator[pa.RecordBatch]:
                for tenant_id in chosen:
                    yield from self.batches(s, tenant_id, period)

            return _WRITERS[fmt](every_tenant(), sink, progress=progress)

        return self._db.run_sync(run)


class ExportCancelledError(Exception):
    """The client went away; the export thread stops at its next write."""


_END = object()


class _ChunkSink(io.RawIOBase):
    """A write-only stream that hands ``CHUNK_BYTES`` chunks to a bounded queue."""

    def __init__(
        self, chunks: queue.Queue[object], stop: threading.Event, chunk_bytes: int
    ) -> None:
        super().__init__()
        self._chunks = chunks
        self._chunk_bytes = chunk_bytes
        self._stop = stop
        self._buffer = bytearray()
        self._position = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        size = len(data)
        self._buffer += data
        self._position += size
        while len(self._buffer) >= self._chunk_bytes:
            self.send(bytes(self._buffer[: self._chunk_bytes]))
            del self._buffer[: self._chunk_bytes]
        return size

    def finish(self) -> None:
        if self._buffer:
            self.send(bytes(self._buffer))
            self._buffer.clear()
        self.send(_END)

    def send(self, item: object) -> None:
        while True:
            if self._stop.is_set():
                raise ExportCancelledError
            try:
                self._chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


async def stream_export(
    exporter: UsageExporter,
    period: Period,
    fmt: ExportFormat,
    tenants: list[str],
    *,
    chunk_bytes: int = CHUNK_BYTES,
) -> AsyncGenerator[bytes, None]:
    """The export's bytes, produced by a worker thread, in order, with bounded buffering.

    An error in the worker is raised here, after the chunks before it; closing this
    iterator early (client gone) stops the worker.
    """
    chunks: queue.Queue[object] = queue.Queue(maxsize=QUEUED_CHUNKS)
    stop = threading.Event()

    def produce() -> None:
        sink = _ChunkSink(chunks, stop, chunk_bytes)
        try:
            # pyarrow writes to any object with write/tell; _ChunkSink is one, not a real file
            exporter.write(period, fmt, cast(BinaryIO, sink), tenants=tenants)
            sink.finish()
        except ExportCancelledError:
            log.info("billing_export_cancelled", period=str(period), format=fmt.value)
        except BaseException as e:  # handed to the response, which raises it
            log.error("billing_export_failed", period=str(period), format=fmt.value,
                      error=type(e).__name__)
            with contextlib.suppress(ExportCancelledError):
                sink.send(e)

    def take() -> object:
        while True:
            try:
                return chunks.get(timeout=0.2)
            except queue.Empty:
                if stop.is_set():
                    return _END

    worker = threading.Thread(target=produce, name=f"billing-export-{period}", daemon=True)
    worker.start()
    try:
        while True:
            # A cancelled wait is abandoned; take() then returns within 0.2 s of stop being set.
            item = await anyio.to_thread.run_sync(take, abandon_on_cancel=True)
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
