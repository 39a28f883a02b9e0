"""Fuzzing the verifiers: no damaged, re-signed or re-spelled envelope is ever accepted.

Each case runs against two verifiers: ``verify_job`` (a keyring holding the control-plane
key, this agent as audience, a fresh replay guard) and ``verify_model`` for sandbox tokens
as the data plane calls it. A rejection must be an EnvelopeRejectedError; any other
exception, or a return, fails the test.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from byoc_agent.protocol import messages, signing, verify
from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason

from .envelope_mutations import (
    KIND_EXEMPLARS,
    TARGET_IDS,
    TARGETS,
    Target,
    assert_rejected,
    get_at,
    json_kind,
    json_values,
    parts,
    respell,
    set_at,
    walk,
    with_duplicate,
)
from .wire_examples import STRANGER_KEY

pytestmark = pytest.mark.security

FUZZ = settings(max_examples=150, deadline=None, database=None)

targets = pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)


@targets
def test_the_unmodified_envelope_is_accepted(target: Target) -> None:
    """The valid message passes, so every rejection below is caused by its mutation."""
    parsed = target.verify(target.message)
    assert json.loads(messages.to_json_bytes(parsed)) == target.payload  # type: ignore[arg-type]


# -- bytes on the wire ---------------------------------------------------------------------


@targets
def test_flipping_any_single_bit_of_the_message_is_rejected(target: Target) -> None:
    """Every one of the message's bits, flipped alone, makes it unacceptable."""
    message = target.message
    for bit in range(len(message) * 8):
        damaged = bytearray(message)
        damaged[bit // 8] ^= 1 << (bit % 8)
        assert_rejected(target, bytes(damaged))


@FUZZ
@targets
@given(data=st.data())
def test_flipping_several_bits_anywhere_is_rejected(target: Target, data: st.DataObject) -> None:
    """Any non-empty set of flipped bits makes the message unacceptable."""
    message = target.message
    bits = data.draw(
        st.sets(st.integers(0, len(message) * 8 - 1), min_size=1, max_size=12), label="bits"
    )
    damaged = bytearray(message)
    for bit in bits:
        damaged[bit // 8] ^= 1 << (bit % 8)
    assert_rejected(target, bytes(damaged))


@targets
def test_truncating_the_message_at_every_length_is_rejected(target: Target) -> None:
    """Every proper prefix of the message, including the empty one, is refused."""
    message = target.message
    for n in range(len(message)):
        assert_rejected(target, message[:n])


@targets
def test_truncating_the_payload_at_every_length_and_re_signing_it_is_rejected(
    target: Target,
) -> None:
    """A cut-off payload is refused even when the trusted key signed the cut-off bytes."""
    payload = signing.canonical_json(target.payload)
    for n in range(len(payload)):
        assert_rejected(target, target.sign(payload[:n]))


@FUZZ
@targets
@given(data=st.data())
def test_inserting_or_replacing_a_non_ascii_byte_is_malformed(
    target: Target, data: st.DataObject
) -> None:
    """A byte above 0x7f anywhere in the message makes it malformed."""
    message = target.message
    at = data.draw(st.integers(0, len(message)), label="at")
    byte = bytes([data.draw(st.integers(0x80, 0xFF), label="byte")])
    replace = data.draw(st.booleans(), label="replace")
    damaged = message[:at] + byte + message[at + 1 if replace else at:]
    assert assert_rejected(target, damaged).reason is RejectReason.MALFORMED


@targets
def test_an_extra_dot_at_any_position_is_malformed(target: Target) -> None:
    """Four parts are never three: a dot inserted anywhere is refused as malformed."""
    message = target.message
    for at in range(len(message) + 1):
        damaged = message[:at] + b"." + message[at:]
        assert assert_rejected(target, damaged).reason is RejectReason.MALFORMED


@targets
@pytest.mark.parametrize("empty", [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)])
def test_a_message_with_empty_parts_is_malformed(target: Target, empty: tuple[int, ...]) -> None:
    """Emptying any header, payload or signature part is refused as malformed."""
    damaged = [b"" if i in empty else p for i, p in enumerate(parts(target.message))]
    assert assert_rejected(target, b".".join(damaged)).reason is RejectReason.MALFORMED


@targets
@pytest.mark.parametrize(
    "message", [b"", b".", b"..", b"...", b"a.b", b"a.b.c.d", b"\x00.\x00.\x00"]
)
def test_degenerate_messages_are_malformed(target: Target, message: bytes) -> None:
    """Empty and nearly empty byte strings are refused as malformed."""
    assert assert_rejected(target, message).reason is RejectReason.MALFORMED


@targets
@pytest.mark.parametrize(
    ("name", "respell_part"),
    [
        ("padding", lambda p: p + b"=" * (-len(p) % 4 or 4)),
        ("standard alphabet", lambda p: p.replace(b"-", b"+").replace(b"_", b"/") + b"+"),
        ("inner whitespace", lambda p: p[:4] + b" " + p[4:]),
        ("trailing newline", lambda p: p + b"\n"),
    ],
)
def test_any_part_in_a_non_canonical_base64_spelling_is_malformed(
    target: Target, name: str, respell_part: object
) -> None:
    """Padding, the standard alphabet and whitespace are refused in every part."""
    assert callable(respell_part)
    for i in range(3):
        damaged = parts(target.message)
        damaged[i] = respell_part(damaged[i])
        assert assert_rejected(target, b".".join(damaged)).reason is RejectReason.MALFORMED, name


@targets
def test_a_second_spelling_of_the_same_signature_bytes_is_rejected(target: Target) -> None:
    """The signature's unused low bits cannot be set to make a different, valid-looking message."""
    head, payload, sig = parts(target.message)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1:])
    twins = [alphabet[i:i + 1] for i in range(64) if i != last and i >> 4 == last >> 4]
    assert twins, "512 signature bits leave four unused bits in the last character"
    for twin in twins:
        damaged = b".".join([head, payload, sig[:-1] + twin])
        assert assert_rejected(target, damaged).reason is RejectReason.MALFORMED


