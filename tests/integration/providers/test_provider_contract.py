"""The behaviour every HostProvider must have, checked against the real backend (see conftest).

Bare metal runs on a loopback inventory; AWS against moto's EC2 server over HTTP; GCP and
Azure against local servers speaking their REST APIs, driven by the real client libraries.
The error cases make the backend refuse the way the real service does (see ``Faults``).
"""

from __future__ import annotations

import dataclasses
import sys

import pytest
from provider_cases import Faults, ProviderCase

from byoc_agent.protocol.errors import (
    ErrorCode,
    InvalidArgumentError,
    NotFoundError,
    PermanentError,
)
from byoc_agent.providers.base import (
    MANAGED_BY,
    TAG_AGENT,
    TAG_MANAGED_BY,
    TAG_TENANT,
    Host,
    HostProvider,
    HostSpec,
    HostState,
)
from byoc_agent.providers.errors import (
    CapacityUnavailableError,
    HostNotFoundError,
    ProviderAuthError,
    QuotaExceededError,
    UnknownInstanceTypeError,
)
from corral.testing import eventually

pytestmark = pytest.mark.asyncio

UNKNOWN_HOST_ID = "i-0123456789abcdef0"

# A cloud-init document with bytes beyond ASCII: they must survive every cloud's encoding.
CLOUD_CONFIG = (
    "#cloud-config\n"
    "# hôte de l'agent — ✓\n"
    "write_files:\n"
    "  - path: /etc/corral/hostd.toml\n"
    "    permissions: '0600'\n"
    "    content: |\n"
    '      control_plane = "https://corral.example.com"\n'
    "runcmd:\n"
    "  - [systemctl, enable, --now, corral-hostd]\n"
)


def cloud_config_of(size: int) -> str:
    """A cloud-config document of exactly ``size`` bytes."""
    head = "#cloud-config\n# "
    return head + "x" * (size - len(head) - 1) + "\n"


def held_user_data(case: ProviderCase, host_id: str) -> str | None:
    assert case.held_user_data is not None, f"{case.name} cannot read user data back"
    return case.held_user_data(host_id)


def faults_of(case: ProviderCase) -> Faults:
    assert case.faults is not None, f"{case.name} has no faults to inject"
    return case.faults


async def wait_for_state(
    provider: HostProvider, host_id: str, state: HostState, *, deadline_s: float = 15.0
) -> Host:
    """Poll ``describe`` until the host reaches ``state``, failing after ``deadline_s``."""

    async def reached() -> Host | None:
        host = await provider.describe(host_id)
        return host if host.state is state else None

    host = await eventually(reached, within_s=deadline_s, what=f"{host_id} to be {state}")
    assert host is not None
    return host


async def test_offerings_include_the_type_the_suite_provisions(provider_case: ProviderCase) -> None:
    """list_offerings describes the instance type the rest of the suite asks for."""
    offerings = {o.instance_type: o for o in await provider_case.provider.list_offerings()}
    offering = offerings[provider_case.instance_type]
    assert offering.vcpu > 0
    assert offering.memory_mib > 0
    assert offering.kvm, "the suite's type must be able to run microVMs (metal or nested)"


async def test_a_host_goes_from_provisioned_to_ready_to_terminated(
    provider_case: ProviderCase,
) -> None:
    """provision → ready → describe → list by tag → terminate → gone from the tag listing."""
    provider = provider_case.provider
    host = await provider.provision(provider_case.spec("tok-lifecycle", tenant="t-life"))
    assert host.state in {HostState.REQUESTED, HostState.PROVISIONING, HostState.READY}
    assert host.instance_type == provider_case.instance_type

    ready = await wait_for_state(provider, host.host_id, HostState.READY)
    assert ready.host_id == host.host_id
    assert ready.private_ip
    assert ready.launched_at.tzinfo is not None
    assert ready.tags[TAG_TENANT] == "t-life"
    assert ready.tags[TAG_AGENT] == "a-1"
    assert ready.tags[TAG_MANAGED_BY] == MANAGED_BY
    assert ready.tags["team"] == "infra"

    listed = await provider.list_by_tag(TAG_TENANT, "t-life")
    assert [h.host_id for h in listed] == [host.host_id]
    assert await provider.list_by_tag(TAG_TENANT, "someone-else") == []

    await provider.terminate(host.host_id)
    await wait_for_state(provider, host.host_id, HostState.TERMINATED)
    assert await provider.list_by_tag(TAG_TENANT, "t-life") == []


