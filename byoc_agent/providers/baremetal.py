"""``BareMetalProvider``: hosts the customer already owns, listed in an inventory file.

"Provisioning" claims a free inventory host; "terminating" releases it. Claims are kept
in a small JSON state file (default: next to the inventory, ``<inventory>.claims.json``)
so a restarted agent sees the same claims. One agent process owns a state file.

Inventory, JSON (``{"hosts": [...]}``) or TOML (``[[hosts]]``)::

    [[hosts]]
    id = "rack1-01"            # unique
    address = "10.0.4.11"
    port = 22                  # optional: readiness = a TCP connect to address:port
    health_url = "http://10.0.4.11:8788/healthz"   # optional: readiness = a 2xx from it
    cpu = 64
    memory_mib = 262144
    gpus = 0
    gpu_model = "H100"         # optional
    instance_type = "bm.64c"   # optional, default derived from cpu/memory/gpus
    kvm = true                 # optional, default true
    labels = { rack = "1" }    # optional
    cordoned = false           # optional: true takes the machine out of service (no new claims)
    local = false              # optional: true = this is the agent's own machine (at most one)

    [limits]                   # optional
    max_claims = 4             # at most this many hosts claimed at once (the inventory's quota)

Readiness: a 2xx answer from ``health_url`` when one is given (e.g. the data plane's
``/healthz`` of an agent already running there); else a TCP connect to ``address:port``;
with neither, a loopback address is ready at once (this machine) and any other address is
checked on port 22.

Inventory machines are installed already: ``HostSpec.user_data`` cannot reach them, so a
provision that carries it is refused (``InvalidArgumentError``). A machine's host software
is set up out of band, and its ``health_url`` says when it is up. The one-host inventory
``make up`` writes (:func:`this_machine`) has ``local = true``: its host reports
``corral:local=true`` in ``Host.tags`` (:data:`~byoc_agent.providers.base.TAG_LOCAL`).

The file is read again when it changes (size, mtime or inode), so an operator can add,
cordon or remove machines, or change the limit, without restarting the agent; a file that
no longer parses makes every call fail with a message naming the problem until it is fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.providers.base import LOCAL, TAG_LOCAL, Host, HostSpec, HostState, Offering
from byoc_agent.providers.errors import (
    CapacityUnavailableError,
    HostNotFoundError,
    QuotaExceededError,
    UnknownInstanceTypeError,
)

_DEFAULT_READY_PORT = 22
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class InventoryHost:
    """One machine from the inventory file."""

    id: str
    address: str
    cpu: int
    memory_mib: int
    gpus: int = 0
    gpu_model: str | None = None
    port: int | None = None
    health_url: str | None = None
    instance_type: str = ""
    kvm: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    cordoned: bool = False
    # The agent's own machine (what `make up` writes); its host is tagged corral:local=true.
    local: bool = False

    def offering(self) -> Offering:
        return Offering(
            instance_type=self.instance_type,
            vcpu=self.cpu,
            memory_mib=self.memory_mib,
            gpu_count=self.gpus,
            gpu_model=self.gpu_model,
            bare_metal=True,
            kvm=self.kvm,
        )


@dataclass(frozen=True, slots=True)
class _Claim:
    host_id: str
    inventory_id: str
    instance_type: str
    client_token: str
    tags: Mapping[str, str]
    launched_at: datetime
    terminated_at: datetime | None = None


def derived_instance_type(cpu: int, memory_mib: int, gpus: int) -> str:
    """``bm.<cpu>c.<GiB>g`` (plus ``.<n>gpu``): the type of an inventory host that names none."""
    name = f"bm.{cpu}c.{memory_mib // 1024}g"
    return f"{name}.{gpus}gpu" if gpus else name


@dataclass(frozen=True, slots=True)
class Inventory:
    """A parsed inventory file: its machines and its limit on concurrent claims."""

    hosts: tuple[InventoryHost, ...]
    max_claims: int | None = None


def load_inventory(path: Path) -> list[InventoryHost]:
    """Read and check an inventory file's machines (``.toml``, else JSON)."""
    return list(read_inventory(path).hosts)


