"""A stand-in for Firecracker + its jailer, checked against Firecracker's published API.

No Firecracker binary can be installed on the machines these tests run on, so this module is
what the runtime drives instead. It has three parts:

- **The schema**: pydantic models of the request bodies of every endpoint the runtime uses,
  written from Firecracker's swagger specification (required fields, enums, ranges; unknown
  fields rejected as Firecracker's serde structs do).
- **The state machine** Firecracker enforces: pre-boot resources only before InstanceStart;
  InstanceStart only with a boot source and a root drive; ``PATCH /vm`` only after start;
  snapshot/create only while paused; snapshot/load only on a fresh process. A request that
  breaks a rule gets Firecracker's answer, ``400 {"fault_message": ...}``.
- **A jailer**: run as ``python firecracker_api.py <jailer argv>``, it checks the jailer's
  command line, records it, and serves the API on ``<chroot>/<--api-sock>`` (paths in bodies
  resolve inside the chroot, as for a jailed Firecracker). After start it proxies the vsock
  the way Firecracker does (``CONNECT <port>`` -> ``OK <n>``) to a small fake guest daemon
  that speaks the runtime's wire frames.

Every request is appended to ``<jail dir>/requests.jsonl`` (method, path, body, status,
fault); ``<chroot base>/faults.json`` ({"PUT /machine-config": "message"}) makes the stand-in
fail that call with that fault, as Firecracker would.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if __package__ in (None, ""):  # run as a script by the fake jailer
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from byoc_agent.runtimes.guest import wire

# ---- the schema (from Firecracker's swagger: definitions used by the runtime) ----------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BootSource(_Body):
    kernel_image_path: str
    initrd_path: str | None = None
    boot_args: str | None = None


class TokenBucket(_Body):
    size: int = Field(ge=0)
    one_time_burst: int | None = Field(default=None, ge=0)
    refill_time: int = Field(ge=0)


class RateLimiter(_Body):
    bandwidth: TokenBucket | None = None
    ops: TokenBucket | None = None


class Drive(_Body):
    drive_id: str
    is_root_device: bool
    partuuid: str | None = None
    cache_type: Literal["Unsafe", "Writeback"] | None = None
    is_read_only: bool | None = None
    path_on_host: str | None = None
    rate_limiter: RateLimiter | None = None
    io_engine: Literal["Sync", "Async"] | None = None
    socket: str | None = None


class MachineConfiguration(_Body):
    vcpu_count: int = Field(ge=1, le=32)
    mem_size_mib: int = Field(ge=1)
    smt: bool | None = None
    track_dirty_pages: bool | None = None
    huge_pages: Literal["None", "Transparent", "2M"] | None = None
    cpu_template: str | None = None


class NetworkInterface(_Body):
    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None
    mtu: int | None = Field(default=None, ge=68, le=65535)
    rx_rate_limiter: RateLimiter | None = None
    tx_rate_limiter: RateLimiter | None = None


class Vsock(_Body):
    guest_cid: int = Field(ge=3)
    uds_path: str
    vsock_id: str | None = None


class InstanceActionInfo(_Body):
    action_type: Literal["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]


class Vm(_Body):
    state: Literal["Paused", "Resumed"]


class SnapshotCreateParams(_Body):
    snapshot_path: str
    mem_file_path: str
    snapshot_type: Literal["Full", "Diff"] | None = None


class MemoryBackend(_Body):
    backend_type: Literal["File", "Uffd"]
    backend_path: str


class VsockOverride(_Body):
    uds_path: str


class SnapshotLoadParams(_Body):
    snapshot_path: str
    mem_file_path: str | None = None
    mem_backend: MemoryBackend | None = None
    enable_diff_snapshots: bool | None = None
    track_dirty_pages: bool | None = None
    resume_vm: bool | None = None
    vsock_override: VsockOverride | None = None
    clock_realtime: bool | None = None


# (method, path pattern) -> body model. Paths not listed are not Firecracker's.
ENDPOINTS: dict[tuple[str, str], type[_Body]] = {
    ("PUT", r"/boot-source"): BootSource,
    ("PUT", r"/drives/(?P<id>[^/]+)"): Drive,
    ("PUT", r"/machine-config"): MachineConfiguration,
    ("PUT", r"/network-interfaces/(?P<id>[^/]+)"): NetworkInterface,
    ("PUT", r"/vsock"): Vsock,
    ("PUT", r"/actions"): InstanceActionInfo,
    ("PATCH", r"/vm"): Vm,
    ("PUT", r"/snapshot/create"): SnapshotCreateParams,
    ("PUT", r"/snapshot/load"): SnapshotLoadParams,
}


class Fault(Exception):
    """Firecracker's 400 answer."""


