"""``AzureProvider``: virtual machines in the customer's Azure subscription (azure-mgmt-compute).

The only module that imports the Azure SDK. Hosts are VMs in one resource group and
location:

* **KVM.** Sizes whose family supports nested virtualization (``Standard_D*s_v5`` and
  friends, matched by :data:`DEFAULT_NESTED_VIRT_SIZES`) expose ``/dev/kvm`` to the guest
  with no extra setting; the offering says ``kvm=True``. The GPU size
  ``Standard_ND96isr_H100_v5`` carries 8 x H100.
* **Network.** ``HostSpec.subnet_id`` is the subnet's resource id; the first entry of
  ``HostSpec.security_group_ids`` is a network security group id. The VM creates its own
  NIC (``networkInterfaceConfigurations``, deleted with the VM) with no public IP; its
  private address is read from that NIC through the same authenticated pipeline.
* **Disks and identity.** The OS disk is a managed disk (encrypted at rest by Azure),
  deleted with the VM, with encryption at host on by default; an optional user-assigned
  managed identity is attached to the host. The agent authenticates with its own identity
  (``DefaultAzureCredential`` unless a credential is passed): no secret in the config.
* **User data.** ``HostSpec.user_data`` becomes ``osProfile.customData`` (base64, which
  cloud-init reads on Azure); ARM takes at most 65535 bytes before encoding (87380
  base64 characters), checked here before any call. ARM never returns it on a GET.
* **Idempotency.** The VM name is derived from the client token (``corral-<sha256>``);
  ARM's PUT is idempotent by name, and a
  :class:`~byoc_agent.providers.ledger.HostLedger` remembers tokens after a VM is deleted.

Create and delete are long-running operations (``begin_create_or_update``,
``begin_delete``, polled through ``Azure-AsyncOperation``); a failed operation
(``AllocationFailed``) is converted like an HTTP error. ARM codes map to the typed errors
in :mod:`byoc_agent.providers.errors` (see ``docs/providers.md``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ODataV4Format,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as m

from byoc_agent.protocol.errors import (
    CorralError,
    InvalidArgumentError,
    PermanentError,
    RetryableError,
)
from byoc_agent.providers.base import (
    MANAGED_BY,
    TAG_CLIENT_TOKEN,
    TAG_MANAGED_BY,
    Host,
    HostSpec,
    HostState,
    Offering,
    user_data_too_large,
)
from byoc_agent.providers.errors import (
    CapacityUnavailableError,
    HostNotFoundError,
    ProviderAuthError,
    QuotaExceededError,
    UnknownInstanceTypeError,
)
from byoc_agent.providers.ledger import HostLedger, LedgerEntry

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

T = TypeVar("T")

DEFAULT_VM_SIZES: tuple[str, ...] = ("Standard_D32s_v5", "Standard_ND96isr_H100_v5")
# Intel D/E families with premium storage (v3-v5) support nested virtualization.
DEFAULT_NESTED_VIRT_SIZES = r"^Standard_[DE]\d+d?s_v[345]$"
NETWORK_API_VERSION = "2023-09-01"

_GPU_MODEL = re.compile(r"(H100|H200|A100|V100|A10|T4|MI300X)")
_QUOTA = {"QuotaExceeded", "OperationNotAllowedQuota"}
_CAPACITY = {
    "SkuNotAvailable",
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest",
}
_AUTH = {
    "AuthenticationFailed",
    "InvalidAuthenticationToken",
    "InvalidAuthenticationTokenTenant",
    "ExpiredAuthenticationToken",
    "AuthorizationFailed",
    "LinkedAuthorizationFailed",
    "SubscriptionNotFound",
}
_NOT_FOUND = {"ResourceNotFound", "NotFound", "ResourceGroupNotFound"}
_RETRYABLE = {"TooManyRequests", "RetryableError", "InternalServerError", "Conflict"}
_LRO_TIMEOUT_S = 1800.0
# osProfile.customData decodes to at most 65535 bytes (ARM: "a maximum length of 87380
# characters" of base64).
USER_DATA_MAX_BYTES = 65535


@dataclass(frozen=True, slots=True)
class AzureConfig:
    """Where and how hosts are launched; from the agent's settings."""

    subscription_id: str
    resource_group: str
    location: str
    # Marketplace image "publisher:offer:sku:version" or a managed image / gallery id.
    image: str
    admin_username: str
    ssh_public_key: str
    vm_sizes: tuple[str, ...] = DEFAULT_VM_SIZES
    nested_virt_sizes: str = DEFAULT_NESTED_VIRT_SIZES
    os_disk_gib: int = 128
    os_disk_type: str = "Premium_LRS"
    encryption_at_host: bool = True
    # A disk encryption set (customer-managed key); platform-managed keys when None.
    disk_encryption_set_id: str | None = None
    # User-assigned managed identity attached to each host.
    host_identity_id: str | None = None
    # Used when a HostSpec names no subnet / security group.
    subnet_id: str | None = None
    network_security_group_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


