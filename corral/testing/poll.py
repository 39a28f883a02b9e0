"""Waiting for a condition in a test: poll it until a deadline, never sleep a fixed time.

A fixed sleep is either too short on a loaded machine (a flaky test) or too long everywhere
(a slow one). :func:`eventually` asks again every ``every_s`` until the answer is true and
returns it, so a test waits exactly as long as it must, up to a deadline that can be generous;
:func:`eventually_sync` is the same for blocking code.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    within_s: float = ...,
    every_s: float = ...,
    what: str = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T], *, within_s: float = ..., every_s: float = ..., what: str = ...
) -> T: ...


async def eventually(
    probe: Callable[[], object],
    *,
    within_s: float = 30.0,
    every_s: float = 0.05,
    what: str = "",
) -> object:
    """Call ``probe`` (a function or a coroutine function) until it returns something true;
    return that. Raises AssertionError naming ``what`` once ``within_s`` seconds have passed."""
    deadline = time.monotonic() + within_s
    while True:
        got = probe()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what or probe, within_s, got))
        await asyncio.sleep(every_s)


def eventually_sync(
    probe: Callable[[], T], *, within_s: float = 30.0, every_s: float = 0.05, what: str = ""
) -> T:
    """:func:`eventually` for blocking code (a test that drives a server from a thread)."""
    deadline = time.monotonic() + within_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what or probe, within_s, got))
        time.sleep(every_s)


def _timed_out(what: object, within_s: float, last: object) -> str:
    return f"timed out after {within_s:g} s waiting for {what} (last answer: {last!r})"
