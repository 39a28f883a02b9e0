"""A stacked bar chart as plain SVG geometry, drawn by a template: no JavaScript.

One bar per UTC day of the period, one segment per tenant. Colours come from CSS classes
(``series-N``), so the strict CSP (no inline styles) holds; each segment has a ``<title>``
and the page shows the same numbers as a table for screen readers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from control_plane.console.queries import DailyUsage

WIDTH = 720
HEIGHT = 240
LEFT = 100
BOTTOM = 24
TOP = 8
SERIES = 8


@dataclass(frozen=True, slots=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    series: int
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class DayLabel:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Legend:
    series: int
    label: str


@dataclass(frozen=True, slots=True)
class BarChart:
    title: str
    width: int
    height: int
    left: int
    plot_bottom: float
    segments: tuple[Segment, ...]
    ticks: tuple[Tick, ...]
    days: tuple[DayLabel, ...]
    legend: tuple[Legend, ...]

    @property
    def empty(self) -> bool:
        return not self.segments


def _nice_max(value: Decimal) -> Decimal:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    for step in (1, 2, 5, 10):
        candidate = Decimal(step).scaleb(exponent)
        if candidate >= value:
            return candidate
    return Decimal(10).scaleb(exponent)


def stacked_by_day(
    title: str,
    rows: Sequence[DailyUsage],
    *,
    first_day: date,
    days: int,
    value: Callable[[DailyUsage], Decimal],
    fmt: Callable[[Decimal, int], str],
    names: dict[str, str],
) -> BarChart:
    """``fmt(value, decimals)`` writes a number; decimals grow as the values shrink, so a
    month of a few vCPU-seconds still reads as numbers, not as a column of zeros."""
    tenants = sorted({r.tenant_id for r in rows})
    series = {t: i % SERIES for i, t in enumerate(tenants)}
    totals: dict[date, Decimal] = {}
    for r in rows:
        totals[r.day] = totals.get(r.day, Decimal(0)) + value(r)
    top = _nice_max(max(totals.values(), default=Decimal(0)))
    decimals = min(max(2, 2 - top.adjusted()), 8)
    plot_h = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / max(days, 1)
    bar_w = max(slot * 0.7, 1.0)
    stacked: dict[date, float] = {}
    segments = []
    for r in sorted(rows, key=lambda r: (r.day, tenants.index(r.tenant_id))):
        v = value(r)
        if v <= 0:
            continue
        h = float(v / top) * plot_h
        base = stacked.get(r.day, 0.0)
        stacked[r.day] = base + h
        x = LEFT + (r.day - first_day).days * slot + (slot - bar_w) / 2
        name = names.get(r.tenant_id, r.tenant_id)
        segments.append(
            Segment(
                x=round(x, 2),
                y=round(TOP + plot_h - base - h, 2),
                width=round(bar_w, 2),
                height=round(h, 2),
                series=series[r.tenant_id],
                title=f"{r.day.isoformat()} {name}: {fmt(v, decimals + 2)}",
            )
        )
    ticks = tuple(
        Tick(y=round(TOP + plot_h - plot_h * i / 4, 2), label=fmt(top * i / 4, decimals))
        for i in range(5)
    )
    labels = []
    for i in range(days):
        d = first_day + timedelta(days=i)
        if d.day == 1 or d.day % 5 == 0:
            labels.append(DayLabel(x=round(LEFT + i * slot + slot / 2, 2), label=str(d.day)))
    legend = tuple(Legend(series[t], names.get(t, t)) for t in tenants)
    return BarChart(
        title=title,
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        plot_bottom=TOP + plot_h,
        segments=tuple(segments),
        ticks=ticks,
        days=tuple(labels),
        legend=legend,
    )
