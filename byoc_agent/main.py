"""``corral-agent``: enroll if needed, then serve jobs and the data plane until stopped.

SIGTERM/SIGINT drain in-flight jobs and flush the outbox; sandboxes keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys

import httpx
import structlog

from byoc_agent import runtimes
from byoc_agent.agent import Agent, AgentConfig
from byoc_agent.dataplane import create_dataplane_app, serve
from byoc_agent.dataplane.e2b import envd_asgi
from byoc_agent.enroll import enroll, key_refresh_loop, keyring_from_state, load_or_create_key
from byoc_agent.hosts.hostd_workers import HostdWorkers
from byoc_agent.hosts.runtime import FleetRuntime
from byoc_agent.hosts.setup import build_fleet
from byoc_agent.log_config import configure_logging
from byoc_agent.protocol.cosign import CosignPolicy
from byoc_agent.protocol.errors import CorralError
from byoc_agent.runtimes.base import Runtime
from byoc_agent.runtimes.multi import runtime_names
from byoc_agent.settings import AgentSettings
from byoc_agent.state import AgentStateStore
from byoc_agent.transport.credentials import NatsUserFiles
from byoc_agent.transport.nats import NatsAgentTransport
from byoc_agent.warm_pool import parse_pool_sizes

log = structlog.get_logger(__name__)


def _templates(settings: AgentSettings) -> list[str]:
    if settings.runtime == "memory":
        return ["base"]
    from byoc_agent.runtimes.templates import list_templates

    return list_templates(settings.templates_root)


async def resolve_capacity(settings: AgentSettings) -> tuple[int, int]:
    """(cpu, memory MiB) the agent offers: from its inventory's ready machines, if it has one."""
    if settings.inventory is None:
        return settings.cpu_total, settings.memory_mb_total
    from byoc_agent.providers.baremetal import inventory_capacity

    capacity = await inventory_capacity(settings.inventory)
    if not capacity.ready_hosts:
        raise CorralError(
            f"no machine in the inventory {settings.inventory} is ready (not ready: "
            f"{', '.join(capacity.not_ready_hosts) or 'none listed'}); check it with "
            f"`python -m byoc_agent.providers.baremetal check {settings.inventory}`"
        )
    log.info("inventory_capacity", hosts=list(capacity.ready_hosts), cpu=capacity.cpu,
             memory_mib=capacity.memory_mib, gpus=capacity.gpus,
             not_ready=list(capacity.not_ready_hosts))
    return max(1, int(capacity.cpu * settings.cpu_overcommit)), capacity.memory_mib


