"""The agent's settings: one frozen object, read from ``CORRAL_AGENT_*`` variables in main."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.runtimes.base import parse_egress
from byoc_agent.warm_pool import parse_pool_sizes

# On-demand $/hour (AWS us-east-1 Linux list prices when written); the budget cap is only
# as good as these, so set CORRAL_AGENT_HOST_PRICES to what your account pays.
DEFAULT_HOST_PRICES: Mapping[str, Decimal] = {
    "c5.metal": Decimal("4.08"),
    "m7i.metal-24xl": Decimal("4.8384"),
    "i4i.metal": Decimal("10.982"),
    "p5.48xlarge": Decimal("55.04"),
}


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Where the agent gets hosts and how it scales them (``CORRAL_AGENT_HOST*``).

    No credential is configured here: the provider SDK takes the identity of the machine
    the agent runs on (instance role, service account, managed identity).
    """

    provider: str  # "aws", "gcp", "azure" or "baremetal"
    aws_region: str | None = None
    aws_image_id: str | None = None
    # The IAM instance profile (ARN or name) each AWS host gets; none by default.
    aws_instance_profile: str | None = None
    # The service account GCP hosts run as (their identity; the agent may only "use" it).
    gcp_service_account: str | None = None
    # GCP: project, zone, image; Azure: subscription, resource group, location, image, the
    # hosts' admin user and SSH public key (password login stays off).
    gcp_project: str | None = None
    gcp_zone: str | None = None
    azure_subscription_id: str | None = None
    azure_resource_group: str | None = None
    azure_location: str | None = None
    azure_admin_username: str = "corral"
    azure_ssh_public_key: str | None = None
    image: str | None = None
    ledger: Path | None = None
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    instance_types: tuple[str, ...] = ()
    inventory: Path | None = None
    max_hosts: int = 4
    min_hosts: int = 0
    budget_per_hour: Decimal = Decimal("50")
    idle_timeout_s: float = 600.0
    ready_timeout_s: float = 900.0
    overcommit_cpu: float = 1.0
    overcommit_memory: float = 1.0
    reserve_after_s: float = 30.0
    interval_s: float = 5.0
    prices: Mapping[str, Decimal] = field(default_factory=lambda: dict(DEFAULT_HOST_PRICES))
    # Where sandboxes run (ADR 0028): "hostd" — on the hosts, each running corral-hostd
    # (the default for the clouds); "local" — on the agent's own machine, the hosts being
    # capacity only (the default for bare metal, whose inventory is usually this machine).
    workers: str = "local"
    worker_port: int = 7443
    worker_runtimes: tuple[str, ...] = ("gvisor",)
    # What the hosts' cloud-init installs with pip (a version pin or a wheel URL in the VPC).
    worker_package: str = "corral"
    # What each host's hostd keeps pre-started ("template:cpu:memory_mb:isolation=N,...").
    worker_warm_pool: str = ""
    # How long a create waits for a host with room (a scale-out included).
    place_timeout_s: float = 600.0

    @classmethod
    def from_env(cls, e: Mapping[str, str]) -> HostSettings | None:
        p = "CORRAL_AGENT_HOST"
        provider = e.get(p + "_PROVIDER", "").strip()
        if not provider:
            return None
        if provider not in ("aws", "gcp", "azure", "baremetal"):
            raise InvalidArgumentError(
                f"{p}_PROVIDER={provider!r}: use 'aws', 'gcp', 'azure' or 'baremetal' (or "
                "leave it unset for an agent that manages no hosts)",
                field=p + "_PROVIDER",
            )
        needed = {
            "gcp": ("_GCP_PROJECT", "_GCP_ZONE", "_IMAGE"),
            "azure": (
                "_AZURE_SUBSCRIPTION_ID", "_AZURE_RESOURCE_GROUP", "_AZURE_LOCATION", "_IMAGE",
                "_AZURE_SSH_PUBLIC_KEY",
            ),
        }.get(provider, ())  # fmt: skip
        missing = [p + n for n in needed if not e.get(p + n)]
        if missing:
            raise InvalidArgumentError(
                f"the {provider} host provider needs {', '.join(missing)}", field=missing[0]
            )

        def words(name: str) -> tuple[str, ...]:
            return tuple(w.strip() for w in e.get(name, "").split(",") if w.strip())

        def num(name: str, default: str, kind: type[int] | type[float]) -> float:
            raw = e.get(name, default)
            try:
                return kind(raw)
            except ValueError:
                raise InvalidArgumentError(
                    f"{name}={raw!r} is not a number", field=name
                ) from None

        def money(name: str, raw: str) -> Decimal:
            try:
                value = Decimal(raw)
            except InvalidOperation:
                raise InvalidArgumentError(
                    f"{name}: {raw!r} is not a decimal amount in $/hour", field=name
                ) from None
            if not value.is_finite() or value < 0:
                raise InvalidArgumentError(f"{name}: {raw!r} must be >= 0", field=name)
            return value

        prices = dict(DEFAULT_HOST_PRICES)
        for item in words(p + "_PRICES"):
            itype, sep, price = item.partition("=")
            if not sep or not itype.strip():
                raise InvalidArgumentError(
                    f"{p}_PRICES: {item!r} is not TYPE=DOLLARS_PER_HOUR", field=p + "_PRICES"
                )
            prices[itype.strip()] = money(p + "_PRICES", price.strip())
        inventory = e.get(p + "_INVENTORY")
        if provider == "baremetal" and not inventory:
            raise InvalidArgumentError(
                f"{p}_INVENTORY must name the inventory file for the baremetal provider",
                field=p + "_INVENTORY",
            )
        if provider == "aws" and not (e.get(p + "_AWS_REGION") and e.get(p + "_AWS_IMAGE_ID")):
            raise InvalidArgumentError(
                f"the aws host provider needs {p}_AWS_REGION and {p}_AWS_IMAGE_ID",
                field=p + "_AWS_IMAGE_ID",
            )
        workers = e.get(p + "_WORKERS", "").strip() or (
            "local" if provider == "baremetal" else "hostd"
        )
        if workers not in ("local", "hostd"):
            raise InvalidArgumentError(
                f"{p}_WORKERS={workers!r}: use 'hostd' (sandboxes run on the hosts) or "
                "'local' (on the agent's machine)",
                field=p + "_WORKERS",
            )
        if workers == "hostd" and provider == "baremetal":
            raise InvalidArgumentError(
                f"{p}_WORKERS=hostd: bare-metal hosts are installed already and cannot be "
                "sent user data; run their sandboxes with 'local' (hostd on inventory "
                "machines is not supported yet)",
                field=p + "_WORKERS",
            )
        port = int(num(p + "_WORKER_PORT", "7443", int))
        if not 1 <= port <= 65535:
            raise InvalidArgumentError(f"{p}_WORKER_PORT={port} is not a TCP port",
                                       field=p + "_WORKER_PORT")
        return cls(
            provider=provider,
            aws_region=e.get(p + "_AWS_REGION") or None,
            aws_image_id=e.get(p + "_AWS_IMAGE_ID") or None,
            aws_instance_profile=e.get(p + "_AWS_INSTANCE_PROFILE") or None,
            gcp_service_account=e.get(p + "_GCP_SERVICE_ACCOUNT") or None,
            gcp_project=e.get(p + "_GCP_PROJECT") or None,
            gcp_zone=e.get(p + "_GCP_ZONE") or None,
            azure_subscription_id=e.get(p + "_AZURE_SUBSCRIPTION_ID") or None,
            azure_resource_group=e.get(p + "_AZURE_RESOURCE_GROUP") or None,
            azure_location=e.get(p + "_AZURE_LOCATION") or None,
            azure_admin_username=e.get(p + "_AZURE_ADMIN_USERNAME") or "corral",
            azure_ssh_public_key=e.get(p + "_AZURE_SSH_PUBLIC_KEY") or None,
            image=e.get(p + "_IMAGE") or None,
            ledger=Path(e[p + "_LEDGER"]) if e.get(p + "_LEDGER") else None,
            subnet_id=e.get(p + "_SUBNET_ID") or None,
            security_group_ids=words(p + "_SECURITY_GROUP_IDS"),
            instance_types=words(p + "_INSTANCE_TYPES"),
            inventory=Path(inventory) if inventory else None,
            max_hosts=int(num(p + "S_MAX", "4", int)),
            min_hosts=int(num(p + "S_MIN", "0", int)),
            budget_per_hour=money(p + "S_BUDGET_PER_HOUR", e.get(p + "S_BUDGET_PER_HOUR", "50")),
            idle_timeout_s=num(p + "S_IDLE_S", "600", float),
            ready_timeout_s=num(p + "S_READY_TIMEOUT_S", "900", float),
            overcommit_cpu=num(p + "S_OVERCOMMIT_CPU", "1", float),
            overcommit_memory=num(p + "S_OVERCOMMIT_MEMORY", "1", float),
            reserve_after_s=num(p + "S_RESERVE_AFTER_S", "30", float),
            interval_s=num(p + "S_INTERVAL_S", "5", float),
            prices=prices,
            workers=workers,
            worker_port=port,
            worker_runtimes=words(p + "_WORKER_RUNTIMES") or ("gvisor",),
            worker_package=e.get(p + "_WORKER_PACKAGE") or "corral",
            worker_warm_pool=_pool_setting(e, p + "_WORKER_WARM_POOL"),
            place_timeout_s=num(p + "S_PLACE_TIMEOUT_S", "600", float),
        )