@targets
def test_a_message_over_the_size_limit_is_oversized_before_anything_else(target: Target) -> None:
    """Padding the payload beyond the limit is refused as oversized, signature unexamined."""
    head, _, sig = parts(target.message)
    huge = signing.b64url_encode(b" " * 70_000).encode()
    assert assert_rejected(target, b".".join([head, huge, sig])).reason is RejectReason.OVERSIZED


@FUZZ
@targets
@given(junk=st.binary(max_size=2000))
def test_arbitrary_bytes_are_rejected(target: Target, junk: bytes) -> None:
    """Random bytes never verify."""
    assert_rejected(target, junk)


@FUZZ
@targets
@given(
    junk=st.lists(
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=120),
        min_size=3, max_size=3,
    )
)
def test_three_random_base64url_parts_are_rejected(target: Target, junk: list[str]) -> None:
    """Well-formed-looking random parts never verify."""
    assert_rejected(target, ".".join(junk).encode())


# -- JSON re-spelled under the original signature ------------------------------------------


@FUZZ
@targets
@given(data=st.data())
def test_re_spelled_payload_json_under_the_original_signature_is_rejected(
    target: Target, data: st.DataObject
) -> None:
    """Reordered keys, other whitespace or \\u-escapes with the old signature fail to verify."""
    head, _, sig = parts(target.message)
    text = respell(target.payload, data)
    payload = text.encode("utf-8", "surrogatepass")
    assume(payload != signing.canonical_json(target.payload))
    assert json.loads(payload) == target.payload
    damaged = b".".join([head, signing.b64url_encode(payload).encode(), sig])
    assert assert_rejected(target, damaged).reason is RejectReason.BAD_SIGNATURE
    # Control: the same JSON signed by the trusted key is the same message, and passes.
    target.verify(target.sign(payload))


