"""Text forms shared by the exports: UTC ``Z`` timestamps and plain-notation decimals."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

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