@dataclass(frozen=True, slots=True)
class AgentSettings:
    home: Path
    control_plane_url: str
    nats_url: str | None = None
    enrollment_token: str | None = None
    name: str = "agent"
    dataplane_host: str = "127.0.0.1"
    dataplane_port: int = 8788
    dataplane_public_url: str | None = None
    runtime: str = "gvisor"
    templates_dir: Path | None = None
    # microVMs: where the guest kernel, initramfs and disk images are cached; kvm|tcg|auto.
    microvm_cache_dir: Path | None = None
    microvm_accel: str = "auto"
    # The ceiling: destinations ("a.b.c.d:port") a microVM sandbox of this agent may ask to
    # connect to in its create request (ADR 0027). A sandbox that asks for none gets none.
    microvm_egress: tuple[str, ...] = ()
    # Firecracker's guest kernel (vmlinux, or a bzImage to extract it from).
    firecracker_kernel: Path | None = None
    cpu_total: int = 2
    memory_mb_total: int = 4096
    # A bare-metal inventory (see providers/baremetal.py): when set, the agent offers the
    # ready machines' cpu (times cpu_overcommit) and memory instead of the two totals above.
    inventory: Path | None = None
    cpu_overcommit: float = 1.0
    heartbeat_interval_s: float = 5.0
    key_refresh_interval_s: float = 30.0
    reaper_interval_s: float = 0.5
    usage_interval_s: float = 60.0
    hosts: HostSettings | None = None
    # Per-sandbox host limits of the gVisor runtime (0: none): disk quota, tasks.
    sandbox_disk_mb: int = 10 * 1024
    sandbox_pids_max: int = 4096
    cosigner_keys: tuple[str, ...] = ()
    cosign_rules: tuple[str, ...] = ()
    # Warm pools (ADR 0025): "template:cpu:memory_mb:isolation=N,..."; empty = off.
    warm_pool: str = ""
    # Restore pools (ADR 0029): restored copies kept per recent snapshot; 0 = off.
    restore_pool: int = 0

    @property
    def state_db(self) -> Path:
        return self.home / "agent-state.db"

    @property
    def key_file(self) -> Path:
        return self.home / "agent-key.pem"

    @property
    def snapshots_dir(self) -> Path:
        return (self.home / "snapshots").resolve()

    @property
    def runtime_dir(self) -> Path:
        return self.home / "runtime"

    @property
    def warm_pool_ledger(self) -> Path:
        return self.home / "warm-pool.json"

    @property
    def microvm_cache(self) -> Path:
        return self.microvm_cache_dir or (self.home / "microvm")

    @property
    def templates_root(self) -> Path:
        return self.templates_dir or (self.home / "templates")

    @property
    def advertised_dataplane_url(self) -> str:
        return self.dataplane_public_url or f"http://{self.dataplane_host}:{self.dataplane_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        e = os.environ if env is None else env
        p = "CORRAL_AGENT_"
        home = Path(e.get(p + "HOME", ".corral/agent"))
        templates = e.get(p + "TEMPLATES_DIR")
        inventory = e.get(p + "INVENTORY")
        return cls(
            home=home,
            control_plane_url=e.get(p + "CONTROL_PLANE_URL", "http://127.0.0.1:8080"),
            nats_url=e.get(p + "NATS_URL") or None,
            enrollment_token=e.get(p + "ENROLLMENT_TOKEN") or None,
            name=e.get(p + "NAME", "agent"),
            dataplane_host=e.get(p + "DATAPLANE_HOST", "127.0.0.1"),
            dataplane_port=int(e.get(p + "DATAPLANE_PORT", "8788")),
            dataplane_public_url=e.get(p + "DATAPLANE_PUBLIC_URL") or None,
            runtime=e.get(p + "RUNTIME", "gvisor"),
            templates_dir=Path(templates) if templates else None,
            microvm_cache_dir=Path(e[p + "MICROVM_CACHE"]) if e.get(p + "MICROVM_CACHE") else None,
            microvm_accel=e.get(p + "MICROVM_ACCEL", "auto"),
            microvm_egress=tuple(
                str(rule)
                for rule in parse_egress(
                    w.strip() for w in e.get(p + "MICROVM_EGRESS", "").split(",") if w.strip()
                )
            ),
            firecracker_kernel=(
                Path(e[p + "FIRECRACKER_KERNEL"]) if e.get(p + "FIRECRACKER_KERNEL") else None
            ),
            cpu_total=int(e.get(p + "CPU_TOTAL", str(os.cpu_count() or 2))),
            memory_mb_total=int(e.get(p + "MEMORY_MB_TOTAL", "4096")),
            inventory=Path(inventory) if inventory else None,
            cpu_overcommit=float(e.get(p + "CPU_OVERCOMMIT", "1")),
            heartbeat_interval_s=float(e.get(p + "HEARTBEAT_INTERVAL_S", "5")),
            key_refresh_interval_s=float(e.get(p + "KEY_REFRESH_INTERVAL_S", "30")),
            reaper_interval_s=float(e.get(p + "REAPER_INTERVAL_S", "0.5")),
            usage_interval_s=float(e.get(p + "USAGE_INTERVAL_S", "60")),
            hosts=HostSettings.from_env(e),
            sandbox_disk_mb=int(e.get(p + "SANDBOX_DISK_MB", str(10 * 1024))),
            sandbox_pids_max=int(e.get(p + "SANDBOX_PIDS_MAX", "4096")),
            cosigner_keys=_words(e.get(p + "COSIGNER_KEYS", "")),
            cosign_rules=_words(e.get(p + "COSIGN_RULES", "")),
            warm_pool=e.get(p + "WARM_POOL", ""),
            restore_pool=_count(e, p + "RESTORE_POOL"),
        )


def _pool_setting(env: Mapping[str, str], name: str) -> str:
    """A warm-pool setting, checked now (ADR 0025's format)."""
    text = env.get(name, "").strip()
    try:
        parse_pool_sizes(text)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{name}: {e.message}", field=name) from None
    return text


def _count(env: Mapping[str, str], name: str) -> int:
    """A non-negative integer setting (unset or empty: 0)."""
    raw = env.get(name, "").strip() or "0"
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidArgumentError(f"{name}={raw!r}: must be a whole number >= 0")
    return value


def _words(text: str) -> tuple[str, ...]:
    """A comma- or space-separated list."""
    return tuple(w for w in text.replace(",", " ").split() if w)