@FUZZ
@targets
@given(data=st.data())
def test_re_spelled_header_json_under_the_original_signature_is_rejected(
    target: Target, data: st.DataObject
) -> None:
    """The header is covered by the signature too: re-spelling it breaks verification."""
    _, payload, sig = parts(target.message)
    header = {"alg": signing.ALG, "kid": target.signer.kid, "typ": target.typ}
    text = respell(header, data).encode()  # type: ignore[arg-type]
    assume(text != signing.canonical_json(header))
    damaged = b".".join([signing.b64url_encode(text).encode(), payload, sig])
    assert assert_rejected(target, damaged).reason is RejectReason.BAD_SIGNATURE


@FUZZ
@targets
@given(data=st.data())
def test_a_duplicated_key_under_the_original_signature_is_rejected(
    target: Target, data: st.DataObject
) -> None:
    """Appending a second copy of any member, same value or not, breaks the signature."""
    head, _, sig = parts(target.message)
    objects = [p for p, v in walk(target.payload) if isinstance(v, dict)] + [()]
    path = data.draw(st.sampled_from(objects), label="object")
    obj = get_at(target.payload, path)
    assert isinstance(obj, dict)
    key = data.draw(st.sampled_from(sorted(obj)), label="key")
    dup = data.draw(st.just(obj[key]) | json_values, label="dup")
    payload = with_duplicate(target.payload, path, key, dup)
    damaged = b".".join([head, signing.b64url_encode(payload).encode(), sig])
    assert assert_rejected(target, damaged).reason is RejectReason.BAD_SIGNATURE


# -- payloads signed by a key the verifier does not trust ----------------------------------


@FUZZ
@targets
@given(data=st.data())
def test_a_changed_field_re_signed_with_an_unknown_key_is_rejected(
    target: Target, data: st.DataObject
) -> None:
    """A forger's key is unknown under its own kid and a bad signature under the trusted kid."""
    path, _ = data.draw(st.sampled_from(list(walk(target.payload))), label="field")
    payload = set_at(target.payload, path, data.draw(json_values, label="value"))
    own_kid = target.sign_json(payload, key=STRANGER_KEY)
    assert assert_rejected(target, own_kid).reason is RejectReason.UNKNOWN_KID
    spoofed = signing.SigningKey(kid=target.signer.kid, private_key=STRANGER_KEY.private_key)
    assert assert_rejected(
        target, target.sign_json(payload, key=spoofed)
    ).reason is RejectReason.BAD_SIGNATURE


@targets
def test_the_unmodified_payload_signed_by_a_revoked_key_is_rejected(target: Target) -> None:
    """A revoked kid is refused even though the signature itself is sound."""
    key = target.signer
    ring = verify.Keyring({key.kid: key.public_key}, revoked={key.kid})
    with pytest.raises(EnvelopeRejectedError) as info:
        verify.verify_model(target.message, typ=target.typ, model=target.model, keyring=ring)
    assert info.value.reason is RejectReason.REVOKED_KID


# -- payloads the trusted key signed, but the schema forbids --------------------------------


@targets
def test_every_field_with_every_wrong_json_type_is_rejected(target: Target) -> None:
    """Each field, given a value of each other JSON kind and signed by the trusted key, fails."""
    cases = 0
    for path, value in walk(target.payload):
        for bad in KIND_EXEMPLARS:
            if json_kind(bad) == json_kind(value):
                continue
            assert_rejected(target, target.sign_json(set_at(target.payload, path, bad)))
            cases += 1
    assert cases > 60  # every field of even the smallest message, in every wrong kind


@FUZZ
@targets
@given(data=st.data())
def test_any_field_with_a_random_value_of_the_wrong_json_type_is_rejected(
    target: Target, data: st.DataObject
) -> None:
    """Random wrong-kind values anywhere in the payload, signed by the trusted key, fail."""
    path, value = data.draw(st.sampled_from(list(walk(target.payload))), label="field")
    bad = data.draw(json_values.filter(lambda v: json_kind(v) != json_kind(value)), label="bad")
    assert_rejected(target, target.sign_json(set_at(target.payload, path, bad)))


