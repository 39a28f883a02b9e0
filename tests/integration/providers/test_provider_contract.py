"""The behaviour every HostProvider must have, checked against the real backend (see conftest).

Bare metal runs on a loopback inventory; AWS runs against moto's EC2 server over HTTP.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from provider_cases import ProviderCase

from byoc_agent.protocol.errors import NotFoundError, PermanentError
from byoc_agent.providers.base import (
    MANAGED_BY,
    TAG_AGENT,
    TAG_MANAGED_BY,
    TAG_TENANT,
    Host,
    HostProvider,
    HostState,
)
from byoc_agent.providers.errors import HostNotFoundError

pytestmark = pytest.mark.asyncio

UNKNOWN_HOST_ID = "i-0123456789abcdef0"


async def wait_for_state(
    provider: HostProvider, host_id: str, state: HostState, *, deadline_s: float = 15.0
) -> Host:
    """Poll ``describe`` until the host reaches ``state``, failing after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        host = await provider.describe(host_id)
        if host.state is state:
            return host
        assert time.monotonic() < end, f"{host_id} still {host.state}, wanted {state}"
        await asyncio.sleep(0.05)


async def test_offerings_include_the_type_the_suite_provisions(provider_case: ProviderCase) -> None:
    """list_offerings describes the instance type the rest of the suite asks for."""
    offerings = {o.instance_type: o for o in await provider_case.provider.list_offerings()}
    offering = offerings[provider_case.instance_type]
    assert offering.vcpu > 0
    assert offering.memory_mib > 0
    assert offering.bare_metal


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
