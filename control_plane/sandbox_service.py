"""The sandbox flows behind the HTTP API: place, create, kill, extend, hand out tokens.

Create, step by step::

    validate (API) → place (scheduler, best fit) → sandbox row ``pending``
      → signed ``create_sandbox`` job → wait for the agent's result (bounded)
      → ``running`` + data-plane URL + sandbox token      (201)
      → agent error code → HTTP status                    (404, 409, 503, ...)
      → no answer in time → AgentTimeoutError             (504; the row stays pending
                                                            until a late result lands)
        or, with ``pending_ok`` (the public API)         → the pending sandbox (202): an
           agent adding a host to its fleet answers after minutes, and the caller polls
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from sqlalchemy.orm import Session

from byoc_agent.protocol.errors import (
    CapacityError,
    CorralError,
    ErrorCode,
    InvalidArgumentError,
    SandboxNotRunningError,
    error_from_code,
)
from byoc_agent.protocol.messages import (
    CreateSandboxBody,
    DeleteSnapshotBody,
    JobStatus,
    KillSandboxBody,
    PauseSandboxBody,
    RestoreSandboxBody,
    ResumeSandboxBody,
    SandboxState,
    SetTimeoutBody,
    SnapshotSandboxBody,
)
from byoc_agent.runtimes.base import EndReason
from control_plane.cosign_service import CosignService, agent_policy
from control_plane.errors import (
    AgentFailedError,
    AgentOfflineError,
    AgentTimeoutError,
    JobRejectedError,
    PublishError,
)
from control_plane.jobs.issuer import JobIssuer
from control_plane.jobs.keys import SigningKeys
from control_plane.jobs.tokens import IssuedSandboxToken, mint_sandbox_token
from control_plane.jobs.waiters import JobOutcome
from control_plane.scheduler import Candidate, Request, choose, isolations_of
from control_plane.settings import Settings
from control_plane.store import Database, agents, new_id, sandboxes, snapshots, tenants, utcnow
from control_plane.store.sandboxes import NewSandbox, SandboxRecord
from control_plane.store.snapshots import SnapshotRecord

MAX_FORKS = 10

log = structlog.get_logger("control_plane.sandboxes")


@dataclass(frozen=True, slots=True)
class CreateSandbox:
    tenant_id: str
    template: str
    cpu: int
    memory_mb: int
    timeout_s: int
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    metadata: Mapping[str, str] = field(default_factory=dict)
    # None: the tenant's required isolation, else gvisor.
    isolation: str | None = None
    # "a.b.c.d:port" destinations (validated by the API); microvm only; the agent applies its
    # operator's ceiling. Empty: no network.
    egress: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RestoreSandbox:
    """A new sandbox from a snapshot: template, cpu, memory and isolation are the snapshot's."""

    tenant_id: str
    snapshot_id: str
    timeout_s: int
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SandboxAccess:
    sandbox: SandboxRecord
    data_plane_url: str
    token: IssuedSandboxToken
    cosign_request_id: str | None = None


def outcome_error(outcome: JobOutcome) -> CorralError:
    """The typed error for a failed or rejected job (never an HTTP 500)."""
    message = outcome.error_message or "the agent could not do this"
    if outcome.status == JobStatus.REJECTED:
        return JobRejectedError(message, job_id=outcome.job_id)
    error = error_from_code(outcome.error_code or "", message)
    if error.code == ErrorCode.INTERNAL:
        return AgentFailedError(message, job_id=outcome.job_id)
    return error


