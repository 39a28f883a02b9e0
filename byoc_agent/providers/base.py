"""The ``HostProvider`` contract: how the BYOC agent gets metal hosts in the customer's cloud.

Host lifecycle as a provider reports it::

      provision(spec)            launched, booting             readiness check passes
    ──────────────► REQUESTED ──────────────► PROVISIONING ──────────────────────► READY
                        │                          │                                 │
                        │ terminate()              │ terminate()                     │ terminate()
                        ▼                          ▼                                 ▼
                    TERMINATED ◄──────────────── DRAINING ◄──────────────────────────┘
                                  host gone         shutting down / being released

TERMINATED never changes again. ``provision`` is idempotent by ``HostSpec.client_token``:
the same token returns the same host (even a terminated one) and never launches a second;
``terminate`` is idempotent too. A provider may skip states it cannot observe (a cloud that
answers "running" goes straight to READY; an inventory host is claimed and checked at once).

Why a ``Protocol``: providers wrap unrelated SDKs (boto3, google-cloud-compute,
azure-mgmt-compute, an inventory file) that must not share a base class's hidden state; the
contract suite in ``tests/integration/providers`` checks behaviour instead. Blocking SDK
calls run in ``asyncio.to_thread``.

Errors (``providers/errors.py``): every method may raise ``ProviderAuthError`` (credentials
refused or a permission missing) and ``RetryableError`` (the API unreachable, throttled or
failing); the method docstrings name the rest. Messages say what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

from byoc_agent.protocol.errors import InvalidArgumentError

# Tags every provider puts on the hosts it launches (and filters on).
TAG_TENANT = "corral:tenant"
TAG_AGENT = "corral:agent"
TAG_MANAGED_BY = "corral:managed-by"
TAG_CLIENT_TOKEN = "corral:client-token"  # noqa: S105 (a tag name, not a secret)
# On a Host only, never asked for: "true" when the host is the agent's own machine (a
# bare-metal inventory entry with ``local = true``); absent otherwise.
TAG_LOCAL = "corral:local"
LOCAL = "true"
MANAGED_BY = "corral"


class HostState(StrEnum):
    REQUESTED = "requested"
    PROVISIONING = "provisioning"
    READY = "ready"
    DRAINING = "draining"
    TERMINATED = "terminated"


ALLOWED_TRANSITIONS: Mapping[HostState, frozenset[HostState]] = {
    HostState.REQUESTED: frozenset(
        {HostState.PROVISIONING, HostState.READY, HostState.DRAINING, HostState.TERMINATED}
    ),
    HostState.PROVISIONING: frozenset({HostState.READY, HostState.DRAINING, HostState.TERMINATED}),
    HostState.READY: frozenset({HostState.DRAINING, HostState.TERMINATED}),
    HostState.DRAINING: frozenset({HostState.TERMINATED}),
    HostState.TERMINATED: frozenset(),
}


def can_transition(src: HostState, dst: HostState) -> bool:
    return dst in ALLOWED_TRANSITIONS[src]


def _frozen(tags: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(tags))


@dataclass(frozen=True, slots=True)
class Offering:
    """One instance type a provider can launch, and what a host of that type has."""

    instance_type: str
    vcpu: int
    memory_mib: int
    gpu_count: int = 0
    gpu_model: str | None = None
    bare_metal: bool = False
    # /dev/kvm usable on the host (microVM runtimes need it).
    kvm: bool = False


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A request for one host. ``client_token`` makes ``provision`` idempotent.

    ``user_data``: the document the host's first boot hands to cloud-init (text, usually
    ``#cloud-config`` or a script), delivered through the cloud's own channel: EC2
    ``UserData``, the GCE metadata item ``user-data``, Azure ``osProfile.customData``.
    Each cloud limits its size (``InvalidArgumentError`` before any call when it is too
    large); a bare-metal inventory cannot take it at all. ``None`` or ``""``: none. The
    first provision of a token decides it: a retry returns that host whatever it carries.
    Left out of ``repr`` because it may hold a bootstrap secret.
    """

    tenant_id: str
    agent_id: str
    instance_type: str
    client_token: str
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    user_data: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", _frozen(self.tags))
        object.__setattr__(self, "security_group_ids", tuple(self.security_group_ids))
        if self.user_data is not None and not isinstance(self.user_data, str):
            raise TypeError(f"HostSpec.user_data must be str or None, not {type(self.user_data)}")

    def all_tags(self) -> dict[str, str]:
        """The caller's tags plus Corral's own, which win on a clash (``corral:local`` is
        the provider's to say, so a caller's is dropped)."""
        return {
            **{k: v for k, v in self.tags.items() if k != TAG_LOCAL},
            TAG_TENANT: self.tenant_id,
            TAG_AGENT: self.agent_id,
            TAG_MANAGED_BY: MANAGED_BY,
            TAG_CLIENT_TOKEN: self.client_token,
        }


def user_data_too_large(
    spec: HostSpec, *, size: int, limit: int, what: str
) -> InvalidArgumentError:
    """The error for user data over a cloud's limit (``size`` and ``limit`` in bytes)."""
    return InvalidArgumentError(
        f"user data is {size} bytes but {what} takes at most {limit}; make the cloud-init "
        "document smaller (have the host fetch large files at boot instead of embedding "
        "them)",
        tenant_id=spec.tenant_id,
        instance_type=spec.instance_type,
    )


@dataclass(frozen=True, slots=True)
class Host:
    """A host as the provider last saw it. ``private_ip`` is None until one is assigned.

    ``tags`` are the launch's (``HostSpec.all_tags``) plus, for the agent's own machine,
    ``corral:local=true`` (:data:`TAG_LOCAL`)."""

    host_id: str
    instance_type: str
    state: HostState
    private_ip: str | None
    tags: Mapping[str, str]
    launched_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", _frozen(self.tags))


class HostProvider(Protocol):
    """A source of hosts. All methods are safe to call concurrently for different hosts."""

    name: str

    async def list_offerings(self) -> list[Offering]:
        """The instance types this provider can launch here, with their shape."""
        ...

    async def provision(self, spec: HostSpec) -> Host:
        """Launch (or claim) one host; returns without waiting for READY.

        Idempotent by ``spec.client_token``, across restarts too. Raises
        QuotaExceededError (permanent until the quota is raised), CapacityUnavailableError
        (retryable), UnknownInstanceTypeError, InvalidArgumentError (e.g. ``user_data``
        larger than the cloud takes, or any ``user_data`` for bare metal); none of them
        leaves a host behind.
        """
        ...

    async def describe(self, host_id: str) -> Host:
        """The host's current state (TERMINATED once given back). Raises HostNotFoundError
        for an id this provider never issued or a machine Corral did not launch."""
        ...

    async def list_by_tag(self, key: str, value: str) -> list[Host]:
        """Hosts carrying tag ``key=value`` that are not yet TERMINATED."""
        ...

    async def terminate(self, host_id: str) -> None:
        """Give the host back. Idempotent; raises HostNotFoundError for an unknown id."""
        ...
