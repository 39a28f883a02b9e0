"""Golden files pin the wire format: today's encoding must match the committed bytes exactly.

Set ``CORRAL_REGENERATE_GOLDEN=1`` to rewrite files that differ; each rewritten file still
fails its test once, so a regeneration is never silent (see golden/README.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from byoc_agent.protocol import cosign, messages, signing, verify
from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason
from byoc_agent.protocol.messages import JobKind

from .wire_examples import (
    AGENT_KEY,
    CONTROL_PLANE_KEY,
    CUSTOMER_KEY,
    EXAMPLES,
    Example,
    keyring_for,
)

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("CORRAL_REGENERATE_GOLDEN") == "1"

_IDS = [e.name for e in EXAMPLES]


def _payload_path(example: Example) -> Path:
    return GOLDEN / f"{example.name}.payload.json"


def _message_path(example: Example) -> Path:
    return GOLDEN / f"{example.name}.jws"


def _keys_document() -> bytes:
    keys = {
        name: {
            "seed_hex": key.private_key.private_bytes_raw().hex(),
            "public_key": key.public_text,
            "kid": key.kid,
        }
        for name, key in (
            ("control_plane", CONTROL_PLANE_KEY), ("agent", AGENT_KEY), ("customer", CUSTOMER_KEY)
        )
    }
    return (json.dumps(keys, indent=2, sort_keys=True) + "\n").encode()


def _check_golden(path: Path, actual: bytes) -> None:
    """Compare with the golden file, or rewrite it (and fail once) when asked to regenerate."""
    expected = path.read_bytes() if path.exists() else None
    if expected == actual:
        return
    if REGENERATE:
        path.write_bytes(actual)
        pytest.fail(
            f"rewrote golden/{path.name}: review the diff, record the wire-format change in "
            "an ADR, then rerun without CORRAL_REGENERATE_GOLDEN"
        )
    if expected is None:
        pytest.fail(f"golden/{path.name} is missing; see golden/README.md")
    assert actual.decode() == expected.decode(), (
        f"the encoding no longer matches golden/{path.name}: a wire-format change needs an ADR"
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=_IDS)
def test_encoding_the_model_yields_exactly_the_golden_payload_bytes(example: Example) -> None:
    """The canonical JSON of each example model equals its committed payload file byte for byte."""
    _check_golden(_payload_path(example), example.payload())


@pytest.mark.parametrize("example", EXAMPLES, ids=_IDS)
def test_signing_the_model_yields_exactly_the_golden_message_bytes(example: Example) -> None:
    """The compact signed message for each example equals its committed .jws file byte for byte."""
    _check_golden(_message_path(example), example.message())


def test_the_golden_keys_file_matches_the_fixture_seeds() -> None:
    """golden/keys.json records the fixed seeds, public keys and kids the examples use."""
    _check_golden(GOLDEN / "keys.json", _keys_document())


@pytest.mark.parametrize("example", EXAMPLES, ids=_IDS)
def test_the_golden_message_verifies_and_parses_back_to_the_same_model(example: Example) -> None:
    """Verifying the committed message with the signer's public key returns the example model."""
    data = _message_path(example).read_bytes()
    kid, parsed = verify.verify_model(
        data, typ=example.typ, model=type(example.model), keyring=keyring_for(example.key)
    )
    assert kid == example.key.kid
    assert parsed == example.model


@pytest.mark.parametrize("example", EXAMPLES, ids=_IDS)
def test_the_golden_message_carries_exactly_the_golden_payload(example: Example) -> None:
    """The payload inside the committed message is the committed payload file, header canonical."""
    signed = signing.parse(_message_path(example).read_bytes())
    assert signed.payload == _payload_path(example).read_bytes()
    assert signed.typ == example.typ
    header = signing.b64url_decode(signed.signing_input.split(b".")[0].decode())
    assert header == signing.canonical_json(
        {"alg": signing.ALG, "kid": example.key.kid, "typ": example.typ}
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=_IDS)
def test_the_golden_message_does_not_verify_under_the_other_key(example: Example) -> None:
    """A golden message is rejected by a keyring holding the other party's key under its kid."""
    other = AGENT_KEY if example.key is CONTROL_PLANE_KEY else CONTROL_PLANE_KEY
    ring = verify.Keyring({example.key.kid: other.public_key})
    with pytest.raises(EnvelopeRejectedError) as info:
        verify.verify_model(
            _message_path(example).read_bytes(), typ=example.typ,
            model=type(example.model), keyring=ring,
        )
    assert info.value.reason is RejectReason.BAD_SIGNATURE


def test_every_message_type_and_job_kind_has_a_golden_example() -> None:
    """Each signed message type, and each job body kind, is pinned by at least one golden file."""
    models = {type(e.model) for e in EXAMPLES}
    assert models == {
        messages.Job, messages.JobResult, messages.SandboxEvent, messages.Heartbeat,
        messages.UsageReport, messages.SandboxToken, cosign.Cosignature,
    }
    kinds = {e.model.body.kind for e in EXAMPLES if isinstance(e.model, messages.Job)}
    assert kinds == {k.value for k in JobKind}


def test_the_golden_folder_holds_only_files_that_a_test_checks() -> None:
    """No stale golden file lingers after an example is renamed or removed."""
    expected = {"README.md", "keys.json"}
    for example in EXAMPLES:
        expected |= {_payload_path(example).name, _message_path(example).name}
    assert {p.name for p in GOLDEN.iterdir()} == expected