async def run_agent(settings: AgentSettings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    cpu_total, memory_mb_total = await resolve_capacity(settings)
    try:
        cosign_policy = CosignPolicy.from_config(settings.cosigner_keys, settings.cosign_rules)
    except ValueError as e:
        raise CorralError(f"CORRAL_AGENT_COSIGNER_KEYS / CORRAL_AGENT_COSIGN_RULES: {e}") from e
    state = AgentStateStore(settings.state_db)
    key = load_or_create_key(settings.key_file)
    hosts = settings.hosts
    on_hosts = hosts is not None and hosts.workers == "hostd"
    local_runtime = None if on_hosts else runtimes.build_runtime(
        settings.runtime,
        state_dir=settings.runtime_dir,
        templates_root=settings.templates_root,
        options=runtimes.RuntimeOptions(
            microvm_cache=settings.microvm_cache,
            microvm_accel=settings.microvm_accel,
            disk_mb=settings.sandbox_disk_mb,
            pids_max=settings.sandbox_pids_max,
            firecracker_kernel=settings.firecracker_kernel,
        ),
    )
    nats_user = NatsUserFiles.under(settings.home)
    ident = state.identity()
    if ident is None:
        if not settings.enrollment_token:
            raise CorralError(
                "this agent is not enrolled: set CORRAL_AGENT_ENROLLMENT_TOKEN to a token "
                "from `corral admin enrollment-token --tenant ID`"
            )
        ident = await asyncio.to_thread(
            enroll,
            control_plane_url=settings.control_plane_url,
            token=settings.enrollment_token,
            key=key,
            name=settings.name,
            data_plane_url=settings.advertised_dataplane_url,
            runtimes=(
                list(hosts.worker_runtimes) if hosts is not None and local_runtime is None
                else runtime_names(local_runtime) if local_runtime is not None else []
            ),
            templates=_templates(settings),
            cpu_total=cpu_total,
            memory_mb_total=memory_mb_total,
            state=state,
            nats_user=nats_user,
            cosign_rules=list(settings.cosign_rules),
            cosigner_keys=list(settings.cosigner_keys),
        )
    keyring = keyring_from_state(state)
    if hosts is not None and hosts.ledger is None:  # GCP/Azure remember deleted VMs here
        hosts = dataclasses.replace(hosts, ledger=settings.home / "host-ledger.json")
    workers: HostdWorkers | None = None
    if hosts is not None and local_runtime is None:
        workers = HostdWorkers(
            port=hosts.worker_port, runtimes=hosts.worker_runtimes,
            tenant_id=ident.tenant_id, agent_id=ident.agent_id,
            package_spec=hosts.worker_package, warm_pool=hosts.worker_warm_pool,
        )  # fmt: skip
    fleet = build_fleet(hosts, state, ident, workers=workers) if hosts else None
    runtime: Runtime
    if fleet is not None and workers is not None:
        assert hosts is not None
        # Sandboxes run on the hosts the fleet launches (ADR 0028).
        runtime = FleetRuntime(fleet, workers, names=hosts.worker_runtimes,
                               place_timeout_s=hosts.place_timeout_s,
                               snapshots_dir=settings.snapshots_dir)
    else:
        assert local_runtime is not None
        runtime = local_runtime
    transport = NatsAgentTransport(
        settings.nats_url or ident.nats_url, ident.tenant_id, ident.agent_id,
        name=f"corral-agent-{ident.agent_id}", credentials=nats_user.credentials(),
    )
    await transport.connect()
    agent = Agent(
        identity=ident,
        signing_key=key,
        keyring=keyring,
        state=state,
        runtime=runtime,
        transport=transport,
        config=AgentConfig(
            data_plane_url=settings.advertised_dataplane_url,
            cpu_total=cpu_total,
            memory_mb_total=memory_mb_total,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            reaper_interval_s=settings.reaper_interval_s,
            usage_interval_s=settings.usage_interval_s,
            fleet_interval_s=settings.hosts.interval_s if settings.hosts else 5.0,
            cosign_policy=cosign_policy,
            snapshots_dir=settings.snapshots_dir,
            egress_ceiling=settings.microvm_egress,
            own_hosts=(settings.dataplane_host,),
        ),
        templates=lambda: _templates(settings),
        fleet=fleet,
        # A pool pre-starts sandboxes on this machine: not with sandboxes on hosts.
        warm_pool=parse_pool_sizes(settings.warm_pool) if workers is None else None,
        warm_pool_ledger=settings.warm_pool_ledger,
        restore_pool=settings.restore_pool if workers is None else 0,
    )
    app = envd_asgi(create_dataplane_app(agent), agent)
    log.info("agent_started", agent_id=ident.agent_id, tenant_id=ident.tenant_id,
             data_plane=settings.advertised_dataplane_url, runtime=runtime.name)

    try:
        async with httpx.AsyncClient() as http, asyncio.TaskGroup() as tg:
            tg.create_task(agent.run())
            tg.create_task(serve(app, settings.dataplane_host, settings.dataplane_port))
            tg.create_task(key_refresh_loop(
                http, settings.control_plane_url, state, keyring,
                interval_s=settings.key_refresh_interval_s,
            ))
    finally:
        log.info("agent_stopping", detail="draining; sandboxes keep running")
        with contextlib.suppress(Exception):
            await asyncio.shield(agent.drain())
        with contextlib.suppress(Exception):
            await transport.close()
        if workers is not None:
            with contextlib.suppress(Exception):
                await workers.aclose()
        state.close()


def main() -> None:
    configure_logging()
    settings = AgentSettings.from_env()

    async def _main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await run_agent(settings)

    try:
        asyncio.run(_main())
    except CorralError as e:
        log.error("agent_failed", error=e.message)
        sys.exit(2)


if __name__ == "__main__":
    main()
