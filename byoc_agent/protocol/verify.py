"""Verification of signed messages, in the order that makes rejection cheap and safe.

For a job the agent checks, before it acts: size → shape → kid known and not revoked →
signature over the exact wire bytes → strict schema → audience → tenant → time window →
replay (job id) → order (seq). The first failure raises
:class:`~byoc_agent.protocol.errors.EnvelopeRejectedError` naming a :class:`RejectReason`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from byoc_agent.protocol import messages
from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason
from byoc_agent.protocol.signing import MAX_MESSAGE_BYTES, parse, strict_json_loads

CLOCK_SKEW_S = 30

M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class Keyring:
    """Public keys a verifier trusts, by kid, and the kids that were revoked."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)

    def get(self, kid: str) -> Ed25519PublicKey:
        if kid in self.revoked:
            raise EnvelopeRejectedError(RejectReason.REVOKED_KID, f"key {kid} was revoked", kid=kid)
        try:
            return self.keys[kid]
        except KeyError:
            raise EnvelopeRejectedError(
                RejectReason.UNKNOWN_KID, f"no trusted key with id {kid}", kid=kid
            ) from None


def verify_model(
    message: bytes,
    *,
    typ: str,
    model: type[M],
    keyring: Keyring,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> tuple[str, M]:
    """Check size, shape, kid and signature, then parse strictly. Returns (kid, model)."""
    signed = parse(message, max_bytes=max_bytes)
    if signed.typ != typ:
        raise EnvelopeRejectedError(
            RejectReason.UNKNOWN_SCHEMA, f"expected typ {typ}, got {signed.typ!r}"
        )
    payload = signed.verify_with(keyring.get(signed.kid))
    try:
        raw = strict_json_loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise EnvelopeRejectedError(RejectReason.MALFORMED, "payload is not JSON") from e
    if not isinstance(raw, dict):
        raise EnvelopeRejectedError(RejectReason.MALFORMED, "payload is not an object")
    expected_schema = model.model_fields["schema_"].default
    if raw.get("schema") != expected_schema:
        raise EnvelopeRejectedError(
            RejectReason.UNKNOWN_SCHEMA,
            f"schema {str(raw.get('schema'))[:64]!r} is not {expected_schema}",
        )
    try:
        parsed = model.model_validate_json(payload)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise EnvelopeRejectedError(
            RejectReason.MALFORMED, f"invalid field {where}: {first['msg']}"
        ) from e
    return signed.kid, parsed


class ReplayGuard(Protocol):
    """Remembers which jobs were applied. Persisted so replay survives an agent restart."""

    def seen(self, job_id: str) -> bool: ...

    def last_seq(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Audience:
    """Who a job must be addressed to."""

    agent_id: str
    tenant_id: str


def verify_signed_job(message: bytes, *, keyring: Keyring) -> messages.Job:
    """Size, shape, kid, signature and schema. Anything that fails here is untrusted."""
    _, job = verify_model(message, typ=messages.JOB_TYP, model=messages.Job, keyring=keyring)
    return job


def check_job_claims(job: messages.Job, *, audience: Audience, now: float | None = None) -> None:
    """Audience, tenant and time window of an authentic job."""
    ids: Mapping[str, str] = {"job_id": job.job_id, "agent_id": job.agent_id}
    if job.agent_id != audience.agent_id:
        raise EnvelopeRejectedError(
            RejectReason.WRONG_AUDIENCE, f"job is for agent {job.agent_id}", **ids
        )
    if job.tenant_id != audience.tenant_id:
        raise EnvelopeRejectedError(
            RejectReason.WRONG_TENANT, f"job is for tenant {job.tenant_id}", **ids
        )
    t = time.time() if now is None else now
    if job.exp <= t - CLOCK_SKEW_S or job.exp <= job.iat:
        raise EnvelopeRejectedError(RejectReason.EXPIRED, f"job expired at {job.exp}", **ids)
    if job.iat > t + CLOCK_SKEW_S:
        raise EnvelopeRejectedError(
            RejectReason.NOT_YET_VALID, f"job issued in the future ({job.iat})", **ids
        )


def check_job_order(job: messages.Job, *, replay: ReplayGuard) -> None:
    """Replay (job id already applied) and order (seq above the last applied)."""
    ids: Mapping[str, str] = {"job_id": job.job_id, "agent_id": job.agent_id}
    if replay.seen(job.job_id):
        raise EnvelopeRejectedError(RejectReason.REPLAYED, "job id already applied", **ids)
    last = replay.last_seq()
    if job.seq <= last:
        raise EnvelopeRejectedError(
            RejectReason.SEQ_NOT_INCREASING, f"seq {job.seq} is not above {last}", **ids
        )


def verify_job(
    message: bytes,
    *,
    keyring: Keyring,
    audience: Audience,
    replay: ReplayGuard,
    now: float | None = None,
) -> messages.Job:
    """Verify a job envelope completely. Raises EnvelopeRejectedError; never acts."""
    job = verify_signed_job(message, keyring=keyring)
    check_job_claims(job, audience=audience, now=now)
    check_job_order(job, replay=replay)
    return job
