"""Rate one invoice's usage batch by batch: exact line sums and export rows, column by column.

An :class:`InvoiceRater` is built for one tenant, one billing period and the source ranges
the invoice covers. It prices once per *piece* — a usage period covered by a source, a
SKU (vCPU, memory, one GPU model) and a stretch of that period in which both the tenant's
rate and the list rate stay the same — and then works on whole columns of a
:data:`~billing.columns.USAGE_SCHEMA` batch with integer arithmetic:

- each record overlapping a piece is clipped to it, giving whole seconds, and
  ``unit_seconds = units * seconds`` in base units (vCPU-seconds, micro-GiB-seconds,
  GPU-seconds), an exact integer;
- an invoice line (kind, usage period, rate) sums its integer unit-seconds; its amount is
  ``rate * unit_seconds / 3600`` as an exact :class:`~decimal.Decimal`, rounded to the cent
  once, when the invoice is built (:mod:`billing.money`, ROUND_HALF_EVEN);
- export rows carry ``quantity``, ``contracted_cost`` and ``list_cost`` rounded half-even to
  12/10/10 places for display, and ``billed_cost``, the row's share of its line by
  cumulative rounding (see :mod:`billing.exports.rows`).

Rows come out in arrival order, then by time, then vCPU, memory, GPU — whatever the batch
size, so a re-export allocates the same cents to the same rows. Integer columns are
``int64`` with checked arithmetic; where a product would not fit, that piece or line falls
back to Python integers, so the result is exact either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import pairwise

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.compute as pc  # type: ignore[import-untyped]

from billing.columns import (
    TIMESTAMP,
    check_usage_batch,
    decimal_column,
    round_ratio_column,
    round_ratio_int,
)
from billing.errors import InvalidUsageError, InvoiceIntegrityError, UnpricedResourceError
from billing.invoices import (
    CURRENCY,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    SourceRange,
    line_id_for,
    line_kind,
)
from billing.money import SECONDS_PER_HOUR, exact_mul, to_cents
from billing.periods import Period
from billing.pricebook import PriceBook, Rate, Resource

UNIT_SECONDS_DECIMALS = 6
QUANTITY_DECIMALS = 12
COST_DECIMALS = 10
PRICE_DECIMALS = 10
CENTS = 2

_UNIT_PLACES = {Resource.VCPU: 0, Resource.MEMORY: 6, Resource.GPU: 0}
"""Decimal places of a resource's units in a usage batch (memory is in micro-GiB)."""

_ORDER = {Resource.VCPU: 0, Resource.MEMORY: 1, Resource.GPU: 2}

EXPORT_SCHEMA = pa.schema([
    pa.field("invoice_id", pa.string(), nullable=False),
    pa.field("invoice_status", pa.string(), nullable=False),
    pa.field("tenant_id", pa.string(), nullable=False),
    pa.field("billing_period", pa.string(), nullable=False),
    pa.field("billing_period_start", TIMESTAMP, nullable=False),
    pa.field("billing_period_end", TIMESTAMP, nullable=False),
    pa.field("line_id", pa.string(), nullable=False),
    pa.field("line_kind", pa.string(), nullable=False),
    pa.field("usage_period", pa.string(), nullable=False),
    pa.field("charge_period_start", TIMESTAMP, nullable=False),
    pa.field("charge_period_end", TIMESTAMP, nullable=False),
    pa.field("agent_id", pa.string(), nullable=False),
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("sandbox_id", pa.string(), nullable=False),
    pa.field("host", pa.string(), nullable=False),
    pa.field("isolation", pa.string(), nullable=False),
    pa.field("template", pa.string(), nullable=False),
    pa.field("resource", pa.string(), nullable=False),
    pa.field("gpu_model", pa.string()),
    pa.field("sku_id", pa.string(), nullable=False),
    pa.field("price_id", pa.string(), nullable=False),
    pa.field("unit", pa.string(), nullable=False),
    pa.field("unit_seconds", pa.decimal128(38, UNIT_SECONDS_DECIMALS), nullable=False),
    pa.field("quantity", pa.decimal128(38, QUANTITY_DECIMALS), nullable=False),
    pa.field("unit_price", pa.decimal128(38, PRICE_DECIMALS), nullable=False),
    pa.field("list_unit_price", pa.decimal128(38, PRICE_DECIMALS), nullable=False),
    pa.field("contracted_cost", pa.decimal128(38, COST_DECIMALS), nullable=False),
    pa.field("list_cost", pa.decimal128(38, COST_DECIMALS), nullable=False),
    pa.field("billed_cost", pa.decimal128(38, CENTS), nullable=False),
    pa.field("currency", pa.string(), nullable=False),
])
"""Columns of an export row batch (the CSV and Parquet exports have exactly these)."""


