"""The trust chain from the SDK: signing keys, the audit log, and customer co-signing.

``TrustClient.operator()`` (``CORRAL_ADMIN_TOKEN``) lists, rotates and revokes the control
plane's signing keys and reads and verifies the whole audit log. ``TrustClient.tenant()``
(``CORRAL_API_KEY``) reads its tenant's audit entries and co-signs held jobs with a key
only the customer holds::

    key = load_cosigner_key(Path("cosigner.pem"))       # made by generate_cosigner_key
    with TrustClient.tenant() as trust:
        for request in trust.cosign_requests(status="pending"):
            print(request.kind, request.body)             # review what you approve
            trust.cosign(request, key)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field

from byoc_agent.protocol import cosign as cosign_protocol
from byoc_agent.protocol.signing import SigningKey, key_id
from corral._config import ADMIN_TOKEN_ENV, API_KEY_ENV, ConnectionConfig
from corral._http import About, HttpClient, JsonBody, QueryParams, parse
from corral._wire import Page, _Edge, utc
from corral.errors import InvalidArgumentError

W = TypeVar("W", bound=BaseModel)


class _KeyWire(_Edge):
    kid: str
    public_key: str
    status: str
    created_at: datetime | None = None
    retired_at: datetime | None = None
    revoked_at: datetime | None = None


class _KeyListWire(_Edge):
    keys: list[_KeyWire]


class _RevokedWire(_Edge):
    revoked: _KeyWire
    replaced_by: _KeyWire | None = None


class _AuditWire(_Edge):
    seq: int
    at: datetime
    actor: str
    tenant_id: str | None = None
    action: str
    subject: str | None = None
    detail: dict[str, str] = Field(default_factory=dict)
    prev_hash: str
    hash: str


class _AuditVerifyWire(_Edge):
    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


class _CosignWire(_Edge):
    id: str
    tenant_id: str
    agent_id: str
    sandbox_id: str | None = None
    kind: str
    body: dict[str, object]
    body_sha256: str
    rule: str
    status: str
    expires_at: datetime | None = None


class _ReleasedWire(_Edge):
    job_id: str
    status: str


@dataclass(frozen=True, slots=True)
class SigningKeyInfo:
    kid: str
    public_key: str
    status: str
    created_at: datetime | None = None
    retired_at: datetime | None = None
    revoked_at: datetime | None = None

    @classmethod
    def from_wire(cls, w: _KeyWire) -> SigningKeyInfo:
        return cls(w.kid, w.public_key, w.status, utc(w.created_at), utc(w.retired_at),
                   utc(w.revoked_at))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    subject: str | None
    detail: dict[str, str]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditCheck:
    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class CosignRequest:
    """A job the control plane holds until the customer co-signs it."""

    id: str
    tenant_id: str
    agent_id: str
    sandbox_id: str | None
    kind: str
    body: dict[str, object] = field(repr=False)
    body_sha256: str
    rule: str
    status: str
    expires_at: datetime | None = None


def generate_cosigner_key(path: Path) -> str:
    """Write a new Ed25519 customer key (PKCS#8 PEM, mode 0600) and return its public key
    (base64url), the value for the agent's ``CORRAL_AGENT_COSIGNER_KEYS``."""
    key = SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_pem())
    return key.public_text


def load_cosigner_key(path: Path) -> SigningKey:
    try:
        loaded = SigningKey.from_pem("pending", path.read_bytes())
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(
            f"cannot read an Ed25519 private key (PKCS#8 PEM) from {path}: {e}", field="key"
        ) from e
    return SigningKey(kid=key_id(loaded.public_key), private_key=loaded.private_key)


def cosignature_for(request: CosignRequest, key: SigningKey, *, ttl_s: int = 3600) -> str:
    """The cosignature over exactly the body shown in ``request`` (its digest is computed
    here from the body, never taken from the server)."""
    body = cosign_protocol.parse_body(request.body)
    digest = cosign_protocol.body_digest(body)
    if digest != request.body_sha256:
        raise InvalidArgumentError(
            "the control plane's digest does not match the body it shows; refusing to sign",
            field="body_sha256",
        )
    data = cosign_protocol.cosign(
        key, job_id=request.id, tenant_id=request.tenant_id, agent_id=request.agent_id,
        body=body, ttl_s=ttl_s,
    )
    return data.decode("ascii")


