"""Cancellation that survives nats-py.

nats-py catches ``asyncio.CancelledError`` in places (flush, drain, reconnect) and can turn
a cancellation into a ``nats.errors.TimeoutError``. A loop that only relies on the
exception to stop can then run on after its task was cancelled, and whoever awaits the
task waits forever. Every NATS loop on both sides calls :func:`raise_if_cancelling` where
nats-py may have eaten the cancellation.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task has a cancellation pending."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