def read_inventory(path: Path) -> Inventory:
    """Read and check an inventory file (``.toml``, else JSON), limits included."""
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgumentError(
            f"inventory {path.name} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}; "
            "fix the file and restart the agent",
        ) from e
    entries = raw.get("hosts") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise InvalidArgumentError(
            f"inventory {path.name} has no 'hosts' list; add one entry per machine"
        )
    hosts = [_parse_host(path.name, i, entry) for i, entry in enumerate(entries)]
    _check_unique_and_uniform(path.name, hosts)
    limits = raw.get("limits", {})
    if not isinstance(limits, dict):
        raise InvalidArgumentError(f"inventory {path.name}: 'limits' must be a table/object")
    max_claims = limits.get("max_claims")
    if max_claims is not None and (
        not isinstance(max_claims, int) or isinstance(max_claims, bool) or max_claims < 0
    ):
        raise InvalidArgumentError(
            f"inventory {path.name}: 'limits.max_claims' must be a whole number >= 0"
        )
    return Inventory(hosts=tuple(hosts), max_claims=max_claims)


def _parse_host(file: str, index: int, entry: object) -> InventoryHost:
    where = f"inventory {file}, host #{index}"
    if not isinstance(entry, dict):
        raise InvalidArgumentError(f"{where} is not a table/object")

    def need_str(key: str) -> str:
        value = entry.get(key)
        if not isinstance(value, str) or not value:
            raise InvalidArgumentError(f"{where}: '{key}' must be a non-empty string")
        return value

    def need_int(key: str, default: int | None = None) -> int:
        value = entry.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgumentError(f"{where}: '{key}' must be a whole number >= 0")
        return value

    host_id = need_str("id")
    address = need_str("address")
    try:
        ipaddress.ip_address(address)
    except ValueError as e:
        raise InvalidArgumentError(f"{where}: address {address!r} is not an IP address") from e
    port = entry.get("port")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise InvalidArgumentError(f"{where}: 'port' must be between 1 and 65535")
    health_url = entry.get("health_url")
    if health_url is not None and (
        not isinstance(health_url, str) or not health_url.startswith(("http://", "https://"))
    ):
        raise InvalidArgumentError(f"{where}: 'health_url' must be an http(s) URL")
    cpu, memory_mib, gpus = need_int("cpu"), need_int("memory_mib"), need_int("gpus", 0)
    gpu_model = entry.get("gpu_model")
    if gpu_model is not None and not isinstance(gpu_model, str):
        raise InvalidArgumentError(f"{where}: 'gpu_model' must be a string")
    instance_type = entry.get("instance_type") or derived_instance_type(cpu, memory_mib, gpus)
    if not isinstance(instance_type, str):
        raise InvalidArgumentError(f"{where}: 'instance_type' must be a string")
    kvm = entry.get("kvm", True)
    cordoned = entry.get("cordoned", False)
    local = entry.get("local", False)
    labels = entry.get("labels", {})
    if not isinstance(kvm, bool):
        raise InvalidArgumentError(f"{where}: 'kvm' must be true or false")
    if not isinstance(cordoned, bool):
        raise InvalidArgumentError(f"{where}: 'cordoned' must be true or false")
    if not isinstance(local, bool):
        raise InvalidArgumentError(f"{where}: 'local' must be true or false")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidArgumentError(f"{where}: 'labels' must map strings to strings")
    return InventoryHost(
        id=host_id,
        address=address,
        cpu=cpu,
        memory_mib=memory_mib,
        gpus=gpus,
        gpu_model=gpu_model or None,
        port=port,
        health_url=health_url,
        instance_type=instance_type,
        kvm=kvm,
        labels=dict(labels),
        cordoned=cordoned,
        local=local,
    )


def _check_unique_and_uniform(file: str, hosts: list[InventoryHost]) -> None:
    seen: set[str] = set()
    shapes: dict[str, Offering] = {}
    local = [h.id for h in hosts if h.local]
    if len(local) > 1:
        raise InvalidArgumentError(
            f"inventory {file}: hosts {', '.join(map(repr, local))} all say 'local = true', "
            "but only one machine is the agent's own; keep the flag on that one"
        )
    for h in hosts:
        if h.id in seen:
            raise InvalidArgumentError(f"inventory {file}: host id {h.id!r} appears twice")
        seen.add(h.id)
        shape = shapes.setdefault(h.instance_type, h.offering())
        if shape != h.offering():
            raise InvalidArgumentError(
                f"inventory {file}: hosts of instance_type {h.instance_type!r} differ in "
                f"cpu/memory/gpus (see {h.id!r}); give them different instance_type names"
            )


