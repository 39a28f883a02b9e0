"""Control-plane signing keys: generated on first start, sealed at rest, rotated by kid.

The private key is PEM (PKCS#8) sealed with AES-256-GCM under the master key, with
the kid as associated data, so a sealed blob cannot be moved to another row unnoticed.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from byoc_agent.protocol.signing import SigningKey
from control_plane.store import Database, signing_keys
from control_plane.store.signing_keys import SigningKeyRecord

NONCE_BYTES = 12


class SealError(ValueError):
    """A sealed key could not be opened (wrong master key or tampered row)."""


def seal(master_key: bytes, kid: str, plaintext: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(master_key).encrypt(nonce, plaintext, _aad(kid))


def unseal(master_key: bytes, kid: str, sealed: bytes) -> bytes:
    try:
        return AESGCM(master_key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(kid))
    except InvalidTag:
        raise SealError(f"signing key {kid} does not open with this master key") from None


def _aad(kid: str) -> bytes:
    return b"corral-signing-key:" + kid.encode()


class SigningKeys:
    """Loads (or creates) the active signing key and keeps it in memory for signing."""

    def __init__(self, db: Database, master_key: bytes) -> None:
        self._db = db
        self._master_key = master_key
        self._active: SigningKey | None = None

    def __repr__(self) -> str:
        kid = self._active.kid if self._active else None
        return f"SigningKeys(active={kid!r})"

    async def load(self) -> SigningKey:
        """Load the active key, generating and storing one if the database has none."""
        sealed = await self._db.run(signing_keys.active_key)
        if sealed is None:
            await self.rotate()
        else:
            pem = unseal(self._master_key, sealed.kid, sealed.sealed_private_key)
            self._active = SigningKey.from_pem(sealed.kid, pem)
        return self.active

    async def rotate(self) -> SigningKeyRecord:
        """Make a new active key; the previous one stays trusted as ``retired``."""
        key = SigningKey.generate()
        blob = seal(self._master_key, key.kid, key.to_pem())
        record = await self._db.run(
            lambda s: signing_keys.add_active_key(s, key.kid, key.public_text, blob)
        )
        self._active = key
        return record

    async def public_keys(self) -> list[SigningKeyRecord]:
        return await self._db.run(signing_keys.list_keys)

    @property
    def active(self) -> SigningKey:
        if self._active is None:
            raise RuntimeError("signing keys not loaded; call load() at startup")
        return self._active
