"""Secrets the control plane hands out once and keeps only as SHA-256 hashes.

API keys read ``ck_<id>_<secret>`` (billing keys ``cbk_<id>_<secret>``): the id finds the
row, the hash of the whole key is compared in constant time.
Enrollment tokens read ``cet_<secret>`` and are found by hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

API_KEY_PREFIX = "ck"
BILLING_KEY_PREFIX = "cbk"
ENROLLMENT_PREFIX = "cet"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class NewSecret:
    """A freshly minted credential: ``text`` is shown once, ``hash`` is stored."""

    id: str
    text: str
    hash: str = ""

    def __repr__(self) -> str:
        return f"NewSecret(id={self.id!r})"


def mint_api_key(prefix: str = API_KEY_PREFIX) -> NewSecret:
    key_id = secrets.token_hex(8)
    text = f"{prefix}_{key_id}_{secrets.token_urlsafe(32)}"
    return NewSecret(id=key_id, text=text, hash=sha256_hex(text))


def parse_api_key(text: str, prefix: str = API_KEY_PREFIX) -> str | None:
    """The key id of a well-formed API key, or ``None`` when the text cannot be one."""
    parts = text.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix or len(parts[1]) != 16 or not parts[2]:
        return None
    if any(c not in "0123456789abcdef" for c in parts[1]):
        return None
    return parts[1]


def mint_enrollment_token() -> NewSecret:
    text = f"{ENROLLMENT_PREFIX}_{secrets.token_urlsafe(32)}"
    return NewSecret(id="", text=text, hash=sha256_hex(text))
