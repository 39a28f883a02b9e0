"""``corral admin keys``, ``corral audit`` and ``corral cosign``: the trust chain commands.

``admin keys`` needs ``CORRAL_ADMIN_TOKEN``; ``audit`` uses ``CORRAL_ADMIN_TOKEN`` when set
(everything) or else ``CORRAL_API_KEY`` (your tenant's entries); ``cosign`` uses
``CORRAL_API_KEY`` and a customer key file that never leaves your machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from corral.cli import _err, _friendly, _out, _when
from corral.trust import TrustClient, generate_cosigner_key, load_cosigner_key

keys_app = typer.Typer(help="The control plane's job-signing keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
cosign_app = typer.Typer(
    help="Customer co-signing of high-risk jobs (with a key only you hold).",
    no_args_is_help=True,
)


@keys_app.command("list")
def keys_list() -> None:
    """List signing keys: kid, status (active, retired = still trusted, revoked)."""
    with _friendly(), TrustClient.operator() as trust:
        keys = trust.signing_keys()
    table = Table(box=None, header_style="bold")
    for column in ("KID", "STATUS", "CREATED", "RETIRED", "REVOKED"):
        table.add_column(column, overflow="fold")
    for k in keys:
        table.add_row(k.kid, k.status, _when(k.created_at), _when(k.retired_at),
                      _when(k.revoked_at))
    _out().print(table if keys else "No signing keys.")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Make a new active key; the old one stays trusted (retired) so jobs in flight verify."""
    with _friendly(), TrustClient.operator() as trust:
        key = trust.rotate_signing_key()
    typer.echo(key.kid)
    _err().print("New active key; agents pick it up at their next key refresh.")


@keys_app.command("revoke")
def keys_revoke(kid: str = typer.Argument(..., help="Key id (from `corral admin keys list`).")
                ) -> None:
    """Revoke a key: agents refuse jobs signed with it from their next refresh on."""
    with _friendly(), TrustClient.operator() as trust:
        revoked, replacement = trust.revoke_signing_key(kid)
    typer.echo(f"revoked {revoked.kid}")
    if replacement is not None:
        _err().print(f"It was the active key; {replacement.kid} replaces it.")


@audit_app.command("ls")
def audit_ls(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant (operator)."),
    action: str | None = typer.Option(None, "--action", help="e.g. job.rejected"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List audit entries in chain order."""
    with _friendly(), TrustClient.from_env() as trust:
        entries = list(trust.audit(tenant_id=tenant, action=action))
    if as_json:
        for e in entries:
            typer.echo(json.dumps({
                "seq": e.seq, "at": e.at.isoformat(), "actor": e.actor,
                "tenant_id": e.tenant_id, "action": e.action, "subject": e.subject,
                "detail": e.detail, "prev_hash": e.prev_hash, "hash": e.hash,
            }, sort_keys=True))
        return
    table = Table(box=None, header_style="bold")
    for column in ("SEQ", "AT", "ACTOR", "TENANT", "ACTION", "SUBJECT", "DETAIL"):
        table.add_column(column, overflow="fold")
    for e in entries:
        detail = " ".join(f"{k}={v}" for k, v in sorted(e.detail.items()) if v)
        table.add_row(str(e.seq), _when(e.at), e.actor, e.tenant_id or "-", e.action,
                      e.subject or "-", escape(detail))
    _out().print(table if entries else "No audit entries.")


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain (operator); exits 1 naming the first entry that fails."""
    with _friendly(), TrustClient.operator() as trust:
        check = trust.verify_audit()
    if check.ok:
        typer.echo(f"ok: {check.entries} entries, head {check.head_hash}")
        return
    _err().print(f"[bold red]audit log tampered:[/bold red] entry {check.first_bad_seq}: "
                 f"{escape(check.problem or '')}")
    raise typer.Exit(code=1)


@cosign_app.command("keygen")
def cosign_keygen(
    path: Path = typer.Argument(..., help="Where to write the private key (mode 0600)."),
) -> None:
    """Make a customer key; print the public key for CORRAL_AGENT_COSIGNER_KEYS."""
    with _friendly():
        try:
            public = generate_cosigner_key(path)
        except FileExistsError:
            raise typer.BadParameter(f"{path} exists; not overwriting a key") from None
    typer.echo(public)


@cosign_app.command("ls")
def cosign_ls(
    all_: bool = typer.Option(False, "--all", help="Also requests already released."),
) -> None:
    """Jobs waiting for your cosignature."""
    with _friendly(), TrustClient.tenant() as trust:
        found = trust.cosign_requests(status=None if all_ else "pending")
    table = Table(box=None, header_style="bold")
    for column in ("ID", "KIND", "RULE", "AGENT", "SANDBOX", "STATUS", "EXPIRES"):
        table.add_column(column, overflow="fold")
    for r in found:
        table.add_row(r.id, r.kind, r.rule, r.agent_id, r.sandbox_id or "-", r.status,
                      _when(r.expires_at))
    _out().print(table if found else "Nothing to co-sign.")


@cosign_app.command("sign")
def cosign_sign(
    request_id: str = typer.Argument(..., help="Cosign request id (from `corral cosign ls`)."),
    key: Path = typer.Option(..., "--key", help="Your private key file (cosign keygen)."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask before signing."),
) -> None:
    """Show the held job, then co-sign it with your key so the agent runs it."""
    with _friendly(), TrustClient.tenant() as trust:
        signer = load_cosigner_key(key)
        request = trust.cosign_request(request_id)
        _err().print(f"{request.kind} for agent {request.agent_id} (rule {request.rule}):")
        _err().print(escape(json.dumps(request.body, indent=2, sort_keys=True)))
        if not yes and not typer.confirm("Co-sign this job?", err=True):
            raise typer.Exit(code=1)
        job_id = trust.cosign(request, signer)
    typer.echo(job_id)
