"""A local HTTPS server that speaks the part of Azure Resource Manager ``AzureProvider`` uses.

Driven by the real ``azure-mgmt-compute`` client. Bearer tokens are only sent over TLS, so
it serves HTTPS with a self-signed 127.0.0.1 certificate made with ``cryptography``
(:func:`self_signed_cert`; the client gets ``connection_verify=<cert path>``).

It keeps VMs, their NICs and async operations in memory. Create is ``201`` +
``Azure-AsyncOperation`` (status ``InProgress`` once, then ``Succeeded`` or ``Failed``),
delete is ``202`` + ``Azure-AsyncOperation`` + ``Location``. Errors use ARM's body
(``{"error": {"code", "message"}}``):

* a size family over its vCPU quota: 409 ``QuotaExceeded``;
* a size in ``sku_not_available``: 409 ``SkuNotAvailable``; in ``allocation_fails``: the
  create operation ends ``Failed`` with ``AllocationFailed``;
* an action in ``forbidden_actions``: 403 ``AuthorizationFailed``;
* no (or an empty) bearer token: 401 ``AuthenticationFailed``; a token other than ``token``: 401
  ``InvalidAuthenticationToken``; unknown VM: 404 ``ResourceNotFound``;
* ``osProfile.customData`` that is not base64 or longer than 87380 characters (65535
  bytes decoded): 400 ``InvalidParameter``, as ARM answers. ARM never returns customData,
  so the fake does not either: what a create carried is in ``FakeArm.custom_data``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import itertools
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_http import Reply, Request

SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
RESOURCE_GROUP = "corral-hosts"
LOCATION = "eastus"
TOKEN = "test-arm-token"

# size -> (family, vCPUs, MemoryGB, GPUs)
SIZES: dict[str, tuple[str, int, float, int]] = {
    "Standard_D32s_v5": ("standardDSv5Family", 32, 128, 0),
    "Standard_D8s_v5": ("standardDSv5Family", 8, 32, 0),
    "Standard_ND96isr_H100_v5": ("standardNDSH100v5Family", 96, 1900, 8),
    "Standard_F8s_v2": ("standardFSv2Family", 8, 16, 0),
}
# Sizes this subscription may not use in LOCATION (SKU restrictions).
RESTRICTED = {"Standard_F8s_v2"}
CUSTOM_DATA_MAX_CHARS = 87380  # base64 of 65535 bytes

_VM_PATH = re.compile(
    r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute"
    r"/virtualMachines(?:/([^/]+))?$"
)
_NIC_PATH = re.compile(
    r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Network"
    r"/networkInterfaces/([^/]+)$"
)
_OP_PATH = re.compile(
    r"^/subscriptions/([^/]+)/providers/Microsoft\.Compute/locations/([^/]+)/operations/([^/]+)$"
)
_SKU_PATH = re.compile(r"^/subscriptions/([^/]+)/providers/Microsoft\.Compute/skus$")


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA); returns (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _valid_custom_data(value: object) -> bool:
    if not isinstance(value, str) or len(value) > CUSTOM_DATA_MAX_CHARS:
        return False
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return False
    return True


def _error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}})


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


@dataclass
class FakeArm:
    """In-memory ARM for one subscription and resource group; tests tune quotas and faults."""

    base_url: str = ""
    token: str = TOKEN  # the one bearer token ARM accepts
    # family -> vCPU limit in LOCATION
    quotas: dict[str, int] = field(
        default_factory=lambda: {
            "standardDSv5Family": 1000,
            "standardNDSH100v5Family": 192,
            "standardFSv2Family": 100,
        }
    )
    sku_not_available: set[str] = field(default_factory=set)
    # RBAC actions the caller's identity lacks, e.g. "Microsoft.Compute/virtualMachines/write"
    forbidden_actions: set[str] = field(default_factory=set)
    allocation_fails: set[str] = field(default_factory=set)
    vms: dict[str, dict[str, object]] = field(default_factory=dict)
    # VM name -> the osProfile.customData (base64) its create carried
    custom_data: dict[str, str] = field(default_factory=dict)
    nics: dict[str, dict[str, object]] = field(default_factory=dict)
    operations: dict[str, dict[str, object]] = field(default_factory=dict)
    _ops: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, req: Request) -> Reply:
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
            return _error(
                401, "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        if auth.removeprefix("Bearer ") != self.token:
            return _error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        with self._lock:
            if (mt := _SKU_PATH.match(req.path)) and req.method == "GET":
                return self._skus(req)
            if mt := _OP_PATH.match(req.path):
                return self._operation(mt.group(3))
            if (mt := _NIC_PATH.match(req.path)) and req.method == "GET":
                nic = self.nics.get(mt.group(3))
                if nic is None:
                    return self._not_found("Microsoft.Network/networkInterfaces", mt.group(3))
                return Reply(200, nic)
            if mt := _VM_PATH.match(req.path):
                sub, rg, name = mt.groups()
                if sub != SUBSCRIPTION:
                    return _error(
                        404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found."
                    )
                if rg != RESOURCE_GROUP:
                    return _error(
                        404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found."
                    )
                action = "Microsoft.Compute/virtualMachines/" + {
                    "PUT": "write", "DELETE": "delete"
                }.get(req.method, "read")
                if action in self.forbidden_actions:
                    return _error(
                        403, "AuthorizationFailed",
                        "The client '6d1b2c3a-0000-4000-8000-00000000c0de' with object id "
                        f"'6d1b2c3a-0000-4000-8000-00000000c0de' does not have authorization to "
                        f"perform action '{action}' over scope '{req.path}' or the scope is "
                        "invalid. If access was recently granted, please refresh your credentials.",
                    )
                if name is None and req.method == "GET":
                    expand = req.query.get("$expand") == "instanceView"
                    return Reply(200, {"value": [self._view(v, expand) for v in self.vms.values()]})
                if name is not None and req.method == "PUT":
                    return self._put(name, req)
                if name is not None and req.method == "GET":
                    return self._get(name, req)
                if name is not None and req.method == "DELETE":
                    return self._delete(name)
        return _error(404, "NotFound", f"no route for {req.method} {req.path}")

    # -- skus ---------------------------------------------------------------------------

    def _skus(self, req: Request) -> Reply:
        items = []
        for size, (family, cpus, mem, gpus) in SIZES.items():
            caps = [
                {"name": "vCPUs", "value": str(cpus)},
                {"name": "MemoryGB", "value": f"{mem:g}"},
                {"name": "HyperVGenerations", "value": "V1,V2"},
            ]
            if gpus:
                caps.append({"name": "GPUs", "value": str(gpus)})
            restrictions = []
            if size in RESTRICTED:
                restrictions.append(
                    {
                        "type": "Location",
                        "values": [LOCATION],
                        "restrictionInfo": {"locations": [LOCATION]},
                        "reasonCode": "NotAvailableForSubscription",
                    }
                )
            items.append(
                {
                    "resourceType": "virtualMachines",
                    "name": size,
                    "tier": "Standard",
                    "size": size.removeprefix("Standard_"),
                    "family": family,
                    "locations": [LOCATION],
                    "locationInfo": [{"location": LOCATION, "zones": ["1", "2", "3"]}],
                    "capabilities": caps,
                    "restrictions": restrictions,
                }
            )
        items.append({"resourceType": "disks", "name": "Premium_LRS", "locations": [LOCATION]})
        return Reply(200, {"value": items})

    # -- virtual machines ---------------------------------------------------------------

    def _vm_id(self, name: str) -> str:
        return (
            f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
            f"/providers/Microsoft.Compute/virtualMachines/{name}"
        )

    def _not_found(self, kind: str, name: str) -> Reply:
        return _error(
            404, "ResourceNotFound",
            f"The Resource '{kind}/{name}' under resource group '{RESOURCE_GROUP}' was not "
            "found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
        )

    def _new_op(self, kind: str, name: str, outcome: int) -> tuple[str, dict[str, str]]:
        op_id = f"op-{next(self._ids)}"
        self._ops[op_id] = (kind, name, outcome)
        self.operations[op_id] = {"name": op_id, "status": "InProgress", "startTime": _now()}
        url = (
            f"{self.base_url}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute"
            f"/locations/{LOCATION}/operations/{op_id}?api-version=2024-07-01"
        )
        return op_id, {"Azure-AsyncOperation": url, "Retry-After": "0"}

    def _put(self, name: str, req: Request) -> Reply:
        body = req.body if isinstance(req.body, dict) else {}
        props = body.get("properties") or {}
        size = str((props.get("hardwareProfile") or {}).get("vmSize", ""))
        if name in self.vms:
            existing = self.vms[name]["properties"]
            assert isinstance(existing, dict)
            if existing.get("provisioningState") != "Failed":
                return Reply(200, self._view(self.vms[name], False))
            del self.vms[name]  # ARM retries the create of a Failed VM
        if body.get("location") != LOCATION:
            return _error(400, "InvalidParameter", "The value of parameter location is invalid.")
        os_profile = dict(props.get("osProfile") or {})
        custom_data = os_profile.pop("customData", None)
        if custom_data is not None and not _valid_custom_data(custom_data):
            return Reply(
                400,
                {
                    "error": {
                        "code": "InvalidParameter",
                        "message": "Custom data in OSProfile must be in Base64 encoding and "
                        f"with a maximum length of {CUSTOM_DATA_MAX_CHARS} characters.",
                        "target": "customData",
                    }
                },
            )
        if size not in SIZES or size in RESTRICTED:
            return _error(
                409, "SkuNotAvailable",
                f"The requested VM size for resource 'Following SKUs have failed for Capacity "
                f"Restrictions: {size}' is currently not available in location '{LOCATION}'. "
                "Please try another size or deploy to a different location or different zone. "
                "See https://aka.ms/azureskunotavailable for details.",
            )
        if size in self.sku_not_available:
            return _error(
                409, "SkuNotAvailable",
                f"The requested VM size for resource 'Following SKUs have failed for Capacity "
                f"Restrictions: {size}' is currently not available in location '{LOCATION}'. "
                "Please try another size or deploy to a different location or different zone.",
            )
        family, cpus, _, _ = SIZES[size]
        used = sum(SIZES[str(v["_size"])][1] for v in self.vms.values()
                   if SIZES[str(v["_size"])][0] == family)
        limit = self.quotas.get(family, 0)
        if used + cpus > limit:
            return _error(
                409, "QuotaExceeded",
                f"Operation could not be completed as it results in exceeding approved {family} "
                f"Cores quota. Additional details - Deployment Model: Resource Manager, Location: "
                f"{LOCATION}, Current Limit: {limit}, Current Usage: {used}, Additional "
                f"Required: {cpus}, (Minimum) New Limit Required: {used + cpus}. Submit a request "
                "for Quota increase at https://aka.ms/ProdportalCRP.",
            )
        n = next(self._ids)
        nic_name = f"{name}-nic"
        nic_id = (
            f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
            f"/providers/Microsoft.Network/networkInterfaces/{nic_name}"
        )
        stored_props = dict(props)
        if "osProfile" in props:
            stored_props["osProfile"] = os_profile  # without customData: ARM never returns it
        if isinstance(custom_data, str):
            self.custom_data[name] = custom_data
        stored_props.update(
            vmId=f"00000000-0000-4000-9000-{n:012d}",
            provisioningState="Creating",
            timeCreated=_now(),
        )
        network = dict(stored_props.get("networkProfile") or {})
        network["networkInterfaces"] = [{"id": nic_id, "properties": {"primary": True}}]
        stored_props["networkProfile"] = network
        vm: dict[str, object] = {
            "id": self._vm_id(name),
            "name": name,
            "type": "Microsoft.Compute/virtualMachines",
            "location": LOCATION,
            "tags": body.get("tags") or {},
            "properties": stored_props,
            "_size": size,
            "_power": "PowerState/starting",
            "_body": body,  # the PUT as received (customData included)
        }
        if "identity" in body:
            vm["identity"] = body["identity"]
        outcome = 1 if size in self.allocation_fails else 0
        self.vms[name] = vm
        self.nics[nic_name] = {
            "id": nic_id,
            "name": nic_name,
            "properties": {
                "ipConfigurations": [
                    {
                        "name": "primary",
                        "properties": {
                            "privateIPAddress": f"10.1.{n // 250}.{n % 250 + 4}",
                            "privateIPAllocationMethod": "Dynamic",
                        },
                    }
                ]
            },
        }
        _, headers = self._new_op("create", name, outcome)
        return Reply(201, self._view(vm, False), headers)

    def _view(self, vm: dict[str, object], instance_view: bool) -> dict[str, object]:
        out = {k: v for k, v in vm.items() if not k.startswith("_")}
        if instance_view:
            props = dict(out["properties"])  # type: ignore[call-overload]
            state = str(props.get("provisioningState", "")).lower()
            props["instanceView"] = {
                "statuses": [
                    {"code": f"ProvisioningState/{state}", "level": "Info"},
                    {"code": str(vm["_power"]), "level": "Info"},
                ]
            }
            out["properties"] = props
        return out

    def _get(self, name: str, req: Request) -> Reply:
        vm = self.vms.get(name)
        if vm is None:
            return self._not_found("Microsoft.Compute/virtualMachines", name)
        expand = req.query.get("$expand", "")
        reply = Reply(200, self._view(vm, expand == "instanceView"))
        props = vm["properties"]
        assert isinstance(props, dict)
        if props.get("provisioningState") == "Succeeded" and vm["_power"] == "PowerState/starting":
            vm["_power"] = "PowerState/running"  # boots on the next read
        return reply

    def _delete(self, name: str) -> Reply:
        vm = self.vms.get(name)
        if vm is None:
            return Reply(204)
        props = vm["properties"]
        assert isinstance(props, dict)
        props["provisioningState"] = "Deleting"
        vm["_power"] = "PowerState/stopping"
        _, headers = self._new_op("delete", name, 0)
        headers["Location"] = headers["Azure-AsyncOperation"]
        return Reply(202, None, headers)

    def _operation(self, op_id: str) -> Reply:
        op = self.operations.get(op_id)
        if op is None:
            return self._not_found("operations", op_id)
        if op["status"] == "InProgress" and op.get("_polled"):
            kind, name, outcome = self._ops[op_id]
            vm = self.vms.get(name)
            if kind == "create" and vm is not None:
                props = vm["properties"]
                assert isinstance(props, dict)
                if outcome:
                    props["provisioningState"] = "Failed"
                    vm["_power"] = "PowerState/deallocated"
                    op["error"] = {
                        "code": "AllocationFailed",
                        "message": "Allocation failed. We do not have sufficient capacity for "
                        "the requested VM size in this region. Read more about improving "
                        "likelihood of allocation success at http://aka.ms/allocation-guidance",
                    }
                    op["status"] = "Failed"
                else:
                    props["provisioningState"] = "Succeeded"
                    op["status"] = "Succeeded"
            elif kind == "delete":
                self.vms.pop(name, None)
                self.nics.pop(f"{name}-nic", None)
                op["status"] = "Succeeded"
            op["endTime"] = _now()
        op["_polled"] = True
        return Reply(200, {k: v for k, v in op.items() if not k.startswith("_")})


class ArmFaults:
    """Quota, capacity and credential faults of one FakeArm, for the contract suite."""

    def __init__(self, fake: FakeArm, size: str) -> None:
        self._fake = fake
        self._size = size
        self._quotas = dict(fake.quotas)

    def exhaust_quota(self) -> None:
        self._fake.quotas[SIZES[self._size][0]] = 0

    def exhaust_capacity(self) -> None:
        self._fake.allocation_fails.add(self._size)

    def revoke_credentials(self) -> bool:
        self._fake.token = "a-token-issued-later"  # ours is no longer accepted
        return True

    def restore(self) -> None:
        self._fake.quotas = dict(self._quotas)
        self._fake.allocation_fails.clear()
        self._fake.sku_not_available.clear()
        self._fake.token = TOKEN