@FUZZ
@targets
@given(data=st.data())
def test_an_extra_field_in_any_model_object_is_rejected(
    target: Target, data: st.DataObject
) -> None:
    """Unknown members, even near-miss spellings of real ones, are refused by the strict schema."""
    path = data.draw(st.sampled_from(target.model_objects), label="object")
    obj = get_at(target.payload, path)
    assert isinstance(obj, dict)
    name = data.draw(
        st.sampled_from(["schema_", "kind_", "Schema", "job_id ", "JOB_ID", "sandboxId", ""])
        | st.text(max_size=12),
        label="name",
    )
    assume(name not in obj)
    payload = set_at(target.payload, (*path, name), data.draw(json_values, label="value"))
    assert assert_rejected(target, target.sign_json(payload)).reason is RejectReason.MALFORMED


@FUZZ
@targets
@given(data=st.data())
def test_a_duplicated_key_signed_by_the_trusted_key_is_malformed(
    target: Target, data: st.DataObject
) -> None:
    """Duplicate members are ambiguous across JSON parsers, so even signed ones are refused."""
    objects = [p for p, v in walk(target.payload) if isinstance(v, dict)] + [()]
    path = data.draw(st.sampled_from(objects), label="object")
    obj = get_at(target.payload, path)
    assert isinstance(obj, dict)
    key = data.draw(st.sampled_from(sorted(obj)), label="key")
    dup = data.draw(st.just(obj[key]) | json_values, label="dup")
    payload = with_duplicate(target.payload, path, key, dup)
    assert assert_rejected(target, target.sign(payload)).reason is RejectReason.MALFORMED


_BAD_HEADERS = {
    "duplicate kid": '{{"alg":"EdDSA","kid":"{kid}","kid":"{kid}","typ":"{typ}"}}',
    "extra member": '{{"alg":"EdDSA","extra":1,"kid":"{kid}","typ":"{typ}"}}',
    "alg none": '{{"alg":"none","kid":"{kid}","typ":"{typ}"}}',
    "alg HS256": '{{"alg":"HS256","kid":"{kid}","typ":"{typ}"}}',
    "no alg": '{{"kid":"{kid}","typ":"{typ}"}}',
    "array": '["EdDSA","{kid}","{typ}"]',
    "numeric kid": '{{"alg":"EdDSA","kid":7,"typ":"{typ}"}}',
    "null typ": '{{"alg":"EdDSA","kid":"{kid}","typ":null}}',
    "deeply nested": "[" * 3_000,  # deeper than the parser's recursion limit, under 8 KiB
}


@targets
@pytest.mark.parametrize("header", list(_BAD_HEADERS.values()), ids=list(_BAD_HEADERS))
def test_a_header_that_is_not_exactly_alg_kid_typ_is_malformed(
    target: Target, header: str
) -> None:
    """Duplicate, extra, missing or mistyped header members, or another alg, are refused."""
    text = header.format(kid=target.signer.kid, typ=target.typ).encode()
    signing_input = b".".join(
        [signing.b64url_encode(text).encode(),
         signing.b64url_encode(signing.canonical_json(target.payload)).encode()]
    )
    signature = target.signer.private_key.sign(signing_input)
    message = signing_input + b"." + signing.b64url_encode(signature).encode()
    reason = assert_rejected(target, message).reason
    assert reason in {RejectReason.MALFORMED, RejectReason.OVERSIZED}


@FUZZ
@targets
@given(data=st.data())
def test_a_huge_string_in_any_field_is_rejected(target: Target, data: st.DataObject) -> None:
    """A string field longer than any limit is refused as malformed or oversized."""
    strings = [p for p, v in walk(target.payload) if isinstance(v, str)]
    path = data.draw(st.sampled_from(strings), label="field")
    size = data.draw(st.integers(8193, 120_000), label="size")
    payload = set_at(target.payload, path, "a" * size)
    reason = assert_rejected(target, target.sign_json(payload)).reason
    assert reason in {RejectReason.MALFORMED, RejectReason.OVERSIZED, RejectReason.UNKNOWN_SCHEMA}


