"""Customer co-signing: high-risk jobs need a second signature from a customer-held key.

The agent's configuration names the customer's Ed25519 public keys and rules that mark
job kinds high-risk (``create_sandbox:cpu>8``, ``upgrade_agent``, …). A job matching any
rule runs only when a valid *cosignature* travels with it: a compact signed message
(``typ corral-cosignature+json``, signed by one of those keys) naming the job id, tenant,
agent and the SHA-256 of the job's body. The control plane never holds these keys, so on
its own it cannot get such a job executed — the agent rejects it as
``missing_cosignature``.

On the wire the cosignatures follow the job, one per line::

    <job compact message> "\\n" <cosignature compact message> ["\\n" …]

Compact messages contain no newline, so the split is unambiguous. The body digest is
SHA-256 over the body's canonical JSON (sorted keys, no spaces) — the same bytes the
control plane signs inside the job — so the customer signs what they reviewed.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from byoc_agent.protocol import messages, signing
from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason
from byoc_agent.protocol.verify import CLOCK_SKEW_S, Keyring, verify_model

COSIGNATURE_TYP = "corral-cosignature+json"
COSIGNATURE_SCHEMA = "corral.cosignature/v1"
MAX_COSIGNATURES = 4
MAX_COSIGNATURE_BYTES = 2048
DEFAULT_TTL_S = 3600

_COMPACT_RE = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_RULE_RE = re.compile(r"^([a-z][a-z0-9_]{0,63})(?::([a-z][a-z0-9_]{0,63})>(\d{1,12}))?$")


class Cosignature(BaseModel):
    """A customer's approval of one job's exact body, for one agent, for a while."""

    schema_: Literal["corral.cosignature/v1"] = Field("corral.cosignature/v1", alias="schema")
    job_id: messages.Id
    tenant_id: messages.Id
    agent_id: messages.Id
    body_sha256: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]
    iat: Annotated[int, Field(ge=0)]
    exp: Annotated[int, Field(ge=0)]

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


@dataclass(frozen=True, slots=True)
class CosignRule:
    """``kind`` alone: every job of that kind; ``kind:field>N``: when the body's integer
    ``field`` is above ``N`` (e.g. ``create_sandbox:cpu>8``), or for a list field, its
    length (``create_sandbox:egress>0``: any egress allow-list)."""

    kind: str
    field: str | None = None
    above: int | None = None

    @classmethod
    def parse(cls, text: str) -> CosignRule:
        m = _RULE_RE.match(text.strip())
        if m is None:
            raise ValueError(
                f"cosign rule {text[:80]!r} is not 'kind' or 'kind:field>number'"
            )
        return cls(kind=m[1], field=m[2], above=int(m[3]) if m[3] else None)

    def __str__(self) -> str:
        return self.kind if self.field is None else f"{self.kind}:{self.field}>{self.above}"

    def matches(self, body: BaseModel) -> bool:
        if getattr(body, "kind", None) != self.kind:
            return False
        if self.field is None or self.above is None:
            return True
        value = getattr(body, self.field, None)
        if isinstance(value, list | tuple):
            value = len(value)
        # A rule about a field the body does not have matches (fail closed).
        return not isinstance(value, int) or value > self.above


def parse_rules(items: Iterable[str]) -> tuple[CosignRule, ...]:
    return tuple(CosignRule.parse(t) for t in items if t.strip())


@dataclass(slots=True)
class CosignPolicy:
    """The agent's co-signing configuration: customer keys and high-risk rules."""

    keys: Keyring = field(default_factory=Keyring)
    rules: tuple[CosignRule, ...] = ()

    @classmethod
    def from_config(cls, public_keys: Sequence[str], rules: Sequence[str]) -> CosignPolicy:
        ring = Keyring()
        for text in public_keys:
            public = signing.public_key_from_text(text.strip())
            ring.keys[signing.key_id(public)] = public
        policy = cls(keys=ring, rules=parse_rules(rules))
        if policy.rules and not ring.keys:
            raise ValueError("cosign rules are set but no customer public key is configured")
        return policy

    def required_by(self, body: BaseModel) -> CosignRule | None:
        return next((r for r in self.rules if r.matches(body)), None)


def body_digest(body: BaseModel) -> str:
    """base64url SHA-256 of the body's canonical JSON (what the customer approves)."""
    canonical = signing.canonical_json(body.model_dump(mode="json", by_alias=True))
    return signing.b64url_encode(hashlib.sha256(canonical).digest())


def body_digest_of(kind_and_fields: Mapping[str, object]) -> str:
    """The digest of a body given as JSON (as the API shows it), after strict parsing."""
    return body_digest(parse_body(kind_and_fields))


