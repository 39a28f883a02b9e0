"""Control-plane signing keys: generated on first start, sealed at rest, rotated by kid.

The private key is PEM (PKCS#8) sealed with AES-256-GCM under the master key, with
the kid as associated data, so a sealed blob cannot be moved to another row unnoticed.
"""

from __future__ import annotations

import secrets
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from byoc_agent.protocol.signing import SigningKey
from control_plane.store import Database, signing_keys
from control_plane.store.signing_keys import SigningKeyRecord

NONCE_BYTES = 12
# How long a replica signs with the key it loaded before it checks the database for a
# rotation or revocation made by another replica (or the CLI).
ACTIVE_KEY_RECHECK_S = 5.0


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
        self._checked_at = 0.0

    def __repr__(self) -> str:
        kid = self._active.kid if self._active else None
        return f"SigningKeys(active={kid!r})"

    async def load(self) -> SigningKey:
        """Load the active key, generating and storing one if the database has none."""
        sealed = await self._db.run(signing_keys.active_key)
        if sealed is None:
            await self.rotate()
        else:
            self._open(sealed)
        self._checked_at = time.monotonic()
        return self.active

    def _open(self, sealed: signing_keys.SealedKey) -> None:
        if self._active is not None and self._active.kid == sealed.kid:
            return
        pem = unseal(self._master_key, sealed.kid, sealed.sealed_private_key)
        self._active = SigningKey.from_pem(sealed.kid, pem)

    async def current(self) -> SigningKey:
        """The key to sign with now: the loaded one, re-read from the database at most every
        few seconds so a rotation or revocation made elsewhere takes effect here too."""
        if time.monotonic() - self._checked_at >= ACTIVE_KEY_RECHECK_S:
            sealed = await self._db.run(signing_keys.active_key)
            if sealed is None:
                await self.rotate()
            else:
                self._open(sealed)
            self._checked_at = time.monotonic()
        return self.active

    def rotate_in(self, s: signing_keys.Session) -> SigningKeyRecord:
        """Make a new active key inside the caller's transaction; the previous active key
        stays trusted as ``retired`` (overlap), so jobs signed with it still verify."""
        key = SigningKey.generate()
        blob = seal(self._master_key, key.kid, key.to_pem())
        record = signing_keys.add_active_key(s, key.kid, key.public_text, blob)
        self._active = key
        self._checked_at = time.monotonic()
        return record

    async def rotate(self) -> SigningKeyRecord:
        """Make a new active key; the previous one stays trusted as ``retired``."""
        return await self._db.run(self.rotate_in)

    async def public_keys(self) -> list[SigningKeyRecord]:
        return await self._db.run(signing_keys.list_keys)

    @property
    def active(self) -> SigningKey:
        if self._active is None:
            raise RuntimeError("signing keys not loaded; call load() at startup")
        return self._active
