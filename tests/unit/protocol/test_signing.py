"""The signing helpers: strict base64url, stable key ids, PEM round trips, strict JSON."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from byoc_agent.protocol import signing
from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason

from .wire_examples import AGENT_KEY, CONTROL_PLANE_KEY, CONTROL_PLANE_SEED, key_from_seed

FUZZ = settings(max_examples=200, deadline=None, database=None)


# -- base64url ---------------------------------------------------------------------------


@FUZZ
@given(st.binary(min_size=1, max_size=200))
def test_b64url_round_trips_any_non_empty_bytes(data: bytes) -> None:
    """Decoding an encoding gives back the same bytes."""
    assert signing.b64url_decode(signing.b64url_encode(data)) == data


@FUZZ
@given(st.binary(max_size=200))
def test_b64url_encoding_uses_only_the_url_alphabet_without_padding(data: bytes) -> None:
    """Encoded text has no '=', '+' or '/' and is standard base64 with the two url swaps."""
    text = signing.b64url_encode(data)
    assert not set(text) & set("=+/")
    standard = base64.b64encode(data).decode().rstrip("=")
    assert text == standard.replace("+", "-").replace("/", "_")


@pytest.mark.parametrize(
    "text",
    [
        "",            # empty
        "QQ==",        # padding
        "QQ=",         # partial padding
        "Q Q",         # inner space
        " QQ",         # leading space
        "QQ\n",        # trailing newline
        "Q\tQ",        # tab
        "a+b/",        # standard alphabet, not url
        "QUJD.",       # a dot
        "QUJDR",       # 5 chars: length % 4 == 1 cannot be base64
        "\u00e9\u00e9",  # non-ASCII letters
        "\uff21\uff21",  # fullwidth letters that some decoders fold to ASCII
        "QR",          # 'R' leaves unused low bits set: a second spelling of b"A"
        "QUJDRB",      # same, for b"ABCD"
    ],
)
def test_b64url_decode_rejects_anything_but_canonical_unpadded_url_base64(text: str) -> None:
    """Padding, whitespace, foreign characters and non-canonical trailing bits are refused."""
    with pytest.raises(ValueError, match="base64url"):
        signing.b64url_decode(text)


@FUZZ
@given(st.binary(min_size=1, max_size=64), st.data())
def test_each_byte_string_has_exactly_one_accepted_base64url_spelling(
    data: bytes, draw: st.DataObject
) -> None:
    """Changing the last character of an encoding either decodes to other bytes or is refused."""
    text = signing.b64url_encode(data)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = draw.draw(st.sampled_from(alphabet).filter(lambda c: c != text[-1]))
    try:
        decoded = signing.b64url_decode(text[:-1] + last)
    except ValueError:
        return
    assert decoded != data


# -- keys ----------------------------------------------------------------------------------


def test_key_id_of_the_fixture_key_is_pinned() -> None:
    """key_id is a stable function of the public key: the fixture key's kid never moves."""
    assert signing.key_id(CONTROL_PLANE_KEY.public_key) == "Vkdap1RjR0wChd9d"


