"""Signing keys sealed at rest, credentials, and sandbox tokens."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from byoc_agent.protocol.messages import SANDBOX_TOKEN_TYP, SandboxToken
from byoc_agent.protocol.signing import SigningKey
from byoc_agent.protocol.verify import Keyring, verify_model
from control_plane.jobs.keys import SealError, seal, unseal
from control_plane.jobs.tokens import mint_sandbox_token
from control_plane.store.credentials import mint_api_key, parse_api_key


def test_a_sealed_key_opens_only_with_its_master_key_and_kid() -> None:
    """AES-GCM with the kid as associated data: wrong key or moved blob fails."""
    master = secrets.token_bytes(32)
    blob = seal(master, "kid1", b"private pem")
    assert b"private pem" not in blob
    assert unseal(master, "kid1", blob) == b"private pem"
    with pytest.raises(SealError):
        unseal(secrets.token_bytes(32), "kid1", blob)
    with pytest.raises(SealError):
        unseal(master, "kid2", blob)


def test_a_minted_api_key_parses_to_its_id() -> None:
    """``ck_<id>_<secret>`` round-trips, and only the hash is kept beside the id."""
    key = mint_api_key()
    assert key.text.startswith(f"ck_{key.id}_")
    assert parse_api_key(key.text) == key.id
    assert key.text not in repr(key)


@given(st.text(max_size=200))
def test_parsing_any_text_as_an_api_key_never_raises(text: str) -> None:
    """Garbage bearer tokens are refused quietly (401), never with an exception."""
    parsed = parse_api_key(text)
    assert parsed is None or len(parsed) == 16


def test_a_sandbox_token_verifies_with_the_control_plane_key() -> None:
    """The token names tenant, agent and sandbox and expires after its TTL."""
    key = SigningKey.generate()
    issued = mint_sandbox_token(
        key, tenant_id="t_abc", agent_id="a_abc", sandbox_id="sb_abc", ttl_s=900
    )
    _, claims = verify_model(
        issued.token.encode(),
        typ=SANDBOX_TOKEN_TYP,
        model=SandboxToken,
        keyring=Keyring(keys={key.kid: key.public_key}),
    )
    assert (claims.tenant_id, claims.agent_id, claims.sandbox_id) == ("t_abc", "a_abc", "sb_abc")
    assert claims.exp - claims.iat == 900
