"""Calendar months in UTC, the period an invoice covers, named ``YYYY-MM``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from billing.errors import InvalidPeriodError

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def is_utc(moment: datetime) -> bool:
    """Return whether a datetime is timezone-aware with a zero UTC offset."""
    return moment.tzinfo is not None and moment.utcoffset() == timedelta(0)


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """One calendar month in UTC."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12 or not 1970 <= self.year <= 9998:
            raise InvalidPeriodError(f"not a billing period: {self.year}-{self.month}")

    @classmethod
    def parse(cls, text: str) -> Period:
        """Parse ``YYYY-MM``."""
        match = _PERIOD.match(text)
        if match is None:
            raise InvalidPeriodError(f"not a billing period (want YYYY-MM): {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, moment: datetime) -> Period:
        """Return the period a UTC instant falls in."""
        utc = moment.astimezone(UTC)
        return cls(utc.year, utc.month)

    @property
    def start(self) -> datetime:
        """First instant of the month, UTC."""
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """First instant of the next month, UTC (exclusive end)."""
        return self.next().start

    def next(self) -> Period:
        """Return the following month."""
        if self.month == 12:
            return Period(self.year + 1, 1)
        return Period(self.year, self.month + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"
