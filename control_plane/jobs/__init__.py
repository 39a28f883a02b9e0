"""Issue, sign, publish and track jobs; signing keys; sandbox tokens; the agent inbox."""

from control_plane.jobs.inbox import AgentInbox
from control_plane.jobs.issuer import IssuedJob, JobIssuer
from control_plane.jobs.keys import SigningKeys
from control_plane.jobs.tokens import IssuedSandboxToken, mint_sandbox_token
from control_plane.jobs.waiters import JobOutcome, JobWaiters

__all__ = [
    "AgentInbox",
    "IssuedJob",
    "IssuedSandboxToken",
    "JobIssuer",
    "JobOutcome",
    "JobWaiters",
    "SigningKeys",
    "mint_sandbox_token",
]
