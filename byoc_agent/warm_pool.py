"""Warm pools: pre-started sandboxes per (template, cpu, memory_mb, isolation), see ADR 0025.

A pool member is an ordinary sandbox of the agent's runtime, started under an id of the
pool's own (``pool-<hex>``). A create that matches a ready member *takes* it: the runtime
adopts it (hostname = the requested sandbox id, a fresh machine-id and random seed, the
create's env for later execs) and the agent records the member's handle under the requested
sandbox id. The pool then starts a replacement in the background. A runtime that can do part
of the adoption ahead (:class:`~byoc_agent.runtimes.base.PreparingAdoption`; gVisor starts
an identity helper in the member) does it before the member counts as ready.

Accounting: members are not sandboxes of any customer. They have no ``SandboxRecord``, so
they are not metered (billing starts at take time, when the record is written) and not
reported as running. Their cpu and memory count against the agent's capacity when the pool
decides whether to start another member; a real create that needs the room evicts ready
members (``make_room``), so a pool never blocks a create.

Restore pools (ADR 0029): with ``restore_size`` > 0 the pool also keeps that many copies of
each recently used snapshot already restored (``runtime.restore`` under a pool id, identity
helper prepared). A restore of that snapshot then takes one exactly as a create takes a
member: the copy becomes the requested sandbox (hostname, machine-id, env) and the slow
part, ``runsc restore`` or a QEMU migration load, happened before anyone asked. Pools are
kept for the ``restore_snapshots`` most recently snapshotted or restored snapshots; a
deleted snapshot's copies are destroyed before its files go.

Lifetime: members are destroyed when the agent stops (``close``). Every member is listed in
a ledger file from before its creation starts until it is taken and recorded (``confirm``);
at start the pool destroys listed members that no sandbox record holds (what a crash left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from byoc_agent.protocol.errors import CorralError, InvalidArgumentError
from byoc_agent.runtimes.base import (
    Adopting,
    PreparingAdoption,
    Runtime,
    SandboxHandle,
    SandboxSpec,
    Snapshotting,
)

log = structlog.get_logger(__name__)

POOL_ID_PREFIX = "pool-"
_IDLE_CHECK_S = 5.0  # re-check capacity this often even when nothing woke the filler
_MAX_BACKOFF_S = 60.0
_POOL_TIMEOUT_S = 365 * 24 * 3600  # members have no deadline of their own
# A replacement starts this long after a take: the sandbox just handed over runs its first
# commands now, and on a small host a start beside them (a microVM boot above all) slows them.
REFILL_DELAY_S = 1.0
# Restore pools are kept for this many snapshots (the most recently used ones).
RESTORE_POOL_SNAPSHOTS = 4


@dataclass(frozen=True, slots=True, order=True)
class PoolKey:
    """The sizes a pool member can serve: a create matches only on all four. A restore
    pool's key also names its snapshot (empty for a create pool)."""

    template: str
    cpu: int
    memory_mb: int
    isolation: str
    snapshot: str = ""

    def __str__(self) -> str:
        sizes = f"{self.template}:{self.cpu}:{self.memory_mb}:{self.isolation}"
        return f"{sizes}@{self.snapshot}" if self.snapshot else sizes

    @classmethod
    def of(cls, spec: SandboxSpec, snapshot: str = "") -> PoolKey:
        return cls(spec.template, spec.cpu, spec.memory_mb, spec.isolation, snapshot)


def parse_pool_sizes(text: str) -> dict[PoolKey, int]:
    """``base:1:512:gvisor=2,base:1:512:microvm=1`` -> {PoolKey: size}. Empty -> {}."""
    sizes: dict[PoolKey, int] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key_text, sep, size_text = item.partition("=")
        parts = key_text.strip().split(":")
        if not sep or len(parts) != 4:
            raise InvalidArgumentError(
                f"warm pool entry {item!r} must look like template:cpu:memory_mb:isolation=N"
            )
        template, cpu, memory_mb, isolation = (p.strip() for p in parts)
        try:
            key = PoolKey(template, int(cpu), int(memory_mb), isolation)
            size = int(size_text)
        except ValueError:
            raise InvalidArgumentError(
                f"warm pool entry {item!r}: cpu, memory_mb and N must be integers"
            ) from None
        if not template or key.cpu < 1 or key.memory_mb < 1 or size < 0:
            raise InvalidArgumentError(
                f"warm pool entry {item!r}: needs a template, cpu >= 1, memory_mb >= 1, N >= 0"
            )
        if key in sizes:
            raise InvalidArgumentError(f"warm pool entry {key} is given twice")
        sizes[key] = size
    return sizes


