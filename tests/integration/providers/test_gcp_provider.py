"""GcpProvider against the local Compute Engine REST server, through the real client library.

What a launch asks Compute Engine for is read back from the server's stored instance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fake_gcp import OTHER_ZONE, ZONE, FakeCompute
from fake_http import Recorder
from provider_cases import ProviderCase, gcp_unavailable, make_gcp_provider

from byoc_agent.providers.base import TAG_MANAGED_BY, TAG_TENANT, HostState
from byoc_agent.providers.errors import (
    HostNotFoundError,
    ProviderAuthError,
    QuotaExceededError,
    UnknownInstanceTypeError,
)

pytestmark = pytest.mark.asyncio

if (_why_not := gcp_unavailable()) is not None:
    pytest.skip(_why_not, allow_module_level=True)

from byoc_agent.providers.gcp import TAGS_METADATA_KEY, instance_name  # noqa: E402


def stored(fake: FakeCompute, name: str) -> dict[str, object]:
    return fake.instances[(ZONE, name)]


async def test_offerings_mark_nested_virtualization_and_the_h100_gpus(
    gcp_case: ProviderCase,
) -> None:
    """n2 gets KVM through nested virtualization; a3-highgpu-8g has 8 H100s; types the zone
    does not offer are left out."""
    offerings = {o.instance_type: o for o in await gcp_case.provider.list_offerings()}
    assert set(offerings) == {"n2-standard-32", "a3-highgpu-8g"}
    n2 = offerings["n2-standard-32"]
    assert (n2.vcpu, n2.memory_mib, n2.kvm, n2.bare_metal, n2.gpu_count) == (
        32, 131072, True, False, 0,
    )
    a3 = offerings["a3-highgpu-8g"]
    assert (a3.vcpu, a3.gpu_count, a3.gpu_model, a3.kvm) == (208, 8, "nvidia-h100-80gb", False)


async def test_a_launch_enables_nested_virtualization_without_a_public_ip(
    gcp_case: ProviderCase, gcp_fake: tuple[FakeCompute, Recorder]
) -> None:
    """Nested virt on, no access config, network tags, subnetwork, service account, labels,
    exact tags in metadata; the insert's operation is waited for with zoneOperations.wait."""
    fake, recorder = gcp_fake
    host = await gcp_case.provider.provision(gcp_case.spec("tok-n2", tenant="Acme_Corp.EU"))
    inst = stored(fake, host.host_id)

    assert inst["advancedMachineFeatures"] == {"enableNestedVirtualization": True}
    nic = inst["networkInterfaces"][0]  # type: ignore[index]
    assert "accessConfigs" not in nic
    assert nic["subnetwork"] == "regions/us-central1/subnetworks/corral-hosts"
    assert inst["tags"] == {"items": ["corral-hosts"]}
    assert inst["serviceAccounts"][0]["email"].startswith("corral-host@")  # type: ignore[index]
    assert inst["shieldedInstanceConfig"]["enableSecureBoot"] is True  # type: ignore[index]
    disk = inst["disks"][0]  # type: ignore[index]
    assert disk["boot"] is True
    assert disk["autoDelete"] is True
    assert disk["initializeParams"]["sourceImage"].endswith("family/debian-12")

    labels = inst["labels"]
    assert isinstance(labels, dict)
    assert labels["corral-tenant"] == "acme_corp-eu"
    assert labels["corral-managed-by"] == "corral"
    assert host.tags[TAG_TENANT] == "Acme_Corp.EU"  # exact, from the metadata item
    items = {i["key"]: i["value"] for i in inst["metadata"]["items"]}  # type: ignore[index]
    assert '"corral:tenant": "Acme_Corp.EU"' in items[TAGS_METADATA_KEY]

    inserts = [r for r in recorder.requests if r.method == "POST" and r.path.endswith("/instances")]
    assert len(inserts) == 1
    assert inserts[0].query["requestId"]
    assert any(r.path.endswith("/operations/" + str(fake.request_ids[inserts[0].query["requestId"]])
                               + "/wait") for r in recorder.requests)


async def test_a_gpu_host_is_not_live_migrated(
    gcp_case: ProviderCase, gcp_fake: tuple[FakeCompute, Recorder]
) -> None:
    """a3-highgpu-8g: on_host_maintenance TERMINATE, and no nested-virtualization request."""
    fake, _ = gcp_fake
    spec = dataclasses.replace(gcp_case.spec("tok-a3"), instance_type="a3-highgpu-8g")
    host = await gcp_case.provider.provision(spec)
    inst = stored(fake, host.host_id)
    assert inst["scheduling"]["onHostMaintenance"] == "TERMINATE"  # type: ignore[index]
    assert "advancedMachineFeatures" not in inst
    assert host.instance_type == "a3-highgpu-8g"


