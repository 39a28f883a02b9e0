"""Host providers: where the BYOC agent gets metal hosts (an inventory, a cloud account).

The contract is :class:`~byoc_agent.providers.base.HostProvider`; implementations live one
per module (``baremetal``, ``aws``, ``gcp``, ``azure``) and are imported by name so a cloud
SDK is loaded only when that provider is used. :func:`unavailable` says why a provider
cannot be used here (its SDK is not installed: ``pip install 'corral[gcp]'``).
"""

from __future__ import annotations

import importlib.util

from byoc_agent.providers.base import Host, HostProvider, HostSpec, HostState, Offering
from byoc_agent.providers.errors import (
    CapacityUnavailableError,
    HostNotFoundError,
    ProviderAuthError,
    QuotaExceededError,
    UnknownInstanceTypeError,
)

# name -> (module, class, the SDK module it needs, the extra that installs it)
PROVIDERS: dict[str, tuple[str, str, str | None, str | None]] = {
    "baremetal": ("byoc_agent.providers.baremetal", "BareMetalProvider", None, None),
    "aws": ("byoc_agent.providers.aws", "AwsProvider", "boto3", "aws"),
    "gcp": ("byoc_agent.providers.gcp", "GcpProvider", "google.cloud.compute_v1", "gcp"),
    "azure": ("byoc_agent.providers.azure", "AzureProvider", "azure.mgmt.compute", "azure"),
}


def unavailable(name: str) -> str | None:
    """Why provider ``name`` cannot be used in this installation, or None if it can."""
    if name not in PROVIDERS:
        return f"unknown host provider {name!r}; choose one of {', '.join(sorted(PROVIDERS))}"
    _, _, sdk, extra = PROVIDERS[name]
    if sdk is None:
        return None
    try:
        found = importlib.util.find_spec(sdk)
    except ModuleNotFoundError:  # a parent package is missing
        found = None
    if found is None:
        return f"the {name} provider needs its SDK: pip install 'corral[{extra}]'"
    return None


__all__ = [
    "PROVIDERS",
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
    "unavailable",
]