@targets
def test_a_number_too_long_to_parse_in_any_integer_field_is_malformed(target: Target) -> None:
    """A 5000-digit integer is refused before it reaches the model."""
    for path, value in walk(target.payload):
        if json_kind(value) != "int":
            continue
        canonical = signing.canonical_json(set_at(target.payload, path, 424242424242))
        payload = canonical.replace(b"424242424242", b"9" * 5000)
        reason = assert_rejected(target, target.sign(payload)).reason
        assert reason in {RejectReason.MALFORMED, RejectReason.OVERSIZED}


def test_a_job_with_too_many_or_too_long_environment_variables_is_malformed() -> None:
    """The env limits (128 variables, 8192-character values, 128-character names) hold."""
    job = TARGETS[0]
    for env in (
        {f"V{i}": "x" for i in range(129)},
        {"V": "x" * 8193},
        {"V" * 129: "x"},
        {"1ABC": "x"},
        {"A-B": "x"},
    ):
        payload = set_at(job.payload, ("body", "env"), env)  # type: ignore[arg-type]
        assert assert_rejected(job, job.sign_json(payload)).reason is RejectReason.MALFORMED


@FUZZ
@targets
@given(data=st.data())
def test_non_ascii_characters_in_an_identifier_are_malformed(
    target: Target, data: st.DataObject
) -> None:
    """Ids are lowercase ASCII: a look-alike or any non-ASCII character is refused."""
    ids = [p for p, v in walk(target.payload) if isinstance(v, str) and p[-1] in
           {"job_id", "tenant_id", "agent_id", "sandbox_id"}]
    path = data.draw(st.sampled_from(ids), label="field")
    value = get_at(target.payload, path)
    assert isinstance(value, str)
    at = data.draw(st.integers(0, len(value)), label="at")
    ch = data.draw(st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), label="char")
    payload = set_at(target.payload, path, value[:at] + ch + value[at:])
    assert assert_rejected(target, target.sign_json(payload)).reason is RejectReason.MALFORMED


@targets
def test_a_payload_that_is_not_a_json_object_is_malformed(target: Target) -> None:
    """Arrays, scalars, invalid UTF-8 and deeply nested JSON are refused, even when signed."""
    deep = b"[" * 2_500 + b"]" * 2_500  # deeper than the parser's recursion limit, under 8 KiB
    for payload in (b"[]", b"null", b"1", b'"job"', b"\xff\xfe{}", b"{" * 10, deep,
                    json.dumps([target.payload]).encode()):
        message = target.sign(payload)
        expected = (RejectReason.OVERSIZED if len(message) > target.max_bytes
                    else RejectReason.MALFORMED)
        assert assert_rejected(target, message).reason is expected


@targets
def test_another_schema_version_or_message_type_is_an_unknown_schema(target: Target) -> None:
    """A v2 schema, a missing schema, or a message signed under another typ is refused."""
    schema = target.payload["schema"]
    assert isinstance(schema, str)
    for bad in (schema.replace("/v1", "/v2"), None, schema.upper()):
        payload = set_at(target.payload, ("schema",), bad)
        reason = assert_rejected(target, target.sign_json(payload)).reason
        assert reason is RejectReason.UNKNOWN_SCHEMA
    no_schema = {k: v for k, v in target.payload.items() if k != "schema"}
    assert assert_rejected(target, target.sign_json(no_schema)).reason is (
        RejectReason.UNKNOWN_SCHEMA
    )
    for typ in (messages.JOB_TYP, messages.SANDBOX_TOKEN_TYP, messages.RESULT_TYP, ""):
        if typ == target.typ:
            continue
        other = signing.sign(target.signer, typ, signing.canonical_json(target.payload))
        assert assert_rejected(target, other).reason is RejectReason.UNKNOWN_SCHEMA