def test_key_id_is_sixteen_url_safe_characters_and_the_same_for_equal_keys() -> None:
    """Two objects holding the same key give the same kid; different keys give different kids."""
    again = key_from_seed(CONTROL_PLANE_SEED)
    kid = signing.key_id(again.public_key)
    assert kid == signing.key_id(CONTROL_PLANE_KEY.public_key)
    assert len(kid) == 16
    assert set(kid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert kid != signing.key_id(AGENT_KEY.public_key)


def test_key_id_survives_a_round_trip_through_public_key_text() -> None:
    """Serializing a public key to text and back keeps its kid."""
    text = CONTROL_PLANE_KEY.public_text
    restored = signing.public_key_from_text(text)
    assert signing.key_id(restored) == CONTROL_PLANE_KEY.kid
    assert signing.public_key_to_text(restored) == text


def test_a_generated_key_signs_under_its_own_key_id_unless_told_otherwise() -> None:
    """SigningKey.generate uses key_id of the new public key as the default kid."""
    key = signing.SigningKey.generate()
    assert key.kid == signing.key_id(key.public_key)
    assert signing.SigningKey.generate(kid="cp-2026-01").kid == "cp-2026-01"


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_public_key_text_of_the_wrong_length_is_refused(size: int) -> None:
    """Only 32 raw bytes make an Ed25519 public key."""
    with pytest.raises(ValueError, match=r"base64url|32 bytes"):
        signing.public_key_from_text(signing.b64url_encode(b"\x01" * size))


# -- PEM -------------------------------------------------------------------------------------


def _same_key(a: signing.SigningKey, b: signing.SigningKey) -> bool:
    return a.private_key.private_bytes_raw() == b.private_key.private_bytes_raw()


def test_a_pem_without_password_round_trips_to_the_same_key() -> None:
    """An unencrypted PKCS#8 PEM loads back to a key that signs identically."""
    pem = CONTROL_PLANE_KEY.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    restored = signing.SigningKey.from_pem(CONTROL_PLANE_KEY.kid, pem)
    assert _same_key(restored, CONTROL_PLANE_KEY)
    assert signing.sign(restored, "t", b"{}") == signing.sign(CONTROL_PLANE_KEY, "t", b"{}")


def test_a_pem_with_password_round_trips_only_with_that_password() -> None:
    """An encrypted PEM loads with its password, and refuses no password or a wrong one."""
    pem = CONTROL_PLANE_KEY.to_pem(password=b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    restored = signing.SigningKey.from_pem("cp-1", pem, password=b"correct horse")
    assert restored.kid == "cp-1"
    assert _same_key(restored, CONTROL_PLANE_KEY)
    with pytest.raises(TypeError):
        signing.SigningKey.from_pem("cp-1", pem)
    with pytest.raises(ValueError, match=r"(?i)password|decrypt"):
        signing.SigningKey.from_pem("cp-1", pem, password=b"battery staple")


def test_a_pem_holding_another_kind_of_key_is_refused() -> None:
    """from_pem accepts Ed25519 keys only."""
    pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        signing.SigningKey.from_pem("ec", pem)


# -- canonical JSON, signing and parsing -----------------------------------------------------


def test_canonical_json_sorts_keys_drops_spaces_and_escapes_non_ascii() -> None:
    """The signer's JSON spelling is fixed: sorted keys, no whitespace, ASCII only."""
    assert signing.canonical_json({"b": 1, "a": ["\u00e9", {"d": None, "c": True}]}) == (
        b'{"a":["\\u00e9",{"c":true,"d":null}],"b":1}'
    )


@FUZZ
@given(st.binary(max_size=300), st.text(max_size=30))
def test_sign_then_parse_returns_the_signed_payload_typ_and_kid(payload: bytes, typ: str) -> None:
    """parse splits what sign produced back into kid, typ and the exact payload bytes."""
    message = signing.sign(AGENT_KEY, typ, payload)
    if not payload:
        with pytest.raises(EnvelopeRejectedError):
            signing.parse(message)
        return
    signed = signing.parse(message)
    assert (signed.kid, signed.typ, signed.payload) == (AGENT_KEY.kid, typ, payload)
    assert signed.verify_with(AGENT_KEY.public_key) == payload


def test_signing_is_deterministic() -> None:
    """Ed25519 gives the same signature for the same key and input, so golden files are stable."""
    assert signing.sign(AGENT_KEY, "t", b"{}") == signing.sign(AGENT_KEY, "t", b"{}")


def test_a_message_exactly_at_the_size_limit_parses_and_one_byte_more_is_oversized() -> None:
    """max_bytes is inclusive."""
    message = signing.sign(AGENT_KEY, "t", b"{}")
    assert signing.parse(message, max_bytes=len(message)).payload == b"{}"
    with pytest.raises(EnvelopeRejectedError) as info:
        signing.parse(message, max_bytes=len(message) - 1)
    assert info.value.reason is RejectReason.OVERSIZED


def test_verify_with_another_public_key_is_a_bad_signature() -> None:
    """A signature checked against the wrong key is rejected with the signer's kid attached."""
    signed = signing.parse(signing.sign(AGENT_KEY, "t", b"{}"))
    with pytest.raises(EnvelopeRejectedError) as info:
        signed.verify_with(Ed25519PrivateKey.generate().public_key())
    assert info.value.reason is RejectReason.BAD_SIGNATURE
    assert info.value.fields == {"kid": AGENT_KEY.kid}


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":1,"a":1}',
        b'{"a":{"b":1,"b":2}}',
        b'[{"x":0,"y":0,"x":0}]',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    ],
)
def test_strict_json_loads_refuses_duplicate_keys_and_deep_nesting_with_value_error(
    text: bytes,
) -> None:
    """Duplicate keys and nesting deeper than the parser's recursion limit become ValueError."""
    with pytest.raises(ValueError, match=r"duplicate|deeply"):
        signing.strict_json_loads(text)


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
)
def test_strict_json_loads_agrees_with_json_loads_on_ordinary_json(value: object) -> None:
    """Anything canonical_json writes parses back unchanged."""
    assert signing.strict_json_loads(signing.canonical_json(value)) == value
    assert signing.strict_json_loads(json.dumps(value).encode()) == value