async def test_provision_with_the_same_client_token_returns_the_same_host(
    provider_case: ProviderCase,
) -> None:
    """A retried provision never launches a second host; a new token does."""
    provider = provider_case.provider
    first = await provider.provision(provider_case.spec("tok-same", agent="a-idem"))
    again = await provider.provision(provider_case.spec("tok-same", agent="a-idem"))
    assert again.host_id == first.host_id
    assert [h.host_id for h in await provider.list_by_tag(TAG_AGENT, "a-idem")] == [first.host_id]

    other = await provider.provision(provider_case.spec("tok-other", agent="a-idem"))
    assert other.host_id != first.host_id
    listed = {h.host_id for h in await provider.list_by_tag(TAG_AGENT, "a-idem")}
    assert listed == {first.host_id, other.host_id}


async def test_terminate_is_idempotent_and_the_token_still_names_the_same_host(
    provider_case: ProviderCase,
) -> None:
    """Terminating twice is fine; provisioning the old token again returns the terminated host."""
    provider = provider_case.provider
    host = await provider.provision(provider_case.spec("tok-term"))
    await provider.terminate(host.host_id)
    await provider.terminate(host.host_id)
    await wait_for_state(provider, host.host_id, HostState.TERMINATED)
    await provider.terminate(host.host_id)

    replay = await provider.provision(provider_case.spec("tok-term"))
    assert replay.host_id == host.host_id
    assert replay.state is HostState.TERMINATED


async def test_a_restarted_provider_sees_the_same_hosts_and_honours_the_same_tokens(
    provider_case: ProviderCase,
) -> None:
    """A new provider object on the same backend and state: nothing forgotten, nothing doubled."""
    assert provider_case.reopen is not None
    before = provider_case.provider
    live = await before.provision(provider_case.spec("tok-live", agent="a-restart"))
    gone = await before.provision(provider_case.spec("tok-gone", agent="a-restart"))
    await before.terminate(gone.host_id)
    await wait_for_state(before, gone.host_id, HostState.TERMINATED)

    after = provider_case.reopen()
    assert [h.host_id for h in await after.list_by_tag(TAG_AGENT, "a-restart")] == [live.host_id]
    assert (await after.describe(gone.host_id)).state is HostState.TERMINATED
    assert (await after.provision(provider_case.spec("tok-live", agent="a-restart"))).host_id == (
        live.host_id
    )
    replay = await after.provision(provider_case.spec("tok-gone", agent="a-restart"))
    assert (replay.host_id, replay.state) == (gone.host_id, HostState.TERMINATED)
    assert [h.host_id for h in await after.list_by_tag(TAG_AGENT, "a-restart")] == [live.host_id]


async def test_describe_of_an_unknown_host_raises_host_not_found(
    provider_case: ProviderCase,
) -> None:
    """An id the provider never issued is a typed, permanent not-found error."""
    with pytest.raises(HostNotFoundError) as caught:
        await provider_case.provider.describe(UNKNOWN_HOST_ID)
    assert isinstance(caught.value, NotFoundError)
    assert isinstance(caught.value, PermanentError)
    assert not caught.value.retryable
    assert caught.value.fields["host_id"] == UNKNOWN_HOST_ID
    assert UNKNOWN_HOST_ID in str(caught.value)


async def test_terminate_of_an_unknown_host_raises_host_not_found(
    provider_case: ProviderCase,
) -> None:
    """Terminate does not pretend an id it never issued was released."""
    with pytest.raises(HostNotFoundError):
        await provider_case.provider.terminate(UNKNOWN_HOST_ID)


