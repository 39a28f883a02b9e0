"""Host providers: where the BYOC agent gets metal hosts (an inventory, a cloud account).

The contract is :class:`~byoc_agent.providers.base.HostProvider`; implementations live one
per module (``baremetal``, ``aws``) and are imported by name so a cloud SDK is loaded only
when that provider is used.
"""

from __future__ import annotations

from byoc_agent.providers.base import Host, HostProvider, HostSpec, HostState, Offering
from byoc_agent.providers.errors import (
    CapacityUnavailableError,
    HostNotFoundError,
    ProviderAuthError,
    QuotaExceededError,
    UnknownInstanceTypeError,
)

__all__ = [
    "CapacityUnavailableError",
    "Host",
    "HostNotFoundError",
    "HostProvider",
    "HostSpec",
    "HostState",
    "Offering",
    "ProviderAuthError",
    "QuotaExceededError",
    "UnknownInstanceTypeError",
]
