"""Host-level placement: which host a sandbox runs on.

Policy, in order:

1. **Eligibility.** A host is eligible when its free cpu, memory and GPUs (after the
   overcommit ratio, see :class:`Overcommit`) hold the request, and a ``microvm`` request
   lands only on a host with ``/dev/kvm``. A request without GPUs goes to a GPU host only
   when no host without GPUs can take it (GPU hosts are kept for GPU work).
2. **Best fit.** Among eligible hosts, the one left with the least free cpu, then memory,
   then the lowest id. Filling the fullest host first keeps whole hosts empty, so the
   autoscaler can give them back.
3. **No starvation.** Requests that do not fit wait in arrival order. One that has waited
   ``reserve_after_s`` gets a *reservation*: the eligible host closest to fitting it is
   closed to every other request, so sandboxes that end there free room for it instead of
   being taken by smaller requests arriving behind it. At most ``max_reservations`` hosts
   are reserved at a time.

The index keeps, per host class (KVM or not, GPUs or not), the hosts bucketed by whole free
vCPUs, each bucket a list of ``(free_memory, host_id)`` sorted with :mod:`bisect`, and a
segment tree over the buckets holding each bucket's largest free memory. A decision
descends the tree to the first bucket with enough cpu *and* a host with enough memory
(O(log buckets)), then bisects inside it; an update moves one host between buckets. So a
decision does not walk hosts that have cpu but no memory left. Pure and synchronous: no
I/O, no clock (callers pass ``now``), so the agent and the control plane can both use it
and it is tested without either.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from byoc_agent.protocol.errors import InvalidArgumentError

CPU_MILLI = 1000


class Isolation(StrEnum):
    GVISOR = "gvisor"
    MICROVM = "microvm"


@dataclass(frozen=True, slots=True)
class Overcommit:
    """How much more than the physical cpu and memory may be promised to sandboxes.

    ``cpu=2.0`` schedules 2 vCPU of sandboxes per host vCPU. GPUs are never overcommitted.
    """

    cpu: float = 1.0
    memory: float = 1.0

    def __post_init__(self) -> None:
        for name in ("cpu", "memory"):
            ratio = getattr(self, name)
            if not 1.0 <= ratio <= 16.0:
                raise InvalidArgumentError(
                    f"overcommit {name} ratio must be between 1.0 and 16.0 (got {ratio})",
                    field=f"overcommit_{name}",
                )


@dataclass(frozen=True, slots=True)
class Aging:
    """When a request that keeps not fitting gets a host reserved for it."""

    reserve_after_s: float = 30.0
    max_reservations: int = 4

    def __post_init__(self) -> None:
        if self.reserve_after_s < 0 or self.max_reservations < 0:
            raise InvalidArgumentError(
                f"aging: reserve_after_s ({self.reserve_after_s}) and max_reservations "
                f"({self.max_reservations}) must not be negative",
                field="reserve_after_s",
            )


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """What one host has (physical, before overcommit)."""

    host_id: str
    cpu: int
    memory_mb: int
    gpus: int = 0
    kvm: bool = False


@dataclass(frozen=True, slots=True)
class SandboxRequest:
    """What one sandbox asks for."""

    sandbox_id: str
    cpu: int
    memory_mb: int
    gpus: int = 0
    isolation: Isolation = Isolation.GVISOR

    def __post_init__(self) -> None:
        if self.cpu < 1 or self.memory_mb < 1 or self.gpus < 0:
            raise InvalidArgumentError(
                f"sandbox {self.sandbox_id} asks for {self.cpu} cpu, {self.memory_mb} MiB, "
                f"{self.gpus} GPUs; cpu and memory must be at least 1, GPUs at least 0",
                sandbox_id=self.sandbox_id,
            )


@dataclass(frozen=True, slots=True)
class Free:
    """Room left on a host, in scheduling units (milli-cpu and MiB after overcommit)."""

    cpu_milli: int
    memory_mb: int
    gpus: int


def host_class(host: HostCapacity) -> tuple[bool, bool]:
    return (host.kvm, host.gpus > 0)


def eligible_classes(req: SandboxRequest) -> tuple[tuple[tuple[bool, bool], ...], ...]:
    """Host classes to search, in preference groups: the best fit of the first group that
    has one wins."""
    kvm_options = (True,) if req.isolation is Isolation.MICROVM else (False, True)
    if req.gpus > 0:
        return (tuple((k, True) for k in kvm_options),)
    return (tuple((k, False) for k in kvm_options), tuple((k, True) for k in kvm_options))


def fits(free: Free, req: SandboxRequest) -> bool:
    return (
        free.cpu_milli >= req.cpu * CPU_MILLI
        and free.memory_mb >= req.memory_mb
        and free.gpus >= req.gpus
    )


def leftover_key(free: Free, req: SandboxRequest, host_id: str) -> tuple[int, int, str]:
    """Best-fit order: fewest whole vCPUs left, then least memory left, then lowest id."""
    return (free.cpu_milli // CPU_MILLI - req.cpu, free.memory_mb - req.memory_mb, host_id)


@dataclass(slots=True)
class _Host:
    cap: HostCapacity
    cpu_milli: int  # schedulable total, after overcommit
    memory_mb: int
    free_cpu: int
    free_mem: int
    free_gpus: int
    sandboxes: set[str] = field(default_factory=set)

    def free(self) -> Free:
        return Free(self.free_cpu, self.free_mem, self.free_gpus)


class _ClassIndex:
    """Hosts of one class by whole free vCPUs, with a max-free-memory segment tree."""

    __slots__ = ("buckets", "hosts", "size", "tree")

    def __init__(self, hosts: dict[str, _Host], size: int = 64) -> None:
        self.hosts = hosts
        self.size = size
        self.buckets: list[list[tuple[int, str]]] = [[] for _ in range(size)]
        self.tree = [-1] * (2 * size)

    def grow(self, at_least: int) -> None:
        size = self.size
        while size < at_least:
            size *= 2
        if size == self.size:
            return
        old = [e for bucket in self.buckets for e in bucket]
        self.size = size
        self.buckets = [[] for _ in range(size)]
        self.tree = [-1] * (2 * size)
        for _, host_id in old:
            self.add(self.hosts[host_id])

    def add(self, h: _Host) -> None:
        b = h.free_cpu // CPU_MILLI
        insort(self.buckets[b], (h.free_mem, h.cap.host_id))
        self._update(b)

    def remove(self, h: _Host) -> None:
        b = h.free_cpu // CPU_MILLI
        bucket = self.buckets[b]
        entry = (h.free_mem, h.cap.host_id)
        i = bisect_left(bucket, entry)
        if i < len(bucket) and bucket[i] == entry:
            del bucket[i]
            self._update(b)

    def best(self, req: SandboxRequest) -> tuple[int, int, str] | None:
        """The tightest (bucket, free memory, host id) that holds ``req``, or None."""
        b = req.cpu
        while b < self.size:
            b = self._first(b, req.memory_mb)
            if b < 0:
                return None
            bucket = self.buckets[b]
            i = bisect_left(bucket, (req.memory_mb, ""))
            if req.gpus == 0:
                mem, host_id = bucket[i]
                return (b, mem, host_id)
            for mem, host_id in bucket[i:]:
                if self.hosts[host_id].free_gpus >= req.gpus:
                    return (b, mem, host_id)
            b += 1
        return None

    def _update(self, b: int) -> None:
        bucket = self.buckets[b]
        tree = self.tree
        i = b + self.size
        tree[i] = bucket[-1][0] if bucket else -1
        i >>= 1
        while i:
            left, right = tree[2 * i], tree[2 * i + 1]
            top = left if left > right else right
            if tree[i] == top:
                break  # nothing above changes
            tree[i] = top
            i >>= 1

    def _first(self, lo: int, need: int) -> int:
        """The first bucket >= lo whose largest free memory is >= need, or -1."""
        tree, size = self.tree, self.size
        i = lo + size
        while True:
            if tree[i] >= need:
                while i < size:
                    i = 2 * i if tree[2 * i] >= need else 2 * i + 1
                return i - size
            while i & 1:
                i >>= 1
            if i == 0:
                return -1
            i += 1


@dataclass(slots=True)
class _Waiting:
    req: SandboxRequest
    since: float
    seq: int


class BestFitScheduler:
    """An index of hosts and their free room, placing sandboxes best fit.

    Not thread-safe; one owner (the agent's fleet, or a benchmark) drives it.
    """

    def __init__(self, *, overcommit: Overcommit | None = None, aging: Aging | None = None):
        self.overcommit = overcommit or Overcommit()
        self.aging = aging or Aging()
        self._hosts: dict[str, _Host] = {}
        self._index: dict[tuple[bool, bool], _ClassIndex] = {
            (k, g): _ClassIndex(self._hosts) for k in (False, True) for g in (False, True)
        }
        self._placed: dict[str, tuple[str, SandboxRequest]] = {}
        self._reserved: dict[str, str] = {}  # host_id -> sandbox_id it is held for
        self._reservation_of: dict[str, str] = {}  # sandbox_id -> host_id
        self._waiting: dict[str, _Waiting] = {}
        self._seq = 0

    # hosts ----------------------------------------------------------------
    def add_host(self, cap: HostCapacity) -> None:
        if cap.host_id in self._hosts:
            raise InvalidArgumentError(f"host {cap.host_id} is already scheduled", field="host_id")
        cpu = int(cap.cpu * CPU_MILLI * self.overcommit.cpu)
        mem = int(cap.memory_mb * self.overcommit.memory)
        h = _Host(cap, cpu, mem, cpu, mem, cap.gpus)
        self._hosts[cap.host_id] = h
        index = self._index[host_class(cap)]
        index.grow(cpu // CPU_MILLI + 1)
        index.add(h)

    def remove_host(self, host_id: str) -> list[str]:
        """Stop placing on a host; returns the sandboxes still recorded on it (now unplaced)."""
        h = self._hosts.pop(host_id, None)
        if h is None:
            return []
        if host_id in self._reserved:
            self._reservation_of.pop(self._reserved.pop(host_id), None)
        else:
            self._unindex(h)
        for sid in h.sandboxes:
            self._placed.pop(sid, None)
        return sorted(h.sandboxes)

    def hosts(self) -> list[str]:
        return sorted(self._hosts)

    def free(self, host_id: str) -> Free:
        return self._hosts[host_id].free()

    def sandboxes_on(self, host_id: str) -> frozenset[str]:
        return frozenset(self._hosts[host_id].sandboxes)

    def host_of(self, sandbox_id: str) -> str | None:
        placed = self._placed.get(sandbox_id)
        return placed[0] if placed else None

    def reserved(self) -> dict[str, str]:
        """host_id → the waiting sandbox it is held for."""
        return dict(self._reserved)

    # decisions ------------------------------------------------------------
    def place(self, req: SandboxRequest) -> str | None:
        """Place one request now, or None when no open host fits it. Idempotent per id."""
        if req.sandbox_id in self._placed:
            return self._placed[req.sandbox_id][0]
        held = self._reservation_of.get(req.sandbox_id)
        if held is not None and fits(self._hosts[held].free(), req):
            self._release_reservation(held)
            self._assign(self._hosts[held], req)
            return held
        for group in eligible_classes(req):
            best: tuple[int, int, str] | None = None
            for cls in group:
                found = self._index[cls].best(req)
                if found is not None and (best is None or found < best):
                    best = found
            if best is not None:
                host = self._hosts[best[2]]
                self._assign(host, req)
                if held is not None:  # it fit elsewhere first: free the held host
                    self._release_reservation(held)
                return host.cap.host_id
        return None

    def place_at(self, req: SandboxRequest, host_id: str) -> None:
        """Record a placement decided elsewhere (e.g. restored after a restart)."""
        h = self._hosts.get(host_id)
        if h is None:
            raise InvalidArgumentError(f"host {host_id} is not scheduled", field="host_id")
        if req.sandbox_id not in self._placed:
            self._assign(h, req, indexed=host_id not in self._reserved)

    def release(self, sandbox_id: str) -> str | None:
        """Forget a sandbox (it ended); returns the host it was on."""
        self._waiting.pop(sandbox_id, None)
        held = self._reservation_of.get(sandbox_id)
        if held is not None:
            self._release_reservation(held)
        placed = self._placed.pop(sandbox_id, None)
        if placed is None:
            return None
        host_id, req = placed
        h = self._hosts[host_id]
        indexed = host_id not in self._reserved
        if indexed:
            self._unindex(h)
        h.free_cpu += req.cpu * CPU_MILLI
        h.free_mem += req.memory_mb
        h.free_gpus += req.gpus
        h.sandboxes.discard(sandbox_id)
        if indexed:
            self._index[host_class(h.cap)].add(h)
        return host_id

    # queue with aging -----------------------------------------------------
    def submit(self, req: SandboxRequest, now: float) -> str | None:
        """Place now if the request fits and nobody older is waiting; else queue it."""
        if req.sandbox_id in self._placed:
            return self._placed[req.sandbox_id][0]
        if req.sandbox_id not in self._waiting:
            self._seq += 1
            self._waiting[req.sandbox_id] = _Waiting(req, now, self._seq)
        placed = self.schedule(now)
        return dict(placed).get(req.sandbox_id)

    def pending(self) -> list[SandboxRequest]:
        """Waiting requests, oldest first."""
        return [w.req for w in sorted(self._waiting.values(), key=lambda w: w.seq)]

    def waiting_since(self, sandbox_id: str) -> float | None:
        w = self._waiting.get(sandbox_id)
        return w.since if w else None

    def schedule(self, now: float) -> list[tuple[str, str]]:
        """Place what fits from the queue, oldest first; reserve hosts for requests that
        waited too long. Returns the new (sandbox_id, host_id) placements."""
        out: list[tuple[str, str]] = []
        for w in sorted(self._waiting.values(), key=lambda w: w.seq):
            host_id = self.place(w.req)
            if host_id is not None:
                self._waiting.pop(w.req.sandbox_id, None)
                out.append((w.req.sandbox_id, host_id))
                continue
            if (
                now - w.since >= self.aging.reserve_after_s
                and w.req.sandbox_id not in self._reservation_of
                and len(self._reserved) < self.aging.max_reservations
            ):
                self._reserve_for(w.req)
        return out

    # internals ------------------------------------------------------------
    def _assign(self, h: _Host, req: SandboxRequest, *, indexed: bool = True) -> None:
        if indexed:
            self._unindex(h)
        h.free_cpu -= req.cpu * CPU_MILLI
        h.free_mem -= req.memory_mb
        h.free_gpus -= req.gpus
        h.sandboxes.add(req.sandbox_id)
        self._placed[req.sandbox_id] = (h.cap.host_id, req)
        self._waiting.pop(req.sandbox_id, None)
        if indexed:
            self._index[host_class(h.cap)].add(h)

    def _unindex(self, h: _Host) -> None:
        self._index[host_class(h.cap)].remove(h)

    def _reserve_for(self, req: SandboxRequest) -> None:
        """Hold the open host that could hold ``req`` once emptied and is closest to it now."""
        need = Free(req.cpu * CPU_MILLI, req.memory_mb, req.gpus)
        best: _Host | None = None
        best_key: tuple[int, int, int, str] | None = None
        for group in eligible_classes(req):
            allowed = set(group)
            for host_id, h in self._hosts.items():
                could_hold = (
                    h.cpu_milli >= need.cpu_milli
                    and h.memory_mb >= need.memory_mb
                    and h.cap.gpus >= need.gpus
                )
                if not could_hold or host_class(h.cap) not in allowed:
                    continue
                if host_id in self._reserved:
                    continue
                short = (
                    max(0, need.cpu_milli - h.free_cpu),
                    max(0, need.memory_mb - h.free_mem),
                    max(0, need.gpus - h.free_gpus),
                    host_id,
                )
                if best_key is None or short < best_key:
                    best, best_key = h, short
            if best is not None:
                break
        if best is None:
            return  # no host could ever hold it: the autoscaler's business
        self._unindex(best)
        self._reserved[best.cap.host_id] = req.sandbox_id
        self._reservation_of[req.sandbox_id] = best.cap.host_id

    def _release_reservation(self, host_id: str) -> None:
        sid = self._reserved.pop(host_id)
        self._reservation_of.pop(sid, None)
        h = self._hosts.get(host_id)
        if h is not None:
            self._index[host_class(h.cap)].add(h)


def best_fit(
    req: SandboxRequest, hosts: Iterable[tuple[HostCapacity, Free]]
) -> HostCapacity | None:
    """The same policy as :class:`BestFitScheduler`, as one linear pass over a small list
    (the control plane's per-request choice among a tenant's agents)."""
    candidates = list(hosts)
    for group in eligible_classes(req):
        allowed = set(group)
        fitting = [
            (leftover_key(free, req, cap.host_id), cap)
            for cap, free in candidates
            if host_class(cap) in allowed and fits(free, req)
        ]
        if fitting:
            return min(fitting, key=lambda kc: kc[0])[1]
    return None
