"""``GcpProvider``: Compute Engine hosts in the customer's GCP project (google-cloud-compute).

The only module that imports the Google Cloud SDK. Hosts are instances in one zone:

* **KVM.** A machine type from a family that supports nested virtualization (``n2-…`` by
  default) is launched with ``advanced_machine_features.enable_nested_virtualization``, so
  ``/dev/kvm`` exists in the guest; ``*-metal`` types have it natively. GPU types
  (``a3-highgpu-8g``: 8 x H100) carry their accelerators in the machine type and are
  launched with ``on_host_maintenance=TERMINATE`` (a GPU host cannot live-migrate).
* **Network.** ``HostSpec.subnet_id`` is the subnetwork (self link or
  ``regions/R/subnetworks/S``); ``HostSpec.security_group_ids`` become network tags, which
  is how GCP firewall rules select instances. No external IP is attached.
* **Identity.** The service account named in the config is attached to the host; the
  agent itself authenticates with its own (Application Default Credentials), so no key
  file is needed.
* **Tags.** GCP labels allow only ``[a-z0-9_-]`` up to 63 characters, so every tag is
  stored twice: as a label with a sanitized key and value (for the server-side
  ``labels.K = "V"`` filter) and exactly, as JSON in the ``corral-tags`` metadata item
  (what ``Host.tags`` reports; ``list_by_tag`` re-checks it, so sanitizing never merges
  two tenants).
* **User data.** ``HostSpec.user_data`` is the metadata item ``user-data``, which
  cloud-init's GCE datasource reads; GCE takes at most 256 KiB per metadata value,
  checked here before any call.
* **Idempotency.** The instance name is derived from the client token
  (``corral-<sha256>``) and looked up before every insert, and a
  :class:`~byoc_agent.providers.ledger.HostLedger` remembers tokens after GCP has
  forgotten a deleted instance. Each insert carries a fresh ``request_id`` (GCP replays
  the first outcome for a reused one, so a retry after ``ZONE_RESOURCE_POOL_EXHAUSTED``
  must not reuse it).

Every insert and delete returns a zone operation, waited for with
``ZoneOperationsClient.wait`` (the SDK's own ``operation.result()`` polls through a client
that ignores a custom endpoint); a failed operation (``QUOTA_EXCEEDED``,
``ZONE_RESOURCE_POOL_EXHAUSTED``) is converted like an HTTP error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exc
from google.auth.credentials import Credentials
from google.cloud import compute_v1

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

T = TypeVar("T")

DEFAULT_MACHINE_TYPES: tuple[str, ...] = ("n2-standard-32", "a3-highgpu-8g")
# Intel families whose VMs may enable nested virtualization (GCP documents which).
DEFAULT_NESTED_VIRT_FAMILIES: tuple[str, ...] = ("n1", "n2", "c2", "c3")
TAGS_METADATA_KEY = "corral-tags"
USER_DATA_METADATA_KEY = "user-data"  # what cloud-init's GCE datasource reads
# GCE takes at most 256 KiB per metadata value (and 512 KiB in all).
USER_DATA_MAX_BYTES = 256 * 1024

_STATES: dict[str, HostState] = {
    "PROVISIONING": HostState.PROVISIONING,
    "STAGING": HostState.PROVISIONING,
    "REPAIRING": HostState.PROVISIONING,
    "RUNNING": HostState.READY,
    "STOPPING": HostState.DRAINING,
    "SUSPENDING": HostState.DRAINING,
    "SUSPENDED": HostState.DRAINING,
    # GCP's TERMINATED means *stopped*: the instance (and its disk) still exists.
    "TERMINATED": HostState.DRAINING,
}
_QUOTA = {"QUOTA_EXCEEDED", "quotaExceeded", "rateLimitExceeded_quota"}
_CAPACITY = {
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "RESOURCE_POOL_EXHAUSTED",
    "resourcePoolExhausted",
}
_LABEL_OK = re.compile(r"[^a-z0-9_-]")
_OP_WAIT_S = 600.0  # how long an insert or delete may take in all
_OP_WAIT_CALL_S = 150.0  # one zoneOperations.wait call


@dataclass(frozen=True, slots=True)
class GcpConfig:
    """Where and how hosts are launched; from the agent's settings."""

    project: str
    zone: str
    image: str  # e.g. "projects/debian-cloud/global/images/family/debian-12"
    machine_types: tuple[str, ...] = DEFAULT_MACHINE_TYPES
    nested_virt_families: tuple[str, ...] = DEFAULT_NESTED_VIRT_FAMILIES
    service_account: str | None = None
    # Used when a HostSpec names no subnet / security groups (network tags).
    subnetwork: str | None = None
    network_tags: tuple[str, ...] = ()
    boot_disk_gib: int = 100
    boot_disk_type: str = "pd-balanced"
    # Customer-managed key for the boot disk; Google-managed encryption when None.
    kms_key: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


