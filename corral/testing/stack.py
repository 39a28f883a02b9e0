"""``LocalStack``: the whole of Corral on one machine, as real processes.

nats-server (JetStream, data under ``<home>/nats``), the control plane (SQLite under
``<home>/control-plane`` unless a database URL is given) and one agent with the gVisor
runtime, enrolled for a ``dev`` tenant. ``make up`` uses it with ``home=.corral``; the
end-to-end tests use it with a temporary home. Processes are started in their own
sessions with their PIDs in ``<home>/run``, so ``stop()`` ends exactly what it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from corral._admin import AdminClient
from corral.errors import ConflictError
from corral.testing.nats_server import NatsServer, free_port

DEFAULT_PORTS = {"nats": 14222, "api": 18080, "dataplane": 18788}
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class StackInfo:
    api_url: str
    api_key: str
    admin_token: str
    tenant_id: str
    nats_url: str
    data_plane_url: str
    console_user: str = ""
    console_password: str = field(default="", repr=False)

    @property
    def console_url(self) -> str:
        return f"{self.api_url}/console/"


class StackError(Exception):
    """The stack could not be started; the message says what to look at."""


def default_runtime() -> str:
    """gVisor, plus QEMU microVMs where QEMU is installed (``make up`` installs it)."""
    import shutil

    return "gvisor,qemu-microvm" if shutil.which("qemu-system-x86_64") else "gvisor"


class LocalStack:
    def __init__(
        self,
        home: Path,
        *,
        ports: Mapping[str, int] | None = None,
        templates_dir: Path | None = None,
        runtime: str | None = None,
        database_url: str | None = None,
        progress: Progress | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home.resolve()
        self.run_dir = self.home / "run"
        self.logs = self.home / "logs"
        self.templates_dir = (templates_dir or self.home / "templates").resolve()
        self.runtime = runtime or default_runtime()
        self.database_url = database_url
        self.progress = progress or (lambda _msg: None)
        self.extra_env = dict(extra_env or {})
        saved = self._load_json("stack.json")
        chosen = dict(DEFAULT_PORTS)
        saved_ports = saved.get("ports")
        if isinstance(saved_ports, dict):
            chosen.update({str(k): int(v) for k, v in saved_ports.items()})
        chosen.update(ports or {})
        self.ports = chosen

    # ------------------------------------------------------------ paths and state
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.ports['nats']}"

    @property
    def data_plane_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dataplane']}"

    def _load_json(self, name: str) -> dict[str, object]:
        path = self.home / name
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}

    def _write_secret(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def admin_token(self) -> str:
        path = self.home / "admin-token"
        if not path.exists():
            self._write_secret(path, "cat_" + secrets.token_urlsafe(32))
        return path.read_text().strip()

    def _pid(self, name: str) -> int | None:
        path = self.run_dir / f"{name}.pid"
        if not path.exists():
            return None
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            return None
        return pid

    def running(self) -> dict[str, bool]:
        return {n: self._pid(n) is not None for n in ("nats", "control-plane", "agent")}

    def healthy(self) -> bool:
        if not all(self.running().values()):
            return False
        try:
            return (
                httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
                and httpx.get(f"{self.data_plane_url}/healthz", timeout=2).status_code == 200
            )
        except httpx.HTTPError:
            return False

    # ------------------------------------------------------------ start / stop
    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.extra_env, **env},
                start_new_session=True,
                cwd=self.home,
            )
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def _wait(self, what: str, check: Callable[[], bool], log: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self._pid(log) is None:
                break
            time.sleep(0.1)
        tail = ""
        path = self.logs / f"{log}.log"
        if path.exists():
            tail = path.read_text(errors="replace")[-3000:]
        raise StackError(f"{what} did not become ready; last log lines of {path}:\n{tail}")

    def _check_port_free(self, name: str) -> None:
        import socket

        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                s.bind(("127.0.0.1", self.ports[name]))
            except OSError:
                raise StackError(
                    f"port {self.ports[name]} for {name} is taken by another program; "
                    f"set a different port in {self.home / 'stack.json'}"
                ) from None

    def start(self) -> StackInfo:
        """Start whatever is not running; idempotent. Returns the dev credentials."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "stack.json").write_text(json.dumps({"ports": self.ports}, indent=2))
        if self.runtime != "memory":
            from byoc_agent.runtimes.templates import ensure_template

            self.progress("template: ensuring 'base' (first build takes about a minute)")
            ensure_template(self.templates_dir, "base", progress=self.progress)
        admin = self.admin_token()
        cp_env = self._control_plane_env(admin)
        if self._pid("nats") is None:
            self._check_port_free("nats")
            self.progress(f"nats-server: starting on {self.nats_url} (per-agent JWT users)")
            server = NatsServer(port=self.ports["nats"], store_dir=self.home / "nats",
                                log_file=self.logs / "nats.log",
                                config=self._nats_auth_config(cp_env))
            conf = server.write_config()
            from corral.testing.nats_server import nats_server_binary

            self._spawn("nats", [nats_server_binary(), "-c", str(conf)], {})
            self._wait("nats-server", lambda: _port_open(self.ports["nats"]), "nats")
        if self._pid("control-plane") is None:
            self._check_port_free("api")
            self.progress(f"control plane: starting on {self.api_url}")
            self._spawn("control-plane", [sys.executable, "-m", "control_plane.main"], cp_env)
            self._wait("control plane", lambda: _http_ok(f"{self.api_url}/healthz"),
                       "control-plane")
        dev = self._bootstrap_tenant(admin)
        console_login = self._bootstrap_console_user(admin)
        if self._pid("agent") is None:
            self._check_port_free("dataplane")
            self.progress(f"agent: starting ({self.runtime}), data plane on {self.data_plane_url}")
            env = {
                "CORRAL_AGENT_HOME": str(self.home / "agent"),
                "CORRAL_AGENT_CONTROL_PLANE_URL": self.api_url,
                "CORRAL_AGENT_NAME": "local",
                "CORRAL_AGENT_DATAPLANE_PORT": str(self.ports["dataplane"]),
                "CORRAL_AGENT_RUNTIME": self.runtime,
                "CORRAL_AGENT_TEMPLATES_DIR": str(self.templates_dir),
                # Guest kernel and disk images, shared by every stack using these templates.
                "CORRAL_AGENT_MICROVM_CACHE": str(self.templates_dir.parent / "microvm"),
                "CORRAL_AGENT_HEARTBEAT_INTERVAL_S": "2",
                # One bare-metal host, this machine: the agent offers what it has.
                "CORRAL_AGENT_INVENTORY": str(self.write_local_inventory()),
                # A dev machine overcommits CPU (each sandbox still gets its cgroup quota).
                "CORRAL_AGENT_CPU_OVERCOMMIT": "4",
            }
            agent_home = self.home / "agent"
            if (agent_home / "agent-state.db").exists() and not (
                agent_home / "nats-user.jwt"
            ).exists():
                # Enrolled before NATS had per-agent users: enroll again for credentials.
                self.progress("agent: enrolled without a NATS user; enrolling again")
                for name in ("agent-state.db", "agent-state.db-wal", "agent-state.db-shm"):
                    (agent_home / name).unlink(missing_ok=True)
            if not (agent_home / "agent-state.db").exists():
                with AdminClient(admin, api_url=self.api_url) as client:
                    token = client.create_enrollment_token(dev["tenant_id"])
                env["CORRAL_AGENT_ENROLLMENT_TOKEN"] = token.token
            self._spawn("agent", [sys.executable, "-m", "byoc_agent.main"], env)
            self._wait("agent data plane", lambda: _http_ok(f"{self.data_plane_url}/healthz"),
                       "agent")
        self._wait("agent heartbeat", lambda: self._agent_online(admin, dev["tenant_id"]), "agent")
        info = StackInfo(
            api_url=self.api_url, api_key=dev["api_key"], admin_token=admin,
            tenant_id=dev["tenant_id"], nats_url=self.nats_url,
            data_plane_url=self.data_plane_url,
            console_user=console_login.get("username", ""),
            console_password=console_login.get("password", ""),
        )
        self.write_env(info)
        return info

    def write_local_inventory(self) -> Path:
        """``<home>/agent/inventory.json``: a one-host inventory for this machine (127.0.0.1)."""
        from byoc_agent.providers.baremetal import this_machine, write_inventory

        path = self.home / "agent" / "inventory.json"
        write_inventory(path, [this_machine("local")])
        return path

    def _control_plane_env(self, admin: str) -> dict[str, str]:
        env = {
            "CORRAL_HOME": str(self.home / "control-plane"),
            "CORRAL_ADMIN_TOKEN": admin,
            "CORRAL_NATS_URL": self.nats_url,
            "CORRAL_NATS_AUTH": "jwt",
            "CORRAL_LISTEN_HOST": "127.0.0.1",
            "CORRAL_LISTEN_PORT": str(self.ports["api"]),
        }
        if self.database_url:
            env["CORRAL_DATABASE_URL"] = self.database_url
        return env

    def nats_observer_creds(self) -> Path:
        """A ``.creds`` file for an unrestricted NATS user (tests that watch all traffic)."""
        out = self.home / "run" / "observer.creds"
        self._nats_auth(["user-creds", "--name", "observer", "--out", str(out)],
                        self._control_plane_env(self.admin_token()))
        return out

    def _nats_auth_config(self, cp_env: Mapping[str, str]) -> str:
        """The nats-server operator/account configuration from the control plane's NATS
        authority (created in its database on first use, sealed with its master key)."""
        out = self.home / "nats" / "auth.conf"
        self._nats_auth(["server-config", "--out", str(out)], cp_env)
        return out.read_text()

    def _nats_auth(self, args: list[str], cp_env: Mapping[str, str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "nats-auth.log").open("ab") as log:
            done = subprocess.run(
                [sys.executable, "-m", "control_plane.nats_auth", *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **self.extra_env, **cp_env}, cwd=self.home, check=False,
                timeout=120,
            )
        if done.returncode != 0:
            raise StackError(
                f"control_plane.nats_auth {args[0]} failed; see {self.logs / 'nats-auth.log'}"
            )

    def _bootstrap_tenant(self, admin: str) -> dict[str, str]:
        saved = self._load_json("dev-tenant.json")
        if saved.get("tenant_id") and saved.get("api_key"):
            return {"tenant_id": str(saved["tenant_id"]), "api_key": str(saved["api_key"])}
        with AdminClient(admin, api_url=self.api_url) as client:
            created = client.create_tenant("dev")
        dev = {"tenant_id": created.tenant.id, "api_key": created.api_key.key}
        self._write_secret(self.home / "dev-tenant.json", json.dumps(dev))
        return dev

    def _bootstrap_console_user(self, admin: str) -> dict[str, str]:
        """The first web-console user (``admin``), created once; its login in
        ``console-admin.json`` (mode 0600). ``{}`` when the user exists without that file."""
        saved = self._load_json("console-admin.json")
        if saved.get("username") and saved.get("password"):
            return {"username": str(saved["username"]), "password": str(saved["password"])}
        login = {"username": "admin", "password": secrets.token_urlsafe(18)}
        try:
            with AdminClient(admin, api_url=self.api_url) as client:
                client.create_console_user(login["username"], login["password"], "admin")
        except ConflictError:
            self.progress(
                "console: user 'admin' exists but its password is not in console-admin.json; "
                "add one with `corral admin console-user create NAME`"
            )
            return {}
        self._write_secret(self.home / "console-admin.json", json.dumps(login))
        return login

    def _agent_online(self, admin: str, tenant_id: str) -> bool:
        try:
            with AdminClient(admin, api_url=self.api_url) as client:
                return any(
                    a.status == "online" and a.tenant_id == tenant_id
                    for a in client.list_agents()
                )
        except Exception:  # the control plane may still be starting
            return False

    def write_env(self, info: StackInfo) -> Path:
        path = self.home / "dev.env"
        self._write_secret(
            path,
            f"CORRAL_API_URL={info.api_url}\nCORRAL_API_KEY={info.api_key}\n"
            f"CORRAL_ADMIN_TOKEN={info.admin_token}\n"
            # the e2b SDKs, unchanged (docs/e2b-compat.md)
            f"E2B_API_URL={info.api_url}\nE2B_SANDBOX_URL={info.data_plane_url}\n"
            f"E2B_API_KEY={info.api_key}\n",
        )
        return path

    def stop(self, *, destroy_sandboxes: bool = True) -> None:
        """Stop agent, control plane and nats-server (in that order), then the sandboxes
        the agent left running (it never kills them itself)."""
        for name in ("agent", "control-plane", "nats"):
            self.stop_service(name)
        if destroy_sandboxes and self.runtime != "memory":
            self._destroy_sandboxes()

    def stop_service(self, name: str) -> None:
        """SIGTERM one process (``nats``, ``control-plane`` or ``agent``) and wait for it to
        exit (SIGKILL after 20 s); ``start()`` brings it back. For outage tests."""
        pid = self._pid(name)
        if pid is None:
            return
        self.progress(f"{name}: stopping (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self._pid(name) is not None:
            time.sleep(0.05)
            _reap(pid)
        if self._pid(name) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        (self.run_dir / f"{name}.pid").unlink(missing_ok=True)

    def kill_agent(self) -> None:
        """SIGKILL the agent (for crash tests); its sandboxes keep running."""
        pid = self._pid("agent")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._pid("agent") is not None:
                time.sleep(0.05)
                _reap(pid)
            (self.run_dir / "agent.pid").unlink(missing_ok=True)

    def _destroy_sandboxes(self) -> None:
        import asyncio

        from byoc_agent.protocol.messages import SandboxState
        from byoc_agent.runtimes import RuntimeOptions, build_runtime
        from byoc_agent.state import AgentStateStore

        db = self.home / "agent" / "agent-state.db"
        if not db.exists():
            return
        state = AgentStateStore(db)
        runtime = build_runtime(
            self.runtime,
            state_dir=self.home / "agent" / "runtime",
            templates_root=self.templates_dir,
            options=RuntimeOptions(microvm_cache=self.templates_dir.parent / "microvm"),
        )

        async def destroy_all() -> None:
            for rec in state.sandboxes(SandboxState.RUNNING):
                self.progress(f"sandbox {rec.sandbox_id}: destroying")
                await runtime.destroy(rec.handle)

        try:
            asyncio.run(destroy_all())
        finally:
            state.close()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


__all__ = ["DEFAULT_PORTS", "LocalStack", "StackError", "StackInfo", "free_port"]
