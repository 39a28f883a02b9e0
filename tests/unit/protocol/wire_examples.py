"""Fixed keys and one deterministic example of every signed message, for golden files and fuzzing.

The seeds below are test fixtures, committed on purpose: they sign nothing outside these
tests. Ed25519 signing is deterministic, so the same seed, model and ``typ`` always give
the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from byoc_agent.protocol import cosign, messages, signing, verify
from byoc_agent.protocol.messages import (
    Capacity,
    CreateSandboxBody,
    DeleteSnapshotBody,
    Heartbeat,
    HostSummary,
    Job,
    JobResult,
    KillSandboxBody,
    PauseSandboxBody,
    RestoreSandboxBody,
    ResumeSandboxBody,
    SandboxEvent,
    SandboxReport,
    SandboxState,
    SandboxToken,
    Scope,
    SetTimeoutBody,
    SnapshotSandboxBody,
    UsageReport,
    WireError,
)

CONTROL_PLANE_SEED = bytes.fromhex(
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
)
AGENT_SEED = bytes.fromhex("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
STRANGER_SEED = bytes.fromhex("404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f")
CUSTOMER_SEED = bytes.fromhex("606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f")

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
TENANT = "ten-golden"
AGENT = "agt-golden"


def key_from_seed(seed: bytes) -> signing.SigningKey:
    """A signing key derived from a fixed 32-byte seed, under its own key_id."""
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return signing.SigningKey(kid=signing.key_id(private.public_key()), private_key=private)


CONTROL_PLANE_KEY = key_from_seed(CONTROL_PLANE_SEED)
AGENT_KEY = key_from_seed(AGENT_SEED)
STRANGER_KEY = key_from_seed(STRANGER_SEED)
CUSTOMER_KEY = key_from_seed(CUSTOMER_SEED)  # the customer's co-signing key


@dataclass(frozen=True, slots=True)
class Example:
    """One message as a model, the ``typ`` it is signed under and the key that signs it."""

    name: str
    model: BaseModel
    typ: str
    key: signing.SigningKey

    def payload(self) -> bytes:
        return messages.to_json_bytes(self.model)

    def message(self) -> bytes:
        return signing.sign(self.key, self.typ, self.payload())


_SBX = "sbx-0001"
_STARTED = NOW + 1.0

CREATE_JOB = Job(
    job_id="job-0001",
    tenant_id=TENANT,
    agent_id=AGENT,
    iat=NOW,
    exp=NOW + 300,
    seq=1,
    body=CreateSandboxBody(
        sandbox_id=_SBX,
        template="python-3.11",
        cpu=2,
        memory_mb=1024,
        timeout_s=600,
        env={"LANG": "C.UTF-8", "GREETING": "h\u00e9llo \u2603 \U0001f40e"},
        isolation="gvisor",
    ),
)

SANDBOX_TOKEN = SandboxToken(
    tenant_id=TENANT,
    agent_id=AGENT,
    sandbox_id=_SBX,
    scopes=[Scope.EXEC, Scope.FILES],
    iat=NOW,
    exp=NOW + 900,
)

COSIGNATURE = cosign.Cosignature(
    job_id=CREATE_JOB.job_id, tenant_id=TENANT, agent_id=AGENT,
    body_sha256=cosign.body_digest(CREATE_JOB.body), iat=NOW, exp=NOW + 3600,
)

EXAMPLES: tuple[Example, ...] = (
    Example("job_create_sandbox", CREATE_JOB, messages.JOB_TYP, CONTROL_PLANE_KEY),
    Example(
        "job_create_sandbox_with_egress",
        Job(
            job_id="job-0010", tenant_id=TENANT, agent_id=AGENT, iat=NOW + 60,
            exp=NOW + 360, seq=10,
            body=CreateSandboxBody(
                sandbox_id="sbx-0003", template="base", cpu=1, memory_mb=512, timeout_s=300,
                isolation="microvm", egress=["192.0.2.10:443", "198.51.100.7:5432"],
            ),
        ),
        messages.JOB_TYP,
        CONTROL_PLANE_KEY,
    ),
    Example(
        "job_kill_sandbox",
        Job(
            job_id="job-0002", tenant_id=TENANT, agent_id=AGENT, iat=NOW + 700,
            exp=NOW + 1000, seq=2, body=KillSandboxBody(sandbox_id=_SBX),
        ),
        messages.JOB_TYP,
        CONTROL_PLANE_KEY,
    ),
    Example(
        "job_pause_sandbox",
        Job(
            job_id="job-0005", tenant_id=TENANT, agent_id=AGENT, iat=NOW + 800,
            exp=NOW + 1100, seq=5, body=PauseSandboxBody(sandbox_id=_SBX),
        ),
        messages.JOB_TYP,
        CONTROL_PLANE_KEY,
    ),
    Example(
        "job_resume_sandbox",
        Job(
            job_id="job-0006", tenant_id=TENANT, agent_id=AGENT, iat=NOW + 900,
            exp=NOW + 1200, seq=6, body=ResumeSandboxBody(sandbox_id=_SBX),
        ),
        messages.JOB_TYP,
        CONTROL_PLANE_KEY,
    ),
    Example(
        "job_snapshot_sandbox",
        Job(
            job_id="job-0007", tenant_id=TENANT, agent_id=AGENT, iat=NOW + 1000,
            exp=NOW + 1300, seq=7,
            body=SnapshotSandboxBody(sandbox_id=_SBX, snapshot_id="snap-golden"),
        ),
        messages.JOB_TYP,
        CONTROL_PLANE_KEY,
    ),
    Example(
        "job_restore_sandbox",
        Job(
            job_id="job-0008", tenant_id=TENANT, agent_id=AGENT, iat=NOW + 1100,
            exp=NOW + 1400, seq=8,
            body=RestoreSandboxBody(
                sandbox_id="sbx-0002", snapshot_id="snap-golden", timeout_s=600,
                env={"MODE": "fork"}, isolation="gvisor",
            ),
        ),
        messages.JOB_TYP,
        CONTROL_PLANE_KEY,
    ),
    Example(
        "job_delete_snapshot",
        Job(
            job_id="job-0009", tenant_id=TENANT, agent_id=AGENT, iat=NOW + 1200,
            exp=NOW + 1500, seq=9,
            body=DeleteSnapshotBody(sandbox_id=_SBX, snapshot_id="snap-golden"),
        ),
        messages.JOB_TYP,
        CONTROL_PLANE_KEY,
    ),
    Example(
        "job_set_timeout",
        Job(
            job_id="job-0003", tenant_id=TENANT, agent_id=AGENT, iat=NOW + 60,
            exp=NOW + 360, seq=3, body=SetTimeoutBody(sandbox_id=_SBX, timeout_s=1800),
        ),
        messages.JOB_TYP,
        CONTROL_PLANE_KEY,
    ),
    Example(
        "result_succeeded",
        JobResult(
            job_id="job-0001", tenant_id=TENANT, agent_id=AGENT, status="succeeded",
            at=NOW + 1.25,
            sandbox=SandboxReport(sandbox_id=_SBX, state=SandboxState.RUNNING, started_at=_STARTED),
        ),
        messages.RESULT_TYP,
        AGENT_KEY,
    ),
    Example(
        "result_failed",
        JobResult(
            job_id="job-0004", tenant_id=TENANT, agent_id=AGENT, status="failed", at=NOW + 2.5,
            error=WireError(
                code="template_not_found", message="template python-3.12 is not on this agent"
            ),
        ),
        messages.RESULT_TYP,
        AGENT_KEY,
    ),
    Example(
        "event_sandbox_timed_out",
        SandboxEvent(
            event_id="evt-0001", tenant_id=TENANT, agent_id=AGENT, at=NOW + 601.5,
            sandbox=SandboxReport(
                sandbox_id=_SBX, state=SandboxState.TIMED_OUT, started_at=_STARTED,
                ended_at=NOW + 601.0, end_reason="timeout",
            ),
        ),
        messages.EVENT_TYP,
        AGENT_KEY,
    ),
    Example(
        "heartbeat",
        Heartbeat(
            agent_id=AGENT, tenant_id=TENANT, at=NOW + 5.0, version="0.1.0",
            data_plane_url="https://agt-golden.example.internal:8443",
            runtimes=["gvisor"], templates=["base", "python-3.11"],
            capacity=Capacity(
                cpu_total=16, cpu_free=14, memory_mb_total=65536, memory_mb_free=64512,
                sandboxes=1,
            ),
            running=[_SBX],
        ),
        messages.HEARTBEAT_TYP,
        AGENT_KEY,
    ),
    Example(
        "heartbeat_with_hosts",
        Heartbeat(
            agent_id=AGENT, tenant_id=TENANT, at=NOW + 10.0, version="0.1.0",
            data_plane_url="https://agt-golden.example.internal:8443",
            runtimes=["gvisor"], templates=["base"],
            capacity=Capacity(
                cpu_total=16, cpu_free=16, memory_mb_total=65536, memory_mb_free=65536,
                sandboxes=0,
            ),
            running=[],
            hosts=[
                HostSummary(
                    host_id="i-0123456789abcdef0", instance_type="c5.metal", state="ready",
                    cpu_total=96, cpu_free=94, memory_mb_total=196608, memory_mb_free=194560,
                    gpus_total=0, gpus_free=0, kvm=True, sandboxes=1,
                ),
                HostSummary(
                    host_id="ch-5f1c0e2a9b7d4c3e8f6a1b2c3d4e5f60", instance_type="p5.48xlarge",
                    state="requested", cpu_total=192, cpu_free=0, memory_mb_total=2097152,
                    memory_mb_free=0, gpus_total=8, gpus_free=0, kvm=False, sandboxes=0,
                ),
            ],
        ),
        messages.HEARTBEAT_TYP,
        AGENT_KEY,
    ),
    Example(
        "usage_report_final",
        UsageReport(
            record_id="usage-15ef8332d275fa420187c4467a811d949fbc13d6", tenant_id=TENANT,
            agent_id=AGENT, sandbox_id=_SBX, start=NOW + 541, end=NOW + 601, vcpu=2,
            memory_mb=1024, gpu_count=0, gpu_model=None, isolation="gvisor",
            template="python-3.11", host="node-7.example.internal", final=True,
        ),
        messages.USAGE_TYP,
        AGENT_KEY,
    ),
    Example("sandbox_token", SANDBOX_TOKEN, messages.SANDBOX_TOKEN_TYP, CONTROL_PLANE_KEY),
    Example("cosignature", COSIGNATURE, cosign.COSIGNATURE_TYP, CUSTOMER_KEY),
)


def keyring_for(key: signing.SigningKey) -> verify.Keyring:
    """A keyring that trusts only ``key``."""
    return verify.Keyring({key.kid: key.public_key})


AUDIENCE = verify.Audience(agent_id=AGENT, tenant_id=TENANT)


@dataclass(slots=True)
class MemoryReplayGuard:
    """An in-memory :class:`~byoc_agent.protocol.verify.ReplayGuard` for unit tests."""

    applied: set[str] = field(default_factory=set)
    last: int = 0

    def seen(self, job_id: str) -> bool:
        return job_id in self.applied

    def last_seq(self) -> int:
        return self.last
