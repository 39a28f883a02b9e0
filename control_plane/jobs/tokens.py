"""Sandbox tokens: short-lived, one sandbox, signed with the active control-plane key."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from byoc_agent.protocol.messages import SANDBOX_TOKEN_TYP, SandboxToken, Scope, to_json_bytes
from byoc_agent.protocol.signing import SigningKey, sign


@dataclass(frozen=True, slots=True)
class IssuedSandboxToken:
    token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"IssuedSandboxToken(expires_at={self.expires_at.isoformat()})"


def mint_sandbox_token(
    key: SigningKey, *, tenant_id: str, agent_id: str, sandbox_id: str, ttl_s: int
) -> IssuedSandboxToken:
    now = int(time.time())
    claims = SandboxToken(
        tenant_id=tenant_id,
        agent_id=agent_id,
        sandbox_id=sandbox_id,
        scopes=[Scope.EXEC, Scope.FILES],
        iat=now,
        exp=now + ttl_s,
    )
    token = sign(key, SANDBOX_TOKEN_TYP, to_json_bytes(claims)).decode("ascii")
    return IssuedSandboxToken(token=token, expires_at=datetime.fromtimestamp(now + ttl_s, UTC))