class GcpProvider:
    """Launches and deletes Compute Engine instances in one zone."""

    name = "gcp"

    def __init__(
        self,
        config: GcpConfig,
        *,
        ledger_path: Path | None,
        credentials: Credentials | None = None,
        api_endpoint: str | None = None,
        call_timeout_s: float = 60.0,
    ) -> None:
        self._cfg = config
        self._ledger = HostLedger(ledger_path)
        self._timeout_s = call_timeout_s
        options = ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None
        kwargs: dict[str, object] = {"transport": "rest", "client_options": options}
        if credentials is not None:
            kwargs["credentials"] = credentials
        self._instances = compute_v1.InstancesClient(**kwargs)  # type: ignore[arg-type]
        self._ops = compute_v1.ZoneOperationsClient(**kwargs)  # type: ignore[arg-type]
        self._types = compute_v1.MachineTypesClient(**kwargs)  # type: ignore[arg-type]
        self._offerings: dict[str, Offering] | None = None
        self._lock = asyncio.Lock()

    # -- HostProvider ---------------------------------------------------------------------

    async def list_offerings(self) -> list[Offering]:
        offerings = await self._offerings_by_type()
        return [offerings[t] for t in sorted(offerings)]

    async def provision(self, spec: HostSpec) -> Host:
        """Measure, then act: a ledgered token or an existing instance is returned as is.

        Provisions are serialized (one insert operation at a time) so two calls with one
        token cannot both insert.
        """
        name = instance_name(spec.client_token)
        fields = {"tenant_id": spec.tenant_id, "instance_type": spec.instance_type}
        user_data = len(spec.user_data.encode()) if spec.user_data else 0
        if user_data > USER_DATA_MAX_BYTES:
            raise user_data_too_large(
                spec,
                size=user_data,
                limit=USER_DATA_MAX_BYTES,
                what=f"a GCE metadata value ({USER_DATA_METADATA_KEY})",
            )
        async with self._lock:
            entry = self._ledger.by_token(spec.client_token)
            if entry is not None and entry.terminated_at is not None:
                return entry.terminated_host()
            existing = await self._get(name, **fields)
            if existing is not None:
                return _host(existing)
            offering = (await self._offerings_by_type()).get(spec.instance_type)
            if offering is None:
                raise await self._unknown_type(spec)
            tags = {**self._cfg.labels, **spec.all_tags()}
            if entry is None:
                entry = LedgerEntry(
                    host_id=name,
                    client_token=spec.client_token,
                    instance_type=spec.instance_type,
                    tags=tags,
                    launched_at=datetime.now(UTC),
                )
                await asyncio.to_thread(self._ledger.record, entry)
            request = compute_v1.InsertInstanceRequest(
                project=self._cfg.project,
                zone=self._cfg.zone,
                # Fresh per attempt: GCP answers a reused request id with the first attempt's
                # operation, failure included. The name is what makes the insert idempotent.
                request_id=str(uuid.uuid4()),
                instance_resource=self._instance(name, spec, offering, tags),
            )
            op = await self._call(lambda: self._instances.insert(request=request), **fields)
            # A failed insert leaves the ledger entry as an intent: a retry with the same
            # token finds no instance and inserts again.
            await self._wait(op.name, **fields)
            created = await self._get(name, **fields)
        if created is None:
            raise RetryableError(
                f"GCP reported instance {name} created but does not return it yet; retry",
                **fields,
            )
        return _host(created)

    async def describe(self, host_id: str) -> Host:
        inst = await self._get(host_id, host_id=host_id)
        if inst is not None and _managed(inst):
            return _host(inst)
        entry = self._ledger.get(host_id)
        if inst is None and entry is not None and entry.terminated_at is not None:
            return entry.terminated_host()
        raise self._not_found(host_id)

    async def list_by_tag(self, key: str, value: str) -> list[Host]:
        flt = (
            f'(labels.{_label_key(TAG_MANAGED_BY)} = "{_label_value(MANAGED_BY)}") AND '
            f'(labels.{_label_key(key)} = "{_label_value(value)}")'
        )
        request = compute_v1.ListInstancesRequest(
            project=self._cfg.project, zone=self._cfg.zone, filter=flt
        )
        instances = await self._call(lambda: list(self._instances.list(request=request)))
        hosts = [_host(i) for i in instances if _managed(i)]
        return sorted((h for h in hosts if h.tags.get(key) == value), key=lambda h: h.launched_at)

    async def terminate(self, host_id: str) -> None:
        inst = await self._get(host_id, host_id=host_id)
        entry = self._ledger.get(host_id)
        if inst is None:
            if entry is None:
                raise self._not_found(host_id)
            await asyncio.to_thread(self._ledger.mark_terminated, host_id)
            return
        if not _managed(inst):
            raise self._not_found(host_id)
        # Remember what the host was (its address included) before it is gone; this also
        # re-ledgers a host launched by an agent whose ledger was lost.
        host = _host(inst)
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
        op = await self._call(
            lambda: self._instances.delete(
                project=self._cfg.project, zone=self._cfg.zone, instance=host_id
            ),
            host_id=host_id,
        )
        await self._wait(op.name, host_id=host_id)
        await asyncio.to_thread(self._ledger.mark_terminated, host_id)

    # -- GCP-specific ---------------------------------------------------------------------

    async def zones_offering(self, machine_type: str) -> list[str]:
        """Zones of the project that offer ``machine_type`` (machineTypes aggregatedList)."""
        request = compute_v1.AggregatedListMachineTypesRequest(
            project=self._cfg.project, filter=f'name = "{machine_type}"'
        )

        def scan() -> list[str]:
            zones: list[str] = []
            for scope, scoped in self._types.aggregated_list(request=request):
                if any(mt.name == machine_type for mt in scoped.machine_types):
                    zones.append(scope.removeprefix("zones/"))
            return sorted(zones)

        return await self._call(scan)

    # -- internals ------------------------------------------------------------------------

    def _instance(
        self, name: str, spec: HostSpec, offering: Offering, tags: Mapping[str, str]
    ) -> compute_v1.Instance:
        cfg = self._cfg
        disk_params = compute_v1.AttachedDiskInitializeParams(
            source_image=cfg.image,
            disk_size_gb=cfg.boot_disk_gib,
            disk_type=f"zones/{cfg.zone}/diskTypes/{cfg.boot_disk_type}",
        )
        disk = compute_v1.AttachedDisk(
            boot=True, auto_delete=True, type_="PERSISTENT", initialize_params=disk_params
        )
        if cfg.kms_key:
            disk.disk_encryption_key = compute_v1.CustomerEncryptionKey(kms_key_name=cfg.kms_key)
        metadata = [
            compute_v1.Items(key=TAGS_METADATA_KEY, value=json.dumps(dict(tags))),
            compute_v1.Items(key="block-project-ssh-keys", value="true"),
        ]
        if spec.user_data:
            metadata.append(compute_v1.Items(key=USER_DATA_METADATA_KEY, value=spec.user_data))
        nic = compute_v1.NetworkInterface()  # no access_configs: no external IP
        if spec.subnet_id or cfg.subnetwork:
            nic.subnetwork = spec.subnet_id or cfg.subnetwork or ""
        inst = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{cfg.zone}/machineTypes/{spec.instance_type}",
            disks=[disk],
            network_interfaces=[nic],
            labels={_label_key(k): _label_value(v) for k, v in tags.items()},
            metadata=compute_v1.Metadata(items=metadata),
            shielded_instance_config=compute_v1.ShieldedInstanceConfig(
                enable_secure_boot=not offering.bare_metal,
                enable_vtpm=True,
                enable_integrity_monitoring=True,
            ),
        )
        network_tags = spec.security_group_ids or cfg.network_tags
        if network_tags:
            inst.tags = compute_v1.Tags(items=list(network_tags))
        if offering.kvm and not offering.bare_metal:
            inst.advanced_machine_features = compute_v1.AdvancedMachineFeatures(
                enable_nested_virtualization=True
            )
        if offering.gpu_count or offering.bare_metal:
            inst.scheduling = compute_v1.Scheduling(
                on_host_maintenance="TERMINATE", automatic_restart=True
            )
        if cfg.service_account:
            inst.service_accounts = [
                compute_v1.ServiceAccount(
                    email=cfg.service_account,
                    scopes=["https://www.googleapis.com/auth/cloud-platform"],
                )
            ]
        return inst

    async def _offerings_by_type(self) -> dict[str, Offering]:
        if self._offerings is None:
            names = " OR ".join(f'(name = "{t}")' for t in self._cfg.machine_types)
            request = compute_v1.ListMachineTypesRequest(
                project=self._cfg.project, zone=self._cfg.zone, filter=names
            )
            types = await self._call(lambda: list(self._types.list(request=request)))
            wanted = set(self._cfg.machine_types)
            self._offerings = {
                mt.name: _offering(mt, self._cfg.nested_virt_families)
                for mt in types
                if mt.name in wanted
            }
        return self._offerings

    async def _unknown_type(self, spec: HostSpec) -> UnknownInstanceTypeError:
        offered = ", ".join(sorted(await self._offerings_by_type())) or "nothing"
        where = ""
        if spec.instance_type not in self._cfg.machine_types:
            where = f"; it is not among the configured machine types ({offered})"
        else:
            zones = await self.zones_offering(spec.instance_type)
            where = (
                f"; zones that offer it: {', '.join(zones)}" if zones else "; no zone offers it"
            )
        return UnknownInstanceTypeError(
            f"machine type {spec.instance_type!r} is not offered in {self._cfg.zone}{where}",
            tenant_id=spec.tenant_id,
            instance_type=spec.instance_type,
        )

    async def _get(self, name: str, **fields: str) -> compute_v1.Instance | None:
        try:
            return await self._call_may_be_missing(
                lambda: self._instances.get(
                    project=self._cfg.project, zone=self._cfg.zone, instance=name
                ),
                **fields,
            )
        except gexc.NotFound:
            return None

    async def _wait(self, operation: str, **fields: str) -> None:
        """Wait for a zone operation with ``ZoneOperationsClient.wait``; raise its error."""
        deadline = time.monotonic() + _OP_WAIT_S
        while True:
            # zoneOperations.wait returns when the operation is DONE or after about two
            # minutes, whichever comes first: give the call longer than that.
            op = await self._invoke(
                lambda: self._ops.wait(
                    project=self._cfg.project, zone=self._cfg.zone, operation=operation
                ),
                fields,
                raw_not_found=False,
                timeout_s=max(self._timeout_s, _OP_WAIT_CALL_S),
            )
            if op.status == compute_v1.Operation.Status.DONE:
                break
            if time.monotonic() > deadline:
                raise RetryableError(
                    f"GCP operation {operation} still {op.status.name} after "
                    f"{_OP_WAIT_S:.0f}s; check it in the console, then retry",
                    **fields,
                )
        if op.error and op.error.errors:
            raise _convert_operation(op, self._cfg, **fields)

    def _not_found(self, host_id: str) -> HostNotFoundError:
        return HostNotFoundError(
            f"no Corral-managed instance {host_id!r} in project {self._cfg.project}, zone "
            f"{self._cfg.zone}; check the id and zone (instances without the "
            f"{_label_key(TAG_MANAGED_BY)} label are not visible here)",
            host_id=host_id,
        )

    async def _call(self, fn: Callable[[], T], **fields: str) -> T:
        """Run one blocking SDK call in a thread, with a deadline, converting its errors."""
        return await self._invoke(fn, fields, raw_not_found=False, timeout_s=self._timeout_s)

    async def _call_may_be_missing(self, fn: Callable[[], T], **fields: str) -> T:
        """Like ``_call``, but lets ``google.api_core.exceptions.NotFound`` through."""
        return await self._invoke(fn, fields, raw_not_found=True, timeout_s=self._timeout_s)

    async def _invoke(
        self,
        fn: Callable[[], T],
        fields: Mapping[str, str],
        *,
        raw_not_found: bool,
        timeout_s: float,
    ) -> T:
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.to_thread(fn)
        except gexc.NotFound:
            if raw_not_found:
                raise
            raise self._not_found(fields.get("host_id", "?")) from None
        except gexc.GoogleAPICallError as e:
            raise _convert(e, self._cfg, **fields) from e
        except auth_exc.GoogleAuthError as e:
            raise ProviderAuthError(
                f"no usable Google credentials ({type(e).__name__}: {e}); attach a service "
                "account to the agent's VM or set GOOGLE_APPLICATION_CREDENTIALS, with "
                "roles/compute.instanceAdmin.v1 and roles/iam.serviceAccountUser",
                **fields,
            ) from e
        except requests.RequestException as e:
            raise RetryableError(
                f"could not reach the Compute Engine API ({type(e).__name__}); check the "
                "network path to compute.googleapis.com, then retry",
                **fields,
            ) from e
        except TimeoutError as e:
            raise RetryableError(
                f"the Compute Engine API did not answer within {timeout_s:.0f}s; retry",
                **fields,
            ) from e