async def test_a_gpu_quota_failing_the_operation_is_quota_exceeded(
    gcp_case: ProviderCase, gcp_fake: tuple[FakeCompute, Recorder]
) -> None:
    """QUOTA_EXCEEDED inside a DONE operation (not an HTTP error) is still QuotaExceededError."""
    fake, _ = gcp_fake
    fake.h100_quota = 0
    spec = dataclasses.replace(gcp_case.spec("tok-a3-quota"), instance_type="a3-highgpu-8g")
    with pytest.raises(QuotaExceededError, match="NVIDIA_H100_GPUS") as caught:
        await gcp_case.provider.provision(spec)
    assert "request a higher quota" in str(caught.value)
    assert not fake.instances


async def test_a_configured_type_this_zone_lacks_names_the_zones_that_have_it(
    gcp_case: ProviderCase,
) -> None:
    """machineTypes aggregatedList tells the operator where the type exists."""
    spec = dataclasses.replace(gcp_case.spec("tok-metal"), instance_type="c3-highcpu-192-metal")
    with pytest.raises(UnknownInstanceTypeError) as caught:
        await gcp_case.provider.provision(spec)
    assert f"not offered in {ZONE}" in str(caught.value)
    assert OTHER_ZONE in str(caught.value)


async def test_sanitized_labels_never_merge_two_tenants(gcp_case: ProviderCase) -> None:
    """'Acme.EU' and 'acme-eu' share a label value; list_by_tag still tells them apart."""
    provider = gcp_case.provider
    a = await provider.provision(gcp_case.spec("tok-dot", tenant="Acme.EU"))
    b = await provider.provision(gcp_case.spec("tok-dash", tenant="acme-eu"))
    assert [h.host_id for h in await provider.list_by_tag(TAG_TENANT, "Acme.EU")] == [a.host_id]
    assert [h.host_id for h in await provider.list_by_tag(TAG_TENANT, "acme-eu")] == [b.host_id]


async def test_an_instance_without_the_corral_label_is_never_touched(
    gcp_case: ProviderCase, gcp_fake: tuple[FakeCompute, Recorder], tmp_path: Path
) -> None:
    """Describe and terminate refuse an instance Corral did not launch; it keeps running."""
    fake, _ = gcp_fake
    host = await gcp_case.provider.provision(gcp_case.spec("tok-foreign"))
    inst = stored(fake, host.host_id)
    inst["labels"] = {"team": "web"}  # as if someone else's instance had this name
    other = make_gcp_provider(fake, tmp_path / "other-ledger.json")
    with pytest.raises(HostNotFoundError):
        await other.describe(host.host_id)
    with pytest.raises(HostNotFoundError, match=TAG_MANAGED_BY.replace(":", "-")):
        await other.terminate(host.host_id)
    assert (ZONE, host.host_id) in fake.instances
    assert await other.list_by_tag(TAG_TENANT, "t-1") == []


async def test_the_instance_name_comes_from_the_client_token(gcp_case: ProviderCase) -> None:
    """A lost answer is harmless: the retry finds the instance by its name, inserts nothing."""
    host = await gcp_case.provider.provision(gcp_case.spec("tok-name"))
    assert host.host_id == instance_name("tok-name")
    again = await gcp_case.reopen().provision(gcp_case.spec("tok-name"))  # type: ignore[misc]
    assert again.host_id == host.host_id
    assert again.state in {HostState.PROVISIONING, HostState.READY}


async def test_a_project_the_identity_may_not_use_is_an_auth_error(
    gcp_fake: tuple[FakeCompute, Recorder], tmp_path: Path
) -> None:
    """403 PERMISSION_DENIED (not a quota) names the role to grant on that project."""
    from google.auth.credentials import AnonymousCredentials

    from byoc_agent.providers.gcp import GcpConfig, GcpProvider

    fake, _ = gcp_fake
    provider = GcpProvider(
        GcpConfig(project="someone-elses", zone=ZONE, image="x"),
        ledger_path=None,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        api_endpoint=fake.base_url,
    )
    with pytest.raises(ProviderAuthError, match=r"roles/compute\.instanceAdmin\.v1") as caught:
        await provider.list_offerings()
    assert "someone-elses" in str(caught.value)
    assert not caught.value.retryable
