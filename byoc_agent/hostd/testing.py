"""A real ``corral-hostd`` process on this machine, for tests and a local "boot".

:class:`LocalHostd` lays out what a host's user data would (certificate, key and secret
files with their modes, ``hostd.json``) under one directory, with loopback and local paths
instead of the host's, starts ``python -m byoc_agent.hostd`` on a free loopback port, waits
until its health check answers, and stops it (SIGTERM, then SIGKILL) by its own pid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

import byoc_agent
from byoc_agent.runtimes.base import SandboxHandle

from .client import RemoteRuntime, pinned_ssl_context
from .config import build_host_runtime
from .credentials import new_host_credentials
from .userdata import HostdBootConfig
from .wire import HEALTH

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalHostd:
    """One hostd process under ``root`` (``etc/`` for its files, ``data/`` for its state)."""

    def __init__(
        self,
        root: Path,
        *,
        templates_dir: Path,
        boot: HostdBootConfig | None = None,
        runtimes: tuple[str, ...] = ("gvisor",),
        listen_host: str = "127.0.0.1",
    ) -> None:
        """``boot``: the user data's settings (e.g. from ``parse_user_data``); by default
        fresh credentials for ``runtimes`` on a free port. ``listen_host`` must be a
        loopback address (a test's stand-in for a host's private address)."""
        if not ipaddress.ip_address(listen_host).is_loopback:
            raise ValueError(f"LocalHostd listens on loopback only, not {listen_host}")
        if boot is None:
            boot = HostdBootConfig(
                credentials=new_host_credentials(f"local-{root.name}"),
                listen_port=free_port(),
                runtimes=runtimes,
            )
        self.boot = boot
        self.root = root
        etc = root / "etc"
        self.config = dataclasses.replace(
            boot.hostd_config(),
            listen_host=listen_host,
            cert_file=etc / "cert.pem",
            key_file=etc / "key.pem",
            secret_file=etc / "secret",
            data_dir=root / "data",
            templates_dir=templates_dir,
        )
        self.config_file = etc / "hostd.json"
        self.log_file = root / "hostd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"https://{self.config.listen_host}:{self.config.listen_port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def write_files(self, *, key_mode: int = 0o600, secret_mode: int = 0o600) -> None:
        creds = self.boot.credentials
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        _write(self.config.cert_file, creds.cert_pem, 0o644)
        _write(self.config.key_file, creds.key_pem, key_mode)
        _write(self.config.secret_file, creds.secret.encode(), secret_mode)
        _write(self.config_file, self.config.to_json().encode(), 0o644)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "byoc_agent.hostd", "--config", str(self.config_file)]

    def env(self) -> dict[str, str]:
        """The environment, with this checkout's packages first on the path."""
        source = str(Path(byoc_agent.__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": source if not path else f"{source}:{path}"}

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start and wait for the health check; raises RuntimeError with the log's tail."""
        if not self.config_file.exists():
            self.write_files()
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=self.env(), start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        context = pinned_ssl_context(self.boot.credentials.cert_pem)
        headers = {"authorization": f"Bearer {self.boot.credentials.secret}"}
        with httpx.Client(verify=context, headers=headers, timeout=2.0, trust_env=False) as http:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"hostd exited with {self._proc.returncode}: {self.tail()}")
                try:
                    if http.get(self.base_url + HEALTH).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"hostd did not answer in {timeout_s} s: {self.tail()}")
                time.sleep(0.05)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; only this process (sandboxes stay)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def destroy_leftovers(self) -> list[str]:
        """With hostd stopped: destroy, from this process, every sandbox its runtimes still
        keep state for (a test that failed half-way); returns their ids."""
        left = [
            (name, d.name)
            for name in self.config.runtimes
            if (self.config.runtime_dir / name / "sandboxes").is_dir()
            for d in sorted((self.config.runtime_dir / name / "sandboxes").iterdir())
        ]
        if left:
            runtime = build_host_runtime(self.config)

            async def destroy_all() -> None:
                for name, sandbox_id in left:
                    await runtime.destroy(SandboxHandle(sandbox_id, name, 0.0))

            asyncio.run(destroy_all())
        return [sandbox_id for _, sandbox_id in left]

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, name: str = "hostd") -> RemoteRuntime:
        creds = self.boot.credentials
        return RemoteRuntime(self.base_url, cert_pem=creds.cert_pem, secret=creds.secret,
                             name=name)  # fmt: skip

    def tail(self, limit: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def __enter__(self) -> LocalHostd:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


__all__ = ["LocalHostd", "free_port"]