def instance_name(client_token: str) -> str:
    """The instance name for a client token: ``corral-`` + 24 hex digits of its SHA-256."""
    return "corral-" + hashlib.sha256(client_token.encode()).hexdigest()[:24]


def _label_key(key: str) -> str:
    out = _LABEL_OK.sub("-", key.lower())[:63]
    return out if out[:1].isalpha() else ("k" + out)[:63]


def _label_value(value: str) -> str:
    out = _LABEL_OK.sub("-", value.lower())
    if len(out) > 63:  # keep it unique: prefix + hash of the whole value
        out = out[:46] + "-" + hashlib.sha256(value.encode()).hexdigest()[:16]
    return out


def _managed(inst: compute_v1.Instance) -> bool:
    return inst.labels.get(_label_key(TAG_MANAGED_BY)) == _label_value(MANAGED_BY)


def _tags(inst: compute_v1.Instance) -> dict[str, str]:
    for item in inst.metadata.items:
        if item.key == TAGS_METADATA_KEY:
            try:
                raw = json.loads(item.value)
            except json.JSONDecodeError:
                break
            if isinstance(raw, dict):
                return {str(k): str(v) for k, v in raw.items()}
    return dict(inst.labels)


def _host(inst: compute_v1.Instance) -> Host:
    ip = inst.network_interfaces[0].network_i_p if inst.network_interfaces else ""
    created = inst.creation_timestamp
    return Host(
        host_id=inst.name,
        instance_type=inst.machine_type.rsplit("/", 1)[-1],
        state=_STATES.get(inst.status, HostState.PROVISIONING),
        private_ip=ip or None,
        tags=_tags(inst),
        launched_at=datetime.fromisoformat(created).astimezone(UTC)
        if created
        else datetime.now(UTC),
    )