async def test_an_instance_type_the_provider_does_not_offer_is_refused_permanently(
    provider_case: ProviderCase,
) -> None:
    """UnknownInstanceTypeError names the type; nothing is launched."""
    spec = dataclasses.replace(
        provider_case.spec("tok-unknown", agent="a-unknown"), instance_type="x9.nonesuch"
    )
    with pytest.raises(UnknownInstanceTypeError) as caught:
        await provider_case.provider.provision(spec)
    assert not caught.value.retryable
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert "x9.nonesuch" in str(caught.value)
    assert await provider_case.provider.list_by_tag(TAG_AGENT, "a-unknown") == []


async def test_quota_exceeded_is_permanent_actionable_and_launches_nothing(
    provider_case: ProviderCase,
) -> None:
    """An account limit: not retryable, says to raise the quota; once raised, the token works."""
    provider = provider_case.provider
    faults_of(provider_case).exhaust_quota()
    with pytest.raises(QuotaExceededError) as caught:
        await provider.provision(provider_case.spec("tok-quota", agent="a-quota"))
    error = caught.value
    assert not error.retryable
    assert error.code is ErrorCode.QUOTA_EXCEEDED
    assert error.fields["instance_type"] == provider_case.instance_type
    assert any(word in str(error).lower() for word in ("raise", "request a higher"))
    assert await provider.list_by_tag(TAG_AGENT, "a-quota") == []

    faults_of(provider_case).restore()
    host = await provider.provision(provider_case.spec("tok-quota", agent="a-quota"))
    assert host.state is not HostState.TERMINATED
    assert [h.host_id for h in await provider.list_by_tag(TAG_AGENT, "a-quota")] == [host.host_id]


async def test_capacity_unavailable_is_retryable_and_the_same_token_succeeds_later(
    provider_case: ProviderCase,
) -> None:
    """No free host of the type now: retryable, nothing left behind, a later retry works."""
    provider = provider_case.provider
    faults_of(provider_case).exhaust_capacity()
    with pytest.raises(CapacityUnavailableError) as caught:
        await provider.provision(provider_case.spec("tok-capacity", agent="a-capacity"))
    error = caught.value
    assert error.retryable
    assert error.code is ErrorCode.CAPACITY
    assert error.fields["instance_type"] == provider_case.instance_type
    assert "retry" in str(error).lower()
    assert await provider.list_by_tag(TAG_AGENT, "a-capacity") == []

    faults_of(provider_case).restore()
    host = await provider.provision(provider_case.spec("tok-capacity", agent="a-capacity"))
    ready = await wait_for_state(provider, host.host_id, HostState.READY)
    assert ready.tags[TAG_AGENT] == "a-capacity"


async def test_refused_credentials_are_a_permanent_auth_error_on_every_call(
    provider_case: ProviderCase,
) -> None:
    """Every call fails with ProviderAuthError saying which identity or role to fix."""
    provider = provider_case.provider
    if not faults_of(provider_case).revoke_credentials():
        pytest.skip(f"{provider_case.name} uses no credentials (an inventory file)")
    with pytest.raises(ProviderAuthError) as on_provision:
        await provider.provision(provider_case.spec("tok-auth"))
    with pytest.raises(ProviderAuthError):
        await provider.list_by_tag(TAG_TENANT, "t-1")
    with pytest.raises(ProviderAuthError):
        await provider.describe(UNKNOWN_HOST_ID)
    error = on_provision.value
    assert not error.retryable
    assert error.code is ErrorCode.FORBIDDEN
    assert any(w in str(error).lower() for w in ("credential", "role", "permission"))

    faults_of(provider_case).restore()
    assert await provider.list_by_tag(TAG_TENANT, "t-1") == []


