"""AzureProvider against the local ARM server over HTTPS, through the real client library.

What a create asks ARM for is read back from the body the server stored.
"""

from __future__ import annotations

import base64
import dataclasses
import ssl
from pathlib import Path

import pytest
from fake_azure import LOCATION, RESOURCE_GROUP, SUBSCRIPTION, TOKEN, FakeArm
from fake_http import Recorder
from provider_cases import (
    ProviderCase,
    StaticTokenCredential,
    azure_unavailable,
    make_azure_provider,
)

from byoc_agent.providers.base import TAG_AGENT, TAG_MANAGED_BY, TAG_TENANT
from byoc_agent.providers.errors import (
    CapacityUnavailableError,
    HostNotFoundError,
    ProviderAuthError,
    UnknownInstanceTypeError,
)

pytestmark = pytest.mark.asyncio

if (_why_not := azure_unavailable()) is not None:
    pytest.skip(_why_not, allow_module_level=True)

from byoc_agent.providers.azure import vm_name  # noqa: E402


async def test_offerings_come_from_resource_skus_without_restricted_sizes(
    azure_case: ProviderCase,
) -> None:
    """Dsv5 runs microVMs through nested virtualization, ND H100 v5 has 8 GPUs, and a size
    restricted for this subscription is not offered."""
    offerings = {o.instance_type: o for o in await azure_case.provider.list_offerings()}
    assert set(offerings) == {"Standard_D32s_v5", "Standard_ND96isr_H100_v5"}
    d32 = offerings["Standard_D32s_v5"]
    assert (d32.vcpu, d32.memory_mib, d32.kvm, d32.bare_metal, d32.gpu_count) == (
        32, 131072, True, False, 0,
    )
    nd = offerings["Standard_ND96isr_H100_v5"]
    assert (nd.vcpu, nd.gpu_count, nd.gpu_model, nd.kvm) == (96, 8, "H100", False)


