"""``HostFleet``: the agent's hosts, driven through their lifecycle and autoscaled.

One :meth:`HostFleet.step` (the agent runs it every ``interval_s``):

1. **reconcile** every live host, each step measuring before it acts
   (see :mod:`byoc_agent.hosts.phases` for the diagram). The measurement is one
   ``list_by_tag(corral:agent)`` for all hosts; a host missing from it is described on
   its own before anything is done to it.

   - REQUESTED: look the client token up by tag; if the provider has no such host,
     ``provision`` with that token (idempotent), then record the provider's id.
   - PROVISIONING: as listed (or described); READY and the ready check passes → READY. Past
     ``ready_by`` → ``terminate``, record FAILED (``not_ready_in_time``) and request a
     replacement of the same type.
   - READY: as listed (or described); gone or going at the provider → FAILED (``lost``)
     and its sandboxes are released.
   - DRAINING: while a sandbox is placed on it, wait; then ``terminate`` and
     ``describe`` until the provider says TERMINATED.

2. **place** waiting sandboxes (oldest first, with reservations for those waiting long,
   :class:`~byoc_agent.scheduling.BestFitScheduler`);
3. **plan** (:func:`byoc_agent.hosts.autoscale.plan`) and apply it: a launch is written as
   a REQUESTED record first, then provisioned in the same step; a drain is written as
   DRAINING and the host leaves the scheduler at once (it is terminated from the next
   step on, once no sandbox is placed there).

Every phase change is written to the agent's SQLite state before the next provider call.
A crash anywhere leaves a record the next step resumes from: a host provisioned but not
yet recorded is found again by its client token (``list_by_tag``), and EC2's
``ClientToken`` makes a repeated launch return the first instance. On start, hosts
tagged with this agent that the state does not know (e.g. the state file was restored
from an old backup) are adopted, so they are counted, placed on and scaled in.

Credentials: the provider SDK finds them itself from the host's identity (instance role,
service account, managed identity). Nothing here reads, stores or reports one; what the
heartbeat carries about hosts is :meth:`HostFleet.report` (id, type, phase, capacity).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import structlog

from byoc_agent.hosts.autoscale import HostView, ScalePlan, ScalingPolicy, plan
from byoc_agent.hosts.phases import LIVE, HostPhase, can_move
from byoc_agent.hosts.workers import HostWorkers
from byoc_agent.protocol.errors import (
    CapacityError,
    CorralError,
    InvalidArgumentError,
    NotFoundError,
    RetryableError,
)
from byoc_agent.providers.base import (
    TAG_AGENT,
    TAG_CLIENT_TOKEN,
    Host,
    HostProvider,
    HostSpec,
    HostState,
    Offering,
)
from byoc_agent.providers.errors import (
    HostNotFoundError,
    ProviderAuthError,
    QuotaExceededError,
    UnknownInstanceTypeError,
)
from byoc_agent.scheduling import (
    Aging,
    BestFitScheduler,
    HostCapacity,
    Isolation,
    Overcommit,
    SandboxRequest,
)
from byoc_agent.scheduling.placement import fits
from byoc_agent.state import AgentStateStore, HostRecord, Placement

log = structlog.get_logger(__name__)

ReadyCheck = Callable[[Host], Awaitable[bool]]

REASON_NOT_READY = "not_ready_in_time"
REASON_LOST = "lost"
REASON_GONE = "gone_before_ready"
REASON_NOT_LAUNCHED = "not_launched_in_time"
# After a launch of a type fails for a reason waiting does not fix (quota, permissions,
# unknown type), the autoscaler does not try that type again for this long.
FAILED_TYPE_COOLDOWN_S = 300.0
REASON_QUOTA = "quota"
REASON_AUTH = "auth"
REASON_UNKNOWN_TYPE = "unknown_type"
REASON_REFUSED = "refused"
_COOLING_REASONS = frozenset({REASON_QUOTA, REASON_AUTH, REASON_UNKNOWN_TYPE, REASON_REFUSED})


def _failure_reason(e: CorralError) -> str:
    if isinstance(e, QuotaExceededError):
        return REASON_QUOTA
    if isinstance(e, ProviderAuthError):
        return REASON_AUTH
    if isinstance(e, UnknownInstanceTypeError):
        return REASON_UNKNOWN_TYPE
    return REASON_REFUSED


async def provider_says_ready(host: Host) -> bool:
    """The default ready check: the provider reports the host running."""
    return host.state is HostState.READY


@dataclass(frozen=True, slots=True)
class HostReport:
    """What the agent may say about one host outside its network (allow-listed fields)."""

    host_id: str
    instance_type: str
    state: str
    cpu_total: int
    cpu_free: int
    memory_mb_total: int
    memory_mb_free: int
    gpus_total: int
    gpus_free: int
    kvm: bool
    sandboxes: int


class HostFleet:
    """The agent's hosts: lifecycle, placement and autoscaling over one provider."""

    def __init__(
        self,
        *,
        state: AgentStateStore,
        provider: HostProvider,
        tenant_id: str,
        agent_id: str,
        policy: ScalingPolicy,
        prices: Mapping[str, Decimal],
        default_price: Decimal | None = None,
        overcommit: Overcommit | None = None,
        aging: Aging | None = None,
        subnet_id: str | None = None,
        security_group_ids: Sequence[str] = (),
        ready_check: ReadyCheck = provider_says_ready,
        workers: HostWorkers | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.provider = provider
        self.tenant_id = tenant_id
        self.agent_id = agent_id
        self.policy = policy
        self.prices = dict(prices)
        self.default_price = default_price
        self.overcommit = overcommit or Overcommit()
        self.subnet_id = subnet_id
        self.security_group_ids = tuple(security_group_ids)
        self.ready_check = ready_check
        self.workers = workers
        self.clock = clock
        # Set by kick() (a sandbox is waiting): the run loop steps at once instead of at
        # the next interval. Replaced after every step, which wakes wait_placed().
        self._wake = asyncio.Event()
        self._stepped = asyncio.Event()
        self.scheduler = BestFitScheduler(overcommit=self.overcommit, aging=aging)
        self._offerings: dict[str, Offering] = {}
        self._started = False
        self.last_plan = ScalePlan()
        # host key -> snapshots kept on that host: a host holding one is never scaled in
        # (the snapshot would go with it). Derived state: FleetRuntime rebuilds it at start
        # from the agent's snapshot directories.
        self._holds: dict[str, set[str]] = {}
        self.log = log.bind(agent_id=agent_id, tenant_id=tenant_id, provider=provider.name)

    # ------------------------------------------------------------ start / restore
    async def start(self) -> None:
        """Load offerings, rebuild the scheduler from the state, adopt unknown hosts."""
        self._offerings = {o.instance_type: o for o in await self.provider.list_offerings()}
        if self.default_price is not None:
            for itype in self._offerings:
                self.prices.setdefault(itype, self.default_price)
        unpriced = sorted(set(self._offerings) - set(self.prices))
        if unpriced:
            self.log.warning("offerings_without_price", instance_types=unpriced,
                             detail="never launched by the autoscaler; set their $/hour")
        for rec in self.state.hosts(frozenset({HostPhase.READY})):
            self.scheduler.add_host(_capacity(rec))
        # placed sandboxes first, so waiting ones cannot take their room while restoring
        ready = set(self.scheduler.hosts())
        waiting = []
        for p in self.state.placements():
            if p.host_key is not None and p.host_key in ready:
                self.scheduler.place_at(_request(p), p.host_key)
            else:  # waiting, or placed on a host that is no longer ready: wait again
                if p.host_key is not None:
                    p = dataclasses.replace(p, host_key=None)
                    self.state.put_placement(p)
                waiting.append(p)
        for p in waiting:  # oldest first, with their original ages
            self.scheduler.submit(_request(p), p.submitted_at)
        self._record_new_placements(self.clock())
        await self._adopt_unknown()
        self._started = True

    async def _adopt_unknown(self) -> None:
        known = {r.provider_host_id for r in self.state.hosts() if r.provider_host_id}
        tokens = {r.host_key: r for r in self.state.hosts()}
        for host in await self.provider.list_by_tag(TAG_AGENT, self.agent_id):
            if host.host_id in known:
                continue
            token = host.tags.get(TAG_CLIENT_TOKEN)
            if token is not None and token in tokens:
                continue  # a REQUESTED record: the next reconcile links it by token
            offering = self._offerings.get(host.instance_type)
            now = self.clock()
            rec = HostRecord(
                host_key=token or host.host_id,
                provider=self.provider.name,
                instance_type=host.instance_type,
                phase=HostPhase.PROVISIONING,
                vcpu=offering.vcpu if offering else 0,
                memory_mb=offering.memory_mib if offering else 0,
                gpus=offering.gpu_count if offering else 0,
                kvm=offering.kvm if offering else False,
                price_per_hour=self.prices.get(host.instance_type, Decimal(0)),
                requested_at=host.launched_at.timestamp(),
                phase_since=now,
                ready_by=now + self.policy.ready_timeout_s,
                provider_host_id=host.host_id,
                private_ip=host.private_ip,
            )
            self.state.put_host(rec)
            self.log.warning("host_adopted", host_key=rec.host_key, host_id=host.host_id,
                             detail="tagged with this agent but missing from its state")

    # ------------------------------------------------------------ sandboxes
    def submit(self, req: SandboxRequest) -> str | None:
        """Ask for room for a sandbox: the host key it is placed on, or None while it
        waits (the autoscaler counts it). Idempotent per sandbox id."""
        existing = self.state.get_placement(req.sandbox_id)
        if existing is not None and existing.host_key is not None:
            return existing.host_key
        now = self.clock()
        if existing is None:
            self.state.put_placement(_placement(req, None, now))
        # a request already waiting keeps its original time: asking again does not
        # reset its age (which is what earns it a reservation)
        since = existing.submitted_at if existing is not None else now
        host = self.scheduler.submit(req, since)
        self._record_new_placements(now)
        return host

    def release(self, sandbox_id: str) -> None:
        """The sandbox ended: give its room back."""
        host_key = self.scheduler.release(sandbox_id)
        self.state.delete_placement(sandbox_id)
        if host_key is not None and not self.scheduler.sandboxes_on(host_key):
            rec = self.state.get_host(host_key)
            if rec is not None and rec.phase is HostPhase.READY:
                self.state.put_host(dataclasses.replace(rec, idle_since=self.clock()))

    def host_of(self, sandbox_id: str) -> str | None:
        return self.scheduler.host_of(sandbox_id)

    def place_on(self, req: SandboxRequest, host_key: str) -> None:
        """Place a sandbox on one given host now (a restore goes where its snapshot is):
        NotFoundError if that host is not ready, CapacityError if it has no room."""
        rec = self.state.get_host(host_key)
        scheduled = host_key in self.scheduler.hosts()
        if rec is None or rec.phase is not HostPhase.READY or not scheduled:
            raise NotFoundError(f"host {host_key} is not ready", sandbox_id=req.sandbox_id)
        if self.scheduler.host_of(req.sandbox_id) == host_key:
            return  # placed already (a retried restore)
        free = self.scheduler.free(host_key)
        if not fits(free, req):
            raise CapacityError(
                f"host {host_key}, which holds the snapshot, has no room for {req.cpu} vCPU "
                f"and {req.memory_mb} MiB now (it has {free.cpu_milli // 1000} vCPU and "
                f"{free.memory_mb} MiB free)",
                sandbox_id=req.sandbox_id,
            )
        self.scheduler.place_at(req, host_key)
        self.state.put_placement(_placement(req, host_key, self.clock()))
        self._mark_busy(host_key)

    def hold(self, host_key: str, snapshot_id: str) -> None:
        """A snapshot is kept on this host: it is not scaled in until :meth:`unhold`."""
        self._holds.setdefault(host_key, set()).add(snapshot_id)
        self._mark_busy(host_key)

    def unhold(self, host_key: str, snapshot_id: str) -> None:
        """The snapshot was deleted: the host may go idle again."""
        held = self._holds.get(host_key)
        if held is None:
            return
        held.discard(snapshot_id)
        if held:
            return
        del self._holds[host_key]
        rec = self.state.get_host(host_key)
        if (rec is not None and rec.phase is HostPhase.READY
                and not self.state.placements(host_key)):  # fmt: skip
            self.state.put_host(dataclasses.replace(rec, idle_since=self.clock()))

    def held(self, host_key: str) -> frozenset[str]:
        """The snapshots kept on a host."""
        return frozenset(self._holds.get(host_key, ()))

    def _record_new_placements(self, now: float) -> None:
        waiting = {p.sandbox_id: p for p in self.state.placements() if p.host_key is None}
        for sid, p in waiting.items():
            host_key = self.scheduler.host_of(sid)
            if host_key is None:
                continue
            self.state.put_placement(dataclasses.replace(p, host_key=host_key))
            self._mark_busy(host_key)

    def _mark_busy(self, host_key: str) -> None:
        """Something runs or is kept on the host: its idle clock stops."""
        rec = self.state.get_host(host_key)
        if rec is not None and rec.idle_since is not None:
            self.state.put_host(dataclasses.replace(rec, idle_since=None))

    # ------------------------------------------------------------ the loop
    async def run(self, interval_s: float = 5.0) -> None:
        """Step forever. A failed step is logged and retried next interval: hosts and the
        sandboxes on them keep running whatever the provider answers."""
        while True:
            try:
                await self.step()
            except CorralError as e:
                self.log.warning("fleet_step_failed", error=e.message, code=e.code.value)
            except Exception:  # loop handler: an SDK surprise must not stop the agent
                self.log.exception("fleet_step_crashed")
            # A waiting sandbox (or a host still coming up for one) is looked at again
            # within a second; otherwise at the interval or when kick() is called.
            busy = bool(self.scheduler.pending()) or bool(
                self.state.hosts(frozenset({HostPhase.REQUESTED, HostPhase.PROVISIONING}))
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(interval_s, 1.0) if busy
                                       else interval_s)
            self._wake.clear()

    def kick(self) -> None:
        """Step soon: something is waiting for room."""
        self._wake.set()

    async def wait_placed(self, sandbox_id: str, timeout_s: float) -> str | None:
        """The host a waiting sandbox was placed on, once a step places it; None if it is
        not placed within ``timeout_s`` (it keeps waiting until :meth:`release`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            host = self.scheduler.host_of(sandbox_id)
            if host is not None:
                return host
            if self.state.get_placement(sandbox_id) is None:
                return None  # released meanwhile
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.kick()
            stepped = self._stepped
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stepped.wait(), min(left, 1.0))

    async def step(self) -> ScalePlan:
        """Reconcile every live host, place waiting sandboxes, then plan and apply."""
        if not self._started:
            await self.start()
        live = self.state.hosts(LIVE)
        # Measure every host with one listing (not one describe per host per step);
        # a host missing from it is then described on its own before anything is done.
        seen: dict[str, Host] = {}
        if live:
            seen = {h.host_id: h for h in await self.provider.list_by_tag(TAG_AGENT,
                                                                          self.agent_id)}
        for rec in live:
            try:
                await self._reconcile(rec, seen)
            except RetryableError as e:
                self.log.warning("host_step_retry", host_key=rec.host_key, error=e.message)
        now = self.clock()
        self.scheduler.schedule(now)
        self._record_new_placements(now)
        decided = self.plan(now)
        for instance_type in decided.launch:
            self._request_host(instance_type, now)
        for host_key in decided.drain:
            self._drain(host_key, now)
        for sid, reason in decided.blocked:
            self.log.info("scale_out_blocked", sandbox_id=sid, reason=reason.value)
        self.last_plan = decided
        if decided.launch:  # provision at once rather than a whole interval later
            for rec in self.state.hosts(frozenset({HostPhase.REQUESTED})):
                try:
                    await self._reconcile(rec, {})
                except RetryableError as e:
                    self.log.warning("host_step_retry", host_key=rec.host_key, error=e.message)
        self._stepped.set()  # wake wait_placed(); later waiters wait for the next step
        self._stepped = asyncio.Event()
        return decided

    def plan(self, now: float) -> ScalePlan:
        views = []
        for rec in self.state.hosts(LIVE):
            on = self.state.placements(rec.host_key)
            views.append(
                HostView(
                    host_key=rec.host_key,
                    phase=rec.phase,
                    instance_type=rec.instance_type,
                    vcpu=rec.vcpu,
                    memory_mb=rec.memory_mb,
                    gpus=rec.gpus,
                    kvm=rec.kvm,
                    price_per_hour=rec.price_per_hour,
                    used_cpu=sum(p.cpu for p in on),
                    used_memory_mb=sum(p.memory_mb for p in on),
                    used_gpus=sum(p.gpus for p in on),
                    # snapshots kept there count as tenants: never idle, never scaled in
                    sandboxes=len(on) + len(self._holds.get(rec.host_key, ())),
                    idle_since=None if self._holds.get(rec.host_key) else rec.idle_since,
                )
            )
        cooling = {
            r.instance_type
            for r in self.state.hosts(frozenset({HostPhase.FAILED}))
            if r.reason in _COOLING_REASONS and now - r.phase_since < FAILED_TYPE_COOLDOWN_S
        }
        return plan(
            hosts=views,
            pending=self.scheduler.pending(),
            offerings=[o for t, o in self._offerings.items() if t not in cooling],
            prices=self.prices,
            policy=self.policy,
            overcommit=self.overcommit,
            now=now,
        )

    # ------------------------------------------------------------ lifecycle steps
    def _request_host(self, instance_type: str, now: float, *, replaces: str | None = None) -> str:
        offering = self._offerings.get(instance_type)
        if offering is None:
            raise InvalidArgumentError(
                f"{self.provider.name} does not offer {instance_type}; "
                "pick one of its offerings",
                field="instance_type",
            )
        rec = HostRecord(
            host_key=f"ch-{uuid.uuid4().hex}",
            provider=self.provider.name,
            instance_type=instance_type,
            phase=HostPhase.REQUESTED,
            vcpu=offering.vcpu,
            memory_mb=offering.memory_mib,
            gpus=offering.gpu_count,
            kvm=offering.kvm,
            price_per_hour=self.prices.get(instance_type, Decimal(0)),
            requested_at=now,
            phase_since=now,
            ready_by=now + self.policy.ready_timeout_s,
            replaces=replaces,
        )
        if self.workers is not None:  # credentials first: a retried launch sends the same
            rec = dataclasses.replace(rec, worker=self.workers.prepare(rec.host_key))
        self.state.put_host(rec)  # the intent is durable before any provider call
        self.log.info("host_requested", host_key=rec.host_key, instance_type=instance_type,
                      replaces=replaces)
        return rec.host_key

    def _drain(self, host_key: str, now: float) -> None:
        rec = self.state.get_host(host_key)
        if rec is None or not can_move(rec.phase, HostPhase.DRAINING):
            return
        if self.state.placements(host_key):
            return  # never drain a host with sandboxes on it
        self.scheduler.remove_host(host_key)
        self._move(rec, HostPhase.DRAINING, now)

    def _move(
        self, rec: HostRecord, phase: HostPhase, now: float, **changes: object
    ) -> HostRecord:
        if not can_move(rec.phase, phase):
            raise InvalidArgumentError(
                f"host {rec.host_key} cannot go from {rec.phase.value} to {phase.value}"
            )
        new = dataclasses.replace(rec, phase=phase, phase_since=now, **changes)  # type: ignore[arg-type]
        self.state.put_host(new)
        if phase is not rec.phase:
            self.log.info("host_phase", host_key=rec.host_key, host_id=new.provider_host_id,
                          phase=phase.value, was=rec.phase.value, reason=new.reason)
        return new

    async def _reconcile(self, rec: HostRecord, seen: Mapping[str, Host]) -> None:
        """One lifecycle step for one host. ``seen`` is this step's listing of the agent's
        live hosts by provider id; a host absent from it is described before acting."""
        listed = seen.get(rec.provider_host_id) if rec.provider_host_id else None
        if rec.phase is HostPhase.REQUESTED:
            await self._step_requested(rec)
        elif rec.phase is HostPhase.PROVISIONING:
            await self._step_provisioning(rec, listed)
        elif rec.phase is HostPhase.READY:
            await self._step_ready(rec, listed)
        elif rec.phase is HostPhase.DRAINING:
            await self._step_draining(rec, listed)

    async def _step_requested(self, rec: HostRecord) -> None:
        # Measure: did a launch with this token already happen (crash after provision)?
        found = await self.provider.list_by_tag(TAG_CLIENT_TOKEN, rec.host_key)
        if found:
            host = found[0]
        else:
            spec = HostSpec(
                tenant_id=self.tenant_id,
                agent_id=self.agent_id,
                instance_type=rec.instance_type,
                client_token=rec.host_key,
                subnet_id=self.subnet_id,
                security_group_ids=self.security_group_ids,
                user_data=self.workers.user_data(rec) if self.workers is not None else None,
            )
            try:
                host = await self.provider.provision(spec)
            except RetryableError:
                # no capacity or no answer now: retried every step until the deadline,
                # then given up (the next plan decides afresh, perhaps another type)
                if self.clock() >= rec.ready_by:
                    self._move(rec, HostPhase.FAILED, self.clock(), reason=REASON_NOT_LAUNCHED)
                    return
                raise
            except CorralError as e:  # quota, auth, unknown type: waiting will not help
                reason = _failure_reason(e)
                self._move(rec, HostPhase.FAILED, self.clock(), reason=reason)
                self.log.error("host_provision_failed", host_key=rec.host_key,
                               instance_type=rec.instance_type, reason=reason, error=e.message)
                return
        rec = self._move(rec, HostPhase.PROVISIONING, self.clock(),
                         provider_host_id=host.host_id, private_ip=host.private_ip)
        await self._step_provisioning(rec, host)

    async def _step_provisioning(self, rec: HostRecord, seen: Host | None = None) -> None:
        if rec.provider_host_id is None:  # only REQUESTED lacks one; never recorded so
            self._move(rec, HostPhase.FAILED, self.clock(), reason=REASON_GONE)
            return
        try:
            host = seen or await self.provider.describe(rec.provider_host_id)
        except HostNotFoundError:
            self._move(rec, HostPhase.FAILED, self.clock(), reason=REASON_GONE)
            self._replace(rec)
            return
        now = self.clock()
        if host.state in (HostState.DRAINING, HostState.TERMINATED):
            await self._give_back(rec)
            self._move(rec, HostPhase.FAILED, now, reason=REASON_GONE)
            self._replace(rec)
            return
        if host.state is HostState.READY and await self.ready_check(host) and (
            await self._worker_ready(dataclasses.replace(rec, private_ip=host.private_ip))
        ):
            now = self.clock()
            rec = self._move(rec, HostPhase.READY, now, private_ip=host.private_ip,
                             idle_since=now)
            self.scheduler.add_host(_capacity(rec))
            return
        if now >= rec.ready_by:
            await self._give_back(rec)
            self._move(rec, HostPhase.FAILED, now, reason=REASON_NOT_READY)
            self._replace(rec)

    async def _worker_ready(self, rec: HostRecord) -> bool:
        """The host's worker answers (always true without workers). A failing check is
        "not yet": the host stays PROVISIONING until its ready_by deadline."""
        if self.workers is None:
            return True
        try:
            return await self.workers.ready(rec)
        except Exception as e:  # any failure to reach it means not ready yet
            self.log.info("host_worker_not_ready", host_key=rec.host_key,
                          error=type(e).__name__)
            return False

    async def _step_ready(self, rec: HostRecord, listed: Host | None = None) -> None:
        if rec.provider_host_id is None:
            return
        try:
            host = listed or await self.provider.describe(rec.provider_host_id)
            gone = host.state in (HostState.DRAINING, HostState.TERMINATED)
        except HostNotFoundError:
            gone = True
        if not gone:
            return
        await self._give_back(rec)
        for sid in self.scheduler.remove_host(rec.host_key):
            self.state.delete_placement(sid)
            self.log.warning("sandbox_host_lost", sandbox_id=sid, host_key=rec.host_key)
        self._move(rec, HostPhase.FAILED, self.clock(), reason=REASON_LOST)

    async def _step_draining(self, rec: HostRecord, listed: Host | None = None) -> None:
        if self.state.placements(rec.host_key):
            return  # a sandbox still runs there: never terminate it under one
        if rec.provider_host_id is None:
            self._move(rec, HostPhase.TERMINATED, self.clock())
            return
        try:
            host = listed or await self.provider.describe(rec.provider_host_id)
        except HostNotFoundError:
            self._move(rec, HostPhase.TERMINATED, self.clock())
            return
        if host.state is not HostState.TERMINATED:
            await self.provider.terminate(rec.provider_host_id)
            try:
                host = await self.provider.describe(rec.provider_host_id)
            except HostNotFoundError:
                self._move(rec, HostPhase.TERMINATED, self.clock())
                return
        if host.state is HostState.TERMINATED:
            self._move(rec, HostPhase.TERMINATED, self.clock())

    async def _give_back(self, rec: HostRecord) -> None:
        """Terminate at the provider (idempotent); a host already gone is fine."""
        if rec.provider_host_id is None:
            return
        try:
            await self.provider.terminate(rec.provider_host_id)
        except HostNotFoundError:
            return

    def _replace(self, rec: HostRecord) -> None:
        self._request_host(rec.instance_type, self.clock(), replaces=rec.host_key)

    # ------------------------------------------------------------ reporting
    def elastic_capacity(self) -> tuple[int, int]:
        """(vCPU, MiB) the fleet can promise sandboxes: its live hosts (after overcommit)
        plus the hosts the autoscaler may still launch within max_hosts and the budget,
        counted at the largest priced, allowed offering. This is what the agent offers the
        control plane, so a create that does not fit today's hosts is sent here and waits
        for a scale-out instead of being refused."""
        live = [r for r in self.state.hosts(LIVE) if r.phase is not HostPhase.DRAINING]
        cpu = sum(int(r.vcpu * self.overcommit.cpu) for r in live)
        mem = sum(int(r.memory_mb * self.overcommit.memory) for r in live)
        allowed = set(self.policy.instance_types)
        priced = [
            (o, self.prices[t]) for t, o in self._offerings.items()
            if t in self.prices and (not allowed or t in allowed)
        ]
        if not priced:
            return cpu, mem
        offering, price = max(priced, key=lambda op: (op[0].vcpu, op[0].memory_mib))
        room = self.policy.max_hosts - len(self.state.hosts(LIVE))
        spend = sum((r.price_per_hour for r in self.state.hosts(LIVE)), Decimal(0))
        if price > 0:
            room = min(room, int((self.policy.budget_per_hour - spend) // price))
        room = max(room, 0)
        cpu += room * int(offering.vcpu * self.overcommit.cpu)
        mem += room * int(offering.memory_mib * self.overcommit.memory)
        return cpu, mem

    def report(self) -> list[HostReport]:
        out = []
        scheduled = set(self.scheduler.hosts())
        for rec in self.state.hosts(LIVE):
            if rec.host_key in scheduled:
                free = self.scheduler.free(rec.host_key)
                cpu_free = free.cpu_milli // 1000
                mem_free, gpus_free = free.memory_mb, free.gpus
                n = len(self.scheduler.sandboxes_on(rec.host_key))
            else:
                cpu_free = mem_free = gpus_free = n = 0
            out.append(
                HostReport(
                    host_id=rec.provider_host_id or rec.host_key,
                    instance_type=rec.instance_type,
                    state=rec.phase.value,
                    cpu_total=rec.vcpu,
                    cpu_free=max(cpu_free, 0),
                    memory_mb_total=rec.memory_mb,
                    memory_mb_free=max(mem_free, 0),
                    gpus_total=rec.gpus,
                    gpus_free=max(gpus_free, 0),
                    kvm=rec.kvm,
                    sandboxes=n,
                )
            )
        return out


def _capacity(rec: HostRecord) -> HostCapacity:
    return HostCapacity(rec.host_key, rec.vcpu, rec.memory_mb, rec.gpus, rec.kvm)


def _request(p: Placement) -> SandboxRequest:
    return SandboxRequest(p.sandbox_id, p.cpu, p.memory_mb, p.gpus, Isolation(p.isolation))


def _placement(req: SandboxRequest, host_key: str | None, now: float) -> Placement:
    return Placement(req.sandbox_id, host_key, req.cpu, req.memory_mb, req.gpus,
                     req.isolation.value, now)
