"""Cut a stream into bounded batches, and the sinks writers accept (a path or a binary file)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")

Progress = Callable[[int], None]
"""Called with the number of rows written so far, after each batch."""

Sink = Path | BinaryIO
"""Where a writer writes: a file path, or an open binary stream (an HTTP response, a pipe)."""


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Yield lists of at most ``size`` items, pulling from ``items`` lazily."""
    if size <= 0:
        raise ValueError("batch size must be positive")
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


@contextmanager
def opened(sink: Sink) -> Iterator[BinaryIO]:
    """Open a path for writing (and close it), or pass an open stream through (left open)."""
    if isinstance(sink, Path):
        with sink.open("wb") as handle:
            yield handle
    else:
        yield sink