def _scaled(value: Decimal) -> tuple[int, int]:
    """``value`` as ``(integer, places)`` with ``value == integer * 10**-places``."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError("value must be finite")
    number = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    if exponent >= 0:
        return number * 10**exponent, 0
    return number, -exponent


def _per_hour_ratio(price: Decimal, unit_places: int, scale: int) -> tuple[int, int]:
    """``(k, d)`` such that ``price * U / 10**unit_places / 3600 * 10**scale == k * U / d``."""
    number, places = _scaled(price)
    shift = scale - places - unit_places
    if shift >= 0:
        return number * 10**shift, SECONDS_PER_HOUR
    return number, SECONDS_PER_HOUR * 10**-shift


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


@dataclass(frozen=True, slots=True)
class _Piece:
    """A SKU in one covered usage period, over a stretch where its prices stay the same."""

    number: int
    source: SourceRange
    resource: Resource
    gpu_model: str | None
    start: int
    end: int
    rate: Rate | None
    list_rate: Rate | None
    line: int
    unpriced: str = ""


@dataclass(slots=True)
class _Line:
    """An invoice line being summed: exact integer unit-seconds in the resource's base units."""

    line_id: str
    kind: LineKind
    usage_period: str
    rate: Rate
    unit_places: int
    total: int = 0

    def cents_ratio(self) -> tuple[int, int]:
        return _per_hour_ratio(self.rate.per_hour, self.unit_places, CENTS)

    def unit_seconds(self) -> Decimal:
        return Decimal(f"{self.total}E-{self.unit_places}") if self.unit_places else Decimal(
            self.total
        )

    def invoice_line(self) -> InvoiceLine:
        unit_seconds = self.unit_seconds()
        return InvoiceLine(
            line_id=self.line_id,
            kind=self.kind,
            usage_period=self.usage_period,
            resource=self.rate.resource,
            gpu_model=self.rate.gpu_model,
            unit_price=self.rate.per_hour,
            price_id=self.rate.price_id,
            unit_seconds=unit_seconds,
            amount=to_cents(exact_mul(self.rate.per_hour, unit_seconds)),
        )


@dataclass(frozen=True, slots=True)
class _Selection:
    """The rows of one batch that fall in one piece: batch positions, clipped times, usage."""

    piece: _Piece
    rows: pa.Array
    start: pa.Array
    end: pa.Array
    unit_seconds: pa.Array


