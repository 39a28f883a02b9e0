"""Per-tenant token buckets: sandbox creation is rate limited (429 with Retry-After).

Each tenant has a bucket of ``burst`` tokens refilled at ``rate_per_s``; a create takes one.
The buckets live in this process's memory: right for one control-plane process. Behind
several replicas each enforces its own bucket, so a tenant gets up to N times the rate
(see ADR 0020). Idle tenants' buckets are dropped so memory stays bounded.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.errors import RateLimitedError

_MAX_TENANTS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TenantRateLimiter:
    """``take(tenant_id)`` spends one token or raises :class:`RateLimitedError`."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        what: str = "sandbox creation",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s < 0 or burst < 0:
            raise ValueError("rate_per_s and burst must not be negative")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._what = what
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0 and self.burst > 0

    def take(self, tenant_id: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(tenant_id)
            if bucket is None:
                if len(self._buckets) >= _MAX_TENANTS:
                    self._forget_full(now)
                bucket = self._buckets[tenant_id] = _Bucket(float(self.burst), now)
            else:
                bucket.tokens = min(
                    float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate_per_s
                )
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait_s = (1.0 - bucket.tokens) / self.rate_per_s
        raise RateLimitedError(
            f"{self._what} is limited to {self.rate_per_s:g}/s (burst {self.burst}) per tenant",
            retry_after_s=max(1, math.ceil(wait_s)),
            tenant_id=tenant_id,
        )

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely: they behave like new ones."""
        full = [
            t
            for t, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate_per_s >= self.burst
        ]
        for tenant_id in full:
            del self._buckets[tenant_id]
