"""``corral-hostd --config /etc/corral/hostd.json``: serve this host's runtimes to its manager.

SIGTERM/SIGINT stop the server; sandboxes keep running (the systemd unit uses
``KillMode=process``), and the next start finds them again through ``recover``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import structlog

from byoc_agent.dataplane.server import serve
from byoc_agent.log_config import configure_logging
from byoc_agent.protocol.errors import CorralError
from byoc_agent.providers.baremetal import this_machine
from byoc_agent.runtimes.multi import runtime_names
from byoc_agent.runtimes.templates import list_templates

from .config import HostdConfig, build_host_runtime, load_config, load_credentials
from .pool import HostSandboxes, host_pool
from .server import create_hostd_app
from .wire import HealthReply

log = structlog.get_logger(__name__)


def machine_health() -> HealthReply:
    """This machine's CPUs, memory and KVM (runtimes and templates are filled in by the app)."""
    facts = this_machine()
    return HealthReply.model_validate(
        {"runtimes": [], "templates": [], **{k: facts[k] for k in ("cpu", "memory_mib", "kvm")}}
    )


async def run_hostd(config: HostdConfig) -> None:
    """Serve until cancelled."""
    credentials = load_credentials(config)
    ids = {"manager_agent_id": config.agent_id, "tenant_id": config.tenant_id}
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v})
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    runtime = build_host_runtime(config)
    names = runtime_names(runtime)

    def templates() -> list[str]:
        return ["base"] if names == ["memory"] else list_templates(config.templates_dir)

    sandboxes = HostSandboxes(config.data_dir / "sandboxes.json")
    facts = machine_health()
    pool = host_pool(runtime, config.warm_pool, data_dir=config.data_dir,
                     tenant_id=config.tenant_id, sandboxes=sandboxes,
                     machine=lambda: (facts.cpu, facts.memory_mib))  # fmt: skip
    app = create_hostd_app(
        runtime,
        secret=credentials.secret,
        data_dir=config.data_dir,
        templates=templates,
        machine=machine_health,
        pool=pool,
        sandboxes=sandboxes,
    )
    log.info("hostd_started", listen=f"{config.listen_host}:{config.listen_port}",
             runtimes=names, data_dir=str(config.data_dir),
             warm_pool=config.warm_pool or None)  # fmt: skip
    filler = None if pool is None else asyncio.create_task(pool.run(in_use=sandboxes.ids()))
    try:
        await serve(
            app,
            config.listen_host,
            config.listen_port,
            ssl_certfile=str(config.cert_file),
            ssl_keyfile=str(config.key_file),
        )
    finally:
        log.info("hostd_stopping", detail="sandboxes keep running")
        if pool is not None and filler is not None:
            # Members serve nobody while hostd is down: destroyed now, one being started
            # once its start ends (if this is cut short, from the ledger at the next start).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await asyncio.shield(pool.close(settle_s=10))
            filler.cancel()
            await asyncio.wait({filler}, timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="corral-hostd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("/etc/corral/hostd.json"))
    args = parser.parse_args(argv)
    configure_logging()

    async def _main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await run_hostd(load_config(args.config))

    try:
        asyncio.run(_main())
    except CorralError as e:
        log.error("hostd_failed", error=e.message)
        print(f"corral-hostd: {e.message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