class AzureProvider:
    """Creates and deletes Azure VMs in one resource group."""

    name = "azure"

    def __init__(
        self,
        config: AzureConfig,
        *,
        ledger_path: Path | None,
        credential: TokenCredential | None = None,
        base_url: str | None = None,
        connection_verify: str | bool = True,
        polling_interval: float = 30.0,
        retry_total: int = 10,
        call_timeout_s: float = 60.0,
    ) -> None:
        self._cfg = config
        self._ledger = HostLedger(ledger_path)
        self._timeout_s = call_timeout_s
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        # Defaults are the SDK's own: ARM's Retry-After decides the poll rate in practice.
        self._client = ComputeManagementClient(
            credential,
            config.subscription_id,
            base_url=base_url,
            connection_verify=connection_verify,
            polling_interval=polling_interval,
            retry_total=retry_total,
        )
        self._offerings: dict[str, Offering] | None = None
        self._lock = asyncio.Lock()

    # -- HostProvider ---------------------------------------------------------------------

    async def list_offerings(self) -> list[Offering]:
        offerings = await self._offerings_by_size()
        return [offerings[s] for s in sorted(offerings)]

    async def provision(self, spec: HostSpec) -> Host:
        """Measure, then act: a ledgered token or an existing VM is returned as is.

        Provisions are serialized, so two calls with one token cannot both create.
        """
        name = vm_name(spec.client_token)
        fields = {"tenant_id": spec.tenant_id, "instance_type": spec.instance_type}
        user_data = len(spec.user_data.encode()) if spec.user_data else 0
        if user_data > USER_DATA_MAX_BYTES:
            raise user_data_too_large(
                spec, size=user_data, limit=USER_DATA_MAX_BYTES, what="Azure (osProfile.customData)"
            )
        async with self._lock:
            entry = self._ledger.by_token(spec.client_token)
            if entry is not None and entry.terminated_at is not None:
                return entry.terminated_host()
            existing = await self._get(name, **fields)
            if existing is not None and existing.provisioning_state != "Failed":
                return await self._host(existing)
            offering = (await self._offerings_by_size()).get(spec.instance_type)
            if offering is None:
                offered = ", ".join(sorted(await self._offerings_by_size())) or "nothing"
                raise UnknownInstanceTypeError(
                    f"VM size {spec.instance_type!r} is not offered to this subscription in "
                    f"{self._cfg.location} (or not configured); available: {offered}",
                    **fields,
                )
            tags = {**self._cfg.tags, **spec.all_tags()}
            if entry is None:
                entry = LedgerEntry(
                    host_id=name,
                    client_token=spec.client_token,
                    instance_type=spec.instance_type,
                    tags=tags,
                    launched_at=datetime.now(UTC),
                )
                await asyncio.to_thread(self._ledger.record, entry)
            vm = self._vm(name, spec, tags)
            try:
                created = await self._call_long(
                    lambda: self._client.virtual_machines.begin_create_or_update(
                        self._cfg.resource_group, name, vm
                    ).result(),
                    **fields,
                )
            except CorralError:
                await self._remove_failed(name)
                raise
        return await self._host(created)

    async def describe(self, host_id: str) -> Host:
        vm = await self._get(host_id, host_id=host_id)
        if vm is not None and _managed(vm):
            return await self._host(vm)
        entry = self._ledger.get(host_id)
        if vm is None and entry is not None and entry.terminated_at is not None:
            return entry.terminated_host()
        raise self._not_found(host_id)

    async def list_by_tag(self, key: str, value: str) -> list[Host]:
        """ARM cannot filter VMs by tag: list the resource group (with instance views) and
        filter here. The resource group should hold Corral's hosts only."""
        vms = await self._call(
            lambda: list(
                self._client.virtual_machines.list(
                    self._cfg.resource_group, expand="instanceView"
                )
            )
        )
        chosen = [v for v in vms if _managed(v) and (v.tags or {}).get(key) == value]
        hosts = [await self._host(v) for v in chosen]
        return sorted(
            (h for h in hosts if h.state is not HostState.TERMINATED), key=lambda h: h.launched_at
        )

    async def terminate(self, host_id: str) -> None:
        vm = await self._get(host_id, host_id=host_id)
        entry = self._ledger.get(host_id)
        if vm is None:
            if entry is None:
                raise self._not_found(host_id)
            await asyncio.to_thread(self._ledger.mark_terminated, host_id)
            return
        if not _managed(vm):
            raise self._not_found(host_id)
        # Remember what the host was (its address included) before it is gone; this also
        # re-ledgers a host launched by an agent whose ledger was lost.
        host = await self._host(vm)
        await asyncio.to_thread(
            self._ledger.record,
            LedgerEntry(
                host_id=host_id,
                client_token=entry.client_token
                if entry
                else host.tags.get(TAG_CLIENT_TOKEN, ""),
                instance_type=host.instance_type,
                tags=host.tags,
                launched_at=entry.launched_at if entry else host.launched_at,
                private_ip=host.private_ip,
            ),
        )
        await self._call_long(
            lambda: self._client.virtual_machines.begin_delete(
                self._cfg.resource_group, host_id
            ).result(),
            host_id=host_id,
        )
        await asyncio.to_thread(self._ledger.mark_terminated, host_id)

    # -- internals ------------------------------------------------------------------------

    async def _remove_failed(self, name: str) -> None:
        """Delete a VM whose create failed (ARM keeps it, ``Failed``, holding its quota).

        Best effort: the caller raises the create's error either way, and a retry with the
        same token re-creates the VM in place.
        """
        with contextlib.suppress(CorralError, ResourceNotFoundError):
            vm = await self._get(name)
            if vm is not None and vm.provisioning_state == "Failed" and _managed(vm):
                await self._call_long(
                    lambda: self._client.virtual_machines.begin_delete(
                        self._cfg.resource_group, name
                    ).result(),
                    host_id=name,
                )

    def _vm(self, name: str, spec: HostSpec, tags: Mapping[str, str]) -> m.VirtualMachine:
        cfg = self._cfg
        os_disk = m.OSDisk(
            create_option="FromImage",
            delete_option="Delete",
            disk_size_gb=cfg.os_disk_gib,
            managed_disk=m.ManagedDiskParameters(
                storage_account_type=cfg.os_disk_type,
                disk_encryption_set=m.DiskEncryptionSetParameters(id=cfg.disk_encryption_set_id)
                if cfg.disk_encryption_set_id
                else None,
            ),
        )
        subnet = spec.subnet_id or cfg.subnet_id
        nsg = (
            spec.security_group_ids[0]
            if spec.security_group_ids
            else cfg.network_security_group_id
        )
        ip_config = m.VirtualMachineNetworkInterfaceIPConfiguration(
            name="primary",
            properties=m.VirtualMachineNetworkInterfaceIPConfigurationProperties(
                primary=True,
                subnet=m.SubResource(id=subnet) if subnet else None,
            ),
        )
        nic = m.VirtualMachineNetworkInterfaceConfiguration(
            name=f"{name}-nic",
            properties=m.VirtualMachineNetworkInterfaceConfigurationProperties(
                primary=True,
                delete_option="Delete",
                ip_configurations=[ip_config],
                network_security_group=m.SubResource(id=nsg) if nsg else None,
            ),
        )
        properties = m.VirtualMachineProperties(
            hardware_profile=m.HardwareProfile(vm_size=spec.instance_type),
            storage_profile=m.StorageProfile(image_reference=_image(cfg.image), os_disk=os_disk),
            os_profile=m.OSProfile(
                computer_name=name,
                admin_username=cfg.admin_username,
                custom_data=base64.b64encode(spec.user_data.encode()).decode("ascii")
                if spec.user_data
                else None,
                linux_configuration=m.LinuxConfiguration(
                    disable_password_authentication=True,
                    ssh=m.SshConfiguration(
                        public_keys=[
                            m.SshPublicKey(
                                path=f"/home/{cfg.admin_username}/.ssh/authorized_keys",
                                key_data=cfg.ssh_public_key,
                            )
                        ]
                    ),
                ),
            ),
            network_profile=m.NetworkProfile(
                network_api_version=NETWORK_API_VERSION,
                network_interface_configurations=[nic],
            ),
            security_profile=m.SecurityProfile(encryption_at_host=cfg.encryption_at_host),
        )
        vm = m.VirtualMachine(location=cfg.location, tags=dict(tags), properties=properties)
        if cfg.host_identity_id:
            vm.identity = m.VirtualMachineIdentity(
                type="UserAssigned",
                user_assigned_identities={cfg.host_identity_id: m.UserAssignedIdentitiesValue()},
            )
        return vm

    async def _offerings_by_size(self) -> dict[str, Offering]:
        if self._offerings is None:
            location = self._cfg.location
            skus = await self._call(
                lambda: list(
                    self._client.resource_skus.list(filter=f"location eq '{location}'")
                )
            )
            wanted = set(self._cfg.vm_sizes)
            nested = re.compile(self._cfg.nested_virt_sizes)
            self._offerings = {
                sku.name: _offering(sku, nested)
                for sku in skus
                if sku.resource_type == "virtualMachines"
                and sku.name in wanted
                and not _restricted(sku, location)
            }
        return self._offerings

    async def _get(self, name: str, **fields: str) -> m.VirtualMachine | None:
        try:
            return await self._call_may_be_missing(
                lambda: self._client.virtual_machines.get(
                    self._cfg.resource_group, name, expand="instanceView"
                ),
                **fields,
            )
        except ResourceNotFoundError:
            return None

    async def _private_ip(self, vm: m.VirtualMachine) -> str | None:
        nics = vm.network_profile.network_interfaces if vm.network_profile else None
        if not nics or not nics[0].id:
            return None
        request = HttpRequest("GET", f"{nics[0].id}?api-version={NETWORK_API_VERSION}")

        def fetch() -> object:
            response = self._client.send_request(request)
            if response.status_code == 404:
                return None
            response.raise_for_status()
            return response.json()

        body = await self._call_may_be_missing(fetch)
        if not isinstance(body, dict):
            return None
        for config in body.get("properties", {}).get("ipConfigurations", []):
            ip = config.get("properties", {}).get("privateIPAddress")
            if isinstance(ip, str) and ip:
                return ip
        return None

    async def _host(self, vm: m.VirtualMachine) -> Host:
        created = vm.time_created
        return Host(
            host_id=vm.name or "",
            instance_type=(vm.hardware_profile.vm_size if vm.hardware_profile else None) or "",
            state=_state(vm),
            private_ip=await self._private_ip(vm),
            tags=dict(vm.tags or {}),
            launched_at=created.astimezone(UTC) if created else datetime.now(UTC),
        )

    def _not_found(self, host_id: str) -> HostNotFoundError:
        return HostNotFoundError(
            f"no Corral-managed VM {host_id!r} in resource group {self._cfg.resource_group} "
            f"of subscription {self._cfg.subscription_id}; check the id and resource group "
            f"(VMs without the {TAG_MANAGED_BY} tag are not visible here)",
            host_id=host_id,
        )

    async def _call(self, fn: Callable[[], T], **fields: str) -> T:
        """Run one blocking SDK call in a thread, with a deadline, converting its errors."""
        return await self._invoke(fn, fields, raw_not_found=False, timeout_s=self._timeout_s)

    async def _call_may_be_missing(self, fn: Callable[[], T], **fields: str) -> T:
        """Like ``_call``, but lets ``ResourceNotFoundError`` through."""
        return await self._invoke(fn, fields, raw_not_found=True, timeout_s=self._timeout_s)

    async def _call_long(self, fn: Callable[[], T], **fields: str) -> T:
        """Like ``_call``, for a long-running operation polled to its end."""
        return await self._invoke(fn, fields, raw_not_found=False, timeout_s=_LRO_TIMEOUT_S)

    async def _invoke(
        self,
        fn: Callable[[], T],
        fields: Mapping[str, str],
        *,
        raw_not_found: bool,
        timeout_s: float,
    ) -> T:
        limit = timeout_s
        try:
            async with asyncio.timeout(limit):
                return await asyncio.to_thread(fn)
        except ResourceNotFoundError as e:
            if raw_not_found:
                raise
            if fields.get("host_id"):
                raise self._not_found(fields["host_id"]) from e
            raise _convert(e, self._cfg, **fields) from e
        except ClientAuthenticationError as e:
            raise _auth_error(e, self._cfg, **fields) from e
        except HttpResponseError as e:
            raise _convert(e, self._cfg, **fields) from e
        except (ServiceRequestError, ServiceResponseError) as e:
            raise RetryableError(
                f"could not reach Azure Resource Manager ({type(e).__name__}); check the "
                "network path to management.azure.com, then retry",
                **fields,
            ) from e
        except TimeoutError as e:
            raise RetryableError(
                f"Azure did not finish within {limit:.0f}s; check the VM in the portal, "
                "then retry (the same client token will not create a second VM)",
                **fields,
            ) from e


