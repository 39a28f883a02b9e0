"""Per-second usage records for every sandbox this agent runs.

Boundary rule (one rule, used everywhere)::

    an instant t the agent observed is billed from the boundary floor(t) (whole UTC seconds)

The start of a sandbox is ``floor(started_at)``, every interim record ends at
``floor(now)`` and the final record ends at ``floor(ended_at)``. A record covers the
half-open interval ``[start, end)``; the next record of the same sandbox starts exactly
where the previous one ended, so the records tile the sandbox's life without a gap or an
overlap, and their seconds add up to ``floor(ended_at) - floor(started_at)``: within one
second of the observed lifetime, and unbiased because both ends are floored the same way.
A sandbox that starts and ends within the same second gets one final record of zero
seconds (it still says "this sandbox ended"). If the wall clock steps back, an end is
never put before its start (the interval is empty instead).

Durability: a record is signed, then written to the agent's SQLite outbox *in the same
transaction* that moves the sandbox's cursor (the end of its last record) forward
(:meth:`~byoc_agent.state.AgentStateStore.spool_usage`). The outbox is reused rather than a
dedicated spool because it already gives what a spool needs — ``synchronous=FULL`` (the
commit is fsynced), rows kept until JetStream acks them (``Nats-Msg-Id`` = record id), and
one publisher that retries while NATS is away — and because sharing the database makes
the record and the cursor one atomic write: after a crash there is either both (the
record will be sent) or neither (it will be cut again, identically, from the same start).

Identity: ``record_id`` is a hash of (sandbox, start), and the payload carries no
emission timestamp, so a record re-sent after a crash is byte-for-byte the same record;
JetStream's dedupe window and the control plane's ledger both drop the second copy.
"""

from __future__ import annotations

import hashlib
import math
import socket
from typing import Literal

import structlog

from byoc_agent.protocol import messages, signing, subjects
from byoc_agent.protocol.messages import TERMINAL_STATES, SandboxState, UsageReport
from byoc_agent.state import AgentIdentity, AgentStateStore, SandboxRecord

log = structlog.get_logger(__name__)

MICROVM_RUNTIMES = frozenset({"qemu-microvm", "firecracker"})


def billing_second(t: float) -> int:
    """The boundary an observed instant is billed from: the whole UTC second at or before it."""
    return math.floor(t)


def usage_record_id(sandbox_id: str, start: int) -> str:
    """Deterministic per (sandbox, start): the same interval always gets the same id."""
    digest = hashlib.sha256(f"{sandbox_id}\x00{start}".encode()).hexdigest()
    return f"usage-{digest[:40]}"


def _isolation(rec: SandboxRecord) -> Literal["gvisor", "microvm"]:
    return "microvm" if rec.handle.runtime in MICROVM_RUNTIMES else "gvisor"


class UsageMeter:
    """Cuts, signs and spools usage records; the agent's outbox sends them.

    Every method is synchronous (no ``await`` between reading a cursor and moving it), and
    the store's compare-and-set refuses a stale cut, so the interval loop and a kill
    cannot interleave into overlapping records.
    """

    def __init__(
        self,
        *,
        identity: AgentIdentity,
        signing_key: signing.SigningKey,
        state: AgentStateStore,
        host: str | None = None,
    ) -> None:
        self.identity = identity
        self.signing_key = signing_key
        self.state = state
        self.host = host or socket.gethostname()
        self._subject = subjects.usage(identity.tenant_id, identity.agent_id)
        self.log = log.bind(agent_id=identity.agent_id, tenant_id=identity.tenant_id)

    def tick(self, now: float) -> int:
        """Emit an interim record ``[last_end, floor(now))`` for every running sandbox that
        has accrued at least one second. Returns how many records were spooled."""
        end = billing_second(now)
        emitted = 0
        for rec in self.state.sandboxes(SandboxState.RUNNING):
            start = self._next_start(rec)
            if start is None or end <= start:
                continue
            emitted += self._emit(rec, start, end, final=False)
        return emitted

    def close(self, rec: SandboxRecord) -> bool:
        """Emit the final record of an ended sandbox, ``[last_end, floor(ended_at))``.
        Does nothing (returns False) if its final record was already emitted."""
        if rec.state not in TERMINAL_STATES or rec.ended_at is None:
            raise ValueError(f"sandbox {rec.sandbox_id} has not ended")
        start = self._next_start(rec)
        if start is None:
            return False
        end = max(billing_second(rec.ended_at), start)
        return self._emit(rec, start, end, final=True)

    def pause(self, rec: SandboxRecord, at: float) -> int:
        """Cut the running interval at ``floor(at)`` as a sandbox pauses; returns the second
        billing stopped at (the cursor), which :meth:`resume` starts again from."""
        start = self._next_start(rec)
        if start is None:
            raise ValueError(f"sandbox {rec.sandbox_id} has ended")
        end = billing_second(at)
        if end > start:
            self._emit(rec, start, end, final=False)
            return end
        return start

    def resume(self, rec: SandboxRecord, at: float) -> None:
        """Billing starts again at ``floor(at)``: the paused seconds are never billed."""
        start = self._next_start(rec)
        if start is None:
            raise ValueError(f"sandbox {rec.sandbox_id} has ended")
        self.state.skip_usage(rec.sandbox_id, start=start, to=max(billing_second(at), start))

    def paused_since(self, rec: SandboxRecord) -> int | None:
        """The second a paused sandbox's billing stopped at (its cursor)."""
        return self._next_start(rec)

    def settle(self) -> int:
        """After a restart: emit the final record of every ended sandbox that lacks one (the
        agent died between recording the end and metering it). Returns how many."""
        settled = 0
        for rec in self.state.sandboxes():
            if rec.state in TERMINAL_STATES and rec.ended_at is not None:
                settled += self.close(rec)
        return settled

    def _next_start(self, rec: SandboxRecord) -> int | None:
        """Where the sandbox's next record starts; None once its final record exists."""
        cursor = self.state.usage_cursor(rec.sandbox_id)
        if cursor is None:
            return billing_second(rec.started_at)
        return None if cursor.final else cursor.last_end

    def _emit(self, rec: SandboxRecord, start: int, end: int, *, final: bool) -> bool:
        report = UsageReport.model_validate(
            {
                "schema": messages.USAGE_SCHEMA,
                "record_id": usage_record_id(rec.sandbox_id, start),
                "tenant_id": self.identity.tenant_id,
                "agent_id": self.identity.agent_id,
                "sandbox_id": rec.sandbox_id,
                "start": start,
                "end": end,
                "vcpu": rec.cpu,
                "memory_mb": rec.memory_mb,
                "gpu_count": 0,
                "gpu_model": None,
                "isolation": _isolation(rec),
                "template": rec.template,
                "host": self.host,
                "final": final,
            }
        )
        data = signing.sign(self.signing_key, messages.USAGE_TYP, messages.to_json_bytes(report))
        applied = self.state.spool_usage(
            rec.sandbox_id, start=start, end=end, final=final,
            msg_id=report.record_id, subject=self._subject, data=data,
        )
        if applied:
            self.log.info("usage_recorded", sandbox_id=rec.sandbox_id, record_id=report.record_id,
                          start=start, end=end, final=final)
        return applied