class TrustClient:
    def __init__(self, config: ConnectionConfig, credential_env: str,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._config = config
        self._http = HttpClient(config.request_timeout, transport)
        self._about = About("control", credential_env=credential_env)

    @classmethod
    def operator(cls, admin_token: str | None = None, *, api_url: str | None = None,
                 transport: httpx.BaseTransport | None = None) -> TrustClient:
        config = ConnectionConfig.resolve_admin(admin_token=admin_token, api_url=api_url)
        return cls(config, ADMIN_TOKEN_ENV, transport)

    @classmethod
    def tenant(cls, api_key: str | None = None, *, api_url: str | None = None,
               transport: httpx.BaseTransport | None = None) -> TrustClient:
        config = ConnectionConfig.resolve(api_key=api_key, api_url=api_url)
        return cls(config, API_KEY_ENV, transport)

    @classmethod
    def from_env(cls, *, transport: httpx.BaseTransport | None = None) -> TrustClient:
        """The operator when ``CORRAL_ADMIN_TOKEN`` is set, else the tenant key."""
        if os.environ.get(ADMIN_TOKEN_ENV):
            return cls.operator(transport=transport)
        return cls.tenant(transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TrustClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, method: str, path: str, *, json: JsonBody | None = None,
              params: QueryParams | None = None) -> httpx.Response:
        return self._http.request(method, f"{self._config.api_url}{path}", self._about,
                                  token=self._config.api_key, json=json, params=params)

    def _pages(self, path: str, page: type[Page[W]],
               params: dict[str, str | int]) -> Iterator[W]:
        cursor: str | None = None
        while True:
            query = dict(params) if cursor is None else {**params, "cursor": cursor}
            result = parse(page, self._call("GET", path, params=query), self._about)
            yield from result.items
            cursor = result.next_cursor
            if not cursor or not result.items:
                return

    # ---- signing keys (operator) ----

    def signing_keys(self) -> list[SigningKeyInfo]:
        wire = parse(_KeyListWire, self._call("GET", "/v1/admin/signing-keys"), self._about)
        return [SigningKeyInfo.from_wire(k) for k in wire.keys]

    def rotate_signing_key(self) -> SigningKeyInfo:
        response = self._call("POST", "/v1/admin/signing-keys/rotate")
        return SigningKeyInfo.from_wire(parse(_KeyWire, response, self._about))

    def revoke_signing_key(self, kid: str) -> tuple[SigningKeyInfo, SigningKeyInfo | None]:
        """Revoke ``kid``; returns it and, if it was the active key, its replacement."""
        response = self._call("POST", f"/v1/admin/signing-keys/{quote(kid, safe='')}/revoke")
        wire = parse(_RevokedWire, response, self._about)
        replaced = SigningKeyInfo.from_wire(wire.replaced_by) if wire.replaced_by else None
        return SigningKeyInfo.from_wire(wire.revoked), replaced

    # ---- audit ----

    def audit(self, *, tenant_id: str | None = None,
              action: str | None = None) -> Iterator[AuditEntry]:
        """Audit entries in chain order (a tenant key sees only its own tenant's)."""
        params: dict[str, str | int] = {"limit": 200}
        if tenant_id:
            params["tenant_id"] = tenant_id
        if action:
            params["action"] = action
        for w in self._pages("/v1/audit", _AuditPage, params):
            yield AuditEntry(w.seq, w.at, w.actor, w.tenant_id, w.action, w.subject,
                             dict(w.detail), w.prev_hash, w.hash)

    def verify_audit(self) -> AuditCheck:
        """The control plane recomputes the whole hash chain (operator)."""
        w = parse(_AuditVerifyWire, self._call("GET", "/v1/audit/verify"), self._about)
        return AuditCheck(w.ok, w.entries, w.head_hash, w.first_bad_seq, w.problem)

    # ---- customer co-signing (tenant) ----

    def cosign_requests(self, *, status: str | None = None) -> list[CosignRequest]:
        params: dict[str, str | int] = {"status": status} if status else {}
        return [_request(w) for w in self._pages("/v1/cosign-requests", _CosignPage, params)]

    def cosign_request(self, request_id: str) -> CosignRequest:
        response = self._call("GET", f"/v1/cosign-requests/{quote(request_id, safe='')}")
        return _request(parse(_CosignWire, response, self._about))

    def cosign(self, request: CosignRequest, key: SigningKey) -> str:
        """Co-sign the request's body with the customer's key; returns the job id sent."""
        cosignature = cosignature_for(request, key)
        response = self._call(
            "POST", f"/v1/cosign-requests/{quote(request.id, safe='')}/cosignature",
            json={"cosignature": cosignature},
        )
        return parse(_ReleasedWire, response, self._about).job_id


class _AuditPage(Page[_AuditWire]):
    pass


class _CosignPage(Page[_CosignWire]):
    pass


def _request(w: _CosignWire) -> CosignRequest:
    return CosignRequest(w.id, w.tenant_id, w.agent_id, w.sandbox_id, w.kind, dict(w.body),
                         w.body_sha256, w.rule, w.status, utc(w.expires_at))
