"""Cut a stream of rows into bounded batches so that exports hold one batch at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")

DEFAULT_BATCH_SIZE = 10_000

Progress = Callable[[int], None]
"""Called with the number of rows written so far, after each batch."""


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Yield lists of at most ``size`` items, pulling from ``items`` lazily."""
    if size <= 0:
        raise ValueError("batch size must be positive")
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
