"""The host-level placement policy: hard rules, best fit, overcommit, no starvation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.scheduling import (
    Aging,
    BestFitScheduler,
    Free,
    HostCapacity,
    Isolation,
    Overcommit,
    SandboxRequest,
    best_fit,
)
from byoc_agent.scheduling.placement import eligible_classes, fits, host_class, leftover_key

pytestmark = pytest.mark.providers


def sched(*hosts: HostCapacity, overcommit: Overcommit | None = None,
          aging: Aging | None = None) -> BestFitScheduler:
    s = BestFitScheduler(overcommit=overcommit, aging=aging)
    for h in hosts:
        s.add_host(h)
    return s


def req(sid: str, cpu: int, mem: int = 1024, gpus: int = 0,
        iso: Isolation = Isolation.GVISOR) -> SandboxRequest:
    return SandboxRequest(sid, cpu, mem, gpus, iso)


def test_the_host_left_with_the_least_room_is_chosen() -> None:
    """Best fit: of three hosts that fit, the one with the fewest vCPUs left afterwards."""
    s = sched(HostCapacity("big", 64, 65536), HostCapacity("snug", 4, 8192),
              HostCapacity("tiny", 1, 1024))
    assert s.place(req("a", 3)) == "snug"
    assert s.free("snug") == Free(1000, 7168, 0)


def test_a_microvm_lands_only_on_a_kvm_host() -> None:
    """A microVM request skips a tighter host without /dev/kvm."""
    s = sched(HostCapacity("plain", 4, 8192, kvm=False), HostCapacity("metal", 96, 196608,
                                                                      kvm=True))
    assert s.place(req("vm", 2, iso=Isolation.MICROVM)) == "metal"
    assert s.place(req("gv", 2)) == "plain"
    s2 = sched(HostCapacity("plain", 4, 8192, kvm=False))
    assert s2.place(req("vm", 1, iso=Isolation.MICROVM)) is None


def test_gpu_hosts_are_kept_for_gpu_requests_until_nothing_else_fits() -> None:
    """A CPU request avoids a GPU host while a host without GPUs has room."""
    s = sched(HostCapacity("gpu", 8, 16384, gpus=8), HostCapacity("cpu", 64, 131072))
    assert s.place(req("c1", 2)) == "cpu"
    assert s.place(req("g1", 2, gpus=4)) == "gpu"
    assert s.place(req("c2", 62)) == "cpu"
    assert s.place(req("c3", 2)) == "gpu"  # the CPU host is full now
    assert s.place(req("g2", 1, gpus=5)) is None  # only 4 GPUs left


def test_overcommit_promises_more_cpu_than_the_host_has_but_never_more_gpus() -> None:
    """With cpu ratio 2.0 a 4-vCPU host takes 8 one-vCPU sandboxes, the ninth waits."""
    s = sched(HostCapacity("h", 4, 65536, gpus=1), overcommit=Overcommit(cpu=2.0))
    placed = [s.place(req(f"s{i}", 1, gpus=0)) for i in range(9)]
    assert placed[:8] == ["h"] * 8
    assert placed[8] is None
    with pytest.raises(InvalidArgumentError):
        Overcommit(cpu=0.5)


def test_a_release_gives_the_room_back_and_placing_twice_is_idempotent() -> None:
    """Releasing restores free room exactly; placing a placed id returns its host."""
    s = sched(HostCapacity("h", 8, 8192))
    assert s.place(req("a", 4, 4096)) == "h"
    assert s.place(req("a", 4, 4096)) == "h"
    assert s.free("h") == Free(4000, 4096, 0)
    assert s.release("a") == "h"
    assert s.free("h") == Free(8000, 8192, 0)
    assert s.release("a") is None


def test_a_large_request_is_not_starved_by_a_stream_of_small_ones() -> None:
    """After waiting reserve_after_s, a big request gets a host reserved: small requests
    no longer take the room freed there, and it is placed once enough has ended."""
    s = sched(HostCapacity("h1", 8, 16384), HostCapacity("h2", 8, 16384),
              aging=Aging(reserve_after_s=10, max_reservations=1))
    for i in range(8):
        assert s.submit(req(f"small{i}", 2), now=0) is not None
    assert s.submit(req("big", 6), now=1) is None
    # without a reservation, small requests keep refilling the room freed by small ends
    s.release("small0")
    assert s.submit(req("small8", 2), now=2) is not None
    s.schedule(now=20)  # big has now waited 19 s: a host is held for it
    held = s.reserved()
    assert list(held.values()) == ["big"]
    host = next(iter(held))
    on_held = sorted(s.sandboxes_on(host))
    s.release(on_held[0])
    assert s.submit(req("small9", 2), now=21) is None  # the freed room is not given away
    for sid in on_held[1:]:
        s.release(sid)
    placed = dict(s.schedule(now=22))
    assert placed == {"big": host, "small9": host}  # oldest first, then the rest fits too
    assert s.reserved() == {}
    assert s.pending() == []


def test_bad_requests_are_refused_with_a_reason() -> None:
    """Zero cpu or memory, or a duplicate host, is an InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError, match="cpu and memory must be at least 1"):
        SandboxRequest("x", 0, 1024)
    s = sched(HostCapacity("h", 1, 1024))
    with pytest.raises(InvalidArgumentError, match="already scheduled"):
        s.add_host(HostCapacity("h", 1, 1024))
    with pytest.raises(InvalidArgumentError, match="must not be negative"):
        Aging(reserve_after_s=-1)


