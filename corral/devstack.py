"""``python -m corral.devstack up|down|status``: the embedded single-machine stack.

``make up`` and ``make down`` call this. State lives under ``.corral/`` and survives
down/up. ``up`` is a no-op when the stack is already healthy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console

from corral.testing.stack import LocalStack, StackError

console = Console(stderr=True)


# One pre-started gVisor sandbox of the SDK's default size: creates in ``make up`` are
# served warm (ADR 0025). CORRAL_AGENT_WARM_POOL in the environment wins; "" turns it off.
DEV_WARM_POOL = "base:1:512:gvisor=1"
# One restored copy of each recent snapshot: restores and forks are served warm (ADR 0029).
DEV_RESTORE_POOL = "1"


def _stack(home: Path) -> LocalStack:
    extra_env = {
        "CORRAL_AGENT_WARM_POOL": os.environ.get("CORRAL_AGENT_WARM_POOL", DEV_WARM_POOL),
        "CORRAL_AGENT_RESTORE_POOL": os.environ.get("CORRAL_AGENT_RESTORE_POOL",
                                                    DEV_RESTORE_POOL),
    }  # fmt: skip
    return LocalStack(home, progress=lambda m: console.print(f"[dim]•[/] {m}"),
                      extra_env=extra_env)  # fmt: skip


def up(home: Path) -> int:
    stack = _stack(home)
    env = home / "dev.env"
    # A dev.env written before the E2B variables existed is rewritten by start().
    if stack.healthy() and env.exists() and "E2B_API_URL=" in env.read_text():
        console.print("[green]Corral is already running[/] (nothing to do).")
        _print_env(home)
        return 0
    try:
        info = stack.start()
    except StackError as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    console.print("[dim]•[/] smoke test: python3 -c 'print(6*7)' in a gVisor sandbox")
    from corral import Sandbox

    with Sandbox.create(api_url=info.api_url, api_key=info.api_key, timeout=120) as sb:
        result = sb.commands.run('python3 -c "print(6*7)"')
    if result.stdout.strip() != "42":
        console.print(f"[red]smoke test failed:[/] {result.stdout!r} {result.stderr!r}")
        return 1
    print(result.stdout.strip())
    console.print(f"[green]Corral is up.[/] Sandbox {sb.id} printed {result.stdout.strip()}.")
    _print_env(home)
    return 0


def _print_env(home: Path) -> None:
    env = (home / "dev.env").read_text()
    console.print(f"\nCredentials ({home / 'dev.env'}):")
    for line in env.splitlines():
        print(f"  {line}")
    console.print(f"\nUse them: [bold]set -a; . {home / 'dev.env'}; set +a[/]")
    _print_console_login(home)


def _print_console_login(home: Path) -> None:
    """Where the web console is and how to sign in (the first user, made by ``up``)."""
    path = home / "console-admin.json"
    stack = LocalStack(home)
    console.print(f"\nWeb console: [bold]{stack.api_url}/console/[/]")
    if not path.exists():
        console.print("  add a user: corral admin console-user create NAME")
        return
    login = json.loads(path.read_text())
    print(f"  username: {login.get('username', '')}")
    print(f"  password: {login.get('password', '')}   (also in {path})")


def down(home: Path) -> int:
    _stack(home).stop()
    console.print("[green]Corral stopped.[/] State kept in " + str(home))
    return 0


def status(home: Path) -> int:
    stack = _stack(home)
    for name, alive in stack.running().items():
        console.print(f"{name:15} {'[green]running' if alive else '[red]stopped'}")
    return 0 if stack.healthy() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.devstack")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--home", type=Path, default=Path(".corral"))
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.command](args.home)


if __name__ == "__main__":
    sys.exit(main())