def _offering(mt: compute_v1.MachineType, nested_families: Iterable[str]) -> Offering:
    bare_metal = mt.name.endswith("-metal")
    gpus = sum(a.guest_accelerator_count for a in mt.accelerators)
    family = mt.name.split("-", 1)[0]
    return Offering(
        instance_type=mt.name,
        vcpu=mt.guest_cpus,
        memory_mib=mt.memory_mb,
        gpu_count=gpus,
        gpu_model=mt.accelerators[0].guest_accelerator_type if gpus else None,
        bare_metal=bare_metal,
        kvm=bare_metal or (family in set(nested_families) and not gpus),
    )


def _reasons(e: gexc.GoogleAPICallError) -> set[str]:
    reasons = {str(err.get("reason", "")) for err in e.errors if isinstance(err, dict)}
    if e.reason:
        reasons.add(e.reason)
    return reasons


def _convert(e: gexc.GoogleAPICallError, cfg: GcpConfig, **fields: str) -> CorralError:
    reasons = _reasons(e)
    itype = fields.get("instance_type", "the requested type")
    if reasons & _QUOTA:
        return _quota(e.message, cfg, itype, **fields)
    if reasons & _CAPACITY:
        return _capacity(e.message, cfg, itype, **fields)
    if isinstance(e, gexc.Unauthorized | gexc.Forbidden):
        return ProviderAuthError(
            f"GCP refused the request ({e.code} {e.message}); give the agent's service "
            f"account roles/compute.instanceAdmin.v1 on project {cfg.project} (and "
            "roles/iam.serviceAccountUser on the hosts' service account)",
            **fields,
        )
    if isinstance(e, gexc.TooManyRequests | gexc.ServerError | gexc.ServiceUnavailable):
        return RetryableError(f"GCP failed with {e.code} ({e.message}); retry later", **fields)
    if isinstance(e, gexc.BadRequest):
        return InvalidArgumentError(f"GCP rejected the request: {e.message}", **fields)
    return PermanentError(f"GCP refused the request: {e.code} {e.message}", **fields)


