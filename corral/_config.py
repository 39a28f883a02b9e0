"""Where the API is and how to authenticate to it.

The SDK is a library, so it reads ``CORRAL_API_URL`` and ``CORRAL_API_KEY`` (or, for the
admin client, ``CORRAL_ADMIN_TOKEN``; for billing reads, ``CORRAL_BILLING_KEY`` first) when a
config is resolved, never at import time.
Explicit arguments always win over the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from corral.errors import AuthenticationError, InvalidArgumentError

DEFAULT_API_URL = "http://127.0.0.1:8080"
DEFAULT_REQUEST_TIMEOUT = 30.0

API_URL_ENV = "CORRAL_API_URL"
API_KEY_ENV = "CORRAL_API_KEY"
ADMIN_TOKEN_ENV = "CORRAL_ADMIN_TOKEN"  # noqa: S105 - an env var name, not a secret
BILLING_KEY_ENV = "CORRAL_BILLING_KEY"


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """The control-plane URL, the bearer credential and the per-request timeout in seconds."""

    api_url: str
    api_key: str
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    def __repr__(self) -> str:
        return (
            f"ConnectionConfig(api_url={self.api_url!r}, api_key='***', "
            f"request_timeout={self.request_timeout!r})"
        )

    @classmethod
    def resolve(
        cls,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> ConnectionConfig:
        """Build a tenant config from arguments, falling back to ``CORRAL_API_KEY``/``_URL``."""
        key = api_key or os.environ.get(API_KEY_ENV, "")
        if not key:
            raise AuthenticationError(
                f"No Corral API key: set the {API_KEY_ENV} environment variable "
                "or pass api_key=... (ask your operator for a key, or run "
                "`corral admin apikey create`)."
            )
        return cls._build(key, api_url, request_timeout)

    @classmethod
    def resolve_admin(
        cls,
        *,
        admin_token: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> ConnectionConfig:
        """Build an operator config from arguments, falling back to ``CORRAL_ADMIN_TOKEN``."""
        token = admin_token or os.environ.get(ADMIN_TOKEN_ENV, "")
        if not token:
            raise AuthenticationError(
                f"No operator token: set the {ADMIN_TOKEN_ENV} environment variable "
                "or pass admin_token=... (it is the token the control plane was started with)."
            )
        return cls._build(token, api_url, request_timeout)

    @classmethod
    def resolve_billing(
        cls,
        *,
        billing_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> tuple[ConnectionConfig, str]:
        """A config for billing reads and the env var its credential came from.

        ``billing_key=`` or ``CORRAL_BILLING_KEY`` when set, else ``CORRAL_ADMIN_TOKEN``.
        """
        key = billing_key or os.environ.get(BILLING_KEY_ENV, "")
        if key:
            return cls._build(key, api_url, request_timeout), BILLING_KEY_ENV
        if not os.environ.get(ADMIN_TOKEN_ENV, ""):
            raise AuthenticationError(
                f"No billing credential: set {BILLING_KEY_ENV} (a billing key, from "
                f"`corral admin billing-key create`) or {ADMIN_TOKEN_ENV}."
            )
        return cls.resolve_admin(api_url=api_url, request_timeout=request_timeout), ADMIN_TOKEN_ENV

    @classmethod
    def _build(
        cls, credential: str, api_url: str | None, request_timeout: float | None
    ) -> ConnectionConfig:
        url = (api_url or os.environ.get(API_URL_ENV, "") or DEFAULT_API_URL).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InvalidArgumentError(
                f"API URL {url!r} must start with http:// or https:// "
                f"(check {API_URL_ENV} or api_url=...).",
                field="api_url",
            )
        timeout = DEFAULT_REQUEST_TIMEOUT if request_timeout is None else request_timeout
        if timeout <= 0:
            raise InvalidArgumentError(
                f"request_timeout must be positive, got {timeout!r}.", field="request_timeout"
            )
        return cls(api_url=url, api_key=credential, request_timeout=timeout)
