"""The daemon inside every microVM: runs commands and serves files over one virtio-serial port.

Standard library only — it runs on the template's own ``python3``. The initramfs copies it and
``wire.py`` to ``/run/corral`` and starts ``guestd.py --init`` as PID 1 in the root disk.

As PID 1 it prepares the guest (hostname and machine-id from the kernel command line, mounts),
then forks the daemon and reaps every orphan; a daemon that dies is started again. The daemon
reads frames (see ``wire.py``) from the port; each request carries an ``id`` and is answered
with frames of the same ``id``:

    ping                      -> {ev: pong}
    exec {cmd, env, cwd, timeout_s, stdin}
                              -> {ev: stdout|stderr} + body ..., then {ev: exit, code, timed_out}
    stdin {eof} + body        -> (feeds a running exec's stdin)
    cancel {target}           -> (kills the target exec and its process group)
    write {path, final} + body chunks -> {ev: ok} after the final chunk (atomic rename)
    read {path}               -> {ev: data} + body ..., then {ev: ok}
    list {path}               -> {ev: ok, entries: [...]}
    remove {path} / mkdir {path} / sync -> {ev: ok}
    identity {hostname, machine_id} + body (random seed) -> {ev: ok}   (a fork's new self)

Failures answer ``{ev: error, code: not_found|invalid|io, message}``. When the agent goes
away (the port reads EOF) every running command is killed: nobody is left to read it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, BinaryIO

try:
    from byoc_agent.runtimes.guest import wire
except ImportError:  # in the guest, wire.py is copied next to this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wire  # type: ignore[import-not-found,no-redef]

PORT_NAME = "corral"
READ_SIZE = 1 << 16
DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}


def _cmdline_args() -> dict[str, str]:
    try:
        with open("/proc/cmdline") as fh:
            words = fh.read().split()
    except OSError:
        return {}
    return dict(w.split("=", 1) for w in words if w.startswith("corral.") and "=" in w)


def _mount(kind: str, target: str, options: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    argv = ["mount", "-t", kind, kind, target] + (["-o", options] if options else [])
    subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def prepare_guest() -> None:
    """PID 1's one-time setup: pseudo filesystems, hostname, a fresh machine-id, /work."""
    if not os.path.exists("/proc/self"):
        _mount("proc", "/proc")
    if not os.path.exists("/sys/class"):
        _mount("sysfs", "/sys")
    _mount("devpts", "/dev/pts", "newinstance,ptmxmode=0666")
    _mount("tmpfs", "/dev/shm", "mode=1777")  # noqa: S108 (the guest's own /dev/shm)
    args = _cmdline_args()
    hostname = args.get("corral.hostname", "sandbox")
    socket.sethostname(hostname)
    with open("/etc/hostname", "w") as fh:
        fh.write(hostname + "\n")
    with open("/etc/machine-id", "w") as fh:  # new per boot: forks never share one
        fh.write(uuid.uuid4().hex + "\n")
    write_egress_map(args.get("corral.egress", ""))
    os.makedirs("/work", exist_ok=True)
    os.makedirs("/tmp", mode=0o1777, exist_ok=True)  # noqa: S108 (the guest's own /tmp)


EGRESS_MAP = "/run/corral/egress"


def write_egress_map(spec: str) -> None:
    """Tell the guest's users where its allowed destinations are: one line per destination,
    ``<guest address:port> <destination:port>`` (the initramfs configured eth0 already)."""
    lines = [pair.replace("=", " ", 1) for pair in spec.split(",") if "=" in pair]
    if lines:
        os.makedirs(os.path.dirname(EGRESS_MAP), exist_ok=True)
        with open(EGRESS_MAP, "w") as fh:
            fh.write("\n".join(lines) + "\n")


def set_identity(hostname: str, machine_id: str, seed: bytes) -> None:
    """Become a new machine: a fork must not share its parent's name, id or random state."""
    socket.sethostname(hostname)
    with open("/etc/hostname", "w") as fh:
        fh.write(hostname + "\n")
    with open("/etc/machine-id", "w") as fh:
        fh.write(machine_id + "\n")
    if seed:
        with open("/dev/urandom", "wb") as fh:  # mixed into the pool (not credited)
            fh.write(seed)


