"""A local server that speaks the part of the Compute Engine REST API ``GcpProvider`` uses.

Driven by the real ``google-cloud-compute`` client (``transport="rest"``). It keeps
instances, zone operations and a machine-type catalogue in memory, and answers errors the
way Compute Engine does (``{"error": {"code", "message", "errors": [{"reason", …}]}}`` for
HTTP errors; ``error.errors[].code`` plus ``httpErrorStatusCode`` in a failed operation):

* the regional ``CPUS`` quota is checked at insert (403 ``quotaExceeded``), the
  ``NVIDIA_H100_GPUS`` quota fails the operation (``QUOTA_EXCEEDED``), as the real API does;
* a zone pool with no room fails the operation with ``ZONE_RESOURCE_POOL_EXHAUSTED``;
* ``revoked = True`` answers every request 401 ``authError``; unknown resources are 404;
* instance metadata is checked as GCE does (keys ``[a-zA-Z0-9_-]{1,128}``, unique, a value
  at most 256 KiB, all values at most 512 KiB: else 400 ``invalid``), kept as sent and
  returned by GET with a ``fingerprint``, so the ``user-data`` a host boots with can be read
  back through the real client.

An instance boots PROVISIONING → STAGING → RUNNING, one step per read; delete goes through
STOPPING while its operation runs, then the instance is gone.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import threading
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fake_http import Reply, Request

PROJECT = "corral-test"
ZONE = "us-central1-a"
OTHER_ZONE = "us-central1-b"

# name -> (guestCpus, memoryMb, accelerators)
MACHINE_TYPES: dict[str, tuple[int, int, list[dict[str, object]]]] = {
    "n2-standard-32": (32, 131072, []),
    "n2-standard-8": (8, 32768, []),
    "c3-highcpu-192-metal": (192, 522240, []),
    "a3-highgpu-8g": (
        208,
        1916928,
        [{"guestAcceleratorType": "nvidia-h100-80gb", "guestAcceleratorCount": 8}],
    ),
}
# Zones offering each type: the a3 is not offered in OTHER_ZONE, the metal one only there.
ZONES: dict[str, set[str]] = {
    ZONE: {"n2-standard-32", "n2-standard-8", "a3-highgpu-8g"},
    OTHER_ZONE: {"n2-standard-32", "n2-standard-8", "c3-highcpu-192-metal"},
}

METADATA_VALUE_MAX_BYTES = 256 * 1024
METADATA_TOTAL_MAX_BYTES = 512 * 1024
_METADATA_KEY = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")

_FILTER_CLAUSE = re.compile(r'([a-zA-Z_.\-0-9]+)\s*=\s*"?([^")]*)"?')


def _error(code: int, status: str, message: str, reason: str, domain: str = "global") -> Reply:
    return Reply(
        code,
        {
            "error": {
                "code": code,
                "message": message,
                "errors": [{"message": message, "domain": domain, "reason": reason}],
                "status": status,
            }
        },
    )


def _metadata_error(metadata: object) -> str | None:
    """Why GCE would refuse this instance metadata, or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "Invalid value for field 'resource.metadata': not an object."
    items = metadata.get("items", [])
    if not isinstance(items, list):
        return "Invalid value for field 'resource.metadata.items': not a list."
    keys: set[str] = set()
    total = 0
    for i, item in enumerate(items):
        key = item.get("key") if isinstance(item, dict) else None
        value = item.get("value", "") if isinstance(item, dict) else None
        if not isinstance(key, str) or not _METADATA_KEY.match(key):
            return f"Invalid value for field 'resource.metadata.items[{i}].key': '{key}'."
        if key in keys:
            return f"Duplicate metadata key '{key}'."
        if not isinstance(value, str):
            return f"Invalid value for field 'resource.metadata.items[{i}].value'."
        keys.add(key)
        size = len(value.encode())
        if size > METADATA_VALUE_MAX_BYTES:
            return (
                f"Invalid value for field 'resource.metadata.items[{i}].value': the value for "
                f"metadata key '{key}' is {size} bytes; the limit is "
                f"{METADATA_VALUE_MAX_BYTES} bytes."
            )
        total += size
    if total > METADATA_TOTAL_MAX_BYTES:
        return (
            f"Invalid value for field 'resource.metadata': metadata values total {total} "
            f"bytes; the limit is {METADATA_TOTAL_MAX_BYTES} bytes."
        )
    return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class FakeCompute:
    """In-memory Compute Engine for one project; tests tune quotas, pools and auth."""

    base_url: str = ""
    cpu_quota: int = 1000
    h100_quota: int = 16
    # (zone, machine type) -> hosts that can still be placed; missing = unlimited.
    pools: dict[tuple[str, str], int] = field(default_factory=dict)
    revoked: bool = False
    instances: dict[tuple[str, str], dict[str, object]] = field(default_factory=dict)
    operations: dict[str, dict[str, object]] = field(default_factory=dict)
    request_ids: dict[str, str] = field(default_factory=dict)
    _pending: dict[str, tuple[str, tuple[str, str]]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, req: Request) -> Reply:
        if self.revoked:
            return _error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                "authError",
            )
        parts = req.path.strip("/").split("/")
        if parts[:3] != ["compute", "v1", "projects"] or len(parts) < 5:
            return _error(404, "NOT_FOUND", f"unknown path {req.path}", "notFound")
        if parts[3] != PROJECT:
            return _error(
                403, "PERMISSION_DENIED",
                f"Required 'compute.instances.list' permission for 'projects/{parts[3]}'",
                "forbidden",
            )
        rest = parts[4:]
        with self._lock:
            if rest == ["aggregated", "machineTypes"] and req.method == "GET":
                return self._aggregated_types(req)
            if len(rest) < 3 or rest[0] != "zones" or rest[1] not in ZONES:
                return _error(404, "NOT_FOUND", f"unknown path {req.path}", "notFound")
            zone, kind, tail = rest[1], rest[2], rest[3:]
            if kind == "machineTypes" and not tail and req.method == "GET":
                return self._list_types(zone, req)
            if kind == "instances":
                if not tail and req.method == "POST":
                    return self._insert(zone, req)
                if not tail and req.method == "GET":
                    return self._list_instances(zone, req)
                if len(tail) == 1 and req.method == "GET":
                    return self._get_instance(zone, tail[0])
                if len(tail) == 1 and req.method == "DELETE":
                    return self._delete(zone, tail[0])
            if kind == "operations" and tail:
                if len(tail) == 1 and req.method == "GET":
                    return self._get_op(zone, tail[0], finish=False)
                if len(tail) == 2 and tail[1] == "wait" and req.method == "POST":
                    return self._get_op(zone, tail[0], finish=True)
        return _error(404, "NOT_FOUND", f"unknown path {req.method} {req.path}", "notFound")

    # -- machine types ---------------------------------------------------------------------

    def _type_json(self, zone: str, name: str) -> dict[str, object]:
        cpus, mem, accel = MACHINE_TYPES[name]
        body: dict[str, object] = {
            "kind": "compute#machineType",
            "id": str(zlib.crc32(name.encode())),
            "name": name,
            "guestCpus": cpus,
            "memoryMb": mem,
            "zone": zone,
            "isSharedCpu": False,
            "selfLink": f"{self.base_url}/compute/v1/projects/{PROJECT}/zones/{zone}"
            f"/machineTypes/{name}",
        }
        if accel:
            body["accelerators"] = accel
        return body

    @staticmethod
    def _name_filter(req: Request) -> set[str] | None:
        flt = req.query.get("filter", "")
        names = {v for k, v in _FILTER_CLAUSE.findall(flt) if k == "name"}
        return names or None

    def _list_types(self, zone: str, req: Request) -> Reply:
        names = self._name_filter(req)
        items = [
            self._type_json(zone, n)
            for n in sorted(ZONES[zone])
            if names is None or n in names
        ]
        return Reply(200, {"kind": "compute#machineTypeList", "items": items})

    def _aggregated_types(self, req: Request) -> Reply:
        names = self._name_filter(req)
        items: dict[str, object] = {}
        for zone in sorted(ZONES):
            found = [
                self._type_json(zone, n)
                for n in sorted(ZONES[zone])
                if names is None or n in names
            ]
            items[f"zones/{zone}"] = (
                {"machineTypes": found}
                if found
                else {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "no results"}}
            )
        return Reply(200, {"kind": "compute#machineTypeAggregatedList", "items": items})

    # -- instances -----------------------------------------------------------------------

    def _insert(self, zone: str, req: Request) -> Reply:
        body = req.body if isinstance(req.body, dict) else {}
        request_id = req.query.get("requestId", "")
        if request_id and request_id in self.request_ids:
            return Reply(200, self.operations[self.request_ids[request_id]])
        name = str(body.get("name", ""))
        mtype = str(body.get("machineType", "")).rsplit("/", 1)[-1]
        if (zone, name) in self.instances:
            return _error(
                409, "ALREADY_EXISTS",
                f"The resource 'projects/{PROJECT}/zones/{zone}/instances/{name}' already exists",
                "alreadyExists",
            )
        if (why := _metadata_error(body.get("metadata"))) is not None:
            return _error(400, "INVALID_ARGUMENT", why, "invalid")
        if mtype not in ZONES[zone]:
            return _error(
                400, "INVALID_ARGUMENT",
                f"Invalid value for field 'resource.machineType': '{body.get('machineType')}'. "
                f"Machine type with name '{mtype}' does not exist in zone '{zone}'.",
                "invalid",
            )
        cpus, _, accel = MACHINE_TYPES[mtype]
        used = sum(
            MACHINE_TYPES[str(i["_type"])][0] for i in self.instances.values()
        )
        if used + cpus > self.cpu_quota:
            return _error(
                403, "PERMISSION_DENIED",
                f"Quota 'CPUS' exceeded.  Limit: {float(self.cpu_quota)} in region us-central1.",
                "quotaExceeded", domain="usageLimits",
            )
        op = self._new_op(zone, "insert", name)
        if request_id:
            self.request_ids[request_id] = str(op["name"])
        gpus = sum(int(str(a["guestAcceleratorCount"])) for a in accel)
        used_gpus = sum(
            int(str(a["guestAcceleratorCount"]))
            for i in self.instances.values()
            for a in MACHINE_TYPES[str(i["_type"])][2]
        )
        if gpus and used_gpus + gpus > self.h100_quota:
            return Reply(200, self._fail(op, "QUOTA_EXCEEDED",
                         f"Quota 'NVIDIA_H100_GPUS' exceeded.  Limit: {float(self.h100_quota)} "
                         "in region us-central1.", 403, "FORBIDDEN"))
        room = self.pools.get((zone, mtype))
        if room is not None and room <= 0:
            return Reply(200, self._fail(op, "ZONE_RESOURCE_POOL_EXHAUSTED",
                         f"The zone 'projects/{PROJECT}/zones/{zone}' does not have enough "
                         "resources available to fulfill the request.  Try a different zone, "
                         "or try again later.", 503, "SERVICE UNAVAILABLE"))
        if room is not None:
            self.pools[(zone, mtype)] = room - 1
        n = next(self._ids)
        inst: dict[str, object] = dict(body)
        metadata = dict(body.get("metadata") or {})
        fingerprint = hashlib.sha256(repr(metadata.get("items")).encode()).digest()[:8]
        metadata.update(
            kind="compute#metadata", fingerprint=base64.b64encode(fingerprint).decode()
        )
        inst["metadata"] = metadata
        nics = [dict(nic) for nic in body.get("networkInterfaces", [{}])] or [{}]
        nics[0]["networkIP"] = f"10.128.{n // 250}.{n % 250 + 2}"
        nics[0].setdefault("network", f"projects/{PROJECT}/global/networks/default")
        inst.update(
            kind="compute#instance",
            id=str(n),
            status="PROVISIONING",
            creationTimestamp=_now(),
            zone=f"{self.base_url}/compute/v1/projects/{PROJECT}/zones/{zone}",
            machineType=f"{self.base_url}/compute/v1/projects/{PROJECT}/zones/{zone}"
            f"/machineTypes/{mtype}",
            selfLink=f"{self.base_url}/compute/v1/projects/{PROJECT}/zones/{zone}/instances/{name}",
            networkInterfaces=nics,
            _type=mtype,
            _request_id=request_id,
        )
        self.instances[(zone, name)] = inst
        self._pending[str(op["name"])] = ("insert", (zone, name))
        return Reply(200, op)

    def _public(self, inst: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in inst.items() if not k.startswith("_")}

    def _get_instance(self, zone: str, name: str) -> Reply:
        inst = self.instances.get((zone, name))
        if inst is None:
            return self._not_found(zone, name)
        boot = {"PROVISIONING": "STAGING", "STAGING": "RUNNING"}
        reply = Reply(200, self._public(inst))
        inst["status"] = boot.get(str(inst["status"]), inst["status"])
        return reply

    def _list_instances(self, zone: str, req: Request) -> Reply:
        wanted = [
            (k.removeprefix("labels."), v)
            for k, v in _FILTER_CLAUSE.findall(req.query.get("filter", ""))
            if k.startswith("labels.")
        ]
        items = []
        for (z, _), inst in sorted(self.instances.items()):
            labels = inst.get("labels") or {}
            assert isinstance(labels, dict)
            if z == zone and all(labels.get(k) == v for k, v in wanted):
                items.append(self._public(inst))
        body: dict[str, object] = {"kind": "compute#instanceList", "id": "x"}
        if items:
            body["items"] = items
        return Reply(200, body)

    def _delete(self, zone: str, name: str) -> Reply:
        inst = self.instances.get((zone, name))
        if inst is None:
            return self._not_found(zone, name)
        inst["status"] = "STOPPING"
        op = self._new_op(zone, "delete", name)
        self._pending[str(op["name"])] = ("delete", (zone, name))
        return Reply(200, op)

    def _not_found(self, zone: str, name: str) -> Reply:
        return _error(
            404, "NOT_FOUND",
            f"The resource 'projects/{PROJECT}/zones/{zone}/instances/{name}' was not found",
            "notFound",
        )

    # -- operations ----------------------------------------------------------------------

    def _new_op(self, zone: str, kind: str, target: str) -> dict[str, object]:
        name = f"operation-{next(self._ids)}-{kind}"
        op: dict[str, object] = {
            "kind": "compute#operation",
            "id": str(next(self._ids)),
            "name": name,
            "operationType": kind,
            "status": "RUNNING",
            "progress": 0,
            "insertTime": _now(),
            "zone": f"{self.base_url}/compute/v1/projects/{PROJECT}/zones/{zone}",
            "targetLink": f"{self.base_url}/compute/v1/projects/{PROJECT}/zones/{zone}"
            f"/instances/{target}",
            "selfLink": f"{self.base_url}/compute/v1/projects/{PROJECT}/zones/{zone}"
            f"/operations/{name}",
        }
        self.operations[name] = op
        return op

    def _fail(
        self, op: dict[str, object], code: str, message: str, status: int, status_msg: str
    ) -> dict[str, object]:
        op.update(
            status="DONE",
            progress=100,
            endTime=_now(),
            httpErrorStatusCode=status,
            httpErrorMessage=status_msg,
            error={"errors": [{"code": code, "message": message}]},
        )
        return op

    def _get_op(self, zone: str, name: str, *, finish: bool) -> Reply:
        op = self.operations.get(name)
        if op is None:
            return _error(
                404, "NOT_FOUND",
                f"The resource 'projects/{PROJECT}/zones/{zone}/operations/{name}' was not found",
                "notFound",
            )
        if finish and op["status"] != "DONE":
            kind, key = self._pending.pop(name)
            if kind == "delete":
                self.instances.pop(key, None)
            op.update(status="DONE", progress=100, endTime=_now())
        return Reply(200, op)


class GcpFaults:
    """Quota, capacity and credential faults of one FakeCompute, for the contract suite."""

    def __init__(self, fake: FakeCompute, machine_type: str) -> None:
        self._fake = fake
        self._type = machine_type

    def exhaust_quota(self) -> None:
        self._fake.cpu_quota = 0

    def exhaust_capacity(self) -> None:
        self._fake.pools[(ZONE, self._type)] = 0

    def revoke_credentials(self) -> bool:
        self._fake.revoked = True
        return True

    def restore(self) -> None:
        self._fake.cpu_quota = 1000
        self._fake.pools.clear()
        self._fake.revoked = False
