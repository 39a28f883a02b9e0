"""``AdminClient``: operator actions (tenants, API keys, agents, billing) with the admin token.

``AdminClient.for_billing()`` reads billing with a billing key instead (the ``billing`` role:
usage, invoices and exports only), falling back to the admin token.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from corral._config import ADMIN_TOKEN_ENV, ConnectionConfig
from corral._http import About, HttpClient, JsonBody, QueryParams, converted, parse
from corral._wire import (
    AgentWire,
    ApiKeyWire,
    ConsoleUserListWire,
    ConsoleUserWire,
    EnrollmentTokenWire,
    Page,
    TenantCreatedWire,
    TenantWire,
    utc,
)
from corral.errors import APIError

DEFAULT_ENROLLMENT_TTL_S = 3600
EXPORT_FORMATS = ("csv", "parquet", "focus")
EXPORT_WAIT_S = 600.0
"""How long to wait for the next bytes of an export: the server rates it while it sends, and
a tenant with a long history can take a while before its first rows."""

W = TypeVar("W", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """A person who signs in to the web console at ``/console``."""

    id: str
    username: str
    role: str
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class Tenant:
    """A customer of the platform; its sandboxes and keys are invisible to other tenants."""

    id: str
    name: str
    created_at: datetime | None = None
    required_isolation: str | None = None

    @classmethod
    def from_wire(cls, wire: TenantWire) -> Tenant:
        return cls(wire.id, wire.name, utc(wire.created_at), wire.required_isolation)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as listed: never its secret."""

    id: str
    name: str
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    role: str | None = None  # owner, admin, member, viewer, billing (None for billing keys)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A key just created; ``key`` is the secret, shown this once and never again."""

    id: str
    name: str
    key: str = field(repr=False)
    created_at: datetime | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class NewTenant:
    """A tenant just created, with its first API key."""

    tenant: Tenant
    api_key: NewApiKey


@dataclass(frozen=True, slots=True)
class EnrollmentToken:
    """A one-use token an agent presents to enroll for a tenant."""

    token: str = field(repr=False)
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """An enrolled agent; ``status`` is ``online`` or ``offline`` from its heartbeats."""

    id: str
    name: str
    tenant_id: str
    status: str
    data_plane_url: str | None = None
    last_heartbeat_at: datetime | None = None
    runtimes: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()


class _TenantPage(Page[TenantWire]):
    pass


class _ApiKeyPage(Page[ApiKeyWire]):
    pass


class _AgentPage(Page[AgentWire]):
    pass


