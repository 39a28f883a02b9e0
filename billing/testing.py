"""Helpers for tests of code that uses billing: well-formed usage records with few arguments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing.usage import UsageRecord


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """Return a UTC datetime."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def usage_record(
    record_id: str = "r-1",
    *,
    tenant_id: str = "t-acme",
    agent_id: str = "a-1",
    sandbox_id: str = "sbx-1",
    start: datetime | None = None,
    seconds: int = 3600,
    vcpu: int = 1,
    memory_gib: Decimal | str = "0",
    gpu_count: int = 0,
    gpu_model: str | None = None,
    isolation: str = "gvisor",
    template: str = "base",
    host: str = "host-1",
) -> UsageRecord:
    """Return a valid usage record; by default one vCPU for one hour from 2025-01-10 UTC."""
    begin = start if start is not None else utc(2025, 1, 10)
    return UsageRecord(
        tenant_id=tenant_id,
        agent_id=agent_id,
        record_id=record_id,
        sandbox_id=sandbox_id,
        start=begin,
        end=begin + timedelta(seconds=seconds),
        vcpu=vcpu,
        memory_gib=Decimal(memory_gib),
        gpu_count=gpu_count,
        gpu_model=gpu_model,
        isolation=isolation,
        template=template,
        host=host,
    )
