"""hostd's warm pool: a managed host keeps sandboxes pre-started for its manager's creates.

The agent's own warm pool (ADR 0025) serves sandboxes that run on the agent's machine; on
managed hosts (ADR 0028) each hostd runs the same :class:`~byoc_agent.warm_pool.WarmPool`
over its local runtime, configured by ``warm_pool`` in ``hostd.json`` (the agent's
``CORRAL_AGENT_HOST_WORKER_WARM_POOL``, sent in the host's user data). A create that
matches a ready member is answered with the member, adopted as the requested sandbox (so
the handle names the member's runtime id); otherwise members give way (``make_room``) and
the sandbox starts cold.

The pool fills only room no sandbox of this host uses: hostd records the size of every
sandbox it starts in ``<data dir>/sandboxes.json`` (so the record survives a hostd
restart) and offers the pool the machine's cpu and memory minus those. The manager's fleet
places sandboxes without seeing the members; that is safe because every create evicts
members before it starts cold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import structlog

from byoc_agent.runtimes.base import Runtime
from byoc_agent.warm_pool import WarmPool, parse_pool_sizes

log = structlog.get_logger(__name__)


class HostSandboxes:
    """The cpu and memory of each sandbox this hostd started, by runtime id, on disk."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._sizes: dict[str, tuple[int, int]] = {}
        try:
            raw = json.loads(path.read_text())
            self._sizes = {str(k): (int(v[0]), int(v[1])) for k, v in raw.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, IndexError, AttributeError) as e:
            log.warning("host_sandboxes_unreadable", path=str(path), error=str(e))

    def add(self, sandbox_id: str, cpu: int, memory_mb: int) -> None:
        self._sizes[sandbox_id] = (cpu, memory_mb)
        self._save()

    def remove(self, sandbox_id: str) -> None:
        if self._sizes.pop(sandbox_id, None) is not None:
            self._save()

    def ids(self) -> set[str]:
        return set(self._sizes)

    def used(self) -> tuple[int, int]:
        return (sum(c for c, _ in self._sizes.values()),
                sum(m for _, m in self._sizes.values()))  # fmt: skip

    def _save(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: list(v) for k, v in self._sizes.items()}))
        tmp.replace(self._path)


def host_pool(
    runtime: Runtime,
    sizes_text: str,
    *,
    data_dir: Path,
    tenant_id: str,
    machine: Callable[[], tuple[int, int]],
    sandboxes: HostSandboxes,
) -> WarmPool | None:
    """The host's pool (None when ``sizes_text`` keeps nothing). ``machine``: the host's
    cpu and memory in MiB."""
    sizes = parse_pool_sizes(sizes_text)
    if not any(n > 0 for n in sizes.values()):
        return None

    def free() -> tuple[int, int]:
        cpu, memory_mb = machine()
        used_cpu, used_mem = sandboxes.used()
        return cpu - used_cpu, memory_mb - used_mem

    return WarmPool(runtime, sizes, tenant_id=tenant_id or "host", free_capacity=free,
                    ledger=data_dir / "warm-pool.json")  # fmt: skip