def match(method: str, path: str) -> tuple[type[_Body], str | None]:
    for (m, pattern), model in ENDPOINTS.items():
        found = re.fullmatch(pattern, path)
        if found and m == method:
            return model, found.groupdict().get("id")
    raise Fault(f"Invalid request method and/or path: {method} {path}.")


# ---- the state machine ---------------------------------------------------------------


class Machine:
    """What one Firecracker process knows and allows."""

    def __init__(self, chroot: Path) -> None:
        self.chroot = chroot
        self.state: Literal["NotStarted", "Running", "Paused"] = "NotStarted"
        self.config: dict[str, Any] = {"drives": {}, "network-interfaces": {}}
        self.loaded = False
        self.guest: FakeGuest | None = None

    def host(self, inside: str) -> Path:
        if not inside.startswith("/"):
            raise Fault(f"path {inside} is not absolute")
        return self.chroot / inside.lstrip("/")

    def _must_exist(self, inside: str | None, what: str) -> None:
        if inside is not None and not self.host(inside).is_file():
            raise Fault(
                f"{what} cannot be opened: {inside}: No such file or directory (os error 2)"
            )

    def _pre_boot(self) -> None:
        if self.state != "NotStarted" or self.loaded:
            raise Fault("The requested operation is not supported after starting the microVM.")

    def handle(self, method: str, path: str, raw: bytes) -> None:
        model, res_id = match(method, path)
        try:
            body = model.model_validate_json(raw or b"{}")
        except ValidationError as e:
            first = e.errors()[0]
            raise Fault(
                "An error occurred when deserializing the json body of a request: "
                f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
            ) from None
        if isinstance(body, BootSource):
            self._pre_boot()
            self._must_exist(body.kernel_image_path, "Kernel file")
            self._must_exist(body.initrd_path, "Initrd file")
            self.config["boot-source"] = body.model_dump(exclude_none=True)
        elif isinstance(body, Drive):
            self._pre_boot()
            if body.drive_id != res_id:
                raise Fault("The id from the path does not match the id from the body!")
            if body.path_on_host is None and body.socket is None:
                raise Fault("Unable to create the block device: no path_on_host")
            self._must_exist(body.path_on_host, "Drive file")
            roots = [d for k, d in self.config["drives"].items()
                     if d["is_root_device"] and k != body.drive_id]  # fmt: skip
            if body.is_root_device and roots:
                raise Fault("A root block device already exists!")
            self.config["drives"][body.drive_id] = body.model_dump(exclude_none=True)
        elif isinstance(body, MachineConfiguration):
            self._pre_boot()
            if body.smt and body.vcpu_count > 1 and body.vcpu_count % 2:
                raise Fault("The vCPU number is invalid! It must be 1 or even with SMT.")
            self.config["machine-config"] = body.model_dump(exclude_none=True)
        elif isinstance(body, NetworkInterface):
            self._pre_boot()
            if body.iface_id != res_id:
                raise Fault("The id from the path does not match the id from the body!")
            self.config["network-interfaces"][body.iface_id] = body.model_dump(exclude_none=True)
        elif isinstance(body, Vsock):
            self._pre_boot()
            self.config["vsock"] = body.model_dump(exclude_none=True)
        elif isinstance(body, InstanceActionInfo):
            if body.action_type != "InstanceStart":
                if self.state == "NotStarted":
                    raise Fault("The microVM is not running.")
                return
            self._pre_boot()
            if "boot-source" not in self.config:
                raise Fault("Cannot start microvm without kernel configuration.")
            if not any(d["is_root_device"] for d in self.config["drives"].values()):
                raise Fault("Cannot start microvm without a root block device.")
            self.state = "Running"
            self._start_guest()
        elif isinstance(body, Vm):
            if self.state == "NotStarted":
                raise Fault("The microVM is not running.")
            self.state = "Paused" if body.state == "Paused" else "Running"
        elif isinstance(body, SnapshotCreateParams):
            if self.state != "Paused":
                raise Fault("Cannot save the microVM state: the microVM is not paused.")
            guest = self.guest.memory() if self.guest is not None else {}
            self.host(body.snapshot_path).write_text(json.dumps({"config": self.config}))
            self.host(body.mem_file_path).write_text(json.dumps(guest))
        elif isinstance(body, SnapshotLoadParams):
            configured = [k for k, v in self.config.items() if v]
            if self.state != "NotStarted" or self.loaded or configured:
                raise Fault(
                    "Loading a microVM snapshot not allowed after configuring boot-specific "
                    "resources."
                )
            if (body.mem_file_path is None) == (body.mem_backend is None):
                raise Fault("Exactly one of mem_file_path or mem_backend must be given.")
            mem = body.mem_file_path or (body.mem_backend.backend_path if body.mem_backend else "")
            self._must_exist(body.snapshot_path, "Snapshot state file")
            self._must_exist(mem, "Memory file")
            saved = json.loads(self.host(body.snapshot_path).read_text())
            self.config = saved["config"]
            if body.vsock_override is not None:
                self.config["vsock"]["uds_path"] = body.vsock_override.uds_path
            self.loaded = True
            self.state = "Running" if body.resume_vm else "Paused"
            self._start_guest(json.loads(self.host(mem).read_text()))

    def _start_guest(self, memory: dict[str, Any] | None = None) -> None:
        vsock = self.config.get("vsock")
        if vsock is None:
            return
        args = dict(
            w.split("=", 1) for w in str(self.config["boot-source"].get("boot_args", "")).split()
            if "=" in w
        )  # fmt: skip
        port = int(str(args.get("corral.channel", "vsock:0")).removeprefix("vsock:"))
        self.guest = FakeGuest(self.host(vsock["uds_path"]), port, memory or {})
        self.guest.start()