AnyJobBody = (
    messages.CreateSandboxBody
    | messages.KillSandboxBody
    | messages.SetTimeoutBody
    | messages.PauseSandboxBody
    | messages.ResumeSandboxBody
    | messages.SnapshotSandboxBody
    | messages.RestoreSandboxBody
    | messages.DeleteSnapshotBody
)


def parse_body(raw: Mapping[str, object]) -> AnyJobBody:
    """A job body from its JSON form, strictly (raises pydantic.ValidationError)."""
    adapter: TypeAdapter[AnyJobBody] = TypeAdapter(messages.JobBody)
    return adapter.validate_python(dict(raw), strict=False)


def cosign(
    key: signing.SigningKey, *, job_id: str, tenant_id: str, agent_id: str, body: BaseModel,
    ttl_s: int = DEFAULT_TTL_S, now: int | None = None,
) -> bytes:
    """The customer's cosignature over one job body (compact message bytes)."""
    t = int(time.time()) if now is None else now
    claims = Cosignature(
        job_id=job_id, tenant_id=tenant_id, agent_id=agent_id, body_sha256=body_digest(body),
        iat=t, exp=t + ttl_s,
    )
    return signing.sign(key, COSIGNATURE_TYP, messages.to_json_bytes(claims))


def attach(job: bytes, cosignatures: Sequence[bytes]) -> bytes:
    return b"\n".join([job, *cosignatures])


def split(data: bytes) -> tuple[bytes, list[bytes]]:
    """The job and the cosignatures after it: at most a few, each a small compact message.
    Anything else is not split off, and the job verifier refuses it as malformed."""
    job, sep, rest = data.partition(b"\n")
    if not sep:
        return job, []
    parts = rest.split(b"\n")
    if len(parts) > MAX_COSIGNATURES or not all(
        0 < len(p) <= MAX_COSIGNATURE_BYTES and _COMPACT_RE.fullmatch(p) for p in parts
    ):
        # Do not split: the job verifier refuses the whole thing as malformed, so a stray
        # newline or junk after a job is never silently ignored.
        return data, []
    return job, parts


def verify_cosignature(
    data: bytes, job: messages.Job, policy: CosignPolicy, *, now: float | None = None
) -> tuple[str, Cosignature]:
    """One cosignature: size, shape, a customer kid, signature, strict schema, then that it
    approves exactly this job (ids and body digest) and is within its validity window.
    Returns (kid, cosignature); raises EnvelopeRejectedError with the first failure."""
    kid, c = verify_model(
        data, typ=COSIGNATURE_TYP, model=Cosignature, keyring=policy.keys,
        max_bytes=MAX_COSIGNATURE_BYTES,
    )
    ids = {"job_id": job.job_id, "agent_id": job.agent_id}
    if (c.job_id, c.tenant_id, c.agent_id) != (job.job_id, job.tenant_id, job.agent_id):
        raise EnvelopeRejectedError(
            RejectReason.MISSING_COSIGNATURE, "the cosignature names another job", **ids
        )
    if c.body_sha256 != body_digest(job.body):
        raise EnvelopeRejectedError(
            RejectReason.MISSING_COSIGNATURE, "the cosignature approves another body", **ids
        )
    t = time.time() if now is None else now
    if c.exp <= t - CLOCK_SKEW_S or c.iat > t + CLOCK_SKEW_S or c.exp <= c.iat:
        raise EnvelopeRejectedError(
            RejectReason.MISSING_COSIGNATURE, "the cosignature is outside its validity window",
            **ids,
        )
    return kid, c


def check(
    job: messages.Job, cosignatures: Sequence[bytes], policy: CosignPolicy,
    *, now: float | None = None,
) -> str | None:
    """Raise ``missing_cosignature`` unless a job that a rule marks high-risk carries a
    valid cosignature for exactly this job. Returns the kid that co-signed, if any."""
    rule = policy.required_by(job.body)
    if rule is None:
        return None
    problems: list[str] = []
    for data in cosignatures:
        try:
            kid, _ = verify_cosignature(data, job, policy, now=now)
        except EnvelopeRejectedError as e:
            problems.append(e.message if e.reason is RejectReason.MISSING_COSIGNATURE
                            else e.reason.value)
            continue
        return kid
    why = "; ".join(problems) if problems else "none attached"
    raise EnvelopeRejectedError(
        RejectReason.MISSING_COSIGNATURE,
        f"rule {rule} needs a customer cosignature ({why})",
        job_id=job.job_id, agent_id=job.agent_id,
    )