async def test_a_create_asks_for_a_private_nic_a_managed_disk_and_the_host_identity(
    azure_case: ProviderCase, azure_fake: tuple[FakeArm, Recorder]
) -> None:
    """The PUT body: size, NIC in the configured subnet and NSG (no public IP), disks deleted
    with the VM, encryption at host, SSH-only Linux, user-assigned identity, our tags; the
    create is a long-running operation polled through Azure-AsyncOperation."""
    fake, recorder = azure_fake
    host = await azure_case.provider.provision(azure_case.spec("tok-d32", tenant="t-az"))
    body = fake.vms[host.host_id]["_body"]
    assert isinstance(body, dict)
    props = body["properties"]
    assert body["location"] == LOCATION
    assert props["hardwareProfile"] == {"vmSize": "Standard_D32s_v5"}
    nic = props["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]
    assert nic["deleteOption"] == "Delete"
    assert nic["networkSecurityGroup"]["id"] == azure_case.security_group_ids[0]
    ip = nic["ipConfigurations"][0]["properties"]
    assert ip["subnet"]["id"] == azure_case.subnet_id
    assert "publicIPAddressConfiguration" not in ip
    assert props["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    assert props["storageProfile"]["imageReference"]["offer"] == "ubuntu-24_04-lts"
    assert props["securityProfile"] == {"encryptionAtHost": True}
    assert props["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert next(iter(body["identity"]["userAssignedIdentities"])).endswith("/corral-host")
    assert body["tags"][TAG_TENANT] == "t-az"
    assert body["tags"][TAG_MANAGED_BY] == "corral"

    assert host.host_id == vm_name("tok-d32")
    assert host.private_ip
    assert host.private_ip.startswith("10.1.")
    polls = [r for r in recorder.requests if "/operations/" in r.path]
    assert polls, "the create was not polled through Azure-AsyncOperation"


async def test_a_size_arm_cannot_place_now_is_retryable_capacity(
    azure_case: ProviderCase, azure_fake: tuple[FakeArm, Recorder]
) -> None:
    """409 SkuNotAvailable on the PUT is CapacityUnavailableError naming the size."""
    fake, _ = azure_fake
    fake.sku_not_available.add("Standard_ND96isr_H100_v5")
    spec = dataclasses.replace(azure_case.spec("tok-nd"), instance_type="Standard_ND96isr_H100_v5")
    with pytest.raises(CapacityUnavailableError, match="Standard_ND96isr_H100_v5") as caught:
        await azure_case.provider.provision(spec)
    assert caught.value.retryable
    assert not fake.vms


async def test_a_missing_role_is_an_auth_error_naming_the_role_to_grant(
    azure_case: ProviderCase, azure_fake: tuple[FakeArm, Recorder]
) -> None:
    """403 AuthorizationFailed (a valid token without the write permission)."""
    fake, _ = azure_fake
    fake.forbidden_actions.add("Microsoft.Compute/virtualMachines/write")
    with pytest.raises(ProviderAuthError, match="Virtual Machine Contributor") as caught:
        await azure_case.provider.provision(azure_case.spec("tok-rbac"))
    assert "virtualMachines/write" in str(caught.value)
    assert not caught.value.retryable


async def test_a_size_restricted_for_the_subscription_is_unknown(azure_case: ProviderCase) -> None:
    """A configured size the SKU list marks NotAvailableForSubscription is refused before ARM."""
    spec = dataclasses.replace(azure_case.spec("tok-f8"), instance_type="Standard_F8s_v2")
    with pytest.raises(UnknownInstanceTypeError, match="Standard_F8s_v2"):
        await azure_case.provider.provision(spec)


async def test_a_vm_without_the_corral_tag_is_never_touched(
    azure_case: ProviderCase, azure_fake: tuple[FakeArm, Recorder], tmp_path: Path
) -> None:
    """Describe and terminate refuse a VM Corral did not launch; it stays."""
    fake, _ = azure_fake
    host = await azure_case.provider.provision(azure_case.spec("tok-foreign", agent="a-f"))
    fake.vms[host.host_id]["tags"] = {"team": "web"}
    with pytest.raises(HostNotFoundError):
        await azure_case.provider.describe(host.host_id)
    with pytest.raises(HostNotFoundError, match=SUBSCRIPTION):
        await azure_case.provider.terminate(host.host_id)
    assert host.host_id in fake.vms
    assert await azure_case.provider.list_by_tag(TAG_AGENT, "a-f") == []


async def test_a_credential_that_yields_no_token_is_an_auth_error(
    azure_fake: tuple[FakeArm, Recorder], arm_tls: tuple[ssl.SSLContext, Path]
) -> None:
    """401 AuthenticationFailed (no usable bearer token) says which identity to fix."""
    fake, recorder = azure_fake
    provider = make_azure_provider(fake, arm_tls[1], None, token="")
    with pytest.raises(ProviderAuthError, match="managed identity") as caught:
        await provider.list_offerings()
    assert "Authentication failed" in str(caught.value)
    assert recorder.requests[-1].headers["authorization"].strip() == "Bearer"


async def test_custom_data_goes_out_base64_in_the_put_and_never_comes_back_on_a_get(
    azure_case: ProviderCase,
    azure_fake: tuple[FakeArm, Recorder],
    arm_tls: tuple[ssl.SSLContext, Path],
) -> None:
    """osProfile.customData is the user data, base64; ARM (and the fake) do not return it."""
    fake, recorder = azure_fake
    host = await azure_case.provider.provision(
        azure_case.spec("tok-custom", user_data="#cloud-config\nruncmd: [[true]]\n")
    )
    put = next(r for r in recorder.requests if r.method == "PUT")
    assert isinstance(put.body, dict)
    sent = put.body["properties"]["osProfile"]["customData"]
    assert base64.b64decode(sent, validate=True) == b"#cloud-config\nruncmd: [[true]]\n"
    assert fake.custom_data == {host.host_id: sent}
    from azure.mgmt.compute import ComputeManagementClient

    client = ComputeManagementClient(
        StaticTokenCredential(TOKEN),  # type: ignore[arg-type]
        SUBSCRIPTION,
        base_url=fake.base_url,
        connection_verify=str(arm_tls[1]),
    )
    vm = client.virtual_machines.get(RESOURCE_GROUP, host.host_id)
    assert vm.os_profile is not None
    assert vm.os_profile.admin_username == "corral"
    assert vm.os_profile.custom_data is None