def vm_name(client_token: str) -> str:
    """The VM name for a client token: ``corral-`` + 24 hex digits of its SHA-256."""
    return "corral-" + hashlib.sha256(client_token.encode()).hexdigest()[:24]


def _image(image: str) -> m.ImageReference:
    if image.startswith("/"):
        return m.ImageReference(id=image)
    parts = image.split(":")
    if len(parts) != 4:
        raise InvalidArgumentError(
            f"Azure image {image!r} is neither a resource id nor 'publisher:offer:sku:version'"
        )
    publisher, offer, sku, version = parts
    return m.ImageReference(publisher=publisher, offer=offer, sku=sku, version=version)


def _managed(vm: m.VirtualMachine) -> bool:
    return (vm.tags or {}).get(TAG_MANAGED_BY) == MANAGED_BY


def _state(vm: m.VirtualMachine) -> HostState:
    provisioning = (vm.provisioning_state or "").lower()
    if provisioning == "deleting":
        return HostState.DRAINING
    power = ""
    statuses = vm.instance_view.statuses if vm.instance_view else None
    for status in statuses or []:
        if (status.code or "").startswith("PowerState/"):
            power = (status.code or "").removeprefix("PowerState/")
    if power in {"stopping", "stopped", "deallocating", "deallocated"}:
        return HostState.DRAINING
    if provisioning == "succeeded" and power == "running":
        return HostState.READY
    # Creating, Updating, starting, or Failed (which never becomes ready: the lifecycle's
    # readiness deadline replaces it).
    return HostState.PROVISIONING


