"""Futures that an HTTP request awaits until the agent's result for its job arrives."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from byoc_agent.protocol.messages import JobStatus


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job_id: str
    status: JobStatus
    error_code: str | None = None
    error_message: str | None = None


class JobWaiters:
    """Job id → future; resolved by the inbox after the result is committed."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[JobOutcome]] = {}

    def register(self, job_id: str) -> asyncio.Future[JobOutcome]:
        future: asyncio.Future[JobOutcome] = asyncio.get_running_loop().create_future()
        self._futures[job_id] = future
        return future

    def resolve(self, outcome: JobOutcome) -> None:
        future = self._futures.get(outcome.job_id)
        if future is not None and not future.done():
            future.set_result(outcome)

    def discard(self, job_id: str) -> None:
        self._futures.pop(job_id, None)