# ---- the vsock proxy and a fake guest daemon ------------------------------------------


class FakeGuest:
    """Firecracker's vsock proxy plus a guest daemon that answers ping, sync, identity and
    exec (it echoes the command, and counts execs: the count is its "memory")."""

    def __init__(self, uds: Path, port: int, memory: dict[str, Any]) -> None:
        self.uds, self.port = uds, port
        self.execs = int(memory.get("execs", 0))
        self.hostname = str(memory.get("hostname", ""))
        self._lock = threading.Lock()

    def memory(self) -> dict[str, Any]:
        return {"execs": self.execs, "hostname": self.hostname}

    def start(self) -> None:
        self.uds.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.uds))
        listener.listen(8)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(1)
                if not chunk:
                    return
                line += chunk
            if line != f"CONNECT {self.port}\n".encode():
                return  # Firecracker drops a connection to a port nobody listens on
            conn.sendall(b"OK 1073741824\n")
            decoder = wire.Decoder()
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for header, body in decoder.feed(data):
                    for reply, payload in self._answer(header, body):
                        conn.sendall(wire.encode({"id": header["id"], **reply}, payload))

    def _answer(self, header: dict[str, Any], body: bytes) -> list[tuple[dict[str, Any], bytes]]:
        op = header.get("op")
        if op == "ping":
            return [({"ev": "pong"}, b"")]
        if op in ("sync", "identity"):
            if op == "identity":
                self.hostname = str(header["hostname"])
            return [({"ev": "ok"}, b"")]
        if op == "exec":
            with self._lock:
                self.execs += 1
                count = self.execs
            out = f"{header['cmd']} #{count} on {self.hostname or 'boot'}".encode()
            return [({"ev": "stdout"}, out), ({"ev": "exit", "code": 0}, b"")]
        return [({"ev": "error", "code": "invalid", "message": f"fake guest: no {op}"}, b"")]


