"""The ``corral`` command line: sandboxes for tenants, tenants and agents for operators.

Tenant commands read ``CORRAL_API_KEY``; ``corral admin`` reads ``CORRAL_ADMIN_TOKEN``;
``corral billing`` reads ``CORRAL_BILLING_KEY`` (a billing key) or else ``CORRAL_ADMIN_TOKEN``;
all read ``CORRAL_API_URL``. ``corral install`` (the ``infra`` extra) installs an agent
into a cloud account with Pulumi. Errors print one red line and exit 1;
``sandbox exec`` exits with the command's own exit code (124 when it timed out).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from corral._admin import EXPORT_FORMATS, AdminClient
from corral.errors import CommandTimeoutError, CorralError
from corral.sandbox import DEFAULT_START_TIMEOUT_S, Sandbox

TIMEOUT_EXIT_CODE = 124
INTERRUPTED_EXIT_CODE = 130

app = typer.Typer(
    name="corral",
    help="Sandboxes for AI coding agents, run inside your own cloud.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sandbox_app = typer.Typer(
    help="Create, list, run commands in and kill sandboxes.", no_args_is_help=True
)
admin_app = typer.Typer(help="Operator commands (need CORRAL_ADMIN_TOKEN).", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants: the customers of this platform.", no_args_is_help=True)
apikey_app = typer.Typer(help="A tenant's API keys.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
billing_app = typer.Typer(
    help="Billing exports for finance (need CORRAL_BILLING_KEY or CORRAL_ADMIN_TOKEN).",
    no_args_is_help=True,
)
billing_key_app = typer.Typer(
    help="Billing keys: credentials for finance that read billing only.", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")
app.add_typer(billing_app, name="billing")
admin_app.add_typer(tenant_app, name="tenant")
admin_app.add_typer(apikey_app, name="apikey")
admin_app.add_typer(billing_key_app, name="billing-key")
console_user_app = typer.Typer(
    help="People who sign in to the web console at /console.", no_args_is_help=True
)
admin_app.add_typer(console_user_app, name="console-user")


def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def _friendly() -> Iterator[None]:
    """Turn a CorralError into one red line on stderr and exit status 1."""
    try:
        yield
    except CorralError as e:
        line = " ".join(str(e).split())
        _err().print(f"[bold red]error:[/bold red] [red]{escape(line)}[/red]", soft_wrap=True)
        raise typer.Exit(code=1) from None


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        pairs[key] = value
    return pairs


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


# ---- sandbox ----


@sandbox_app.command("create")
def sandbox_create(
    template: str = typer.Option("base", help="Template (image) to start from."),
    cpu: int = typer.Option(1, help="vCPUs."),
    memory_mb: int = typer.Option(512, "--memory-mb", help="Memory in MiB."),
    timeout: int = typer.Option(300, help="Seconds until the sandbox is killed."),
    env: list[str] | None = typer.Option(None, "--env", help="KEY=VALUE, repeatable."),
    metadata: list[str] | None = typer.Option(None, "--metadata", help="KEY=VALUE, repeatable."),
    isolation: str | None = typer.Option(
        None, help="gvisor or microvm (default: the tenant's policy, else gvisor)."
    ),
    egress: list[str] | None = typer.Option(
        None,
        "--egress",
        help="A TCP destination a.b.c.d:port the sandbox may reach (microvm only; the agent "
        "must allow it), repeatable. Default: no network.",
    ),
    snapshot: str | None = typer.Option(
        None,
        help="Start from this snapshot (its template, isolation, cpu and memory) instead.",
    ),
    start_timeout: float = typer.Option(
        DEFAULT_START_TIMEOUT_S,
        "--start-timeout",
        help="Seconds to wait for a sandbox that is still starting (its agent may be adding "
        "a host); it is killed if it has not started by then.",
    ),
) -> None:
    """Start a sandbox and print its id."""
    env_vars = _pairs(env, "--env")
    meta = _pairs(metadata, "--metadata")

    def waiting(sandbox_id: str, waited_s: float) -> None:
        typer.echo(f"{sandbox_id} is starting ({waited_s:.0f} s; its agent may be adding "
                   "a host for it)...", err=True)  # fmt: skip

    with _friendly():
        sandbox = Sandbox.create(
            template=template,
            cpu=cpu,
            memory_mb=memory_mb,
            timeout=timeout,
            env=env_vars,
            metadata=meta,
            isolation=isolation,
            egress=egress,
            snapshot=snapshot,
            start_timeout=start_timeout,
            on_pending=waiting,
        )
        sandbox.close()
    typer.echo(sandbox.id)


@sandbox_app.command("snapshot")
def sandbox_snapshot(sandbox_id: str = typer.Argument(..., help="Sandbox id.")) -> None:
    """Save a running sandbox's memory, processes and files; print the snapshot id."""
    with _friendly():
        sandbox = Sandbox.connect(sandbox_id)
        try:
            snap = sandbox.snapshot()
        finally:
            sandbox.close()
    typer.echo(snap.id)


