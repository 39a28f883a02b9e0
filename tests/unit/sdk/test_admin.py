"""The operator's AdminClient: tenants, API keys, enrollment tokens and agents."""

from __future__ import annotations

import pytest

from corral import AdminClient, AuthenticationError, PermissionDeniedError, Sandbox

from .fake_corral import FakeCorral


def test_create_tenant_returns_a_key_that_works_for_the_new_tenant(fake: FakeCorral) -> None:
    """The first API key of a new tenant can create sandboxes straight away."""
    with AdminClient() as admin:
        created = admin.create_tenant("initech")
    assert created.tenant.name == "initech"
    assert created.api_key.key.startswith("ck_")
    assert created.api_key.key not in repr(created)
    with Sandbox.create(api_key=created.api_key.key) as sb:
        assert fake.sandboxes[sb.id].tenant_id == created.tenant.id


def test_list_tenants_follows_pages(fake: FakeCorral) -> None:
    """Every tenant is listed even though the fake pages them one at a time."""
    with AdminClient() as admin:
        admin.create_tenant("initech")
        names = [t.name for t in admin.list_tenants()]
        assert names == ["acme", "other", "initech"]
        assert admin.get_tenant(fake.acme_id).name == "acme"


def test_api_keys_can_be_created_listed_and_revoked(fake: FakeCorral) -> None:
    """A revoked key shows as revoked and is refused from then on."""
    with AdminClient() as admin:
        key = admin.create_api_key(fake.acme_id, "ci")
        assert len(Sandbox.list(api_key=key.key)) == 0
        listed = {k.name: k for k in admin.list_api_keys(fake.acme_id)}
        assert set(listed) == {"default", "ci"}
        assert not listed["ci"].revoked
        admin.revoke_api_key(fake.acme_id, key.id)
        assert {k.name: k.revoked for k in admin.list_api_keys(fake.acme_id)}["ci"]
    with pytest.raises(AuthenticationError):
        Sandbox.list(api_key=key.key)


def test_enrollment_tokens_and_agents_are_available_to_the_operator(fake: FakeCorral) -> None:
    """The operator mints enrollment tokens and sees agents with their status."""
    with AdminClient() as admin:
        token = admin.create_enrollment_token(fake.acme_id, ttl_s=600)
        assert token.token.startswith("enr_")
        assert token.expires_at is not None
        [agent] = admin.list_agents()
    assert (agent.id, agent.status, agent.runtimes) == ("agent-1", "online", ("gvisor",))


def test_a_tenant_key_used_as_admin_token_is_denied(fake: FakeCorral) -> None:
    """A tenant API key cannot act as the operator; the error says which token is needed."""
    with (
        AdminClient(fake.acme_key) as admin,
        pytest.raises(PermissionDeniedError, match="CORRAL_ADMIN_TOKEN"),
    ):
        admin.list_tenants()


def test_missing_admin_token_says_which_variable_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without an admin token the error names CORRAL_ADMIN_TOKEN."""
    monkeypatch.delenv("CORRAL_ADMIN_TOKEN", raising=False)
    with pytest.raises(AuthenticationError, match="CORRAL_ADMIN_TOKEN"):
        AdminClient()