# ---- the HTTP server on the API socket ------------------------------------------------


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    machine: Machine
    log_path: Path
    faults_path: Path
    lock: threading.Lock


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:  # a unix socket has no client address
        return "api.sock"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = f"{self.command} {self.path}"
        with self.server.lock:
            try:
                faults = json.loads(self.server.faults_path.read_text())
            except (OSError, ValueError):
                faults = {}
            try:
                if key in faults:
                    raise Fault(str(faults[key]))
                if self.headers.get_content_type() != "application/json":
                    raise Fault("Content-Type must be application/json")
                self.server.machine.handle(self.command, self.path, raw)
                status, reply = 204, None
            except Fault as e:
                status, reply = 400, {"fault_message": str(e)}
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            fault = reply["fault_message"] if reply else None
            entry = {"method": self.command, "path": self.path, "body": body,
                     "status": status, "fault": fault}  # fmt: skip
            with open(self.server.log_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        data = json.dumps(reply).encode() if reply else b""
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_PUT = do_PATCH = do_GET = _handle


def serve_api(api_sock: Path, chroot: Path, log_path: Path, faults_path: Path) -> None:
    api_sock.unlink(missing_ok=True)
    server = _Server(str(api_sock), _Handler)
    server.machine = Machine(chroot)
    server.log_path = log_path
    server.faults_path = faults_path
    server.lock = threading.Lock()
    with open(log_path, "a") as fh:
        fh.write(json.dumps({"event": "start", "pid": os.getpid()}) + "\n")
    server.serve_forever()


# ---- the jailer's command line --------------------------------------------------------


def parse_jailer(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The jailer's options (as its documentation lists them) and Firecracker's after ``--``."""
    if "--" in argv:
        at = argv.index("--")
        own, rest = argv[:at], argv[at + 1 :]
    else:
        own, rest = argv, []
    parser = argparse.ArgumentParser(prog="jailer", exit_on_error=False)
    parser.add_argument("--id", required=True)
    parser.add_argument("--exec-file", required=True)
    parser.add_argument("--uid", required=True, type=int)
    parser.add_argument("--gid", required=True, type=int)
    parser.add_argument("--cgroup-version", choices=["1", "2"], default="1")
    parser.add_argument("--cgroup", action="append", default=[])
    parser.add_argument("--parent-cgroup")
    parser.add_argument("--chroot-base-dir", default="/srv/jailer")
    parser.add_argument("--netns")
    parser.add_argument("--resource-limit", action="append", default=[])
    parser.add_argument("--daemonize", action="store_true")
    parser.add_argument("--new-pid-ns", action="store_true")
    args = parser.parse_args(own)
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", args.id):
        raise ValueError(f"invalid --id {args.id!r}: alphanumerics and hyphens, at most 64")
    exec_file = Path(args.exec_file)
    if not exec_file.is_file() or "firecracker" not in exec_file.name:
        raise ValueError(f"--exec-file {exec_file} must be a file named *firecracker*")
    if not Path(args.chroot_base_dir).is_absolute():
        raise ValueError("--chroot-base-dir must be absolute")
    for cg in args.cgroup:
        if not re.fullmatch(r"[a-z_]+\.[a-z_.]+=.+", cg):
            raise ValueError(f"invalid --cgroup {cg!r}: <file>=<value>")
    fc = argparse.ArgumentParser(prog="firecracker", exit_on_error=False)
    fc.add_argument("--api-sock", default="/run/firecracker.socket")
    fc_args = fc.parse_args(rest)
    return args, [fc_args.api_sock]


def main(argv: list[str]) -> int:
    try:
        args, (api_sock,) = parse_jailer(argv)
    except (ValueError, argparse.ArgumentError) as e:
        print(f"jailer: {e}", file=sys.stderr)
        return 2
    jail_dir = Path(args.chroot_base_dir) / Path(args.exec_file).name / args.id
    chroot = jail_dir / "root"
    chroot.mkdir(parents=True, exist_ok=True)
    (jail_dir / "jailer-argv.json").write_text(json.dumps(argv))
    serve_api(
        chroot / api_sock.lstrip("/"),
        chroot,
        jail_dir / "requests.jsonl",
        Path(args.chroot_base_dir) / "faults.json",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