@sandbox_app.command("fork")
def sandbox_fork(
    sandbox_id: str = typer.Argument(..., help="Sandbox id."),
    count: int = typer.Option(1, "--count", "-n", help="How many forks (1 to 10)."),
) -> None:
    """Start COUNT new sandboxes in this one's current state; print their ids."""
    with _friendly():
        sandbox = Sandbox.connect(sandbox_id)
        try:
            forks = sandbox.fork(count)
        finally:
            sandbox.close()
        for fork in forks:
            fork.close()
    for fork in forks:
        typer.echo(fork.id)


@sandbox_app.command("ls")
def sandbox_ls(
    state: str | None = typer.Option(None, help="Only sandboxes in this state (e.g. running)."),
    metadata: list[str] | None = typer.Option(
        None, "--metadata", help="KEY=VALUE that must match, repeatable."
    ),
    limit: int | None = typer.Option(None, help="Show at most this many."),
) -> None:
    """List your sandboxes."""
    meta = _pairs(metadata, "--metadata")
    with _friendly():
        infos = Sandbox.list(metadata=meta, state=state, limit=limit)
    table = Table(box=None, header_style="bold")
    for column in ("ID", "STATE", "TEMPLATE", "CPU", "MEM MB", "CREATED", "EXPIRES", "METADATA"):
        table.add_column(column, no_wrap=column == "ID", overflow="fold")
    for info in infos:
        table.add_row(
            info.id,
            info.state,
            info.template,
            "-" if info.cpu is None else str(info.cpu),
            "-" if info.memory_mb is None else str(info.memory_mb),
            _when(info.created_at),
            _when(info.expires_at),
            ",".join(f"{k}={v}" for k, v in sorted(info.metadata.items())),
        )
    console = _out()
    if infos:
        console.print(table)
    else:
        console.print("No sandboxes.")


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


@sandbox_app.command("exec")
def sandbox_exec(
    sandbox_id: str = typer.Argument(..., help="Sandbox id."),
    cmd: list[str] = typer.Argument(..., help="Command, after `--`."),
    timeout: float = typer.Option(60, help="Seconds before the command is killed."),
    cwd: str | None = typer.Option(None, help="Working directory inside the sandbox."),
    env: list[str] | None = typer.Option(None, "--env", help="KEY=VALUE, repeatable."),
) -> None:
    """Run a command in a sandbox, streaming its output; exit with its exit code."""
    command = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
    env_vars = _pairs(env, "--env")
    with _friendly():
        sandbox = Sandbox.connect(sandbox_id)
        try:
            result = sandbox.commands.run(
                command,
                envs=env_vars,
                cwd=cwd,
                timeout=timeout,
                on_stdout=_write_stdout,
                on_stderr=_write_stderr,
            )
        except CommandTimeoutError as e:
            _err().print(f"[red]{escape(str(e))}[/red]", soft_wrap=True)
            raise typer.Exit(code=TIMEOUT_EXIT_CODE) from None
        except KeyboardInterrupt:
            raise typer.Exit(code=INTERRUPTED_EXIT_CODE) from None
        finally:
            sandbox.close()
    raise typer.Exit(code=result.exit_code)


@sandbox_app.command("kill")
def sandbox_kill(sandbox_id: str = typer.Argument(..., help="Sandbox id.")) -> None:
    """Kill a sandbox (succeeds if it is already gone)."""
    with _friendly():
        sandbox = Sandbox.connect(sandbox_id)
        killed = sandbox.kill()
    typer.echo(f"killed {sandbox_id}" if killed else f"{sandbox_id} was already gone")


# ---- admin ----


