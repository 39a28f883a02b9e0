"""The agent's main loop: verify jobs, run them against a ``Runtime``, report signed results.

Ordering that keeps the agent honest across crashes:

1. verify the job completely (signature, claims, replay, order) — nothing happens before;
2. record it as *accepted* (job id, seq and its signed bytes), durably — the replay guard
   is now armed;
3. ack the JetStream message. The consumer allows one unacked job at a time, so jobs are
   accepted strictly in stream (= seq) order even across crashes and redeliveries;
4. execute idempotently (a create for a sandbox that exists returns the existing one);
5. store the signed result in the outbox and mark the job *done*; the outbox publisher
   sends it until the stream acks.

If the agent dies between 2 and 5, ``recover()`` finishes the accepted jobs from their
stored bytes after the restart. A redelivered job that is *done* is answered again from
its stored result (no second execution). Shutdown never kills sandboxes.

Usage: the meter (:mod:`byoc_agent.meter`) spools a signed record per running sandbox
every ``usage_interval_s`` and a final one when a sandbox ends; the outbox publisher sends
them like results. ``recover()`` emits the final record of a sandbox whose end was
recorded but not yet metered when the agent died.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from byoc_agent import __version__
from byoc_agent.egress import EgressCeiling
from byoc_agent.hosts.autoscale import MAX_HOSTS
from byoc_agent.hosts.fleet import HostFleet
from byoc_agent.hosts.runtime import FleetRuntime
from byoc_agent.meter import UsageMeter
from byoc_agent.protocol import cosign, messages, signing, subjects, verify
from byoc_agent.protocol.cancel import raise_if_cancelling
from byoc_agent.protocol.errors import (
    CapacityError,
    CorralError,
    EnvelopeRejectedError,
    ErrorCode,
    InvalidArgumentError,
    NotFoundError,
    RejectReason,
    SandboxNotFoundError,
    SandboxNotRunningError,
)
from byoc_agent.protocol.messages import SandboxReport, SandboxState
from byoc_agent.runtimes.base import (
    SNAPSHOT_META,
    EndReason,
    KnowsStopReason,
    Liveness,
    RemovesSnapshots,
    Runtime,
    SandboxHandle,
    SandboxSpec,
    Snapshotting,
)
from byoc_agent.runtimes.multi import isolation_of, runtime_isolations, runtime_names
from byoc_agent.state import AgentIdentity, AgentStateStore, SandboxRecord
from byoc_agent.transport.nats import IncomingJob, NatsAgentTransport, TransportUnavailable
from byoc_agent.warm_pool import PoolKey, WarmPool

log = structlog.get_logger(__name__)

# Rejections after which the job is known to be authentic and addressed to us, so the
# control plane can be told (it tracks the job as "rejected").
_ANSWERABLE = frozenset(
    {
        RejectReason.WRONG_TENANT,
        RejectReason.EXPIRED,
        RejectReason.NOT_YET_VALID,
        RejectReason.SEQ_NOT_INCREASING,
        RejectReason.MISSING_COSIGNATURE,
    }
)

LIVENESS_CHECK_EVERY_S = 5.0
OUTBOX_BATCH = 100


@dataclass(frozen=True, slots=True)
class AgentConfig:
    data_plane_url: str
    cpu_total: int
    memory_mb_total: int
    heartbeat_interval_s: float = 5.0
    reaper_interval_s: float = 0.5
    usage_interval_s: float = 60.0
    fleet_interval_s: float = 5.0
    host: str = dataclasses.field(default_factory=socket.gethostname)
    cosign_policy: cosign.CosignPolicy = dataclasses.field(default_factory=cosign.CosignPolicy)
    # Where snapshots are kept (``<agent home>/snapshots``); None: this agent takes none.
    snapshots_dir: Path | None = None
    # Destinations ("a.b.c.d:port") a sandbox may ask to reach (CORRAL_AGENT_MICROVM_EGRESS);
    # a create asking for none gets no network. ADR 0027.
    egress_ceiling: tuple[str, ...] = ()
    # Where the data plane listens besides data_plane_url's host (never an egress target).
    own_hosts: tuple[str, ...] = ()


class Agent:
    def __init__(
        self,
        *,
        identity: AgentIdentity,
        signing_key: signing.SigningKey,
        keyring: verify.Keyring,
        state: AgentStateStore,
        runtime: Runtime,
        transport: NatsAgentTransport,
        config: AgentConfig,
        templates: Callable[[], list[str]] = list,
        fleet: HostFleet | None = None,
        warm_pool: Mapping[PoolKey, int] | None = None,
        warm_pool_ledger: Path | None = None,
        restore_pool: int = 0,
    ) -> None:
        self.identity = identity
        self.signing_key = signing_key
        self.keyring = keyring
        self.state = state
        self.runtime = runtime
        self.transport = transport
        self.config = config
        self._templates = templates
        self.fleet = fleet
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._outbox_wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[str] = set()
        self.meter = UsageMeter(
            identity=identity, signing_key=signing_key, state=state, host=config.host
        )
        # Pre-started sandboxes per size (ADR 0025) and pre-restored copies of recent
        # snapshots (ADR 0029); None when neither is configured.
        self.pool: WarmPool | None = None
        if (warm_pool and any(n > 0 for n in warm_pool.values())) or restore_pool > 0:
            self.pool = WarmPool(
                runtime, warm_pool or {}, tenant_id=identity.tenant_id,
                free_capacity=lambda: self.free_capacity()[:2], ledger=warm_pool_ledger,
                restore_size=restore_pool,
            )  # fmt: skip
        self.audience = verify.Audience(agent_id=identity.agent_id, tenant_id=identity.tenant_id)
        self.log = log.bind(agent_id=identity.agent_id, tenant_id=identity.tenant_id)
        self.egress = EgressCeiling.of(
            config.egress_ceiling,
            own_hosts=(*config.own_hosts, urlsplit(config.data_plane_url).hostname),
        )
        for rule in self.egress.never_granted():
            self.log.warning("egress_ceiling_entry_never_granted", entry=str(rule),
                             detail="loopback, link-local or the agent's own address")  # fmt: skip

    # ------------------------------------------------------------------ run
    async def run(self) -> None:
        """Recover sandboxes, then serve jobs until cancelled."""
        await self.recover()
        if self.fleet is not None:
            # Offerings and hosts known before the first heartbeat, so the capacity it
            # offers is right from the start (a failure is retried by the fleet's loop).
            try:
                await self.fleet.start()
            except Exception as e:  # the provider may be unreachable for now
                self.log.warning("fleet_start_failed", error=str(e))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._job_loop())
            tg.create_task(self._outbox_loop())
            tg.create_task(self._heartbeat_loop())
            tg.create_task(self._reaper_loop())
            tg.create_task(self._meter_loop())
            if self.fleet is not None:
                tg.create_task(self.fleet.run(self.config.fleet_interval_s))
            if self.pool is not None:
                held = {r.handle.sandbox_id for r in self.state.sandboxes()}
                await self._keep_recent_snapshots(self.pool)
                tg.create_task(self.pool.run(in_use=held))

    async def _keep_recent_snapshots(self, pool: WarmPool) -> None:
        """After a restart, the restore pool serves the most recently taken snapshots
        again (the pool keeps the newest ``RESTORE_POOL_SNAPSHOTS`` of those offered)."""
        root = self.config.snapshots_dir
        if not pool.restore_size or root is None:
            return

        def complete() -> list[tuple[float, PoolKey, Path]]:
            found = []
            for info_file in root.glob(f"*/{_SNAPSHOT_INFO}"):
                try:
                    info = json.loads(info_file.read_text())
                    key = PoolKey(str(info["template"]), int(info["cpu"]),
                                  int(info["memory_mb"]), str(info["isolation"]),
                                  info_file.parent.name)  # fmt: skip
                    found.append((float(info.get("created_at", 0.0)), key, info_file.parent))
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # a broken snapshot is reported when someone restores it
            return sorted(found, key=lambda f: f[0])

        for _, key, source in await asyncio.to_thread(complete):
            pool.keep_snapshot(key, source)  # oldest first: the newest stay

    async def recover(self) -> None:
        """Reattach to sandboxes that were running before a restart; finish cut-off jobs."""
        for data in self.state.unfinished_jobs():
            try:
                job_bytes, _ = cosign.split(data)  # co-signing was checked at acceptance
                job = verify.verify_signed_job(job_bytes, keyring=self.keyring)
            except EnvelopeRejectedError as e:  # e.g. its key was revoked meanwhile
                self.log.warning("unfinished_job_dropped", reason=e.reason.value, **e.fields)
                continue
            self.log.info("job_resumed", job_id=job.job_id, detail="finishing after restart")
            await self.execute(job)
        for rec in self.state.sandboxes(SandboxState.RUNNING):
            try:
                alive = await self.runtime.recover(rec.handle)
            except CorralError as e:
                self.log.warning("recover_failed", sandbox_id=rec.sandbox_id, error=str(e))
                alive = Liveness.MISSING
            if alive is Liveness.RUNNING:
                self.log.info("sandbox_reattached", sandbox_id=rec.sandbox_id)
            else:
                # Ended while the agent was down: say why when the runtime can tell.
                reason = EndReason.LOST
                if alive is Liveness.STOPPED:
                    known = await self._stop_reason(rec.handle)
                    reason = known if known is not EndReason.EXITED else EndReason.LOST
                await self.publish_event(await self._end(rec, SandboxState.FAILED, reason))
        if self.meter.settle():
            self._outbox_wakeup.set()

    # ------------------------------------------------------------------ jobs
    async def _job_loop(self) -> None:
        async for incoming in self.transport.jobs():
            raise_if_cancelling()
            try:
                outcome = await self.accept(incoming.data)
            except Exception:  # transport handler: one bad message must not stop the loop
                self.log.exception("job_rejected", reason=RejectReason.MALFORMED.value,
                                   detail="verifier error")
                outcome = None
            if outcome is None:
                await self._ack(incoming)
                continue
            job = outcome
            await self._ack(incoming)
            task = asyncio.create_task(self._execute(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _ack(self, incoming: IncomingJob) -> None:
        try:
            await incoming.ack()
        except (TimeoutError, Exception) as e:  # transport handler: never let an ack kill us
            self.log.warning("ack_failed", error=str(e))

    async def accept(self, data: bytes) -> messages.Job | None:
        """Verify one job. Returns it if it should be executed now; None if it was
        rejected or already answered (the reason is logged; nothing was executed)."""
        job_bytes, cosignatures = cosign.split(data)
        try:
            job = verify.verify_signed_job(job_bytes, keyring=self.keyring)
        except EnvelopeRejectedError as e:
            self.log.warning("job_rejected", reason=e.reason.value, detail=e.message, **e.fields)
            return None
        jlog = self.log.bind(job_id=job.job_id, seq=job.seq, kind=job.body.kind)
        try:
            verify.check_job_claims(job, audience=self.audience)
        except EnvelopeRejectedError as e:
            jlog.warning("job_rejected", reason=e.reason.value, detail=e.message)
            if e.reason in _ANSWERABLE:
                self._answer_rejected(job, e)
            return None
        try:
            cosigner = cosign.check(job, cosignatures, self.config.cosign_policy)
        except EnvelopeRejectedError as e:
            jlog.warning("job_rejected", reason=e.reason.value, detail=e.message)
            self._answer_rejected(job, e)
            return None
        if cosigner is not None:
            jlog.info("job_cosigned", cosigner_kid=cosigner)
        if job.job_id in self._inflight:
            jlog.info("job_duplicate", detail="already executing; this delivery is dropped")
            return None
        applied = self.state.applied(job.job_id)
        if applied is not None:
            if applied.status == "done" and applied.result is not None:
                jlog.warning(
                    "job_rejected", reason=RejectReason.REPLAYED.value,
                    detail="job id already applied; answered from the stored result",
                )
                self.state.enqueue(
                    _result_msg_id(job.job_id),
                    subjects.results(self.identity.tenant_id, self.identity.agent_id),
                    applied.result,
                )
                self._outbox_wakeup.set()
                return None
            jlog.info("job_resumed", detail="accepted before a restart; executing idempotently")
            self._inflight.add(job.job_id)
            return job
        try:
            verify.check_job_order(job, replay=self.state)
        except EnvelopeRejectedError as e:
            jlog.warning("job_rejected", reason=e.reason.value, detail=e.message)
            self._answer_rejected(job, e)
            return None
        self.state.accept_job(job.job_id, job.seq, data)
        self._inflight.add(job.job_id)
        return job

    async def _execute(self, job: messages.Job) -> None:
        try:
            await self.execute(job)
        finally:
            self._inflight.discard(job.job_id)

    async def execute(self, job: messages.Job) -> messages.JobResult:
        """Run an accepted job and store its signed result in the outbox."""
        body = job.body
        report: SandboxReport | None
        jlog = self.log.bind(job_id=job.job_id, sandbox_id=body.sandbox_id, kind=body.kind)
        async with self._locks[body.sandbox_id]:
            try:
                if isinstance(body, messages.CreateSandboxBody):
                    report = await self._create(job.job_id, body)
                elif isinstance(body, messages.KillSandboxBody):
                    report = await self._kill(body.sandbox_id)
                elif isinstance(body, messages.PauseSandboxBody):
                    report = await self._pause(body.sandbox_id)
                elif isinstance(body, messages.ResumeSandboxBody):
                    report = await self._resume(body.sandbox_id)
                elif isinstance(body, messages.SnapshotSandboxBody):
                    report = await self._snapshot(body)
                elif isinstance(body, messages.RestoreSandboxBody):
                    report = await self._restore(job.job_id, body)
                elif isinstance(body, messages.DeleteSnapshotBody):
                    await self._delete_snapshot(body)
                    report = None
                else:
                    report = await self._set_timeout(body.sandbox_id, body.timeout_s)
                result = self._result(job, "succeeded", sandbox=report)
                jlog.info("job_succeeded", state=report.state.value if report else None)
            except CorralError as e:
                jlog.warning("job_failed", code=e.code.value, error=e.message)
                result = self._result(
                    job, "failed",
                    error=messages.WireError(code=e.code.value, message=_wire_message(e.message)),
                )  # fmt: skip
            except Exception as e:  # transport-level handler: report, never crash the loop
                jlog.exception("job_crashed")
                result = self._result(
                    job,
                    "failed",
                    error=messages.WireError(
                        code=ErrorCode.INTERNAL.value, message=f"agent error: {type(e).__name__}"
                    ),
                )
        data = signing.sign(self.signing_key, messages.RESULT_TYP, messages.to_json_bytes(result))
        self.state.enqueue(
            _result_msg_id(job.job_id),
            subjects.results(self.identity.tenant_id, self.identity.agent_id),
            data,
        )
        self.state.finish_job(job.job_id, data)
        self._outbox_wakeup.set()
        return result

    def _answer_rejected(self, job: messages.Job, e: EnvelopeRejectedError) -> None:
        if job.agent_id != self.identity.agent_id:
            return
        result = self._result(
            job, "rejected",
            error=messages.WireError(
                code=ErrorCode.REJECTED.value, message=f"{e.reason.value}: {e.message}"[:2000]
            ),
        )
        data = signing.sign(self.signing_key, messages.RESULT_TYP, messages.to_json_bytes(result))
        self.state.enqueue(
            _result_msg_id(job.job_id) + "-rejected",
            subjects.results(self.identity.tenant_id, self.identity.agent_id),
            data,
        )
        self._outbox_wakeup.set()

    def _result(
        self,
        job: messages.Job,
        status: str,
        *,
        sandbox: SandboxReport | None = None,
        error: messages.WireError | None = None,
    ) -> messages.JobResult:
        return messages.JobResult.model_validate(
            {
                "schema": messages.RESULT_SCHEMA,
                "job_id": job.job_id,
                "tenant_id": self.identity.tenant_id,
                "agent_id": self.identity.agent_id,
                "status": status,
                "at": time.time(),
                "sandbox": sandbox,
                "error": error,
            }
        )

    # ------------------------------------------------------------ handlers
    async def _create(self, job_id: str, body: messages.CreateSandboxBody) -> SandboxReport:
        existing = self.state.get_sandbox(body.sandbox_id)
        if existing is not None:
            return _report(existing)
        if body.isolation not in runtime_isolations(self.runtime):
            raise InvalidArgumentError(
                f"this agent runs {self.runtime.name} sandboxes only; {body.isolation} "
                "isolation needs an agent with a runtime that provides it",
                job_id=job_id,
            )
        egress: tuple[str, ...] = ()
        if body.egress:
            if body.isolation != "microvm":
                raise InvalidArgumentError(
                    "egress: only microvm sandboxes have a network; gVisor sandboxes run "
                    "without one (use isolation=microvm)",
                    job_id=job_id, field="egress",
                )  # fmt: skip
            egress = self.egress.grant(body.egress, job_id=job_id)
        free_cpu, free_mem, _ = self.free_capacity()
        if body.cpu > free_cpu or body.memory_mb > free_mem:
            raise CapacityError(
                f"agent has {free_cpu} vCPU and {free_mem} MiB free; "
                f"sandbox asks {body.cpu} vCPU and {body.memory_mb} MiB",
                job_id=job_id,
            )
        spec = SandboxSpec(
            sandbox_id=body.sandbox_id,
            tenant_id=self.identity.tenant_id,
            template=body.template,
            cpu=body.cpu,
            memory_mb=body.memory_mb,
            timeout_s=body.timeout_s,
            env=dict(body.env),
            isolation=body.isolation,
            egress=egress,
        )
        handle = await self._start(spec)
        now = time.time()  # billing starts here, also for a sandbox taken from a warm pool
        rec = SandboxRecord(
            sandbox_id=body.sandbox_id,
            tenant_id=self.identity.tenant_id,
            handle=handle,
            state=SandboxState.RUNNING,
            cpu=body.cpu,
            memory_mb=body.memory_mb,
            template=body.template,
            started_at=now,
            deadline=now + body.timeout_s,
        )
        self.state.put_sandbox(rec)
        if self.pool is not None:
            self.pool.confirm(handle)
        return _report(rec)

    async def _start(self, spec: SandboxSpec) -> SandboxHandle:
        """A warm-pool member adopted as ``spec`` if one is ready, else a cold create (after
        evicting pool members if the sandbox needs their room)."""
        if self.pool is not None:
            # Pool members were started without a network: a sandbox with egress starts cold.
            handle = None if spec.egress else await self.pool.take(spec)
            if handle is not None:
                return handle
            self.pool.make_room(spec.cpu, spec.memory_mb)
        return await self.runtime.create(spec)

    async def _kill(self, sandbox_id: str) -> SandboxReport:
        rec = self.state.get_sandbox(sandbox_id)
        if rec is None:
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is not on this agent")
        if rec.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
            return _report(rec)
        return _report(await self._end(rec, SandboxState.KILLED, EndReason.KILLED))

    async def _pause(self, sandbox_id: str) -> SandboxReport:
        """Save and stop: billing stops at the pause; the timeout clock stops too."""
        rec = self.state.get_sandbox(sandbox_id)
        if rec is None:
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is not on this agent")
        if rec.state is SandboxState.PAUSED:
            return _report(rec)
        if rec.state is not SandboxState.RUNNING:
            raise SandboxNotRunningError(f"sandbox {sandbox_id} is {rec.state.value}")
        runtime = self.runtime
        if not isinstance(runtime, Snapshotting):
            raise InvalidArgumentError(f"runtime {runtime.name} cannot pause sandboxes")
        await runtime.pause(rec.handle)
        paused = dataclasses.replace(rec, state=SandboxState.PAUSED)
        self.state.put_sandbox(paused)
        self.meter.pause(paused, time.time())
        self._outbox_wakeup.set()
        return _report(paused)

    async def _resume(self, sandbox_id: str) -> SandboxReport:
        rec = self.state.get_sandbox(sandbox_id)
        if rec is None:
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is not on this agent")
        if rec.state is SandboxState.RUNNING:
            return _report(rec)
        if rec.state is not SandboxState.PAUSED:
            raise SandboxNotRunningError(f"sandbox {sandbox_id} is {rec.state.value}")
        runtime = self.runtime
        if not isinstance(runtime, Snapshotting):
            raise InvalidArgumentError(f"runtime {runtime.name} cannot resume sandboxes")
        await runtime.resume(rec.handle)
        now = time.time()
        # The timeout clock stood still while paused: what was left when it paused is left.
        paused_at = self.meter.paused_since(rec) or now
        left = max(rec.deadline - paused_at, 1.0)
        resumed = dataclasses.replace(rec, state=SandboxState.RUNNING, deadline=now + left)
        self.meter.resume(resumed, now)
        self.state.put_sandbox(resumed)
        return _report(resumed)

    def _snapshot_dir(self, snapshot_id: str) -> Path:
        # snapshot ids match the wire's id pattern: no "/" or "..", a plain directory name.
        if self.config.snapshots_dir is None:
            raise InvalidArgumentError("this agent keeps no snapshots")
        return self.config.snapshots_dir / snapshot_id

    async def _snapshot(self, body: messages.SnapshotSandboxBody) -> SandboxReport:
        """Write a snapshot of a running sandbox under ``<snapshots>/<snapshot_id>/``; the
        runtime syncs its filesystem first, stops it briefly, and lets it run on."""
        rec = self.state.get_sandbox(body.sandbox_id)
        if rec is None:
            raise SandboxNotFoundError(f"sandbox {body.sandbox_id} is not on this agent")
        dest = self._snapshot_dir(body.snapshot_id)
        async with self._locks[_snapshot_lock(body.snapshot_id)]:
            if await asyncio.to_thread((dest / _SNAPSHOT_INFO).is_file):
                return _report(rec)  # taken already (a redelivered job)
            if rec.state is not SandboxState.RUNNING:
                raise SandboxNotRunningError(f"sandbox {body.sandbox_id} is {rec.state.value}")
            runtime = self.runtime
            if not isinstance(runtime, Snapshotting):
                raise InvalidArgumentError(f"runtime {runtime.name} cannot snapshot sandboxes")
            await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.rmtree, dest, True)  # a half-written earlier try
            await runtime.snapshot(rec.handle, dest)
            info = {
                "snapshot_id": body.snapshot_id,
                "source_sandbox_id": rec.sandbox_id,
                "tenant_id": rec.tenant_id,
                "isolation": _isolation_of(rec.handle),
                "template": rec.template,
                "cpu": rec.cpu,
                "memory_mb": rec.memory_mb,
                "created_at": time.time(),
            }
            # Written last: its presence says the snapshot is complete.
            await asyncio.to_thread(_write_json, dest / _SNAPSHOT_INFO, info)
            if self.pool is not None:  # restores of it are served pre-restored (ADR 0029)
                key = PoolKey(rec.template, rec.cpu, rec.memory_mb, _isolation_of(rec.handle),
                              body.snapshot_id)  # fmt: skip
                self.pool.keep_snapshot(key, dest)
        self.log.info("snapshot_taken", sandbox_id=rec.sandbox_id, snapshot_id=body.snapshot_id)
        return _report(rec)

    async def _restore(self, job_id: str, body: messages.RestoreSandboxBody) -> SandboxReport:
        """A new sandbox from a snapshot: capacity-checked and metered like a create."""
        existing = self.state.get_sandbox(body.sandbox_id)
        if existing is not None:
            return _report(existing)
        source = self._snapshot_dir(body.snapshot_id)
        async with self._locks[_snapshot_lock(body.snapshot_id)]:
            try:
                info = json.loads(await asyncio.to_thread((source / _SNAPSHOT_INFO).read_text))
            except (OSError, ValueError):
                raise NotFoundError(
                    f"snapshot {body.snapshot_id} is not on this agent", job_id=job_id
                ) from None
            if info.get("isolation") != body.isolation:
                raise InvalidArgumentError(
                    f"snapshot {body.snapshot_id} holds a {info.get('isolation')} sandbox, "
                    f"not {body.isolation}",
                    job_id=job_id,
                )
            cpu, memory_mb, template = int(info["cpu"]), int(info["memory_mb"]), info["template"]
            free_cpu, free_mem, _ = self.free_capacity()
            if cpu > free_cpu or memory_mb > free_mem:
                raise CapacityError(
                    f"agent has {free_cpu} vCPU and {free_mem} MiB free; "
                    f"sandbox asks {cpu} vCPU and {memory_mb} MiB",
                    job_id=job_id,
                )
            runtime = self.runtime
            if not isinstance(runtime, Snapshotting):
                raise InvalidArgumentError(f"runtime {runtime.name} cannot restore sandboxes")
            # The restored sandbox keeps the snapshot's egress: still within today's ceiling?
            self.egress.grant(await _snapshot_egress(source), job_id=job_id)
            spec = SandboxSpec(
                sandbox_id=body.sandbox_id,
                tenant_id=self.identity.tenant_id,
                template=template,
                cpu=cpu,
                memory_mb=memory_mb,
                timeout_s=body.timeout_s,
                env=dict(body.env),
                isolation=body.isolation,
            )
            handle = await self._restore_from(spec, body.snapshot_id, source, runtime)
        now = time.time()
        rec = SandboxRecord(
            sandbox_id=body.sandbox_id,
            tenant_id=self.identity.tenant_id,
            handle=handle,
            state=SandboxState.RUNNING,
            cpu=cpu,
            memory_mb=memory_mb,
            template=template,
            started_at=now,
            deadline=now + body.timeout_s,
        )
        self.state.put_sandbox(rec)
        if self.pool is not None:
            self.pool.confirm(handle)
        self.log.info("sandbox_restored", sandbox_id=rec.sandbox_id, snapshot_id=body.snapshot_id)
        return _report(rec)

    async def _restore_from(
        self, spec: SandboxSpec, snapshot_id: str, source: Path, runtime: Snapshotting
    ) -> SandboxHandle:
        """A copy the restore pool made ahead if one is ready (ADR 0029), else a restore
        now (after evicting pool members if it needs their room)."""
        if self.pool is None:
            return await runtime.restore(spec, source)
        key = PoolKey.of(spec, snapshot_id)
        handle = await self.pool.take(spec, snapshot=snapshot_id)
        if handle is None:
            self.pool.make_room(spec.cpu, spec.memory_mb)
            handle = await runtime.restore(spec, source)
        self.pool.keep_snapshot(key, source)  # used now: the most recent
        return handle

    async def _delete_snapshot(self, body: messages.DeleteSnapshotBody) -> None:
        """Remove a snapshot's files (idempotent: a missing snapshot is already deleted)."""
        dest = self._snapshot_dir(body.snapshot_id)
        async with self._locks[_snapshot_lock(body.snapshot_id)]:
            if self.pool is not None:
                await self.pool.drop_snapshot(body.snapshot_id)
            if isinstance(self.runtime, RemovesSnapshots):  # kept on a managed host too
                await self.runtime.remove_snapshot(dest)
            await asyncio.to_thread(shutil.rmtree, dest, True)
        self.log.info("snapshot_deleted", snapshot_id=body.snapshot_id)

    async def _set_timeout(self, sandbox_id: str, timeout_s: int) -> SandboxReport:
        rec = self.state.get_sandbox(sandbox_id)
        if rec is None:
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is not on this agent")
        if rec.state is not SandboxState.RUNNING:
            raise SandboxNotRunningError(f"sandbox {sandbox_id} is {rec.state.value}")
        rec = dataclasses.replace(rec, deadline=time.time() + timeout_s)
        self.state.put_sandbox(rec)
        return _report(rec)

    async def _end(
        self, rec: SandboxRecord, state: SandboxState, reason: EndReason
    ) -> SandboxRecord:
        """Destroy a sandbox and record how it ended (before the slow teardown finishes,
        the record already says it is no longer running, so no new exec gets in)."""
        ended = dataclasses.replace(
            rec, state=state, ended_at=time.time(), end_reason=reason.value
        )
        self.state.put_sandbox(ended)
        self.meter.close(ended)  # a crash right before this is settled by recover()
        self._outbox_wakeup.set()
        try:
            await self.runtime.destroy(rec.handle)
        except CorralError as e:
            self.log.warning("destroy_failed", sandbox_id=rec.sandbox_id, error=str(e))
        self.log.info("sandbox_ended", sandbox_id=rec.sandbox_id, reason=reason.value)
        return ended

    # ------------------------------------------------------------ data plane access
    def running_handle(self, sandbox_id: str) -> SandboxHandle:
        rec = self.state.get_sandbox(sandbox_id)
        if rec is None:
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is not on this agent")
        if rec.state is not SandboxState.RUNNING:
            raise SandboxNotRunningError(
                f"sandbox {sandbox_id} is {rec.state.value}; create a new sandbox"
            )
        return rec.handle

    def total_capacity(self) -> tuple[int, int]:
        """(vCPU, MiB) this agent offers: its own machine's, or, when sandboxes run on
        the hosts it manages, what its fleet has and may still launch."""
        if isinstance(self.runtime, FleetRuntime):
            return self.runtime.fleet.elastic_capacity()
        return self.config.cpu_total, self.config.memory_mb_total

    def free_capacity(self) -> tuple[int, int, int]:
        running = self.state.sandboxes(SandboxState.RUNNING)
        cpu_total, mem_total = self.total_capacity()
        cpu = cpu_total - sum(r.cpu for r in running)
        mem = mem_total - sum(r.memory_mb for r in running)
        return cpu, mem, len(running)

    # ------------------------------------------------------------ background loops
    async def _reaper_loop(self) -> None:
        last_check = time.monotonic()
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.config.reaper_interval_s)
            await self.reap_expired()
            if time.monotonic() - last_check >= LIVENESS_CHECK_EVERY_S:
                last_check = time.monotonic()
                await self.reap_dead()

    async def reap_dead(self) -> None:
        """Record sandboxes whose init died on their own (e.g. killed for memory)."""
        for rec in self.state.sandboxes(SandboxState.RUNNING):
            async with self._locks[rec.sandbox_id]:
                current = self.state.get_sandbox(rec.sandbox_id)
                if current is None or current.state is not SandboxState.RUNNING:
                    continue
                try:
                    alive = await self.runtime.inspect(current.handle)
                except CorralError as e:
                    self.log.warning("inspect_failed", sandbox_id=rec.sandbox_id, error=str(e))
                    continue
                if alive is not Liveness.RUNNING:
                    reason = await self._stop_reason(current.handle)
                    self.log.info("sandbox_stopped", sandbox_id=rec.sandbox_id, reason=reason)
                    ended = await self._end(current, SandboxState.FAILED, reason)
                    await self.publish_event(ended)

    async def _stop_reason(self, handle: SandboxHandle) -> EndReason:
        """Why a sandbox stopped on its own: out of memory, too many tasks, or it exited."""
        if isinstance(self.runtime, KnowsStopReason):
            try:
                return await self.runtime.stop_reason(handle) or EndReason.EXITED
            except CorralError as e:
                self.log.warning("stop_reason_failed", sandbox_id=handle.sandbox_id, error=str(e))
        return EndReason.EXITED

    async def reap_expired(self) -> None:
        now = time.time()
        for rec in self.state.sandboxes(SandboxState.RUNNING):
            if rec.deadline > now:
                continue
            async with self._locks[rec.sandbox_id]:
                current = self.state.get_sandbox(rec.sandbox_id)
                if current is None or current.state is not SandboxState.RUNNING:
                    continue
                if current.deadline > time.time():
                    continue
                ended = await self._end(current, SandboxState.TIMED_OUT, EndReason.TIMED_OUT)
                await self.publish_event(ended)

    async def _meter_loop(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.config.usage_interval_s)
            if self.meter.tick(time.time()):
                self._outbox_wakeup.set()

    async def _outbox_loop(self) -> None:
        while True:
            raise_if_cancelling()
            self._outbox_wakeup.clear()  # before flushing, so no wake-up is lost
            sent_all = await self.flush_outbox()
            if not sent_all:
                await asyncio.sleep(0.5)
                continue
            # asyncio.wait never cancels the waiter on timeout, so an outer cancellation
            # cannot be mistaken for the timeout (as it can with asyncio.timeout on 3.11).
            waiter = asyncio.ensure_future(self._outbox_wakeup.wait())
            try:
                await asyncio.wait({waiter}, timeout=2.0)
            finally:
                waiter.cancel()

    async def flush_outbox(self) -> bool:
        """Send the outbox in order until it is empty (usage records spooled during a long
        outage can be many batches); False as soon as a publish fails."""
        while True:
            batch = self.state.pending_outbox(limit=OUTBOX_BATCH)
            for msg_id, subject, data in batch:
                try:
                    await self.transport.publish_durable(subject, data, msg_id)
                except TransportUnavailable as e:
                    self.log.warning("outbox_publish_failed", error=str(e))
                    return False
                self.state.outbox_done(msg_id)
            if len(batch) < OUTBOX_BATCH:
                return True

    async def _heartbeat_loop(self) -> None:
        while True:
            raise_if_cancelling()
            try:
                await self.transport.publish_heartbeat(self.heartbeat())
            except TransportUnavailable as e:
                self.log.warning("heartbeat_failed", error=str(e))
            await asyncio.sleep(self.config.heartbeat_interval_s)

    def heartbeat(self) -> bytes:
        cpu, mem, n = self.free_capacity()
        cpu_total, mem_total = self.total_capacity()
        hb = messages.Heartbeat.model_validate(
            {
                "schema": messages.HEARTBEAT_SCHEMA,
                "agent_id": self.identity.agent_id,
                "tenant_id": self.identity.tenant_id,
                "at": time.time(),
                "version": __version__,
                "data_plane_url": self.config.data_plane_url,
                "runtimes": runtime_names(self.runtime),
                "templates": self._templates(),
                "capacity": {
                    "cpu_total": cpu_total,
                    "cpu_free": max(cpu, 0),
                    "memory_mb_total": mem_total,
                    "memory_mb_free": max(mem, 0),
                    "sandboxes": n,
                },
                "running": [r.sandbox_id for r in self.state.sandboxes(SandboxState.RUNNING)],
                "hosts": (
                    None
                    if self.fleet is None
                    else [dataclasses.asdict(h) for h in self.fleet.report()[:MAX_HOSTS]]
                ),
            }
        )
        return signing.sign(self.signing_key, messages.HEARTBEAT_TYP, messages.to_json_bytes(hb))

    async def publish_event(self, rec: SandboxRecord) -> None:
        event = messages.SandboxEvent.model_validate(
            {
                "schema": messages.EVENT_SCHEMA,
                "event_id": f"evt-{uuid.uuid4().hex}",
                "tenant_id": self.identity.tenant_id,
                "agent_id": self.identity.agent_id,
                "at": time.time(),
                "sandbox": _report(rec),
            }
        )
        data = signing.sign(self.signing_key, messages.EVENT_TYP, messages.to_json_bytes(event))
        self.state.enqueue(
            event.event_id,
            subjects.events(self.identity.tenant_id, self.identity.agent_id),
            data,
        )
        self._outbox_wakeup.set()

    async def drain(self) -> None:
        """Let in-flight jobs finish (bounded); sandboxes keep running; warm-pool members,
        which belong to nobody, are destroyed."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pool is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await self.pool.close()
        with contextlib.suppress(TimeoutError, TransportUnavailable):
            async with asyncio.timeout(5):
                await self.flush_outbox()


_SNAPSHOT_INFO = "corral-snapshot.json"


def _snapshot_lock(snapshot_id: str) -> str:
    return f"snapshot:{snapshot_id}"  # never a sandbox id (those have no ":")


def _isolation_of(handle: SandboxHandle) -> str:
    try:
        return isolation_of(handle.runtime)
    except InvalidArgumentError:
        return "gvisor"


async def _snapshot_egress(source: Path) -> list[str]:
    """The egress list a runtime recorded in a snapshot's ``SNAPSHOT_META`` (none: [])."""
    try:
        meta = json.loads(await asyncio.to_thread((source / SNAPSHOT_META).read_text))
    except (OSError, ValueError):
        return []  # the runtime's restore reports a missing or broken snapshot itself
    egress = meta.get("egress") if isinstance(meta, dict) else None
    return [str(e) for e in egress] if isinstance(egress, list) else []


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _result_msg_id(job_id: str) -> str:
    return f"result-{job_id}"


def _report(rec: SandboxRecord) -> SandboxReport:
    return SandboxReport(
        sandbox_id=rec.sandbox_id,
        state=rec.state,
        started_at=rec.started_at,
        ended_at=rec.ended_at,
        end_reason=rec.end_reason,
    )


def _wire_message(text: str) -> str:
    """An error message cut to what a result may carry (a runsc panic can be far longer)."""
    limit = messages.MAX_ERROR_MESSAGE
    return text if len(text) <= limit else text[: limit - 1] + "…"
