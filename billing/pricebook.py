"""Rates per resource-hour: defaults for everyone, per-tenant overrides, effective dates."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from billing.errors import InvalidRateError, UnpricedResourceError
from billing.periods import is_utc

MAX_RATE_DECIMALS = 10
"""Rates carry at most this many decimal places (exports store them at this scale)."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""When the default rates took effect."""


class Resource(StrEnum):
    """What a sandbox holds and is billed for."""

    VCPU = "vcpu"
    MEMORY = "memory"
    GPU = "gpu"

    @property
    def unit(self) -> str:
        """The FOCUS-style unit the resource is priced in."""
        return _UNITS[self]


_UNITS = {Resource.VCPU: "vCPU-Hours", Resource.MEMORY: "GiB-Hours", Resource.GPU: "GPU-Hours"}


@dataclass(frozen=True, slots=True)
class Rate:
    """A price per resource-hour, in force from ``effective_from`` until superseded."""

    resource: Resource
    per_hour: Decimal
    effective_from: datetime = EPOCH
    gpu_model: str | None = None
    tenant_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.per_hour, Decimal) or not self.per_hour.is_finite():
            raise InvalidRateError("rate must be a finite Decimal")
        if self.per_hour < 0:
            raise InvalidRateError("rate must not be negative")
        exponent = self.per_hour.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -MAX_RATE_DECIMALS:
            raise InvalidRateError(f"rate has more than {MAX_RATE_DECIMALS} decimal places")
        if not is_utc(self.effective_from) or self.effective_from.microsecond:
            raise InvalidRateError("effective_from must be a whole UTC second")
        if (self.resource is Resource.GPU) != (self.gpu_model is not None):
            raise InvalidRateError("gpu_model is required for GPU rates and only for them")

    @property
    def sku_id(self) -> str:
        """A stable identifier of what is priced: ``vcpu``, ``memory`` or ``gpu-<model>``."""
        return f"gpu-{self.gpu_model}" if self.gpu_model else self.resource.value

    @property
    def price_id(self) -> str:
        """A stable identifier of this price: SKU, audience and effective second."""
        audience = f"tenant:{self.tenant_id}" if self.tenant_id else "default"
        stamp = self.effective_from.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.sku_id}/{audience}/{stamp}"


DEFAULT_RATES = (
    Rate(Resource.VCPU, Decimal("0.01667")),
    Rate(Resource.MEMORY, Decimal("0.00833")),
    Rate(Resource.GPU, Decimal("2.74"), gpu_model="H100"),
)
"""List prices: per vCPU-hour, per GiB-hour and per H100 GPU-hour, in USD."""

_Sku = tuple[Resource, str | None]


class PriceBook:
    """Immutable set of rates; a tenant's override in force wins over the default in force."""

    __slots__ = ("_rates",)

    def __init__(self, rates: Iterable[Rate] = DEFAULT_RATES) -> None:
        by_key: dict[tuple[str | None, _Sku], list[Rate]] = {}
        for rate in rates:
            by_key.setdefault((rate.tenant_id, (rate.resource, rate.gpu_model)), []).append(rate)
        for key, listed in by_key.items():
            listed.sort(key=lambda r: r.effective_from)
            stamps = [r.effective_from for r in listed]
            if len(set(stamps)) != len(stamps):
                raise InvalidRateError(f"two rates for {key} take effect at the same second")
        self._rates = {k: tuple(v) for k, v in by_key.items()}

    def with_rate(self, rate: Rate) -> PriceBook:
        """Return a new price book that also holds ``rate``."""
        return PriceBook([*self.rates(), rate])

    def rates(self) -> list[Rate]:
        """Every rate, defaults and overrides."""
        return [r for listed in self._rates.values() for r in listed]

    def list_rate_at(self, resource: Resource, gpu_model: str | None, at: datetime) -> Rate:
        """Return the default (list) rate in force at ``at``."""
        rate = _in_force(self._rates.get((None, (resource, gpu_model)), ()), at)
        if rate is None:
            raise UnpricedResourceError(
                f"no list rate for {resource.value} {gpu_model or ''} at {at.isoformat()}".strip()
            )
        return rate

    def rate_at(
        self, tenant_id: str, resource: Resource, gpu_model: str | None, at: datetime
    ) -> Rate:
        """Return the rate a tenant pays at ``at``: its override in force, else the list rate."""
        override = _in_force(self._rates.get((tenant_id, (resource, gpu_model)), ()), at)
        if override is not None:
            return override
        return self.list_rate_at(resource, gpu_model, at)

    def changes_between(
        self, tenant_id: str, skus: Iterable[_Sku], start: datetime, end: datetime
    ) -> list[datetime]:
        """Return the instants strictly inside ``(start, end)`` when a relevant rate changes."""
        found: set[datetime] = set()
        for sku in skus:
            for audience in (None, tenant_id):
                for rate in self._rates.get((audience, sku), ()):
                    if start < rate.effective_from < end:
                        found.add(rate.effective_from)
        return sorted(found)


def _in_force(rates: tuple[Rate, ...], at: datetime) -> Rate | None:
    current = None
    for rate in rates:
        if rate.effective_from <= at:
            current = rate
        else:
            break
    return current