class AdminClient:
    """Operator client; the token comes from ``admin_token=`` or ``CORRAL_ADMIN_TOKEN``."""

    def __init__(
        self,
        admin_token: str | None = None,
        *,
        api_url: str | None = None,
        request_timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        config = ConnectionConfig.resolve_admin(
            admin_token=admin_token, api_url=api_url, request_timeout=request_timeout
        )
        self._setup(config, ADMIN_TOKEN_ENV, transport)

    def _setup(
        self, config: ConnectionConfig, credential_env: str, transport: httpx.BaseTransport | None
    ) -> None:
        self._config = config
        self._http = HttpClient(config.request_timeout, transport)
        self._about = About("control", credential_env=credential_env)

    @classmethod
    def for_billing(
        cls,
        billing_key: str | None = None,
        *,
        api_url: str | None = None,
        request_timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> AdminClient:
        """A client for billing reads (usage, invoices, exports) with a billing key.

        The key is ``billing_key=`` or ``CORRAL_BILLING_KEY``; without one it falls back to
        ``CORRAL_ADMIN_TOKEN``. A billing key is refused (403) by every other endpoint.
        """
        config, credential_env = ConnectionConfig.resolve_billing(
            billing_key=billing_key, api_url=api_url, request_timeout=request_timeout
        )
        client = cls.__new__(cls)
        client._setup(config, credential_env, transport)
        return client

    @property
    def api_url(self) -> str:
        """The control plane this client talks to."""
        return self._config.api_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: JsonBody | None = None,
        params: QueryParams | None = None,
    ) -> httpx.Response:
        return self._http.request(
            method,
            f"{self._config.api_url}{path}",
            self._about,
            token=self._config.api_key,
            json=json,
            params=params,
        )

    def _pages(self, path: str, page: type[Page[W]], item: type[W]) -> Iterator[W]:
        """Items of a listing, following ``next_cursor``; a bare JSON list is one page."""
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {} if cursor is None else {"cursor": cursor}
            response = self._call("GET", path, params=params)
            data: object = _json(response)
            if isinstance(data, list):
                yield from (_validate(item, x, response) for x in data)
                return
            result = _validate(page, data, response)
            yield from result.items
            cursor = result.next_cursor
            if not cursor or not result.items:
                return

    # ---- tenants ----

    def create_tenant(self, name: str) -> NewTenant:
        """Create a tenant and its first API key (the key's secret is returned only now)."""
        response = self._call("POST", "/v1/tenants", json={"name": name})
        wire = parse(TenantCreatedWire, response, self._about)
        key = wire.api_key
        if key.key is None:
            raise APIError(
                "The control plane returned the tenant's first API key without its secret; "
                f"create one with `corral admin apikey create --tenant {wire.tenant.id}`.",
                status_code=response.status_code,
            )
        new_key = NewApiKey(key.id, key.name, key.key, utc(key.created_at))
        return NewTenant(Tenant.from_wire(wire.tenant), new_key)

    def list_tenants(self) -> builtins.list[Tenant]:
        """Every tenant, all pages."""
        pages = self._pages("/v1/tenants", _TenantPage, TenantWire)
        return [Tenant.from_wire(w) for w in pages]

    def get_tenant(self, tenant_id: str) -> Tenant:
        response = self._call("GET", f"/v1/tenants/{_seg(tenant_id)}")
        return Tenant.from_wire(parse(TenantWire, response, self._about))

    def set_tenant_policy(self, tenant_id: str, *, required_isolation: str | None) -> Tenant:
        """Require ``"microvm"`` isolation for every sandbox of a tenant (``None`` clears it)."""
        response = self._call(
            "PUT",
            f"/v1/tenants/{_seg(tenant_id)}/policy",
            json={"required_isolation": required_isolation},
        )
        return Tenant.from_wire(parse(TenantWire, response, self._about))

    # ---- API keys ----

    def create_api_key(self, tenant_id: str, name: str, role: str = "member") -> NewApiKey:
        """Create an API key for a tenant in ``role`` (owner, admin, member, viewer or
        billing); its secret is in the result, this once."""
        response = self._call(
            "POST",
            f"/v1/tenants/{_seg(tenant_id)}/api-keys",
            json={"name": name, "role": role},
        )
        wire = parse(ApiKeyWire, response, self._about)
        if wire.key is None:
            raise APIError(
                "The control plane created the key but returned no secret; revoke it and "
                "try again.",
                status_code=response.status_code,
            )
        return NewApiKey(wire.id, wire.name, wire.key, utc(wire.created_at), wire.role)

    def list_api_keys(self, tenant_id: str) -> builtins.list[ApiKey]:
        """A tenant's API keys with their roles, without secrets."""
        items = self._pages(f"/v1/tenants/{_seg(tenant_id)}/api-keys", _ApiKeyPage, ApiKeyWire)
        return [
            ApiKey(w.id, w.name, utc(w.created_at), utc(w.revoked_at), w.role) for w in items
        ]

    def revoke_api_key(self, tenant_id: str, key_id: str) -> None:
        """Revoke a key; requests with it fail with 401 from now on."""
        self._call("DELETE", f"/v1/tenants/{_seg(tenant_id)}/api-keys/{_seg(key_id)}")

    # ---- billing keys ----

    def create_billing_key(self, name: str) -> NewApiKey:
        """Mint a key for the billing role (finance); its secret is in the result, this once."""
        response = self._call("POST", "/v1/billing/keys", json={"name": name})
        wire = parse(ApiKeyWire, response, self._about)
        if wire.key is None:
            raise APIError(
                "The control plane created the billing key but returned no secret; revoke it "
                "and try again.",
                status_code=response.status_code,
            )
        return NewApiKey(wire.id, wire.name, wire.key, utc(wire.created_at))

    def list_billing_keys(self) -> builtins.list[ApiKey]:
        """Billing keys, without secrets."""
        items = self._pages("/v1/billing/keys", _ApiKeyPage, ApiKeyWire)
        return [ApiKey(w.id, w.name, utc(w.created_at), utc(w.revoked_at)) for w in items]

    def revoke_billing_key(self, key_id: str) -> None:
        """Revoke a billing key; requests with it fail with 401 from now on."""
        self._call("DELETE", f"/v1/billing/keys/{_seg(key_id)}")

    # ---- agents ----

    def create_enrollment_token(
        self, tenant_id: str, ttl_s: int = DEFAULT_ENROLLMENT_TTL_S
    ) -> EnrollmentToken:
        """A one-use token with which an agent enrolls for ``tenant_id``."""
        response = self._call(
            "POST", "/v1/agents/enrollment-tokens", json={"tenant_id": tenant_id, "ttl_s": ttl_s}
        )
        wire = parse(EnrollmentTokenWire, response, self._about)
        return EnrollmentToken(wire.token, utc(wire.expires_at))

    def list_agents(self) -> builtins.list[AgentInfo]:
        """Every enrolled agent and whether it is online."""
        return [
            AgentInfo(
                id=w.id,
                name=w.name,
                tenant_id=w.tenant_id,
                status=w.status,
                data_plane_url=w.data_plane_url,
                last_heartbeat_at=utc(w.last_heartbeat_at),
                runtimes=tuple(w.runtimes),
                templates=tuple(w.templates),
            )
            for w in self._pages("/v1/agents", _AgentPage, AgentWire)
        ]

    # ---- console users ----

    def create_console_user(self, username: str, password: str, role: str = "admin") -> ConsoleUser:
        """Create a web-console user (role ``admin``, ``viewer`` or ``billing``)."""
        response = self._call(
            "POST",
            "/v1/console/users",
            json={"username": username, "password": password, "role": role},
        )
        w = parse(ConsoleUserWire, response, self._about)
        return ConsoleUser(w.id, w.username, w.role, utc(w.created_at))

    def list_console_users(self) -> builtins.list[ConsoleUser]:
        response = self._call("GET", "/v1/console/users")
        wire = parse(ConsoleUserListWire, response, self._about)
        return [ConsoleUser(w.id, w.username, w.role, utc(w.created_at)) for w in wire.items]

    # ---- billing ----

    def download_export(
        self,
        period: str,
        export_format: str,
        destination: Path,
        *,
        on_start: Callable[[int | None], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Stream a period's billing export into ``destination``; return the bytes written.

        The body goes to ``<destination>.part`` first and is renamed when complete, so a
        failed download never leaves a truncated file under the requested name.
        ``on_start`` gets the size when the server sends one; ``on_bytes`` each chunk's size.
        """
        url = f"{self._config.api_url}/v1/billing/export"
        timeout = httpx.Timeout(self._config.request_timeout, read=EXPORT_WAIT_S)
        response = self._http.open(
            "GET",
            url,
            self._about,
            token=self._config.api_key,
            params={"period": period, "format": export_format},
            timeout=timeout,
        )
        partial = destination.with_name(destination.name + ".part")
        written = 0
        try:
            length = response.headers.get("content-length")
            if on_start is not None:
                on_start(int(length) if length and length.isdigit() else None)
            with converted(self._about, url), partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
            partial.replace(destination)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            response.close()
        return written


def _seg(value: str) -> str:
    """One URL path segment: an id can never reach another endpoint."""
    return quote(value, safe="")


def _json(response: httpx.Response) -> object:
    try:
        data: object = json.loads(response.content)
    except ValueError as e:
        raise APIError(
            f"The control plane answered {response.request.url.path} with something that is "
            "not JSON; is CORRAL_API_URL pointing at a Corral control plane?",
            status_code=response.status_code,
        ) from e
    return data


def _validate(model: type[W], data: object, response: httpx.Response) -> W:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise APIError(
            f"Unexpected response from {response.request.url.path}: {e.error_count()} "
            "field(s) did not match. Is the SDK version compatible with the server?",
            status_code=response.status_code,
        ) from e