async def test_provision_with_user_data_leaves_exactly_those_bytes_with_the_provider(
    provider_case: ProviderCase,
) -> None:
    """The cloud holds the document byte for byte (read back the way the cloud reports it);
    a retry with the same token and document is the same host; no document, none held.
    Bare metal refuses: an inventory machine is installed already and configured out of band.
    """
    provider = provider_case.provider
    spec = provider_case.spec("tok-user-data", agent="a-user-data", user_data=CLOUD_CONFIG)
    if provider_case.user_data_limit is None:
        with pytest.raises(InvalidArgumentError) as caught:
            await provider.provision(spec)
        assert not caught.value.retryable
        assert caught.value.fields["instance_type"] == provider_case.instance_type
        assert "out of band" in str(caught.value)
        assert await provider.list_by_tag(TAG_AGENT, "a-user-data") == []
        return

    host = await provider.provision(spec)
    held = held_user_data(provider_case, host.host_id)
    assert held is not None
    assert held.encode() == CLOUD_CONFIG.encode()

    again = await provider.provision(spec)
    assert again.host_id == host.host_id
    assert [h.host_id for h in await provider.list_by_tag(TAG_AGENT, "a-user-data")] == [
        host.host_id
    ]
    assert held_user_data(provider_case, host.host_id) == CLOUD_CONFIG

    plain = await provider.provision(provider_case.spec("tok-no-user-data", agent="a-user-data"))
    assert held_user_data(provider_case, plain.host_id) is None


async def test_user_data_one_byte_over_the_limit_is_refused_before_any_launch(
    provider_case: ProviderCase,
) -> None:
    """InvalidArgumentError naming the limit, nothing launched; exactly the limit is delivered
    (and accepted by the backend, which checks the limit too) under the same token."""
    limit = provider_case.user_data_limit
    if limit is None:
        pytest.skip(f"{provider_case.name} refuses any user data (see the test above)")
    provider = provider_case.provider
    too_big = cloud_config_of(limit + 1)
    with pytest.raises(InvalidArgumentError) as caught:
        await provider.provision(provider_case.spec("tok-big", agent="a-big", user_data=too_big))
    error = caught.value
    assert not error.retryable
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.fields["instance_type"] == provider_case.instance_type
    assert f"{limit + 1} bytes" in str(error)
    assert f"at most {limit}" in str(error)
    assert await provider.list_by_tag(TAG_AGENT, "a-big") == []

    exact = cloud_config_of(limit)
    host = await provider.provision(provider_case.spec("tok-big", agent="a-big", user_data=exact))
    assert held_user_data(provider_case, host.host_id) == exact


async def test_the_clouds_own_refusal_of_too_large_user_data_is_invalid_argument_too(
    provider_case: ProviderCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the provider's own check lifted, the backend refuses the oversized document as
    the cloud does (EC2 400 InvalidParameterValue, GCE 400 invalid, ARM 400
    InvalidParameter), and the caller still sees a permanent InvalidArgumentError."""
    limit = provider_case.user_data_limit
    if limit is None:
        pytest.skip(f"{provider_case.name} refuses any user data before any backend call")
    module = sys.modules[type(provider_case.provider).__module__]
    monkeypatch.setattr(module, "USER_DATA_MAX_BYTES", 4 * limit)
    spec = provider_case.spec("tok-cloud-big", agent="a-cloud-big")
    spec = dataclasses.replace(spec, user_data=cloud_config_of(limit + 1))
    with pytest.raises(InvalidArgumentError) as caught:
        await provider_case.provider.provision(spec)
    assert not caught.value.retryable
    assert await provider_case.provider.list_by_tag(TAG_AGENT, "a-cloud-big") == []


async def test_user_data_is_kept_out_of_a_host_specs_repr() -> None:
    """A spec is logged; the document may carry a bootstrap secret."""
    spec = HostSpec(
        tenant_id="t", agent_id="a", instance_type="x", client_token="c", user_data="s3cr3t"
    )
    assert "s3cr3t" not in repr(spec)
    assert spec.user_data == "s3cr3t"
