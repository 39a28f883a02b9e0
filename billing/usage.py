"""Usage records as the agent's meter reports them, and an idempotent in-memory ledger."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from billing.errors import InvalidUsageError, UsageConflictError
from billing.periods import Period, is_utc

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information

MAX_MEMORY_DECIMALS = 6
"""Memory sizes carry at most this many decimal places of GiB (about 1 KiB)."""


@dataclass(frozen=True, slots=True, order=True)
class UsageKey:
    """The dedupe key of a usage record: unambiguous across tenants and agents."""

    tenant_id: str
    agent_id: str
    record_id: str


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one sandbox held, in whole seconds, between ``start`` and ``end`` (UTC)."""

    tenant_id: str
    agent_id: str
    record_id: str
    sandbox_id: str
    start: datetime
    end: datetime
    vcpu: int
    memory_gib: Decimal
    gpu_count: int
    gpu_model: str | None
    isolation: str
    template: str
    host: str

    def __post_init__(self) -> None:
        for name in ("tenant_id", "agent_id", "record_id", "sandbox_id", "isolation",
                     "template", "host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                self._reject(f"{name} must be a non-empty string")
        for name in ("start", "end"):
            moment = getattr(self, name)
            if not isinstance(moment, datetime) or not is_utc(moment):
                self._reject(f"{name} must be a timezone-aware UTC datetime")
            if moment.microsecond:
                self._reject(f"{name} must fall on a whole second")
        if self.end <= self.start:
            self._reject("end must be after start")
        for name in ("vcpu", "gpu_count"):
            count = getattr(self, name)
            if type(count) is not int or count < 0:
                self._reject(f"{name} must be a non-negative int")
        if not isinstance(self.memory_gib, Decimal) or not self.memory_gib.is_finite():
            self._reject("memory_gib must be a finite Decimal")
        if self.memory_gib < 0:
            self._reject("memory_gib must not be negative")
        exponent = self.memory_gib.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -MAX_MEMORY_DECIMALS:
            self._reject(f"memory_gib has more than {MAX_MEMORY_DECIMALS} decimal places")
        if self.gpu_count and not self.gpu_model:
            self._reject("gpu_model is required when gpu_count > 0")
        if not self.gpu_count and self.gpu_model is not None:
            self._reject("gpu_model must be None when gpu_count is 0")

    def _reject(self, reason: str) -> None:
        raise InvalidUsageError(
            f"invalid usage record: {reason}",
            tenant_id=self.tenant_id if isinstance(self.tenant_id, str) else None,
            record_id=self.record_id if isinstance(self.record_id, str) else None,
        )

    @property
    def key(self) -> UsageKey:
        """The dedupe key ``(tenant_id, agent_id, record_id)``."""
        return UsageKey(self.tenant_id, self.agent_id, self.record_id)

    @property
    def seconds(self) -> int:
        """Whole seconds between start and end."""
        return int((self.end - self.start).total_seconds())


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A record as the ledger holds it: with the order in which it first arrived."""

    seq: int
    record: UsageRecord


class UsageSource(Protocol):
    """Where drafts and exports read a tenant's usage from, streamed in arrival order.

    A Protocol so that the in-memory :class:`UsageLedger` (tests, small tools) and the
    control plane's database reader (bounded memory, server-side cursor) are interchangeable.
    """

    def watermark_for(self, tenant_id: str) -> int:
        """The sequence number of the tenant's newest record (0 when it has none)."""
        ...

    def batches(self, tenant_id: str, periods: Sequence[Period]) -> Iterable[pa.RecordBatch]:
        """The tenant's records as :data:`billing.columns.USAGE_SCHEMA` batches, by ``seq``.

        Records that overlap none of ``periods`` may be left out (or not: rating skips them).
        """
        ...


class UsageLedger:
    """In-memory, idempotent store of usage records; late and out-of-order records are fine.

    Each new record gets the next arrival sequence number (1, 2, ...). Invoices remember
    the highest sequence they have seen (a watermark), which is how usage that arrives
    after a period was finalized is told apart and billed as an adjustment.
    """

    def __init__(self) -> None:
        self._entries: dict[UsageKey, LedgerEntry] = {}
        self._by_tenant: dict[str, list[LedgerEntry]] = {}

    def ingest(self, record: UsageRecord) -> bool:
        """Store a record; return True if it was new, False for an identical redelivery."""
        existing = self._entries.get(record.key)
        if existing is not None:
            if existing.record != record:
                raise UsageConflictError(
                    "usage record reuses a dedupe key with different content",
                    tenant_id=record.tenant_id,
                    agent_id=record.agent_id,
                    record_id=record.record_id,
                )
            return False
        entry = LedgerEntry(len(self._entries) + 1, record)
        self._entries[record.key] = entry
        self._by_tenant.setdefault(record.tenant_id, []).append(entry)
        return True

    @property
    def watermark(self) -> int:
        """Sequence number of the newest record (0 when empty)."""
        return len(self._entries)

    def entries(self, tenant_id: str) -> Iterator[LedgerEntry]:
        """Iterate one tenant's entries in arrival order."""
        return iter(self._by_tenant.get(tenant_id, []))

    def watermark_for(self, tenant_id: str) -> int:
        """The ledger-wide watermark: sequence numbers are shared by every tenant here."""
        return self.watermark

    def batches(self, tenant_id: str, periods: Sequence[Period] = ()) -> Iterator[pa.RecordBatch]:
        """One tenant's entries as usage batches, in arrival order."""
        from billing.columns import entries_to_batches

        return entries_to_batches(self.entries(tenant_id))

    def tenants(self) -> list[str]:
        """Return the tenants that have usage, sorted."""
        return sorted(self._by_tenant)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