@dataclass(slots=True)
class PoolStats:
    """Counters (what a metrics endpoint would export): hits, misses, starts, evictions."""

    hits: int = 0
    misses: int = 0
    started: int = 0
    start_failures: int = 0
    evicted: int = 0
    adopt_failures: int = 0
    last_hit_ms: float | None = None


class WarmPool:
    """Keeps ``sizes[key]`` started sandboxes ready per key; see the module docstring."""

    def __init__(
        self,
        runtime: Runtime,
        sizes: Mapping[PoolKey, int],
        *,
        tenant_id: str,
        free_capacity: Callable[[], tuple[int, int]],
        ledger: Path | None = None,
        refill_delay_s: float = REFILL_DELAY_S,
        restore_size: int = 0,
        restore_snapshots: int = RESTORE_POOL_SNAPSHOTS,
    ) -> None:
        if not isinstance(runtime, Adopting):
            raise InvalidArgumentError(f"runtime {runtime.name} cannot serve a warm pool")
        if restore_size < 0 or restore_snapshots < 1:
            raise InvalidArgumentError(
                "a restore pool needs N >= 0 copies for each of >= 1 snapshots"
            )
        if restore_size and not isinstance(runtime, Snapshotting):
            raise InvalidArgumentError(f"runtime {runtime.name} cannot restore snapshots")
        self._runtime = runtime
        self._adopting: Adopting = runtime
        self.restore_size = restore_size
        self._restore_snapshots = restore_snapshots
        self._sources: OrderedDict[PoolKey, Path] = OrderedDict()  # least recently used first
        self._settled = asyncio.Condition()  # notified when a member's start ends
        self.sizes = {k: n for k, n in sizes.items() if n > 0}
        self._tenant_id = tenant_id
        self._free = free_capacity
        self._ledger = ledger
        self._ready: dict[PoolKey, deque[SandboxHandle]] = {k: deque() for k in self.sizes}
        self._starting: dict[str, PoolKey] = {}  # runtime id -> key, creation under way
        self._handing_over: dict[str, PoolKey] = {}  # taken, not yet confirmed as recorded
        self._wake = asyncio.Event()
        self._teardowns: set[asyncio.Task[None]] = set()
        self._dying: dict[str, SandboxHandle] = {}  # being destroyed
        self._closed = False
        self._refill_delay_s = refill_delay_s
        self._last_take = -float("inf")  # monotonic time of the last take
        self.stats = PoolStats()

    # ---- what the agent asks ---------------------------------------------------------
    def ready(self, key: PoolKey) -> list[SandboxHandle]:
        return list(self._ready.get(key, ()))

    def used(self) -> tuple[int, int]:
        """cpu and memory held by members (ready, starting or being handed over)."""
        keys = [k for k, q in self._ready.items() for _ in q]
        keys += list(self._starting.values()) + list(self._handing_over.values())
        return sum(k.cpu for k in keys), sum(k.memory_mb for k in keys)

    async def take(self, spec: SandboxSpec, snapshot: str = "") -> SandboxHandle | None:
        """A ready member adopted as ``spec``, or None (a miss: the caller creates cold).
        With ``snapshot``: a copy of that snapshot, already restored (the caller restores
        on a miss)."""
        key = PoolKey.of(spec, snapshot)
        queue = self._ready.get(key)
        started = time.monotonic()
        while queue:
            handle = queue.popleft()
            self._handing_over[handle.sandbox_id] = key
            try:
                await self._adopting.adopt(handle, spec)
            except (CorralError, OSError) as e:
                self.stats.adopt_failures += 1
                log.warning("warm_pool_adopt_failed", pool_id=handle.sandbox_id,
                            sandbox_id=spec.sandbox_id, error=str(e))  # fmt: skip
                self._handing_over.pop(handle.sandbox_id, None)
                self._destroy_later(handle)
                continue
            finally:
                self._last_take = time.monotonic()
                self._wake.set()  # start a replacement (after the adoption: not beside it)
            ms = (time.monotonic() - started) * 1000
            self.stats.hits += 1
            self.stats.last_hit_ms = ms
            log.info("warm_pool_hit", sandbox_id=spec.sandbox_id, pool_id=handle.sandbox_id,
                     key=str(key), adopt_ms=round(ms, 1))  # fmt: skip
            return handle
        self.stats.misses += 1
        log.info("warm_pool_miss", sandbox_id=spec.sandbox_id, key=str(key))
        return None

    def keep_snapshot(self, key: PoolKey, source: Path) -> None:
        """Keep ``restore_size`` restored copies of the snapshot in ``source`` (taken or
        restored just now: the most recently used). The least recently used snapshot
        beyond ``restore_snapshots`` loses its pool."""
        if not self.restore_size or self._closed or not key.snapshot:
            return
        if key in self._sources:
            self._sources.move_to_end(key)
            return
        self._sources[key] = source
        self.sizes[key] = self.restore_size
        self._ready.setdefault(key, deque())
        while len(self._sources) > self._restore_snapshots:
            oldest = next(iter(self._sources))
            self._forget(oldest, detail="snapshot no longer among the most recently used")
        self._wake.set()

    async def drop_snapshot(self, snapshot_id: str) -> None:
        """The snapshot is being deleted: destroy its copies and wait for any copy being
        restored from it now (it is destroyed when its restore ends), so the caller can
        remove the files."""
        for key in [k for k in self._sources if k.snapshot == snapshot_id]:
            self._forget(key, detail="snapshot deleted")
        async with self._settled:
            await self._settled.wait_for(
                lambda: all(k.snapshot != snapshot_id for k in self._starting.values())
            )

    def _forget(self, key: PoolKey, *, detail: str) -> None:
        self._sources.pop(key, None)
        self.sizes.pop(key, None)
        queue = self._ready.pop(key, deque())
        while queue:
            handle = queue.popleft()
            self.stats.evicted += 1
            log.info("warm_pool_evicted", pool_id=handle.sandbox_id, key=str(key), detail=detail)
            self._destroy_later(handle)
        self._save_ledger()

    def confirm(self, handle: SandboxHandle) -> None:
        """The agent recorded the taken member under its sandbox id: the pool lets go."""
        if self._handing_over.pop(handle.sandbox_id, None) is not None:
            self._save_ledger()

    def release(self, handle: SandboxHandle) -> None:
        """The agent could not record a taken member: destroy it."""
        if self._handing_over.pop(handle.sandbox_id, None) is not None:
            self._destroy_later(handle)

    def make_room(self, cpu: int, memory_mb: int) -> None:
        """Evict ready members until ``cpu``/``memory_mb`` fit beside the pool (teardown
        runs in the background; the room counts as free at once)."""
        while True:
            free_cpu, free_mem = self._free()
            used_cpu, used_mem = self.used()
            if cpu <= free_cpu - used_cpu and memory_mb <= free_mem - used_mem:
                return
            victim = self._largest_ready()
            if victim is None:
                return
            handle = self._ready[victim].pop()  # the newest: the oldest has waited longest
            self.stats.evicted += 1
            log.info("warm_pool_evicted", pool_id=handle.sandbox_id, key=str(victim),
                     detail="room for a sandbox")  # fmt: skip
            self._destroy_later(handle)
            self._save_ledger()

    def _largest_ready(self) -> PoolKey | None:
        keys = [k for k, q in self._ready.items() if q]
        return max(keys, key=lambda k: (k.memory_mb, k.cpu)) if keys else None

    # ---- filling ---------------------------------------------------------------------
    async def run(self, in_use: Iterable[str] = ()) -> None:
        """Clean up what a crash left, then keep the pools full until cancelled."""
        await self._destroy_leftovers(set(in_use))
        if not self.sizes and not self.restore_size:
            return
        failures = 0
        while not self._closed:
            key = self._next_to_fill()
            if key is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_IDLE_CHECK_S):
                        await self._wake.wait()
                continue
            settle = self._last_take + self._refill_delay_s - time.monotonic()
            if settle > 0:
                await asyncio.sleep(settle)
                continue  # the room may have changed meanwhile
            try:
                ok = await self._start_one(key)
            except Exception:  # a background loop: one bad start must not stop the agent
                log.exception("warm_pool_start_crashed", key=str(key))
                ok = False
            if ok:
                failures = 0
            else:
                failures += 1
                await asyncio.sleep(min(_MAX_BACKOFF_S, 0.5 * 2**failures))

    def _next_to_fill(self) -> PoolKey | None:
        free_cpu, free_mem = self._free()
        used_cpu, used_mem = self.used()
        for key, size in sorted(self.sizes.items()):
            starting = sum(1 for k in self._starting.values() if k == key)
            have = len(self._ready.get(key, ())) + starting
            if have >= size:
                continue
            if key.cpu <= free_cpu - used_cpu and key.memory_mb <= free_mem - used_mem:
                return key
        return None

    async def _start_one(self, key: PoolKey) -> bool:
        pool_id = f"{POOL_ID_PREFIX}{uuid.uuid4().hex[:16]}"
        spec = SandboxSpec(
            sandbox_id=pool_id, tenant_id=self._tenant_id, template=key.template, cpu=key.cpu,
            memory_mb=key.memory_mb, timeout_s=_POOL_TIMEOUT_S, isolation=key.isolation,
        )  # fmt: skip
        source = self._sources.get(key)
        if key.snapshot and source is None:
            return True  # its snapshot lost its pool meanwhile
        self._starting[pool_id] = key
        self._save_ledger(extra=[(pool_id, self._runtime_name(key))])
        started = time.monotonic()
        try:
            if source is not None:
                assert isinstance(self._runtime, Snapshotting)  # checked in __init__
                handle = await self._runtime.restore(spec, source)
            else:
                handle = await self._runtime.create(spec)
        except (CorralError, OSError) as e:
            self.stats.start_failures += 1
            log.warning("warm_pool_start_failed", pool_id=pool_id, key=str(key), error=str(e))
            return False
        else:
            if isinstance(self._runtime, PreparingAdoption):
                # Before the member counts as ready: work done now is not done at take time.
                try:
                    await self._runtime.prepare_adoption(handle)
                except Exception:  # only a slower take: the member still serves
                    log.exception("warm_pool_prepare_failed", pool_id=pool_id, key=str(key))
        finally:
            self._starting.pop(pool_id, None)
            async with self._settled:
                self._settled.notify_all()
        if self._closed or key not in self.sizes:  # stopping, or its snapshot's pool went
            self._destroy_later(handle)
            return True
        self._ready[key].append(handle)
        self.stats.started += 1
        self._save_ledger()
        log.info("warm_pool_member_ready", pool_id=pool_id, key=str(key),
                 ms=round((time.monotonic() - started) * 1000))  # fmt: skip
        return True

    def _runtime_name(self, key: PoolKey) -> str:
        for_isolation = getattr(self._runtime, "for_isolation", None)
        if callable(for_isolation):
            with contextlib.suppress(CorralError):
                return str(for_isolation(key.isolation).name)
        return self._runtime.name

    # ---- teardown --------------------------------------------------------------------
    def _destroy_later(self, handle: SandboxHandle) -> None:
        self._dying[handle.sandbox_id] = handle
        task = asyncio.create_task(self._destroy(handle))
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    async def _destroy(self, handle: SandboxHandle) -> None:
        try:
            await self._runtime.destroy(handle)
        except (CorralError, OSError) as e:
            log.warning("warm_pool_destroy_failed", pool_id=handle.sandbox_id, error=str(e))
            return  # stays in the ledger: the next start tries again
        self._dying.pop(handle.sandbox_id, None)
        self._save_ledger()

    async def close(self, settle_s: float = 0.0) -> None:
        """Destroy every member (the agent is stopping; members serve nobody meanwhile).

        ``settle_s``: with the filler still running, wait up to that long for a member
        being started to finish (it is then destroyed, not left half-made for the ledger
        to clean up at the next start)."""
        self._closed = True
        self._wake.set()
        if settle_s > 0 and self._starting:
            async with self._settled:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settle_s):
                        await self._settled.wait_for(lambda: not self._starting)
        for queue in self._ready.values():
            while queue:
                self._destroy_later(queue.popleft())
        if self._teardowns:
            await asyncio.gather(*self._teardowns, return_exceptions=True)
        self._save_ledger()

    async def _destroy_leftovers(self, in_use: set[str]) -> None:
        if self._ledger is None:
            return
        try:
            raw = json.loads(await asyncio.to_thread(self._ledger.read_text))
            entries = [(str(e["id"]), str(e["runtime"])) for e in raw["members"]]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("warm_pool_ledger_unreadable", error=str(e))
            return
        for pool_id, runtime in entries:
            if pool_id in in_use:
                continue
            log.info("warm_pool_leftover_destroyed", pool_id=pool_id)
            handle = SandboxHandle(sandbox_id=pool_id, runtime=runtime, created_at=0)
            self._dying[pool_id] = handle
            await self._destroy(handle)
        self._save_ledger()

    def _save_ledger(self, extra: Iterable[tuple[str, str]] = ()) -> None:
        if self._ledger is None:
            return
        members = [(h.sandbox_id, h.runtime) for q in self._ready.values() for h in q]
        members += [(i, self._runtime_name(k)) for i, k in self._starting.items()]
        members += [(i, self._runtime_name(k)) for i, k in self._handing_over.items()]
        members += [(h.sandbox_id, h.runtime) for h in self._dying.values()]
        members += list(extra)
        unique = dict(members)
        body = json.dumps({"members": [{"id": i, "runtime": r} for i, r in unique.items()]})
        tmp = self._ledger.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(body)
        tmp.replace(self._ledger)