def _convert_operation(op: compute_v1.Operation, cfg: GcpConfig, **fields: str) -> CorralError:
    errors: Sequence[compute_v1.Errors] = op.error.errors
    codes = {err.code for err in errors}
    message = "; ".join(err.message for err in errors)
    itype = fields.get("instance_type", "the requested type")
    if codes & _QUOTA:
        return _quota(message, cfg, itype, **fields)
    if codes & _CAPACITY:
        return _capacity(message, cfg, itype, **fields)
    if op.http_error_status_code in (401, 403):
        return ProviderAuthError(
            f"GCP refused the operation ({op.http_error_status_code}: {message}); check the "
            f"roles of the agent's service account on project {cfg.project}",
            **fields,
        )
    if op.http_error_status_code >= 500:
        return RetryableError(f"GCP operation failed ({message}); retry later", **fields)
    return PermanentError(
        f"GCP operation {op.name} failed: {', '.join(sorted(codes))} ({message})", **fields
    )


def _quota(detail: str, cfg: GcpConfig, itype: str, **fields: str) -> QuotaExceededError:
    return QuotaExceededError(
        f"GCP refused the launch: {detail}; request a higher quota for {itype} in "
        f"{cfg.zone}'s region of project {cfg.project} (IAM & Admin → Quotas) or delete "
        "unused hosts",
        **fields,
    )


def _capacity(detail: str, cfg: GcpConfig, itype: str, **fields: str) -> CapacityUnavailableError:
    return CapacityUnavailableError(
        f"GCP has no {itype} capacity in {cfg.zone} right now ({detail}); retry later, or "
        "configure another zone",
        **fields,
    )