def _restricted(sku: m.ResourceSku, location: str) -> bool:
    for r in sku.restrictions or []:
        values = [v.lower() for v in (r.values_property or [])]
        if r.type == "Location" and (not values or location.lower() in values):
            return True
    return False


def _offering(sku: m.ResourceSku, nested: re.Pattern[str]) -> Offering:
    caps = {c.name: c.value for c in sku.capabilities or [] if c.name}
    name = sku.name or ""
    gpus = int(caps.get("GPUs") or 0)
    model = _GPU_MODEL.search(name)
    return Offering(
        instance_type=name,
        vcpu=int(caps.get("vCPUs") or 0),
        memory_mib=int(float(caps.get("MemoryGB") or 0) * 1024),
        gpu_count=gpus,
        gpu_model=model.group(1) if gpus and model else None,
        bare_metal=False,
        kvm=bool(nested.match(name)),
    )


def _codes(e: HttpResponseError) -> list[str]:
    codes: list[str] = []
    err = e.error
    if err is not None:
        if err.code:
            codes.append(err.code)
        codes.extend(d.code for d in _details(err.details) if d.code)
    return codes


def _details(details: Sequence[object] | None) -> list[ODataV4Format]:
    return [d for d in details or [] if isinstance(d, ODataV4Format)]