def find_port() -> str:
    base = "/sys/class/virtio-ports"
    while True:
        try:
            for entry in os.listdir(base):
                with open(os.path.join(base, entry, "name")) as fh:
                    if fh.read().strip() == PORT_NAME:
                        return "/dev/" + entry
        except OSError:
            pass
        time.sleep(0.05)


class Port:
    """The virtio-serial port: one reader (the main loop), many locked writers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        self._lock = threading.Lock()

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        data = memoryview(wire.encode(header, body))
        with self._lock:
            try:
                while data:
                    n = os.write(self.fd, data)
                    data = data[n:]
            except OSError:
                pass  # the agent went away; its requests are being cancelled

    def read(self) -> bytes:
        try:
            return os.read(self.fd, READ_SIZE)
        except OSError:
            return b""


class Exec:
    """One running command: pumps its output to the port, enforces its deadline."""

    def __init__(self, port: Port, rid: int, req: dict[str, Any]) -> None:
        self.port, self.rid, self.req = port, rid, req
        self.proc: subprocess.Popen[bytes] | None = None
        self.timed_out = False

    def start(self) -> None:
        cwd = self.req.get("cwd") or "/work"
        if not os.path.isdir(cwd):
            self.port.send(
                {
                    "id": self.rid,
                    "ev": "error",
                    "code": "invalid",
                    "message": f"cwd {cwd} does not exist in the sandbox",
                }
            )
            return
        env = dict(DEFAULT_ENV)
        env.update({str(k): str(v) for k, v in (self.req.get("env") or {}).items()})
        try:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", str(self.req["cmd"])],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE if self.req.get("stdin") else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            self.port.send({"id": self.rid, "ev": "error", "code": "invalid", "message": str(e)})
            return
        threading.Thread(target=self._run, daemon=True).start()

    def feed(self, body: bytes, eof: bool) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None:
            return
        try:
            if body:
                proc.stdin.write(body)
                proc.stdin.flush()
            if eof:
                proc.stdin.close()
        except OSError:
            pass

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _pump(self, stream: BinaryIO, ev: str) -> None:
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, READ_SIZE)
            except OSError:
                break
            if not chunk:
                break
            self.port.send({"id": self.rid, "ev": ev}, chunk)

    def _run(self) -> None:
        proc = self.proc
        assert proc is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        pumps = [
            threading.Thread(target=self._pump, args=(proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, "stderr"), daemon=True),
        ]
        for t in pumps:
            t.start()
        timeout = float(self.req.get("timeout_s") or 60.0)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.kill()
            code = proc.wait()
        if self.timed_out:
            self.kill()  # whatever it left in the background goes too
        # Output a background child keeps writing is not waited for past a short grace.
        for t in pumps:
            t.join(timeout=0.5)
        self.port.send({"id": self.rid, "ev": "exit", "code": code, "timed_out": self.timed_out})
        with contextlib.suppress(OSError):
            proc.stdout.close()
            proc.stderr.close()


def _error(e: OSError) -> tuple[str, str]:
    if isinstance(e, FileNotFoundError):
        return "not_found", f"{e.filename or ''}: no such file or directory".lstrip(": ")
    if isinstance(e, (IsADirectoryError, NotADirectoryError, FileExistsError)):
        return "invalid", str(e)
    return "io", str(e)


def _entry(path: str, name: str) -> dict[str, Any]:
    full = os.path.join(path, name)
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    return {
        "name": name,
        "path": full,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


class Daemon:
    def __init__(self, port: Port) -> None:
        self.port = port
        self.execs: dict[int, Exec] = {}
        self.writes: dict[int, tuple[str, BinaryIO]] = {}

    def reset(self) -> None:
        """The agent disconnected: commands still running for it are killed (nobody reads
        them). What a finished command left in the background is the user's and stays."""
        for ex in self.execs.values():
            if ex.proc is not None and ex.proc.poll() is None:
                ex.kill()
        self.execs.clear()
        for tmp, fh in self.writes.values():
            fh.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.writes.clear()

    def handle(self, header: dict[str, Any], body: bytes) -> None:
        rid = int(header["id"])
        op = header.get("op")
        try:
            if op == "ping":
                self.port.send({"id": rid, "ev": "pong"})
            elif op == "exec":
                self.execs = {
                    k: v for k, v in self.execs.items() if v.proc is None or v.proc.poll() is None
                }
                ex = Exec(self.port, rid, header)
                self.execs[rid] = ex
                ex.start()
            elif op == "stdin":
                target = self.execs.get(rid)
                if target is not None:
                    target.feed(body, bool(header.get("eof")))
            elif op == "cancel":
                target = self.execs.pop(int(header.get("target", -1)), None)
                if target is not None:
                    target.kill()
            elif op == "write":
                self._write(rid, header, body)
            elif op == "read":
                threading.Thread(
                    target=self._read, args=(rid, str(header["path"])), daemon=True
                ).start()
            elif op == "list":
                path = str(header["path"])
                entries = [_entry(path, n) for n in sorted(os.listdir(path))]
                self.port.send({"id": rid, "ev": "ok", "entries": entries})
            elif op == "remove":
                path = str(header["path"])
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                self.port.send({"id": rid, "ev": "ok"})
            elif op == "mkdir":
                os.makedirs(str(header["path"]), exist_ok=True)
                self.port.send({"id": rid, "ev": "ok"})
            elif op == "sync":
                os.sync()
                self.port.send({"id": rid, "ev": "ok"})
            elif op == "identity":
                set_identity(str(header["hostname"]), str(header["machine_id"]), body)
                self.port.send({"id": rid, "ev": "ok"})
            else:
                self.port.send(
                    {"id": rid, "ev": "error", "code": "invalid", "message": f"unknown op {op!r}"}
                )
        except OSError as e:
            code, message = _error(e)
            self.port.send({"id": rid, "ev": "error", "code": code, "message": message})

    def _write(self, rid: int, header: dict[str, Any], body: bytes) -> None:
        path = str(header["path"])
        if rid not in self.writes:
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            tmp = f"{path}.corral-{rid}.tmp"
            self.writes[rid] = (tmp, open(tmp, "wb"))  # noqa: SIM115 (closed on final)
        tmp, fh = self.writes[rid]
        try:
            fh.write(body)
            if header.get("final"):
                del self.writes[rid]
                fh.close()
                os.replace(tmp, path)
                self.port.send({"id": rid, "ev": "ok"})
        except OSError:
            self.writes.pop(rid, None)
            fh.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _read(self, rid: int, path: str) -> None:
        try:
            with open(path, "rb") as fh:
                while True:
                    chunk = fh.read(wire.CHUNK)
                    if not chunk:
                        break
                    self.port.send({"id": rid, "ev": "data"}, chunk)
            self.port.send({"id": rid, "ev": "ok"})
        except OSError as e:
            code, message = _error(e)
            self.port.send({"id": rid, "ev": "error", "code": code, "message": message})


def serve() -> None:
    port = Port(find_port())
    daemon = Daemon(port)
    decoder = wire.Decoder()
    while True:
        data = port.read()
        if not data:  # no agent connected (or it just left)
            daemon.reset()
            decoder.reset()
            time.sleep(0.05)
            continue
        try:
            frames = decoder.feed(data)
        except wire.FrameError:
            daemon.reset()
            decoder.reset()
            continue
        for header, body in frames:
            daemon.handle(header, body)


def init() -> None:
    """PID 1: set up, run the daemon as a child (restarted if it dies), reap orphans."""
    prepare_guest()
    child = 0
    while True:
        if child == 0:
            child = os.fork()
            if child == 0:
                try:
                    serve()
                finally:
                    os._exit(1)
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            child = 0
            continue
        if pid == child:
            child = 0
            time.sleep(0.1)


if __name__ == "__main__":
    if "--init" in sys.argv:
        init()
    else:
        serve()
