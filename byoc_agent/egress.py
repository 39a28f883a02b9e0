"""The agent's egress ceiling: which destinations a sandbox may ask to reach (ADR 0027).

A create job may carry an egress allow-list (``CreateSandboxBody.egress``). The agent grants
it only when every entry is in its operator's ceiling (``CORRAL_AGENT_MICROVM_EGRESS``) and
none is an address no sandbox may reach whatever the ceiling says:

- ``0.0.0.0/8`` (this host), ``127.0.0.0/8`` (the host's loopback services: NATS, the
  agent's data plane) and ``169.254.0.0/16`` (link-local, with the cloud metadata service
  at ``169.254.169.254``) — QEMU's relay connects from the host's network namespace, so
  these would be the host's own;
- the agent's own data-plane address (any port).

The control plane checks the shape of each entry; the ceiling is the customer's and only
the agent applies it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.runtimes.base import EgressRule, parse_egress

ALWAYS_REFUSED: tuple[ipaddress.IPv4Network, ...] = (
    ipaddress.IPv4Network("0.0.0.0/8"),
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv4Network("169.254.0.0/16"),
)


@dataclass(frozen=True, slots=True)
class EgressCeiling:
    """The destinations this agent's sandboxes may ask for, and the agent's own addresses."""

    allowed: frozenset[EgressRule] = frozenset()
    own_addresses: frozenset[ipaddress.IPv4Address] = frozenset()

    @classmethod
    def of(cls, allowed: Iterable[str], *, own_hosts: Iterable[str | None] = ()) -> EgressCeiling:
        """``allowed`` as ``a.b.c.d:port`` entries; ``own_hosts`` are where the agent's data
        plane listens or is reached (IPv4 literals count; names are not resolved)."""
        own: set[ipaddress.IPv4Address] = set()
        for host in own_hosts:
            try:
                own.add(ipaddress.IPv4Address(host or ""))
            except ValueError:
                continue
        return cls(frozenset(parse_egress(allowed)), frozenset(own))

    def _refusal(self, rule: EgressRule) -> str | None:
        address = ipaddress.IPv4Address(rule.host)
        if any(address in net for net in ALWAYS_REFUSED):
            return (
                f"egress entry '{rule}' is a loopback, link-local or this-host address, which "
                "no sandbox may reach (the host's own services and the cloud metadata "
                "service live there)"
            )
        if address in self.own_addresses:
            return (
                f"egress entry '{rule}' is this agent's own data-plane address, which no "
                "sandbox may reach"
            )
        if rule not in self.allowed:
            return (
                f"egress entry '{rule}' is not allowed on this agent: the agent operator must "
                "allow it (add it to CORRAL_AGENT_MICROVM_EGRESS)"
            )
        return None

    def never_granted(self) -> list[EgressRule]:
        """Ceiling entries that are refused anyway (worth a warning when the agent starts)."""
        return sorted(rule for rule in self.allowed if self._refusal(rule) is not None)

    def grant(self, entries: Iterable[str], **fields: str | None) -> tuple[str, ...]:
        """The requested list, normalized, if every entry is within the ceiling; else
        InvalidArgumentError naming the first entry that is not (``fields``: job_id, ...)."""
        rules = parse_egress(entries)
        for rule in rules:
            refusal = self._refusal(rule)
            if refusal is not None:
                raise InvalidArgumentError(refusal, field="egress", **fields)
        return tuple(str(rule) for rule in rules)