class SandboxService:
    def __init__(
        self, db: Database, issuer: JobIssuer, keys: SigningKeys, settings: Settings
    ) -> None:
        self._db = db
        self._issuer = issuer
        self._cosign = CosignService(db, issuer)
        self._keys = keys
        self._settings = settings
        self._placing: dict[str, asyncio.Lock] = {}

    @property
    def cosign(self) -> CosignService:
        return self._cosign

    def _candidates(self, s: Session, tenant_id: str) -> list[Candidate]:
        now = utcnow()
        out = []
        for agent in agents.tenant_agents(s, tenant_id):
            if not agent.is_online(now, self._settings.heartbeat_offline_s):
                continue
            # The control plane's own records are the authority on what is placed where:
            # a heartbeat can be seconds old, both before a sandbox started and after one
            # ended. Free = the agent's total minus every live sandbox recorded on it.
            cpu, mem = sandboxes.reserved_since(s, agent.id, None)
            out.append(
                Candidate(
                    agent_id=agent.id,
                    templates=frozenset(agent.templates),
                    isolations=isolations_of(agent.runtimes),
                    cpu_free=agent.capacity.cpu_total - cpu,
                    memory_mb_free=agent.capacity.memory_mb_total - mem,
                )
            )
        return out

    async def create(
        self, req: CreateSandbox, *, token_ttl_s: int | None = None, pending_ok: bool = False
    ) -> SandboxAccess:
        """Place and start a sandbox. ``pending_ok``: when the agent has not answered within
        the job timeout, return the sandbox still pending instead of raising 504."""
        def place(s: Session) -> SandboxRecord:
            required = tenants.get_tenant(s, req.tenant_id).required_isolation
            if required is not None and req.isolation not in (None, required):
                raise InvalidArgumentError(
                    f"isolation: this tenant's policy requires {required} sandboxes",
                    tenant_id=req.tenant_id,
                )
            isolation = req.isolation or required or "gvisor"
            if req.egress and isolation != "microvm":
                raise InvalidArgumentError(
                    "egress: only microvm sandboxes have a network; gVisor sandboxes run "
                    "without one. Ask for isolation=microvm, or leave egress out",
                    field="egress",
                )
            request = Request(
                tenant_id=req.tenant_id,
                template=req.template,
                cpu=req.cpu,
                memory_mb=req.memory_mb,
                isolation=isolation,
            )
            chosen = choose(request, self._candidates(s, req.tenant_id))
            return sandboxes.create_sandbox(
                s,
                NewSandbox(
                    tenant_id=req.tenant_id,
                    agent_id=chosen.agent_id,
                    template=req.template,
                    cpu=req.cpu,
                    memory_mb=req.memory_mb,
                    timeout_s=req.timeout_s,
                    metadata=req.metadata,
                    isolation=isolation,
                    egress=req.egress,
                ),
            )

        lock = self._placing.setdefault(req.tenant_id, asyncio.Lock())
        async with lock:
            await self._db.run(lambda s: self._cosign.expire_in(s, req.tenant_id))
            sandbox = await self._db.run(place)
        log.info("sandbox_placed", tenant_id=sandbox.tenant_id, agent_id=sandbox.agent_id,
                 sandbox_id=sandbox.id, template=sandbox.template)  # fmt: skip
        body = CreateSandboxBody(
            sandbox_id=sandbox.id,
            template=req.template,
            cpu=req.cpu,
            memory_mb=req.memory_mb,
            timeout_s=req.timeout_s,
            env=dict(req.env),
            isolation="microvm" if sandbox.isolation == "microvm" else "gvisor",
            egress=list(req.egress),
        )
        held = await self._hold_if_high_risk(sandbox, body, has_env=bool(req.env))
        if held is not None:
            access = await self._access(sandbox)
            return dataclasses.replace(access, cosign_request_id=held)
        return await self._start(sandbox, body, token_ttl_s, pending_ok=pending_ok)

    async def _start(
        self,
        sandbox: SandboxRecord,
        body: CreateSandboxBody | RestoreSandboxBody,
        token_ttl_s: int | None = None,
        *,
        pending_ok: bool = False,
    ) -> SandboxAccess:
        """Send the job that starts a placed (pending) sandbox and wait for it to run."""
        bound = log.bind(
            tenant_id=sandbox.tenant_id, agent_id=sandbox.agent_id, sandbox_id=sandbox.id
        )
        timeout_s = body.timeout_s
        try:
            outcome = await self._issuer.run(
                tenant_id=sandbox.tenant_id,
                actor=f"tenant:{sandbox.tenant_id}",
                agent_id=sandbox.agent_id,
                sandbox_id=sandbox.id,
                body=body,
                timeout_s=self._settings.job_timeout_s,
            )
        except PublishError:
            await self._db.run(
                lambda s: sandboxes.transition(
                    s, sandbox.id, SandboxState.FAILED, reason=EndReason.CREATE_FAILED.value
                )
            )
            raise
        except AgentTimeoutError:
            if not pending_ok:
                raise
            # The job is in the agent's stream; its result updates the row when it comes
            # (the inbox sets the expiry then). The caller gets the sandbox to poll.
            bound.info("sandbox_start_pending", kind=body.kind,
                       detail="the agent has not answered yet")  # fmt: skip
            current = await self._db.run(
                lambda s: sandboxes.get_sandbox(s, sandbox.id, tenant_id=None)
            )
            return await self._access(current, token_ttl_s)
        if outcome.status != JobStatus.SUCCEEDED:
            bound.info("sandbox_create_failed", code=outcome.error_code)
            raise outcome_error(outcome)

        def started(s: Session) -> SandboxRecord:
            current = sandboxes.get_sandbox(s, sandbox.id, tenant_id=None)
            begin = current.started_at or utcnow()
            sandboxes.set_expiry(s, sandbox.id, timeout_s, begin + timedelta(seconds=timeout_s))
            return sandboxes.get_sandbox(s, sandbox.id, tenant_id=None)

        sandbox = await self._db.run(started)
        bound.info("sandbox_created", state=sandbox.state.value, kind=body.kind)
        return await self._access(sandbox, token_ttl_s)

    async def _hold_if_high_risk(
        self, sandbox: SandboxRecord, body: CreateSandboxBody, *, has_env: bool
    ) -> str | None:
        """When the agent's co-signing rules match, store the job for the customer to
        co-sign instead of sending it; returns the cosign request (= job) id."""
        agent = await self._db.run(lambda s: agents.get_agent(s, sandbox.agent_id))
        policy = agent_policy(agent)
        rule = policy.required_by(body) if policy is not None else None
        if rule is None:
            return None
        if has_env:
            await self._db.run(
                lambda s: sandboxes.transition(
                    s, sandbox.id, SandboxState.FAILED, reason=EndReason.CREATE_FAILED.value
                )
            )
            raise InvalidArgumentError(
                f"this sandbox needs a customer cosignature (agent rule {rule}), so its job "
                "waits in the control plane: env cannot be sent that way; write secrets with "
                "sandbox.files once it runs",
                field="env",
            )
        job_id = new_id("j")
        await self._db.run(
            lambda s: self._cosign.hold_in(
                s, job_id=job_id, agent=agent, sandbox_id=sandbox.id, body=body, rule=rule,
                actor=f"tenant:{sandbox.tenant_id}",
            )
        )
        log.info("sandbox_awaits_cosignature", sandbox_id=sandbox.id, job_id=job_id,
                 rule=str(rule))
        return job_id

    # ------------------------------------------------------------ snapshots
    async def snapshot(self, tenant_id: str, sandbox_id: str) -> SnapshotRecord:
        """Save a running sandbox's memory and files on its agent (the sandbox runs on)."""
        sandbox = await self.get(tenant_id, sandbox_id)
        if sandbox.state != SandboxState.RUNNING:
            raise SandboxNotRunningError(
                f"the sandbox is {sandbox.state.value}; only a running sandbox can be "
                "snapshotted",
                sandbox_id=sandbox_id,
            )
        snapshot_id = snapshots.new_snapshot_id()
        outcome = await self._issuer.run(
            tenant_id=sandbox.tenant_id,
            agent_id=sandbox.agent_id,
            sandbox_id=sandbox.id,
            body=SnapshotSandboxBody(sandbox_id=sandbox.id, snapshot_id=snapshot_id),
            timeout_s=self._settings.job_timeout_s,
        )
        if outcome.status != JobStatus.SUCCEEDED:
            raise outcome_error(outcome)
        record = await self._db.run(
            lambda s: snapshots.add_snapshot(
                s,
                snapshot_id=snapshot_id,
                tenant_id=sandbox.tenant_id,
                agent_id=sandbox.agent_id,
                sandbox_id=sandbox.id,
                isolation=sandbox.isolation,
                template=sandbox.template,
                cpu=sandbox.cpu,
                memory_mb=sandbox.memory_mb,
            )
        )
        log.info("snapshot_taken", tenant_id=tenant_id, sandbox_id=sandbox_id,
                 snapshot_id=snapshot_id)  # fmt: skip
        return record

    async def get_snapshot(self, tenant_id: str, snapshot_id: str) -> SnapshotRecord:
        return await self._db.run(
            lambda s: snapshots.get_snapshot(s, snapshot_id, tenant_id=tenant_id)
        )

    async def delete_snapshot(self, tenant_id: str, snapshot_id: str) -> None:
        """Delete a snapshot's files on its agent and mark it deleted."""
        snap = await self.get_snapshot(tenant_id, snapshot_id)
        outcome = await self._issuer.run(
            tenant_id=snap.tenant_id,
            agent_id=snap.agent_id,
            sandbox_id=snap.sandbox_id,
            body=DeleteSnapshotBody(sandbox_id=snap.sandbox_id, snapshot_id=snap.id),
            timeout_s=self._settings.job_timeout_s,
        )
        if outcome.status != JobStatus.SUCCEEDED:
            raise outcome_error(outcome)
        await self._db.run(lambda s: snapshots.mark_deleted(s, snap.id))
        log.info("snapshot_deleted", tenant_id=tenant_id, snapshot_id=snapshot_id)

    async def restore(self, req: RestoreSandbox, *, pending_ok: bool = False) -> SandboxAccess:
        """A new sandbox from a snapshot, on the agent that holds it (503 if it is offline);
        ``pending_ok`` as for :meth:`create`."""

        def place(s: Session) -> SandboxRecord:
            snap = snapshots.get_snapshot(s, req.snapshot_id, tenant_id=req.tenant_id)
            required = tenants.get_tenant(s, req.tenant_id).required_isolation
            if required is not None and snap.isolation != required:
                raise InvalidArgumentError(
                    f"snapshot: this tenant's policy requires {required} sandboxes; the "
                    f"snapshot holds a {snap.isolation} one",
                    tenant_id=req.tenant_id,
                )
            agent = agents.get_agent(s, snap.agent_id)
            if not agent.is_online(utcnow(), self._settings.heartbeat_offline_s):
                raise AgentOfflineError(
                    "the agent that holds this snapshot is offline; try again when it is back",
                    snapshot_id=snap.id,
                )
            cpu, mem = sandboxes.reserved_since(s, agent.id, None)
            cpu_free = agent.capacity.cpu_total - cpu
            mem_free = agent.capacity.memory_mb_total - mem
            if snap.cpu > cpu_free or snap.memory_mb > mem_free:
                raise CapacityError(
                    "the agent that holds this snapshot has no room for another sandbox "
                    f"({cpu_free} vCPU and {mem_free} MiB free; it needs {snap.cpu} vCPU and "
                    f"{snap.memory_mb} MiB)",
                    snapshot_id=snap.id,
                )
            return sandboxes.create_sandbox(
                s,
                NewSandbox(
                    tenant_id=req.tenant_id,
                    agent_id=snap.agent_id,
                    template=snap.template,
                    cpu=snap.cpu,
                    memory_mb=snap.memory_mb,
                    timeout_s=req.timeout_s,
                    metadata=req.metadata,
                    isolation=snap.isolation,
                    # The agent restores the snapshot's network (and re-checks its ceiling).
                    egress=sandboxes.get_sandbox(s, snap.sandbox_id, tenant_id=None).egress,
                ),
            )

        lock = self._placing.setdefault(req.tenant_id, asyncio.Lock())
        async with lock:
            sandbox = await self._db.run(place)
        log.info("sandbox_placed", tenant_id=sandbox.tenant_id, agent_id=sandbox.agent_id,
                 sandbox_id=sandbox.id, snapshot_id=req.snapshot_id)  # fmt: skip
        body = RestoreSandboxBody(
            sandbox_id=sandbox.id,
            snapshot_id=req.snapshot_id,
            timeout_s=req.timeout_s,
            env=dict(req.env),
            isolation="microvm" if sandbox.isolation == "microvm" else "gvisor",
        )
        return await self._start(sandbox, body, pending_ok=pending_ok)

    async def fork(self, tenant_id: str, sandbox_id: str, count: int) -> list[SandboxAccess]:
        """``count`` new sandboxes from one snapshot of a running sandbox, each a new machine
        (own id, hostname, machine-id, random seed). The snapshot is deleted afterwards."""
        if not 1 <= count <= MAX_FORKS:
            raise InvalidArgumentError(
                f"count: must be between 1 and {MAX_FORKS}, got {count}", field="count"
            )
        source = await self.get(tenant_id, sandbox_id)
        snap = await self.snapshot(tenant_id, sandbox_id)
        forks: list[SandboxAccess] = []
        try:
            for _ in range(count):
                forks.append(
                    await self.restore(
                        RestoreSandbox(
                            tenant_id=tenant_id,
                            snapshot_id=snap.id,
                            timeout_s=source.timeout_s,
                            metadata=source.metadata,
                        )
                    )
                )
        except BaseException:
            for made in forks:  # all or nothing: a half-made fork is not left running
                with contextlib.suppress(CorralError):
                    await self.kill(tenant_id, made.sandbox.id)
            raise
        finally:
            try:
                await self.delete_snapshot(tenant_id, snap.id)
            except CorralError as e:
                log.warning("fork_snapshot_not_deleted", snapshot_id=snap.id, error=str(e))
        log.info("sandbox_forked", tenant_id=tenant_id, sandbox_id=sandbox_id,
                 forks=[f.sandbox.id for f in forks])  # fmt: skip
        return forks

    async def _access(
        self, sandbox: SandboxRecord, token_ttl_s: int | None = None
    ) -> SandboxAccess:
        agent = await self._db.run(lambda s: agents.get_agent(s, sandbox.agent_id))
        token = mint_sandbox_token(
            await self._keys.current(),
            tenant_id=sandbox.tenant_id,
            agent_id=sandbox.agent_id,
            sandbox_id=sandbox.id,
            ttl_s=token_ttl_s or self._settings.sandbox_token_ttl_s,
        )
        return SandboxAccess(sandbox=sandbox, data_plane_url=agent.data_plane_url, token=token)

    async def get(self, tenant_id: str, sandbox_id: str) -> SandboxRecord:
        return await self._db.run(
            lambda s: sandboxes.get_sandbox(s, sandbox_id, tenant_id=tenant_id)
        )

    async def kill(self, tenant_id: str, sandbox_id: str) -> None:
        """Kill a sandbox; a sandbox that already ended is left alone (idempotent)."""
        sandbox = await self.get(tenant_id, sandbox_id)
        if sandbox.terminal:
            return
        outcome = await self._issuer.run(
            tenant_id=sandbox.tenant_id,
            actor=f"tenant:{sandbox.tenant_id}",
            agent_id=sandbox.agent_id,
            sandbox_id=sandbox.id,
            body=KillSandboxBody(sandbox_id=sandbox.id),
            timeout_s=self._settings.job_timeout_s,
        )
        if outcome.status == JobStatus.SUCCEEDED or outcome.error_code in (
            ErrorCode.NOT_FOUND.value,
            ErrorCode.SANDBOX_NOT_RUNNING.value,
        ):
            log.info("sandbox_killed", tenant_id=tenant_id, sandbox_id=sandbox_id)
            return
        raise outcome_error(outcome)

    async def pause(self, tenant_id: str, sandbox_id: str) -> SandboxRecord:
        """Pause a running sandbox: its memory and files are saved on its agent, it holds
        no CPU or memory and is not billed until resumed; its timeout stops counting."""
        sandbox = await self.get(tenant_id, sandbox_id)
        if sandbox.state == SandboxState.PAUSED:
            return sandbox
        if sandbox.state != SandboxState.RUNNING:
            raise SandboxNotRunningError("the sandbox is not running", sandbox_id=sandbox_id)
        await self._lifecycle_job(sandbox, PauseSandboxBody(sandbox_id=sandbox.id))

        def paused(s: Session) -> SandboxRecord:
            # The timeout clock stands still while paused: remember what is left.
            current = sandboxes.get_sandbox(s, sandbox_id, tenant_id=tenant_id)
            if current.expires_at is not None:
                left = max(int((current.expires_at - utcnow()).total_seconds()), 1)
                sandboxes.set_expiry(s, sandbox_id, left, None)
            return sandboxes.get_sandbox(s, sandbox_id, tenant_id=tenant_id)

        return await self._db.run(paused)

    async def resume(self, tenant_id: str, sandbox_id: str) -> SandboxRecord:
        """Continue a paused sandbox where it stopped."""
        sandbox = await self.get(tenant_id, sandbox_id)
        if sandbox.state == SandboxState.RUNNING:
            return sandbox
        if sandbox.state != SandboxState.PAUSED:
            raise SandboxNotRunningError(
                f"the sandbox is {sandbox.state.value}, not paused", sandbox_id=sandbox_id
            )
        await self._lifecycle_job(sandbox, ResumeSandboxBody(sandbox_id=sandbox.id))

        def resumed(s: Session) -> SandboxRecord:
            current = sandboxes.get_sandbox(s, sandbox_id, tenant_id=tenant_id)
            left = current.timeout_s
            sandboxes.set_expiry(s, sandbox_id, left, utcnow() + timedelta(seconds=left))
            return sandboxes.get_sandbox(s, sandbox_id, tenant_id=tenant_id)

        return await self._db.run(resumed)

    async def _lifecycle_job(
        self, sandbox: SandboxRecord, body: PauseSandboxBody | ResumeSandboxBody
    ) -> None:
        outcome = await self._issuer.run(
            tenant_id=sandbox.tenant_id,
            agent_id=sandbox.agent_id,
            sandbox_id=sandbox.id,
            body=body,
            timeout_s=self._settings.job_timeout_s,
        )
        if outcome.status != JobStatus.SUCCEEDED:
            raise outcome_error(outcome)
        log.info(f"sandbox_{body.kind.removesuffix('_sandbox')}d", tenant_id=sandbox.tenant_id,
                 sandbox_id=sandbox.id)  # fmt: skip

    async def set_timeout(self, tenant_id: str, sandbox_id: str, timeout_s: int) -> SandboxRecord:
        sandbox = await self.get(tenant_id, sandbox_id)
        if sandbox.state != SandboxState.RUNNING:
            raise SandboxNotRunningError("the sandbox is not running", sandbox_id=sandbox_id)
        outcome = await self._issuer.run(
            tenant_id=sandbox.tenant_id,
            actor=f"tenant:{sandbox.tenant_id}",
            agent_id=sandbox.agent_id,
            sandbox_id=sandbox.id,
            body=SetTimeoutBody(sandbox_id=sandbox.id, timeout_s=timeout_s),
            timeout_s=self._settings.job_timeout_s,
        )
        if outcome.status != JobStatus.SUCCEEDED:
            raise outcome_error(outcome)

        def extend(s: Session) -> SandboxRecord:
            sandboxes.set_expiry(s, sandbox_id, timeout_s, utcnow() + timedelta(seconds=timeout_s))
            return sandboxes.get_sandbox(s, sandbox_id, tenant_id=tenant_id)

        return await self._db.run(extend)

    async def access(
        self, tenant_id: str, sandbox_id: str, *, token_ttl_s: int | None = None
    ) -> SandboxAccess:
        """A fresh data-plane token for a running sandbox."""
        sandbox = await self.get(tenant_id, sandbox_id)
        if sandbox.state != SandboxState.RUNNING:
            raise SandboxNotRunningError("the sandbox is not running", sandbox_id=sandbox_id)
        return await self._access(sandbox, token_ttl_s)