def _show_secret(console: Console, label: str, secret: str) -> None:
    console.print(f"\n[bold yellow]{label} (shown once: store it now):[/bold yellow]")
    console.print(f"\n    [bold]{escape(secret)}[/bold]\n", soft_wrap=True)


@tenant_app.command("create")
def tenant_create(name: str = typer.Argument(..., help="Tenant name.")) -> None:
    """Create a tenant and print its first API key, once."""
    with _friendly(), AdminClient() as admin:
        created = admin.create_tenant(name)
    console = _out()
    console.print(
        f"Created tenant [bold]{escape(created.tenant.name)}[/bold] ({created.tenant.id})."
    )
    _show_secret(console, "API key", created.api_key.key)


@tenant_app.command("policy")
def tenant_policy(
    tenant: str = typer.Argument(..., help="Tenant id."),
    require_isolation: str = typer.Option(
        ..., "--require-isolation", help="microvm, or none to clear the requirement."
    ),
) -> None:
    """Require an isolation class for every sandbox of a tenant."""
    required = None if require_isolation == "none" else require_isolation
    with _friendly(), AdminClient() as admin:
        updated = admin.set_tenant_policy(tenant, required_isolation=required)
    _out().print(
        f"Tenant {updated.id} requires {updated.required_isolation or 'no particular'} isolation."
    )


@tenant_app.command("ls")
def tenant_ls() -> None:
    """List tenants."""
    with _friendly(), AdminClient() as admin:
        tenants = admin.list_tenants()
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "CREATED"):
        table.add_column(column, overflow="fold")
    for tenant in tenants:
        table.add_row(tenant.id, tenant.name, _when(tenant.created_at))
    _out().print(table if tenants else "No tenants.")


@apikey_app.command("create")
def apikey_create(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id."),
    name: str = typer.Option("default", help="A name to recognise the key by."),
    role: str = typer.Option(
        "member", help="owner, admin, member, viewer or billing (see SECURITY.md)."
    ),
) -> None:
    """Create an API key for a tenant and print it, once."""
    with _friendly(), AdminClient() as admin:
        key = admin.create_api_key(tenant, name, role)
    console = _out()
    console.print(
        f"Created {escape(key.role or role)} API key [bold]{escape(key.name)}[/bold] ({key.id})."
    )
    _show_secret(console, "API key", key.key)


@apikey_app.command("ls")
def apikey_ls(tenant: str = typer.Option(..., "--tenant", help="Tenant id.")) -> None:
    """List a tenant's API keys (never their secrets)."""
    with _friendly(), AdminClient() as admin:
        keys = admin.list_api_keys(tenant)
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "ROLE", "CREATED", "REVOKED"):
        table.add_column(column, overflow="fold")
    for key in keys:
        table.add_row(
            key.id, key.name, key.role or "", _when(key.created_at), _when(key.revoked_at)
        )
    _out().print(table if keys else "No API keys.")


@apikey_app.command("revoke")
def apikey_revoke(
    key_id: str = typer.Argument(..., help="API key id (from `corral admin apikey ls`)."),
    tenant: str = typer.Option(..., "--tenant", help="Tenant id."),
) -> None:
    """Revoke an API key; requests using it fail from now on."""
    with _friendly(), AdminClient() as admin:
        admin.revoke_api_key(tenant, key_id)
    typer.echo(f"revoked {key_id}")


@billing_key_app.command("create")
def billing_key_create(
    name: str = typer.Argument(..., help="A name to recognise the key by."),
) -> None:
    """Create a billing key (for `corral billing` via CORRAL_BILLING_KEY) and print it, once."""
    with _friendly(), AdminClient() as admin:
        key = admin.create_billing_key(name)
    console = _out()
    console.print(f"Created billing key [bold]{escape(key.name)}[/bold] ({key.id}).")
    _show_secret(console, "Billing key", key.key)


@billing_key_app.command("ls")
def billing_key_ls() -> None:
    """List billing keys (never their secrets)."""
    with _friendly(), AdminClient() as admin:
        keys = admin.list_billing_keys()
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "CREATED", "REVOKED"):
        table.add_column(column, overflow="fold")
    for key in keys:
        table.add_row(key.id, key.name, _when(key.created_at), _when(key.revoked_at))
    _out().print(table if keys else "No billing keys.")


