"""Ed25519 keys and the compact signed form used for jobs, results, events and tokens.

A signed message is three base64url parts joined by dots, as in JWS compact
serialization (RFC 7515, ``alg: EdDSA``)::

    base64url(header) "." base64url(payload) "." base64url(signature)

The signature covers the exact ASCII bytes ``header "." payload`` that travel on the
wire, so the verifier never re-serializes anything before checking it: a message whose
JSON was reordered, re-encoded or truncated no longer matches its signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason

ALG = "EdDSA"
MAX_MESSAGE_BYTES = 64 * 1024


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url decoding: rejects padding, whitespace and foreign characters."""
    if not text or any(c not in _B64URL for c in text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError("not base64url") from e
    if b64url_encode(raw) != text:
        # Unused low bits in the last character: two spellings of the same bytes.
        raise ValueError("not canonical base64url")
    return raw


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def public_key_to_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64url_encode(raw)


def public_key_from_text(text: str) -> Ed25519PublicKey:
    raw = b64url_decode(text)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """A stable id for a public key: the first 16 base64url chars of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64url_encode(hashlib.sha256(raw).digest())[:16]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private Ed25519 key and the ``kid`` it signs under."""

    kid: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, kid: str | None = None) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        return cls(kid=kid or key_id(private.public_key()), private_key=private)

    @classmethod
    def from_pem(cls, kid: str, pem: bytes, password: bytes | None = None) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, password=password)
        except ValueError as e:
            if password is None:
                raise
            # A wrong password usually fails the padding check, but now and then it
            # "decrypts" to garbage that then fails to parse: the same mistake either way.
            raise ValueError(
                "could not decrypt the private key: wrong password, or a corrupt PEM"
            ) from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(kid=kid, private_key=key)

    def to_pem(self, password: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
        )

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_text(self) -> str:
        return public_key_to_text(self.public_key)


def strict_json_loads(data: bytes) -> object:
    """Parse JSON bytes, refusing duplicate keys and nesting too deep for the parser.

    Raises ValueError (or UnicodeDecodeError) for anything it refuses, never RecursionError.
    """
    try:
        return json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except RecursionError as e:
        raise ValueError("JSON nested too deeply") from e


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return obj


def canonical_json(obj: object) -> bytes:
    """The JSON bytes a signer emits: sorted keys, no spaces. Verifiers never rebuild it."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(key: SigningKey, typ: str, payload: bytes) -> bytes:
    """Sign ``payload`` bytes; returns the compact message bytes."""
    header = canonical_json({"alg": ALG, "kid": key.kid, "typ": typ})
    signing_input = f"{b64url_encode(header)}.{b64url_encode(payload)}".encode("ascii")
    signature = key.private_key.sign(signing_input)
    return signing_input + b"." + b64url_encode(signature).encode("ascii")


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A compact message split into its parts, signature not yet checked."""

    kid: str
    typ: str
    payload: bytes
    signing_input: bytes
    signature: bytes

    def verify_with(self, public_key: Ed25519PublicKey) -> bytes:
        """Check the signature; returns the payload bytes exactly as signed."""
        try:
            public_key.verify(self.signature, self.signing_input)
        except InvalidSignature as e:
            raise EnvelopeRejectedError(
                RejectReason.BAD_SIGNATURE, "signature does not verify", kid=self.kid
            ) from e
        return self.payload


def parse(message: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> SignedMessage:
    """Split a compact message; rejects anything oversized or malformed."""
    if len(message) > max_bytes:
        raise EnvelopeRejectedError(
            RejectReason.OVERSIZED, f"message is {len(message)} bytes, limit {max_bytes}"
        )
    try:
        text = message.decode("ascii")
    except UnicodeDecodeError as e:
        raise EnvelopeRejectedError(RejectReason.MALFORMED, "message is not ASCII") from e
    parts = text.split(".")
    if len(parts) != 3:
        raise EnvelopeRejectedError(RejectReason.MALFORMED, "message must have three parts")
    try:
        header_raw = b64url_decode(parts[0])
        payload = b64url_decode(parts[1])
        signature = b64url_decode(parts[2])
        header = strict_json_loads(header_raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise EnvelopeRejectedError(RejectReason.MALFORMED, "undecodable message part") from e
    if (
        not isinstance(header, dict)
        or set(header) != {"alg", "kid", "typ"}
        or header["alg"] != ALG
        or not isinstance(header["kid"], str)
        or not isinstance(header["typ"], str)
        or len(signature) != 64
    ):
        raise EnvelopeRejectedError(RejectReason.MALFORMED, "bad header or signature length")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return SignedMessage(
        kid=header["kid"],
        typ=header["typ"],
        payload=payload,
        signing_input=signing_input,
        signature=signature,
    )