def test_a_waiting_request_placed_directly_leaves_the_queue() -> None:
    """place() on a request that was queued removes it from the pending list."""
    s = sched(HostCapacity("h", 2, 2048))
    assert s.submit(req("a", 2), now=0) == "h"
    assert s.submit(req("b", 2), now=1) is None
    s.release("a")
    assert s.place(req("b", 2)) == "h"
    assert s.pending() == []


def test_removing_a_host_returns_the_sandboxes_it_held() -> None:
    """A host taken out of service gives back the ids placed on it."""
    s = sched(HostCapacity("h", 8, 8192))
    s.place(req("a", 1))
    s.place(req("b", 1))
    assert s.remove_host("h") == ["a", "b"]
    assert s.host_of("a") is None
    assert s.place(req("c", 1)) is None


# --------------------------------------------------------------------------- properties
hosts_st = st.lists(
    st.builds(
        lambda i, cpu, mem, gpus, kvm: HostCapacity(f"h{i:03d}", cpu, mem, gpus, kvm),
        st.integers(0, 999),
        st.integers(1, 32),
        st.integers(512, 65536),
        st.sampled_from([0, 0, 0, 2, 8]),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda h: h.host_id,
)
ops_st = st.lists(
    st.one_of(
        st.tuples(
            st.just("place"),
            st.integers(1, 16),
            st.integers(1, 32768),
            st.sampled_from([0, 0, 0, 1, 4]),
            st.sampled_from(list(Isolation)),
        ),
        st.tuples(st.just("release"), st.integers(0, 40)),
    ),
    max_size=60,
)


def oracle(r: SandboxRequest, caps: dict[str, HostCapacity], free: dict[str, Free]) -> str | None:
    """Brute force: the policy written out over every host."""
    for group in eligible_classes(r):
        cands = [
            leftover_key(free[h], r, h)
            for h in caps
            if host_class(caps[h]) in group and fits(free[h], r)
        ]
        if cands:
            return min(cands)[2]
    return None


@settings(max_examples=150, deadline=None)
@given(hosts=hosts_st, ops=ops_st, ratio=st.sampled_from([1.0, 1.5, 2.0]))
def test_the_index_agrees_with_brute_force_and_never_overfills(
    hosts: list[HostCapacity], ops: list[tuple[object, ...]], ratio: float
) -> None:
    """Every decision equals the brute-force best fit, and no host ever goes below zero
    free cpu, memory or GPUs, nor takes a microVM without KVM."""
    oc = Overcommit(cpu=ratio, memory=ratio)
    s = sched(*hosts, overcommit=oc)
    caps = {h.host_id: h for h in hosts}
    placed: list[str] = []
    for n, op in enumerate(ops):
        if op[0] == "release":
            if placed:
                sid = placed.pop(int(str(op[1])) % len(placed))
                assert s.release(sid) is not None
            continue
        _, cpu, mem, gpus, iso = op
        r = SandboxRequest(f"s{n}", int(str(cpu)), int(str(mem)), int(str(gpus)),
                           Isolation(str(iso)))
        free = {h: s.free(h) for h in caps}
        expect = oracle(r, caps, free)
        got = s.place(r)
        assert got == expect
        if got is not None:
            placed.append(r.sandbox_id)
            assert caps[got].kvm or r.isolation is Isolation.GVISOR
            after = s.free(got)
            assert after.cpu_milli >= 0
            assert after.memory_mb >= 0
            assert after.gpus >= 0
    # the linear form of the same policy agrees with the index on a final request
    probe = SandboxRequest("probe", 1, 512)
    linear = best_fit(probe, [(caps[h], s.free(h)) for h in caps])
    assert (linear.host_id if linear else None) == oracle(probe, caps,
                                                          {h: s.free(h) for h in caps})


@settings(max_examples=100, deadline=None)
@given(
    agents=st.lists(
        st.tuples(st.integers(0, 99), st.integers(-2, 16), st.integers(-512, 16384)),
        min_size=1, max_size=8, unique_by=lambda t: t[0],
    ),
    cpu=st.integers(1, 8),
    mem=st.integers(128, 8192),
)
def test_the_control_plane_picks_agents_by_the_same_best_fit(
    agents: list[tuple[int, int, int]], cpu: int, mem: int
) -> None:
    """control_plane.scheduler.choose returns the agent the brute-force best fit names
    (fewest vCPUs left, then memory, then id), or a capacity error when none fits."""
    from byoc_agent.protocol.errors import CapacityError
    from control_plane.scheduler import Candidate, Request, choose

    cands = [Candidate(f"a{i:02d}", frozenset({"base"}), c, m) for i, c, m in agents]
    fitting = [c for c in cands if c.cpu_free >= cpu and c.memory_mb_free >= mem]
    request = Request("t", "base", cpu, mem)
    if not fitting:
        with pytest.raises(CapacityError):
            choose(request, cands)
        return
    expect = min(fitting, key=lambda c: (c.cpu_free - cpu, c.memory_mb_free - mem, c.agent_id))
    assert choose(request, cands) == expect


@settings(max_examples=60, deadline=None)
@given(
    n_hosts=st.integers(1, 4),
    lifetimes=st.lists(st.integers(1, 6), min_size=40, max_size=40),
    sizes=st.lists(st.integers(1, 3), min_size=40, max_size=40),
)
def test_a_large_request_is_placed_within_a_bounded_wait_under_any_stream_of_small_ones(
    n_hosts: int, lifetimes: list[int], sizes: list[int]
) -> None:
    """Hosts are kept busy by small sandboxes arriving every tick (each living 1-6 ticks).
    A whole-host request arriving at tick 0 is placed by tick reserve_after + 6 + 1: once
    it holds a reservation, nothing new lands on that host and the old ones end."""
    s = sched(*(HostCapacity(f"h{i}", 8, 8192) for i in range(n_hosts)),
              aging=Aging(reserve_after_s=5, max_reservations=1))
    ends: dict[str, int] = {}
    big_placed_at: int | None = None
    for tick in range(40):
        for sid, end in list(ends.items()):
            if end <= tick:
                s.release(sid)
                del ends[sid]
        for k in range(n_hosts * 2):  # more small demand than the hosts can take
            sid = f"t{tick}-{k}"
            if s.submit(req(sid, sizes[(tick + k) % 40], 256), now=tick) is not None:
                ends[sid] = tick + lifetimes[(tick * 7 + k) % 40]
        if tick == 0:
            s.submit(req("big", 8, 8192), now=0)
        else:
            s.schedule(now=tick)
        for sid in [r.sandbox_id for r in s.pending() if r.sandbox_id != "big"]:
            s.release(sid)  # small requests that found no room give up
        if big_placed_at is None and s.host_of("big") is not None:
            big_placed_at = tick
    assert big_placed_at is not None
    assert big_placed_at <= 5 + 6 + 1