class BareMetalProvider:
    """Claims and releases machines from an inventory file."""

    name = "baremetal"

    def __init__(
        self,
        inventory_path: Path,
        *,
        state_path: Path | None = None,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self._inventory_path = inventory_path
        self._inventory_stamp: tuple[int, int, int] | None = None
        self._inventory: dict[str, InventoryHost] = {}
        self._max_claims: int | None = None
        self._reload_inventory()
        self._state_path = state_path or inventory_path.with_name(
            inventory_path.name + ".claims.json"
        )
        self._connect_timeout_s = connect_timeout_s
        self._lock = asyncio.Lock()

    def _reload_inventory(self) -> None:
        """Read the inventory again if the file changed since the last read."""
        st = self._inventory_path.stat()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._inventory_stamp:
            return
        inventory = read_inventory(self._inventory_path)
        self._inventory = {h.id: h for h in inventory.hosts}
        self._max_claims = inventory.max_claims
        self._inventory_stamp = stamp

    async def list_offerings(self) -> list[Offering]:
        await asyncio.to_thread(self._reload_inventory)
        by_type = {h.instance_type: h.offering() for h in self._inventory.values()}
        return [by_type[t] for t in sorted(by_type)]

    async def provision(self, spec: HostSpec) -> Host:
        if spec.user_data:
            raise InvalidArgumentError(
                "bare-metal inventory hosts are installed already, so user data cannot be "
                "delivered to them; set up the host software on the machine out of band "
                "(point its inventory entry's health_url at it so readiness follows it) and "
                "provision without user_data. The agent's own machine (inventory "
                "'local = true') needs none",
                tenant_id=spec.tenant_id,
                instance_type=spec.instance_type,
            )
        async with self._lock:
            await asyncio.to_thread(self._reload_inventory)
            claims = await asyncio.to_thread(self._read_claims)
            for claim in claims.values():
                if claim.client_token == spec.client_token:
                    return await self._host(claim)
            candidates = [
                h for h in self._inventory.values() if h.instance_type == spec.instance_type
            ]
            if not candidates:
                offered = sorted({h.instance_type for h in self._inventory.values()})
                raise UnknownInstanceTypeError(
                    f"no inventory host has instance type {spec.instance_type!r}; "
                    f"this inventory offers {', '.join(offered) or 'nothing'}",
                    tenant_id=spec.tenant_id,
                    instance_type=spec.instance_type,
                )
            held = {c.inventory_id for c in claims.values() if c.terminated_at is None}
            if self._max_claims is not None and len(held) >= self._max_claims:
                raise QuotaExceededError(
                    f"the inventory allows at most {self._max_claims} claimed hosts "
                    f"(limits.max_claims in {self._inventory_path.name}) and {len(held)} are "
                    "claimed; raise the limit or terminate a host you no longer need",
                    tenant_id=spec.tenant_id,
                    instance_type=spec.instance_type,
                )
            free = [h for h in candidates if h.id not in held and not h.cordoned]
            if not free:
                cordoned = sum(1 for h in candidates if h.cordoned)
                raise CapacityUnavailableError(
                    f"none of the {len(candidates)} inventory hosts of type "
                    f"{spec.instance_type!r} is free ({len(candidates) - cordoned} claimed, "
                    f"{cordoned} cordoned); terminate an idle host, uncordon or add machines "
                    "in the inventory, then retry",
                    tenant_id=spec.tenant_id,
                    instance_type=spec.instance_type,
                )
            chosen = free[0]
            token_hash = hashlib.sha256(spec.client_token.encode()).hexdigest()[:12]
            claim = _Claim(
                host_id=f"{chosen.id}.{token_hash}",
                inventory_id=chosen.id,
                instance_type=chosen.instance_type,
                client_token=spec.client_token,
                tags=spec.all_tags(),
                launched_at=datetime.now(UTC),
            )
            claims[claim.host_id] = claim
            await asyncio.to_thread(self._write_claims, claims)
        return await self._host(claim)

    async def describe(self, host_id: str) -> Host:
        await asyncio.to_thread(self._reload_inventory)
        claims = await asyncio.to_thread(self._read_claims)
        claim = claims.get(host_id)
        if claim is None:
            raise _not_found(host_id)
        return await self._host(claim)

    async def list_by_tag(self, key: str, value: str) -> list[Host]:
        await asyncio.to_thread(self._reload_inventory)
        claims = await asyncio.to_thread(self._read_claims)
        matching = [
            c
            for c in claims.values()
            if c.terminated_at is None
            and self._tags(c, self._inventory.get(c.inventory_id)).get(key) == value
        ]
        return list(await asyncio.gather(*(self._host(c) for c in matching)))

    async def terminate(self, host_id: str) -> None:
        async with self._lock:
            claims = await asyncio.to_thread(self._read_claims)
            claim = claims.get(host_id)
            if claim is None:
                raise _not_found(host_id)
            if claim.terminated_at is not None:
                return
            claims[host_id] = _Claim(
                host_id=claim.host_id,
                inventory_id=claim.inventory_id,
                instance_type=claim.instance_type,
                client_token=claim.client_token,
                tags=claim.tags,
                launched_at=claim.launched_at,
                terminated_at=datetime.now(UTC),
            )
            await asyncio.to_thread(self._write_claims, claims)

    async def _host(self, claim: _Claim) -> Host:
        machine = self._inventory.get(claim.inventory_id)
        if claim.terminated_at is not None:
            state = HostState.TERMINATED
        elif machine is None:
            # Removed from the inventory while claimed: it can never become ready.
            state = HostState.DRAINING
        else:
            state = HostState.READY if await self._ready(machine) else HostState.PROVISIONING
        return Host(
            host_id=claim.host_id,
            instance_type=claim.instance_type,
            state=state,
            private_ip=machine.address if machine else None,
            tags=self._tags(claim, machine),
            launched_at=claim.launched_at,
        )

    @staticmethod
    def _tags(claim: _Claim, machine: InventoryHost | None) -> dict[str, str]:
        """The claim's tags, plus ``corral:local=true`` while its machine is the local one."""
        tags = {k: v for k, v in claim.tags.items() if k != TAG_LOCAL}
        if machine is not None and machine.local:
            tags[TAG_LOCAL] = LOCAL
        return tags

    async def _ready(self, machine: InventoryHost) -> bool:
        return await check_ready(machine, timeout_s=self._connect_timeout_s)

    def _read_claims(self) -> dict[str, _Claim]:
        try:
            raw = json.loads(self._state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(
                f"claims file {self._state_path.name} is corrupt ({e}); restore it from a "
                "backup or, if no host is in use, delete it"
            ) from e
        claims: dict[str, _Claim] = {}
        for item in raw.get("claims", []):
            ended = item.get("terminated_at")
            claim = _Claim(
                host_id=item["host_id"],
                inventory_id=item["inventory_id"],
                instance_type=item["instance_type"],
                client_token=item["client_token"],
                tags=dict(item["tags"]),
                launched_at=datetime.fromisoformat(item["launched_at"]),
                terminated_at=datetime.fromisoformat(ended) if ended else None,
            )
            claims[claim.host_id] = claim
        return claims

    def _write_claims(self, claims: Mapping[str, _Claim]) -> None:
        doc = {
            "version": _STATE_VERSION,
            "claims": [
                {
                    "host_id": c.host_id,
                    "inventory_id": c.inventory_id,
                    "instance_type": c.instance_type,
                    "client_token": c.client_token,
                    "tags": dict(c.tags),
                    "launched_at": c.launched_at.isoformat(),
                    "terminated_at": c.terminated_at.isoformat() if c.terminated_at else None,
                }
                for c in claims.values()
            ],
        }
        directory = self._state_path.parent
        fd, tmp = tempfile.mkstemp(prefix=".claims-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


async def check_ready(machine: InventoryHost, *, timeout_s: float = 2.0) -> bool:
    """The readiness check, answered within ``timeout_s``.

    A 2xx from ``health_url`` when the machine has one; else a TCP connect to
    ``address:port``. With neither, a loopback address is this machine and is ready at
    once; any other address is checked on port 22 (sshd answering means it is up).
    """
    if machine.health_url is not None:
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                response = await client.get(machine.health_url)
        except httpx.HTTPError:
            return False
        return response.is_success
    if machine.port is None and ipaddress.ip_address(machine.address).is_loopback:
        return True
    port = machine.port or _DEFAULT_READY_PORT
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(machine.address, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        pass
    return True


@dataclass(frozen=True, slots=True)
class InventoryCapacity:
    """What the ready, in-service machines of an inventory add up to."""

    cpu: int
    memory_mib: int
    gpus: int
    ready_hosts: tuple[str, ...]
    not_ready_hosts: tuple[str, ...]


async def inventory_capacity(path: Path, *, timeout_s: float = 2.0) -> InventoryCapacity:
    """Check every machine of the inventory; sum cpu, memory and GPUs of the ready ones.

    Cordoned machines count as not ready. Raises InvalidArgumentError for a bad file.
    """
    hosts = [h for h in load_inventory(path) if not h.cordoned]
    ready = await asyncio.gather(*(check_ready(h, timeout_s=timeout_s) for h in hosts))
    up = [h for h, ok in zip(hosts, ready, strict=True) if ok]
    return InventoryCapacity(
        cpu=sum(h.cpu for h in up),
        memory_mib=sum(h.memory_mib for h in up),
        gpus=sum(h.gpus for h in up),
        ready_hosts=tuple(h.id for h in up),
        not_ready_hosts=tuple(h.id for h, ok in zip(hosts, ready, strict=True) if not ok),
    )


def this_machine(host_id: str = "local", *, address: str = "127.0.0.1") -> dict[str, object]:
    """An inventory entry describing the machine this runs on (cpu, memory, GPUs, KVM),
    marked ``local``."""
    cpu = os.cpu_count() or 1
    memory_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    gpus = len([p for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit()])
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    return {
        "id": host_id,
        "address": address,
        "cpu": cpu,
        "memory_mib": memory_mib,
        "gpus": gpus,
        "kvm": kvm,
        "labels": {"role": "local"},
        "local": True,
    }


def write_inventory(path: Path, hosts: list[dict[str, object]]) -> None:
    """Write ``{"hosts": hosts}`` as a JSON inventory, atomically, and check it parses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".inventory-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"hosts": hosts}, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    read_inventory(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m byoc_agent.providers.baremetal check FILE | local FILE``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m byoc_agent.providers.baremetal")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check every machine of an inventory for readiness")
    check.add_argument("inventory", type=Path)
    check.add_argument("--timeout", type=float, default=2.0)
    local = sub.add_parser("local", help="write a one-host inventory for this machine")
    local.add_argument("inventory", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "local":
            write_inventory(args.inventory, [this_machine()])
            print(f"wrote {args.inventory}")
            return 0
        hosts = load_inventory(args.inventory)
        ready = asyncio.run(_check_all(hosts, args.timeout))
    except (InvalidArgumentError, OSError) as e:
        print(f"error: {e}")
        return 2
    for h, ok in zip(hosts, ready, strict=True):
        status = "cordoned" if h.cordoned else ("ready" if ok else "NOT READY")
        print(f"{h.id:20} {h.address:15} {h.cpu:4} cpu {h.memory_mib:8} MiB {h.gpus} gpu  {status}")
    return 0 if any(ok and not h.cordoned for h, ok in zip(hosts, ready, strict=True)) else 1


async def _check_all(hosts: list[InventoryHost], timeout_s: float) -> list[bool]:
    return list(await asyncio.gather(*(check_ready(h, timeout_s=timeout_s) for h in hosts)))


def _not_found(host_id: str) -> HostNotFoundError:
    return HostNotFoundError(
        f"no bare-metal host {host_id!r} was ever claimed from this inventory; "
        "check the id (list hosts by tag to see the current ones)",
        host_id=host_id,
    )


if __name__ == "__main__":
    raise SystemExit(main())