def _message(e: HttpResponseError) -> str:
    return e.error.message if e.error is not None and e.error.message else e.message


def _auth_error(e: HttpResponseError, cfg: AzureConfig, **fields: str) -> ProviderAuthError:
    return ProviderAuthError(
        f"Azure refused our credentials or a permission is missing ({_message(e)}); give the "
        "agent's managed identity the 'Virtual Machine Contributor' and 'Network "
        f"Contributor' roles on resource group {cfg.resource_group}",
        **fields,
    )


def _convert(e: HttpResponseError, cfg: AzureConfig, **fields: str) -> CorralError:
    codes = set(_codes(e))
    detail = _message(e)
    itype = fields.get("instance_type", "the requested size")
    quota = codes & _QUOTA or ("OperationNotAllowed" in codes and "quota" in detail.lower())
    if quota:
        return QuotaExceededError(
            f"Azure refused the launch: {detail}; request a higher vCPU quota for {itype}'s "
            f"family in {cfg.location} (Subscriptions → Usage + quotas) or delete unused hosts",
            **fields,
        )
    if codes & _CAPACITY:
        return CapacityUnavailableError(
            f"Azure has no {itype} capacity in {cfg.location} right now ({detail}); retry "
            "later, or configure another size or location",
            **fields,
        )
    if codes & _AUTH or e.status_code in (401, 403):
        return _auth_error(e, cfg, **fields)
    if codes & _NOT_FOUND:
        return PermanentError(
            f"Azure could not find a resource the request names ({detail}); check the "
            f"resource group {cfg.resource_group}, subnet and security group ids",
            **fields,
        )
    if codes & _RETRYABLE or (e.status_code or 0) >= 500 or e.status_code == 429:
        return RetryableError(f"Azure failed ({detail}); retry later", **fields)
    if e.status_code == 400 or codes & {"InvalidParameter", "BadRequest"}:
        return InvalidArgumentError(f"Azure rejected the request: {detail}", **fields)
    return PermanentError(f"Azure refused the request: {detail}", **fields)

