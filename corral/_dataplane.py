"""Direct access to one sandbox's data plane, with its short-lived token kept fresh.

Exec and files never pass through the control plane: requests go to the sandbox's
``data_plane_url`` with its access token as a bearer token. The token is fetched from
``POST /v1/sandboxes/{id}/token`` when none is held, when it is within
:data:`REFRESH_MARGIN_S` of expiry, and once more when the data plane answers 401.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from corral._config import ConnectionConfig
from corral._http import (
    About,
    HttpClient,
    JsonBody,
    QueryParams,
    RequestContent,
    converted,
    parse,
)
from corral._wire import AccessWire, utc
from corral.errors import AuthenticationError

REFRESH_MARGIN_S = 30.0


@dataclass(frozen=True, slots=True)
class Access:
    """A data-plane URL and the bearer token that opens it for one sandbox."""

    token: str
    data_plane_url: str
    expires_at: datetime | None

    def __repr__(self) -> str:
        return f"Access(data_plane_url={self.data_plane_url!r}, expires_at={self.expires_at!r})"

    @classmethod
    def from_wire(cls, wire: AccessWire) -> Access:
        return cls(wire.access_token, wire.data_plane_url.rstrip("/"), utc(wire.expires_at))

    def near_expiry(self, now: datetime) -> bool:
        if self.expires_at is None:
            return False
        return self.expires_at - now <= timedelta(seconds=REFRESH_MARGIN_S)


class DataPlane:
    """Sends data-plane requests for one sandbox, refreshing its token as needed."""

    def __init__(
        self,
        http: HttpClient,
        config: ConnectionConfig,
        sandbox_id: str,
        access: Access | None = None,
    ) -> None:
        self._http = http
        self._config = config
        self.sandbox_id = sandbox_id
        self._access = access

    @property
    def http(self) -> HttpClient:
        return self._http

    def refresh(self) -> Access:
        """Ask the control plane for a fresh token (and the current data-plane URL)."""
        about = About("control", resource="sandbox", sandbox_id=self.sandbox_id)
        response = self._http.request(
            "POST",
            f"{self._config.api_url}/v1/sandboxes/{self.sandbox_id}/token",
            about,
            token=self._config.api_key,
        )
        self._access = Access.from_wire(parse(AccessWire, response, about))
        return self._access

    def current(self) -> Access:
        """The held token, refreshed first if missing or about to expire."""
        access = self._access
        if access is None or access.near_expiry(datetime.now(UTC)):
            return self.refresh()
        return access

    def open(
        self,
        method: str,
        suffix: str,
        about: About,
        *,
        json: JsonBody | None = None,
        params: QueryParams | None = None,
        content: Callable[[], RequestContent] | None = None,
        timeout: httpx.Timeout | float | None = None,
        can_retry: bool = True,
    ) -> httpx.Response:
        """Open ``suffix`` on the data plane; on 401, refresh the token and try once more.

        ``content`` is a factory so a retried request sends its body afresh; pass
        ``can_retry=False`` when the body cannot be produced twice.
        """
        access = self.current()
        try:
            return self._send(access, method, suffix, about, json, params, content, timeout)
        except AuthenticationError:
            if not can_retry:
                raise
        access = self.refresh()
        return self._send(access, method, suffix, about, json, params, content, timeout)

    def request(
        self,
        method: str,
        suffix: str,
        about: About,
        *,
        json: JsonBody | None = None,
        params: QueryParams | None = None,
        content: Callable[[], RequestContent] | None = None,
        timeout: httpx.Timeout | float | None = None,
        can_retry: bool = True,
    ) -> httpx.Response:
        """Like :meth:`open`, but read the whole response and close it."""
        response = self.open(
            method,
            suffix,
            about,
            json=json,
            params=params,
            content=content,
            timeout=timeout,
            can_retry=can_retry,
        )
        try:
            with converted(about, str(response.request.url)):
                response.read()
        finally:
            response.close()
        return response

    def _send(
        self,
        access: Access,
        method: str,
        suffix: str,
        about: About,
        json: JsonBody | None,
        params: QueryParams | None,
        content: Callable[[], RequestContent] | None,
        timeout: httpx.Timeout | float | None,
    ) -> httpx.Response:
        return self._http.open(
            method,
            access.data_plane_url + suffix,
            about,
            token=access.token,
            json=json,
            params=params,
            content=None if content is None else content(),
            timeout=timeout,
        )
