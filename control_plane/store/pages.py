"""Keyset pagination over time-ordered ids."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_PAGE = 200


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of records; ``last_id`` is set when another page follows."""

    items: tuple[T, ...]
    last_id: str | None


def page_of(rows: Sequence[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    """Build a page from up to ``limit + 1`` fetched rows (the extra one means "more")."""
    items = tuple(rows[:limit])
    more = len(rows) > limit and bool(items)
    return Page(items=items, last_id=key(items[-1]) if more else None)