@billing_key_app.command("revoke")
def billing_key_revoke(
    key_id: str = typer.Argument(..., help="Billing key id (from `corral admin billing-key ls`)."),
) -> None:
    """Revoke a billing key; requests using it fail from now on."""
    with _friendly(), AdminClient() as admin:
        admin.revoke_billing_key(key_id)
    typer.echo(f"revoked {key_id}")


@console_user_app.command("create")
def console_user_create(
    username: str = typer.Argument(..., help="Sign-in name (a-z, 0-9, . _ @ -)."),
    role: str = typer.Option("admin", "--role", help="admin, viewer or billing."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from stdin instead of prompting."
    ),
) -> None:
    """Create a console user; the password (at least 12 characters) is prompted for."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with _friendly(), AdminClient() as admin:
        user = admin.create_console_user(username, password, role)
        url = f"{admin.api_url}/console/"
    typer.echo(f"created console user {user.username} ({user.role}); sign in at {url}")


@console_user_app.command("ls")
def console_user_ls() -> None:
    """List console users (never their passwords)."""
    with _friendly(), AdminClient() as admin:
        users = admin.list_console_users()
    table = Table(box=None, header_style="bold")
    for column in ("USERNAME", "ROLE", "ID", "CREATED"):
        table.add_column(column, overflow="fold")
    for user in users:
        table.add_row(user.username, user.role, user.id, _when(user.created_at))
    _out().print(table if users else "No console users.")


@admin_app.command("enrollment-token")
def enrollment_token(
    tenant: str = typer.Option(..., "--tenant", help="Tenant the agent will serve."),
    ttl: int = typer.Option(3600, "--ttl", help="Seconds the token stays valid."),
) -> None:
    """Print a one-use token with which an agent enrolls for a tenant."""
    with _friendly(), AdminClient() as admin:
        token = admin.create_enrollment_token(tenant, ttl_s=ttl)
    typer.echo(token.token)
    _err().print(f"One use; expires {_when(token.expires_at)}.")


@admin_app.command("agents")
def agents() -> None:
    """List enrolled agents and whether they are online."""
    with _friendly(), AdminClient() as admin:
        found = admin.list_agents()
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "TENANT", "STATUS", "DATA PLANE", "LAST HEARTBEAT"):
        table.add_column(column, overflow="fold")
    for agent in found:
        status = "[green]online[/green]" if agent.status == "online" else escape(agent.status)
        table.add_row(
            agent.id,
            agent.name,
            agent.tenant_id,
            status,
            agent.data_plane_url or "-",
            _when(agent.last_heartbeat_at),
        )
    _out().print(table if found else "No agents.")


# ---- billing ----


@billing_app.command("export")
def billing_export(
    period: str = typer.Option(..., "--period", help="Billing month, YYYY-MM (UTC)."),
    export_format: str = typer.Option(
        "focus", "--format", help="focus (FOCUS 1.2 CSV), csv or parquet."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="File to write.", dir_okay=False),
) -> None:
    """Download a month's usage, priced and invoiced, as a file for finance."""
    if export_format not in EXPORT_FORMATS:
        raise typer.BadParameter(
            f"expected one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}",
            param_hint="--format",
        )
    if not output.parent.is_dir():
        raise typer.BadParameter(
            f"directory {str(output.parent)!r} does not exist", param_hint="--output"
        )
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=_err(),
        transient=True,
    )
    task = progress.add_task(f"{period} {export_format}", total=None)
    try:
        with _friendly(), progress, AdminClient.for_billing() as admin:
            written = admin.download_export(
                period,
                export_format,
                output,
                on_start=lambda total: progress.update(task, total=total),
                on_bytes=lambda n: progress.advance(task, n),
            )
    except OSError as e:
        reason = escape(e.strerror or type(e).__name__)
        _err().print(
            f"[bold red]error:[/bold red] [red]cannot write {escape(str(output))}: {reason}[/red]",
            soft_wrap=True,
        )
        raise typer.Exit(code=1) from None
    _err().print(f"wrote {written} bytes to {escape(str(output))}")


from corral.cli_trust import audit_app, cosign_app, keys_app  # noqa: E402 (uses helpers above)

admin_app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(cosign_app, name="cosign")


