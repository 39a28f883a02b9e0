"""Checks of a request against the configured :class:`~control_plane.settings.Limits`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.runtimes.base import parse_egress
from control_plane.api.schemas import MAX_METADATA_VALUE, METADATA_KEY_PATTERN
from control_plane.settings import Limits

_METADATA_KEY = re.compile(METADATA_KEY_PATTERN)


def check_range(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgumentError(f"{field} must be between {low} and {high}", field=field)


def check_cpu(limits: Limits, cpu: int) -> None:
    check_range("cpu", cpu, 1, limits.cpu_max)


def check_memory(limits: Limits, memory_mb: int) -> None:
    check_range("memory_mb", memory_mb, limits.memory_mb_min, limits.memory_mb_max)


def check_timeout(limits: Limits, timeout_s: int) -> None:
    check_range("timeout_s", timeout_s, limits.timeout_s_min, limits.timeout_s_max)


def check_metadata(limits: Limits, metadata: Mapping[str, str]) -> None:
    if len(metadata) > limits.metadata_max_keys:
        raise InvalidArgumentError(
            f"metadata may have at most {limits.metadata_max_keys} keys", field="metadata"
        )


def check_egress(entries: Iterable[str]) -> tuple[str, ...]:
    """The egress list normalized, or a 400 naming the entry (the agent's own rules, so a
    list the API accepts is one the agent can parse; its ceiling is the agent's to apply)."""
    try:
        return tuple(str(rule) for rule in parse_egress(entries))
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"egress: {e.message}", field="egress") from None


def metadata_filters(query: Mapping[str, str]) -> dict[str, str]:
    """``metadata.<key>=<value>`` query parameters → ``{key: value}`` (validated)."""
    out: dict[str, str] = {}
    for name, value in query.items():
        if not name.startswith("metadata."):
            continue
        key = name[len("metadata.") :]
        if not _METADATA_KEY.match(key) or len(value) > MAX_METADATA_VALUE:
            raise InvalidArgumentError(f"bad metadata filter {name[:80]!r}", field=name[:80])
        out[key] = value
    if len(out) > 16:
        raise InvalidArgumentError("at most 16 metadata filters", field="metadata")
    return out
