"""Enrollment: the agent makes its own key pair and registers the public half.

The private key is written with mode 0600 and never leaves this machine. The one-time
enrollment token (bound to a tenant, minted by the control plane) is spent here.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from byoc_agent.protocol import signing, verify
from byoc_agent.protocol.errors import CorralError, InvalidArgumentError, RetryableError
from byoc_agent.state import AgentIdentity, AgentStateStore
from byoc_agent.transport.credentials import NatsUserFiles

log = structlog.get_logger(__name__)
HTTP_TIMEOUT_S = 10.0


def load_or_create_key(path: Path) -> signing.SigningKey:
    """The agent's own Ed25519 key, created on first use with mode 0600."""
    if path.exists():
        key = signing.SigningKey.from_pem("pending", path.read_bytes())
        return signing.SigningKey(kid=signing.key_id(key.public_key), private_key=key.private_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = signing.SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_pem())
        f.flush()
        os.fsync(f.fileno())
    return key


def enroll(
    *,
    control_plane_url: str,
    token: str,
    key: signing.SigningKey,
    name: str,
    data_plane_url: str,
    runtimes: list[str],
    templates: list[str],
    cpu_total: int,
    memory_mb_total: int,
    state: AgentStateStore,
    nats_user: NatsUserFiles | None = None,
    cosign_rules: list[str] | None = None,
    cosigner_keys: list[str] | None = None,
) -> AgentIdentity:
    """Spend the enrollment token; store the identity, the control plane's keys and the
    NATS user JWT. Only public keys leave this machine (message key and NATS nkey)."""
    body: dict[str, object] = {
        "token": token,
        "name": name,
        "public_key": key.public_text,
        "data_plane_url": data_plane_url,
        "runtimes": runtimes,
        "templates": templates,
        "capacity": {
            "cpu_total": cpu_total,
            "cpu_free": cpu_total,
            "memory_mb_total": memory_mb_total,
            "memory_mb_free": memory_mb_total,
            "sandboxes": 0,
        },
    }
    if nats_user is not None:
        body["nats_public_key"] = nats_user.public_key()
    if cosign_rules:
        body["cosign_rules"] = cosign_rules
        body["cosigner_keys"] = cosigner_keys or []
    try:
        r = httpx.post(
            f"{control_plane_url.rstrip('/')}/v1/agents/enroll", json=body, timeout=HTTP_TIMEOUT_S
        )
    except httpx.HTTPError as e:
        raise RetryableError(f"cannot reach the control plane at {control_plane_url}: {e}") from e
    if r.status_code >= 400:
        raise InvalidArgumentError(
            f"enrollment refused ({r.status_code}): {_message(r)}; "
            "ask the operator for a new enrollment token"
        )
    data = r.json()
    nats_jwt = data.get("nats_jwt")
    if nats_user is not None and isinstance(nats_jwt, str) and nats_jwt:
        nats_user.save_jwt(nats_jwt)
    ident = AgentIdentity(
        agent_id=str(data["agent_id"]),
        tenant_id=str(data["tenant_id"]),
        kid=key.kid,
        nats_url=str(data["nats_url"]),
    )
    state.save_identity(ident)
    state.replace_control_plane_keys(_keys(data["control_plane_keys"]))
    log.info("agent_enrolled", agent_id=ident.agent_id, tenant_id=ident.tenant_id)
    return ident


def keyring_from_state(state: AgentStateStore) -> verify.Keyring:
    ring = verify.Keyring()
    update_keyring(ring, state.control_plane_keys())
    return ring


def update_keyring(ring: verify.Keyring, keys: list[tuple[str, str, str]]) -> None:
    """Replace the keyring's contents in place (the data plane and job loop share it)."""
    fresh: dict[str, Ed25519PublicKey] = {}
    revoked: set[str] = set()
    for kid, public, status in keys:
        if status == "revoked":
            revoked.add(kid)
        else:
            fresh[kid] = signing.public_key_from_text(public)
    ring.keys.clear()
    ring.keys.update(fresh)
    ring.revoked.clear()
    ring.revoked.update(revoked)


async def refresh_keys(
    client: httpx.AsyncClient, control_plane_url: str, state: AgentStateStore,
    ring: verify.Keyring,
) -> None:
    """Fetch the control plane's public keys; a revoked kid stops verifying at once."""
    try:
        r = await client.get(
            f"{control_plane_url.rstrip('/')}/v1/signing-keys", timeout=HTTP_TIMEOUT_S
        )
        r.raise_for_status()
        keys = _keys(r.json()["keys"])
    except (httpx.HTTPError, KeyError, ValueError, TypeError) as e:
        log.warning("key_refresh_failed", error=str(e))
        return
    keys = keep_revocations(state.control_plane_keys(), keys)
    state.replace_control_plane_keys(keys)
    update_keyring(ring, keys)


def keep_revocations(
    previous: list[tuple[str, str, str]], fresh: list[tuple[str, str, str]]
) -> list[tuple[str, str, str]]:
    """A revocation is final: a later key list (stale, replayed, or from an impostor) that
    shows a revoked kid as active, or leaves it out, does not bring it back."""
    revoked = {kid: public for kid, public, status in previous if status == "revoked"}
    out = [(kid, public, "revoked" if kid in revoked else status)
           for kid, public, status in fresh]
    listed = {kid for kid, _, _ in fresh}
    out += [(kid, public, "revoked") for kid, public in revoked.items() if kid not in listed]
    return out


async def key_refresh_loop(
    client: httpx.AsyncClient, control_plane_url: str, state: AgentStateStore,
    ring: verify.Keyring, *, interval_s: float,
) -> None:
    """Refresh the keyring every ``interval_s`` (``CORRAL_AGENT_KEY_REFRESH_INTERVAL_S``):
    a kid the control plane revokes is refused here within one interval."""
    while True:
        await refresh_keys(client, control_plane_url, state, ring)
        await asyncio.sleep(interval_s)


def _keys(raw: object) -> list[tuple[str, str, str]]:
    if not isinstance(raw, list):
        raise CorralError("control plane sent no key list")
    out: list[tuple[str, str, str]] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        out.append((str(item["kid"]), str(item["public_key"]), str(item.get("status", "active"))))
    return out


def _message(r: httpx.Response) -> str:
    try:
        err = r.json()["error"]
        return f"{err.get('code')}: {err.get('message')}"
    except (ValueError, KeyError, TypeError):
        return r.text[:200]