class InvoiceRater:
    """Rates one tenant's usage for one invoice, a batch at a time; see the module docstring."""

    def __init__(
        self,
        tenant_id: str,
        period: str,
        sources: Sequence[SourceRange],
        pricebook: PriceBook,
        *,
        status: InvoiceStatus = InvoiceStatus.DRAFT,
        currency: str = CURRENCY,
    ) -> None:
        self.tenant_id = tenant_id
        self.period = period
        self.sources = tuple(sources)
        self.status = status
        self.currency = currency
        self._billing_period = Period.parse(period)
        self._pricebook = pricebook
        self._pieces: list[_Piece] = []
        self._piece_columns: dict[str, pa.Array] | None = None
        self._by_sku: dict[tuple[int, Resource, str | None], list[_Piece]] = {}
        self._lines: list[_Line] = []
        self._line_index: dict[str, int] = {}
        self._seen: set[int] = set()

    # ------------------------------------------------------------------ pricing, once

    def _pieces_for(self, source_no: int, resource: Resource, model: str | None) -> list[_Piece]:
        key = (source_no, resource, model)
        found = self._by_sku.get(key)
        if found is not None:
            return found
        source = self.sources[source_no]
        usage_period = Period.parse(source.usage_period)
        begin, finish = usage_period.start, usage_period.end
        changes = self._pricebook.changes_between(
            self.tenant_id, [(resource, model)], begin, finish
        )
        points = [begin, *changes, finish]
        pieces: list[_Piece] = []
        for start, end in pairwise(points):
            try:
                rate = self._pricebook.rate_at(self.tenant_id, resource, model, start)
                list_rate = self._pricebook.list_rate_at(resource, model, start)
            except UnpricedResourceError as e:
                piece = _Piece(len(self._pieces), source, resource, model, _epoch(start),
                               _epoch(end), None, None, -1, unpriced=str(e))
            else:
                line = self._line_for(source, rate)
                piece = _Piece(len(self._pieces), source, resource, model, _epoch(start),
                               _epoch(end), rate, list_rate, line)
            self._pieces.append(piece)
            pieces.append(piece)
        self._piece_columns = None
        self._by_sku[key] = pieces
        return pieces

    def _line_for(self, source: SourceRange, rate: Rate) -> int:
        kind = line_kind(self.period, source.usage_period)
        line_id = line_id_for(kind, source.usage_period, rate)
        index = self._line_index.get(line_id)
        if index is None:
            index = len(self._lines)
            self._lines.append(
                _Line(line_id, kind, source.usage_period, rate, _UNIT_PLACES[rate.resource])
            )
            self._line_index[line_id] = index
        return index

    # ------------------------------------------------------------------ selecting rows

    def _select(self, batch: pa.RecordBatch) -> Iterator[_Selection]:
        check_usage_batch(batch)
        if batch.num_rows == 0:
            return
        seq = batch["seq"]
        start = pc.cast(batch["start"], pa.int64())
        end = pc.cast(batch["end"], pa.int64())
        for source_no, source in enumerate(self.sources):
            period = Period.parse(source.usage_period)
            covered = pc.and_(
                pc.and_(pc.greater(seq, source.after_seq), pc.less_equal(seq, source.through_seq)),
                pc.and_(pc.less(start, _epoch(period.end)), pc.greater(end, _epoch(period.start))),
            )
            if not pc.any(covered).as_py():
                continue
            for resource, model, units in self._skus(batch, covered):
                held = pc.and_(covered, pc.greater(units, 0))
                if not pc.any(held).as_py():
                    continue
                for piece in self._pieces_for(source_no, resource, model):
                    clipped_start = pc.max_element_wise(start, piece.start)
                    clipped_end = pc.min_element_wise(end, piece.end)
                    rows = pc.indices_nonzero(
                        pc.and_(held, pc.greater(clipped_end, clipped_start))
                    )
                    if len(rows) == 0:
                        continue
                    if piece.rate is None:
                        raise UnpricedResourceError(piece.unpriced)
                    piece_start = pc.take(clipped_start, rows)
                    piece_end = pc.take(clipped_end, rows)
                    seconds = pc.subtract(piece_end, piece_start)
                    try:
                        used = pc.multiply_checked(pc.take(units, rows), seconds)
                    except pa.ArrowInvalid as e:
                        raise InvalidUsageError(
                            "units times seconds of a record exceed 2**63 base units",
                            tenant_id=self.tenant_id,
                        ) from e
                    yield _Selection(piece, rows, piece_start, piece_end, used)

    @staticmethod
    def _skus(
        batch: pa.RecordBatch, covered: pa.Array
    ) -> Iterator[tuple[Resource, str | None, pa.Array]]:
        yield Resource.VCPU, None, batch["vcpu"]
        yield Resource.MEMORY, None, batch["memory_micro_gib"]
        gpus = batch["gpu_count"]
        with_gpu = pc.and_(covered, pc.greater(gpus, 0))
        models = pc.unique(pc.filter(batch["gpu_model"], with_gpu)).to_pylist()
        for model in sorted(m for m in models if m is not None):
            same = pc.fill_null(pc.equal(batch["gpu_model"], model), False)
            yield Resource.GPU, model, pc.if_else(same, gpus, 0)

    # ------------------------------------------------------------------ invoices

    def add(self, batch: pa.RecordBatch) -> None:
        """Sum a batch into the invoice lines without building export rows."""
        for selection in self._select(batch):
            line = selection.piece.line
            total = pc.sum(pc.cast(selection.unit_seconds, pa.decimal128(38, 0))).as_py()
            self._lines[line].total += int(total)
            self._seen.add(line)

    def lines(self) -> tuple[InvoiceLine, ...]:
        """The invoice lines summed so far, each rounded to the cent once, by line id."""
        return tuple(sorted((self._lines[i].invoice_line() for i in self._seen),
                            key=lambda line: line.line_id))

    def invoice(self, watermark: int) -> Invoice:
        """The draft invoice for the usage rated so far."""
        return Invoice(
            tenant_id=self.tenant_id,
            period=self.period,
            status=InvoiceStatus.DRAFT,
            lines=self.lines(),
            sources=self.sources,
            watermark=watermark,
            currency=self.currency,
        )

    def check_against(self, invoice: Invoice) -> None:
        """Raise unless the lines rated so far are exactly the invoice's (after an export)."""
        mine = {(line.line_id, line.amount, line.unit_seconds) for line in self.lines()}
        theirs = {(line.line_id, line.amount, line.unit_seconds) for line in invoice.lines}
        if mine != theirs:
            raise InvoiceIntegrityError(
                "the usage no longer rates to the invoice's lines",
                tenant_id=invoice.tenant_id, period=invoice.period,
            )

    # ------------------------------------------------------------------ export rows

    def rows(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        """Rate a batch into export rows (:data:`EXPORT_SCHEMA`), summing lines as well."""
        selections = list(self._select(batch))
        if not selections:
            return None
        numbers = [self._numbers(s) for s in selections]
        piece_no = pa.concat_arrays(
            [pa.repeat(pa.scalar(s.piece.number, pa.int32()), len(s.rows)) for s in selections]
        )
        rows = pa.concat_arrays([s.rows for s in selections])
        start = pa.concat_arrays([s.start for s in selections])
        order = pc.sort_indices(
            pa.table({
                "row": rows,
                "start": start,
                "rank": pa.concat_arrays([
                    pa.repeat(pa.scalar(_ORDER[s.piece.resource], pa.int8()), len(s.rows))
                    for s in selections
                ]),
            }),
            sort_keys=[("row", "ascending"), ("start", "ascending"), ("rank", "ascending")],
        )
        rows = pc.take(rows, order)
        piece_no = pc.take(piece_no, order)
        used = pc.take(pa.concat_arrays([s.unit_seconds for s in selections]), order)
        billed = self._billed(piece_no, used)
        columns = self._columns()
        count = len(rows)
        invoice_id = f"{self.tenant_id}/{self.period}"
        period = self._billing_period

        def constant(value: object, kind: pa.DataType = pa.string()) -> pa.Array:
            return pa.repeat(pa.scalar(value, kind), count)

        def per_piece(name: str) -> pa.Array:
            return pc.take(columns[name], piece_no)

        def per_record(name: str) -> pa.Array:
            return pc.take(batch[name], rows)

        def measured(index: int) -> pa.Array:
            return pc.take(pa.concat_arrays([n[index] for n in numbers]), order)

        arrays = {
            "invoice_id": constant(invoice_id),
            "invoice_status": constant(self.status.value),
            "tenant_id": constant(self.tenant_id),
            "billing_period": constant(self.period),
            "billing_period_start": constant(period.start, TIMESTAMP),
            "billing_period_end": constant(period.end, TIMESTAMP),
            "line_id": per_piece("line_id"),
            "line_kind": per_piece("line_kind"),
            "usage_period": per_piece("usage_period"),
            "charge_period_start": pc.take(start, order).cast(TIMESTAMP),
            "charge_period_end": pc.take(
                pa.concat_arrays([s.end for s in selections]), order).cast(TIMESTAMP),
            "agent_id": per_record("agent_id"),
            "record_id": per_record("record_id"),
            "sandbox_id": per_record("sandbox_id"),
            "host": per_record("host"),
            "isolation": per_record("isolation"),
            "template": per_record("template"),
            "resource": per_piece("resource"),
            "gpu_model": per_piece("gpu_model"),
            "sku_id": per_piece("sku_id"),
            "price_id": per_piece("price_id"),
            "unit": per_piece("unit"),
            "unit_seconds": measured(0),
            "quantity": measured(1),
            "unit_price": per_piece("unit_price"),
            "list_unit_price": per_piece("list_unit_price"),
            "contracted_cost": measured(2),
            "list_cost": measured(3),
            "billed_cost": billed,
            "currency": constant(self.currency),
        }
        return pa.RecordBatch.from_arrays(list(arrays.values()), schema=EXPORT_SCHEMA)

    def _columns(self) -> dict[str, pa.Array]:
        if self._piece_columns is None:
            pieces = self._pieces
            priced = [(p, p.rate, p.list_rate) for p in pieces]

            def text(values: list[str | None]) -> pa.Array:
                return pa.array(values, pa.string())

            def price(values: list[Decimal]) -> pa.Array:
                return pa.array(values, pa.decimal128(38, PRICE_DECIMALS))

            lines = [self._lines[p.line] if p.line >= 0 else None for p in pieces]
            self._piece_columns = {
                "line_id": text([line.line_id if line else "" for line in lines]),
                "line_kind": text([line.kind.value if line else "" for line in lines]),
                "usage_period": text([p.source.usage_period for p in pieces]),
                "resource": text([p.resource.value for p in pieces]),
                "gpu_model": text([p.gpu_model for p in pieces]),
                "sku_id": text([r.sku_id if r else "" for _, r, _ in priced]),
                "price_id": text([r.price_id if r else "" for _, r, _ in priced]),
                "unit": text([p.resource.unit for p in pieces]),
                "unit_price": price([r.per_hour if r else Decimal(0) for _, r, _ in priced]),
                "list_unit_price": price([r.per_hour if r else Decimal(0)
                                          for _, _, r in priced]),
            }
        return self._piece_columns

    @staticmethod
    def _numbers(selection: _Selection) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
        """unit_seconds, quantity, contracted_cost and list_cost of a selection, exact."""
        piece = selection.piece
        assert piece.rate is not None
        assert piece.list_rate is not None
        places = _UNIT_PLACES[piece.resource]
        ratios = (
            (UNIT_SECONDS_DECIMALS, (10 ** (UNIT_SECONDS_DECIMALS - places), 1)),
            (QUANTITY_DECIMALS, (10 ** (QUANTITY_DECIMALS - places), SECONDS_PER_HOUR)),
            (COST_DECIMALS, _per_hour_ratio(piece.rate.per_hour, places, COST_DECIMALS)),
            (COST_DECIMALS, _per_hour_ratio(piece.list_rate.per_hour, places, COST_DECIMALS)),
        )
        used = selection.unit_seconds
        out: list[pa.Array] = []
        for scale, (k, d) in ratios:
            try:
                out.append(decimal_column(round_ratio_column(used, k, d), scale))
            except pa.ArrowInvalid:
                exact = [round_ratio_int(value, k, d) for value in used.to_pylist()]
                out.append(decimal_column(exact, scale))
        return out[0], out[1], out[2], out[3]

    def _billed(self, piece_no: pa.Array, used: pa.Array) -> pa.Array:
        """Each row's cent share of its line (cumulative rounding); adds the rows to the lines."""
        line_of = pc.take(
            pa.array([p.line for p in self._pieces], pa.int32()), piece_no
        )
        positions: list[pa.Array] = []
        shares: list[pa.Array] = []
        for line_no in pc.unique(line_of).to_pylist():
            line = self._lines[line_no]
            where = pc.indices_nonzero(pc.equal(line_of, line_no))
            values = pc.take(used, where)
            k, d = line.cents_ratio()
            before = line.total
            already = round_ratio_int(before, k, d)
            try:
                running = pc.add_checked(pc.cumulative_sum_checked(values), before)
                cents = round_ratio_column(running, k, d)
                previous = pa.concat_arrays(
                    [pa.array([already], pa.int64()), cents.slice(0, len(cents) - 1)]
                )
                share = pc.subtract(cents, previous)
                line.total = before + int(pc.sum(pc.cast(values, pa.decimal128(38, 0))).as_py())
                shares.append(decimal_column(share, CENTS))
            except (pa.ArrowInvalid, OverflowError):
                exact: list[int] = []
                total, last = before, already
                for value in values.to_pylist():
                    total += value
                    now = round_ratio_int(total, k, d)
                    exact.append(now - last)
                    last = now
                line.total = total
                shares.append(decimal_column(exact, CENTS))
            positions.append(where)
            self._seen.add(line_no)
        return pc.take(pa.concat_arrays(shares), pc.sort_indices(pa.concat_arrays(positions)))