@app.command("install")
def install(
    cloud: str = typer.Argument(..., help="aws, gcp, azure or baremetal."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Offline: print the resources and permissions, change nothing."
    ),
    control_plane_url: str = typer.Option(
        "https://corral.example.com", "--control-plane-url", envvar="CORRAL_API_URL",
        help="Where the agent enrolls (the control plane's public URL).",
    ),
    enrollment_token: str = typer.Option(
        "", "--enrollment-token", envvar="CORRAL_ENROLLMENT_TOKEN", show_default=False,
        help="From `corral admin enrollment-token`; prefer the environment variable.",
    ),
    name: str = typer.Option("corral-agent", "--name", help="Names every cloud resource."),
    agent_package: str | None = typer.Option(
        None, "--agent-package", help="pip requirement or wheel URL the host installs."
    ),
    dataplane_client: list[str] | None = typer.Option(
        None, "--dataplane-client", help="Private CIDR allowed to the data plane (repeat)."
    ),
    label: list[str] | None = typer.Option(None, "--label", help="KEY=VALUE on every resource."),
    region: str | None = typer.Option(None, "--region", help="AWS/GCP region, Azure location."),
    zone: str | None = typer.Option(None, "--zone", help="GCP zone."),
    project: str | None = typer.Option(None, "--project", help="GCP project id."),
    size: str | None = typer.Option(
        None, "--size", help="Instance type / machine type / VM size of the agent's host."
    ),
    hosts_max: int = typer.Option(
        0, "--hosts-max", help="Sandbox hosts the agent may launch (0: none, sandboxes run "
        "on the agent's machine)."
    ),
    hosts_budget: str = typer.Option(
        "10", "--hosts-budget", help="Cap on the hosts' summed $/hour."
    ),
    host_price: list[str] | None = typer.Option(
        None, "--host-price", help="TYPE=DOLLARS_PER_HOUR a host type may cost (repeat; "
        "required for GCP and Azure hosts)."
    ),
    worker_port: int = typer.Option(
        7443, "--worker-port", help="Port of corral-hostd on the hosts (agent only)."
    ),
    stack: str | None = typer.Option(None, "--stack", help="Pulumi stack (default: NAME-CLOUD)."),
    out: Path | None = typer.Option(
        None, "--out", help="baremetal: write the install bundle here instead of `pulumi up`."
    ),
) -> None:
    """Install the agent into your cloud account with Pulumi (see docs/install/)."""
    with _friendly():
        try:
            from infra import install as inst
            from infra.config import (
                DEFAULT_AGENT_PACKAGE,
                DRY_RUN_TOKEN,
                AgentInstall,
                HostsInstall,
            )
        except ImportError as e:
            raise CorralError(
                f"the installer needs the infra extra: pip install 'corral[infra]' ({e})"
            ) from None
        if out is not None and cloud != "baremetal":
            raise CorralError("--out is for baremetal; clouds are installed with pulumi up")
        if not enrollment_token and not dry_run:
            raise CorralError(
                "set CORRAL_ENROLLMENT_TOKEN (from `corral admin enrollment-token --tenant ID`)"
            )
        if not agent_package and not dry_run:
            raise CorralError(
                "pass --agent-package: the wheel URL (with #sha256=...) or pinned requirement "
                "the host installs; Corral is not on PyPI, so a bare name is not safe"
            )
        agent = AgentInstall(
            control_plane_url=control_plane_url,
            enrollment_token=enrollment_token or DRY_RUN_TOKEN,
            name=name,
            dataplane_clients=tuple(dataplane_client or ()),
            labels=_pairs(label, "--label"),
            agent_package=agent_package or DEFAULT_AGENT_PACKAGE,
            hosts=HostsInstall(max=hosts_max, budget_per_hour=hosts_budget,
                               worker_port=worker_port,
                               prices=_pairs(host_price, "--host-price")),
        )
        choice = inst.CloudChoice(
            cloud=cloud, region=region, zone=zone, project=project, size=size
        )
        if out is not None:
            for path in inst.write_bundle(agent, out):
                _out().print(f"wrote {escape(str(path))}")
            return
        if dry_run:
            plan, violations = inst.dry_run(agent, inst.make_target(choice))
            inst.print_plan(_out(), plan, violations)
            if violations:
                raise typer.Exit(code=1)
            return
        outputs = inst.up(
            # Pulumi's own progress lines, verbatim (not rich markup).
            agent, choice, stack=stack or f"{name}-{cloud}", on_output=typer.echo
        )
        for key, value in sorted(outputs.items()):
            if key != "install_script":
                _out().print(f"{key}: {escape(str(value))}")


def main() -> None:
    """Entry point of the ``corral`` console script."""
    app()
