"""``Sandbox``: create, find, run commands in and kill Corral sandboxes.

::

    with Sandbox.create(template="base", timeout=600) as sb:
        result = sb.commands.run("python -c 'print(6 * 7)'")
        sb.files.write("/home/user/notes.txt", "hi")
        snap = sb.snapshot()                      # memory, processes and files
        twin = Sandbox.create(snapshot=snap)      # a new machine from that state
        a, b = sb.fork(2)                         # two more, from one snapshot

Lifecycle calls go to the control plane with your API key; ``commands`` and ``files`` go
directly to the sandbox's data plane with a short-lived per-sandbox token.
"""

from __future__ import annotations

import builtins
import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType

import httpx

from corral._commands import Commands
from corral._config import ConnectionConfig
from corral._dataplane import Access, DataPlane
from corral._files import Files
from corral._http import About, HttpClient, parse
from corral._wire import ForkWire, Page, SandboxWire, SnapshotWire, utc
from corral.errors import (
    CorralError,
    CosignatureRequiredError,
    InvalidArgumentError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxTimeoutError,
)

#: Seconds between polls while a new sandbox is still ``pending``.
POLL_INTERVAL_S = 0.2
# How long create waits for a sandbox the API answered as still pending (202): an agent
# that adds a host to its fleet for it answers after the host boots, minutes on metal.
DEFAULT_START_TIMEOUT_S = 900.0
PENDING_REPORT_S = 5.0  # how often create tells ``on_pending`` that it is still waiting
DEFAULT_PAGE_SIZE = 100
_SANDBOX_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class SandboxState(StrEnum):
    """Sandbox states; ``SandboxInfo.state`` compares equal to these."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    KILLED = "killed"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


TERMINAL_STATES = frozenset({SandboxState.KILLED, SandboxState.TIMED_OUT, SandboxState.FAILED})


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """A sandbox as the control plane records it (no command output or file data)."""

    id: str
    state: str
    template: str
    cpu: int | None
    memory_mb: int | None
    timeout_s: int | None
    metadata: dict[str, str] = field(default_factory=dict)
    agent_id: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    end_reason: str | None = None
    isolation: str = "gvisor"
    # TCP destinations ("a.b.c.d:port") it may connect to; empty: no network.
    egress: tuple[str, ...] = ()

    @property
    def is_running(self) -> bool:
        return self.state == SandboxState.RUNNING

    @classmethod
    def from_wire(cls, wire: SandboxWire) -> SandboxInfo:
        return cls(
            id=wire.id,
            state=wire.state,
            template=wire.template,
            cpu=wire.cpu,
            memory_mb=wire.memory_mb,
            timeout_s=wire.timeout_s,
            metadata=dict(wire.metadata),
            agent_id=wire.agent_id,
            created_at=utc(wire.created_at),
            expires_at=utc(wire.expires_at),
            end_reason=wire.end_reason,
            isolation=wire.isolation,
            egress=tuple(wire.egress),
        )


class _SandboxPage(Page[SandboxWire]):
    pass


class _SnapshotPage(Page[SnapshotWire]):
    pass


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A sandbox's memory, processes and files, saved on the agent that ran it.

    Start new sandboxes from it with ``Sandbox.create(snapshot=...)``; delete it with
    :func:`delete_snapshot`. Template, isolation, cpu and memory are the source's.
    """

    id: str
    sandbox_id: str
    template: str
    isolation: str
    cpu: int | None
    memory_mb: int | None
    agent_id: str | None = None
    created_at: datetime | None = None

    @classmethod
    def from_wire(cls, wire: SnapshotWire) -> Snapshot:
        return cls(
            id=wire.id,
            sandbox_id=wire.sandbox_id,
            template=wire.template,
            isolation=wire.isolation,
            cpu=wire.cpu,
            memory_mb=wire.memory_mb,
            agent_id=wire.agent_id,
            created_at=utc(wire.created_at),
        )


class Sandbox:
    """A running sandbox. Get one with :meth:`create` or :meth:`connect`, not the constructor.

    Each instance owns one HTTP client; :meth:`kill` and :meth:`close` release it, and
    using the sandbox as a context manager kills it on exit.
    """

    def __init__(
        self,
        info: SandboxInfo,
        *,
        config: ConnectionConfig,
        http: HttpClient,
        access: Access | None = None,
    ) -> None:
        self._info = info
        self._config = config
        self._http = http
        self._data_plane = DataPlane(http, config, info.id, access)
        self.commands = Commands(self._data_plane)
        self.files = Files(self._data_plane)

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def info(self) -> SandboxInfo:
        """The info last fetched; :meth:`get_info` fetches it afresh."""
        return self._info

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r})"

    # ---- lifecycle (control plane) ----

    @classmethod
    def create(
        cls,
        template: str = "base",
        cpu: int = 1,
        memory_mb: int = 512,
        timeout: int = 300,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        isolation: str | None = None,
        egress: Sequence[str] | None = None,
        snapshot: Snapshot | str | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
        on_pending: Callable[[str, float], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> Sandbox:
        """Start a sandbox and wait until it runs; it is killed after ``timeout`` seconds.

        When no host has room, the agent may add one first (minutes on bare metal): the
        API then answers with the sandbox still pending and create polls it for up to
        ``start_timeout`` seconds, calling ``on_pending(sandbox_id, seconds_waited)`` at
        once and then about every 5 s. If it has not started by then it is killed (so it is never
        billed unseen) and :class:`SandboxTimeoutError` is raised.

        ``isolation``: ``"gvisor"`` (a user-space kernel) or ``"microvm"`` (a kernel of its
        own in a virtual machine); by default the tenant's required isolation, else gvisor.

        ``egress``: TCP destinations ``"a.b.c.d:port"`` the sandbox may connect to (at most
        16, IPv4 literals; nothing else is reachable). Needs ``isolation="microvm"``, and the
        agent grants only destinations its operator allows (``CORRAL_AGENT_MICROVM_EGRESS``).
        By default: no network. Inside the sandbox, ``/run/corral/egress`` maps each
        destination to the address to use.

        ``snapshot`` (a :class:`Snapshot` or its id): start from that saved state instead of
        the template — files, processes and memory as they were, on a new machine (its own
        id, hostname and machine-id). Template, isolation, cpu and memory are the
        snapshot's; ``template``, ``cpu``, ``memory_mb`` and ``isolation`` are ignored,
        and so is its egress list (giving ``egress`` as well is an error).
        """
        config = ConnectionConfig.resolve(
            api_key=api_key, api_url=api_url, request_timeout=request_timeout
        )
        body: dict[str, object] = {
            "timeout_s": timeout,
            "env": dict(env or {}),
            "metadata": dict(metadata or {}),
        }
        if snapshot is not None:
            snapshot_id = snapshot.id if isinstance(snapshot, Snapshot) else snapshot
            if not isinstance(snapshot_id, str) or not _SANDBOX_ID_RE.match(snapshot_id):
                raise InvalidArgumentError(
                    f"{snapshot_id!r} is not a snapshot id.", field="snapshot"
                )
            body["snapshot_id"] = snapshot_id
        else:
            body.update({"template": template, "cpu": cpu, "memory_mb": memory_mb})
            if isolation is not None:
                body["isolation"] = isolation
        if egress:
            if isinstance(egress, str):  # one "a.b.c.d:port" would be split into characters
                raise InvalidArgumentError(
                    "egress is a list of 'a.b.c.d:port' strings, not one string.", field="egress"
                )
            body["egress"] = list(egress)
        http = HttpClient(config.request_timeout, transport)
        try:
            about = About("control")
            response = http.request(
                "POST", f"{config.api_url}/v1/sandboxes", about, token=config.api_key, json=body
            )
            sandbox = cls._started(
                parse(SandboxWire, response, about), config, http, start_timeout, on_pending
            )
        except BaseException:
            http.close()
            raise
        return sandbox

    @classmethod
    def _started(
        cls,
        wire: SandboxWire,
        config: ConnectionConfig,
        http: HttpClient,
        start_timeout: float | None = None,
        on_pending: Callable[[str, float], None] | None = None,
    ) -> Sandbox:
        if wire.cosign_request_id:
            raise CosignatureRequiredError(
                f"Sandbox {wire.id} waits for your cosignature (agent rule): run `corral "
                f"cosign sign {wire.cosign_request_id} --key <your key file>`, then "
                f"Sandbox.connect({wire.id!r}).",
                sandbox_id=wire.id, cosign_request_id=wire.cosign_request_id,
            )
        access = wire.initial_access()
        sandbox = cls(
            SandboxInfo.from_wire(wire),
            config=config,
            http=http,
            access=None if access is None else Access.from_wire(access),
        )
        sandbox._wait_until_running(
            config.request_timeout if start_timeout is None else start_timeout, on_pending
        )
        return sandbox

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> Sandbox:
        """Attach to an existing, running sandbox by id."""
        if not _SANDBOX_ID_RE.match(sandbox_id):
            raise InvalidArgumentError(
                f"{sandbox_id!r} is not a sandbox id (ids look like the ones "
                "`corral sandbox ls` prints).",
                field="sandbox_id",
            )
        config = ConnectionConfig.resolve(
            api_key=api_key, api_url=api_url, request_timeout=request_timeout
        )
        http = HttpClient(config.request_timeout, transport)
        try:
            info = _get_info(http, config, sandbox_id)
            if info.state in TERMINAL_STATES:
                raise SandboxNotRunningError(
                    f"Sandbox {sandbox_id} is {info.state}"
                    + (f" ({info.end_reason})" if info.end_reason else "")
                    + "; it cannot be reconnected. Create a new sandbox.",
                    sandbox_id=sandbox_id,
                )
        except BaseException:
            http.close()
            raise
        return cls(info, config=config, http=http)

    @classmethod
    def list(
        cls,
        metadata: Mapping[str, str] | None = None,
        state: str | None = None,
        limit: int | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Your sandboxes, filtered by exact ``metadata`` matches and ``state``, all pages.

        ``limit`` caps how many are returned in total (None: all of them).
        """
        if limit is not None and limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}.", field="limit")
        if page_size < 1:
            raise InvalidArgumentError(
                f"page_size must be at least 1, got {page_size}.", field="page_size"
            )
        config = ConnectionConfig.resolve(
            api_key=api_key, api_url=api_url, request_timeout=request_timeout
        )
        about = About("control")
        found: builtins.list[SandboxInfo] = []
        cursor: str | None = None
        http = HttpClient(config.request_timeout, transport)
        with contextlib.closing(http):
            while limit is None or len(found) < limit:
                want = page_size if limit is None else min(page_size, limit - len(found))
                params: dict[str, str | int] = {"limit": want}
                if state is not None:
                    params["state"] = str(state)
                for key, value in (metadata or {}).items():
                    params[f"metadata.{key}"] = value
                if cursor is not None:
                    params["cursor"] = cursor
                response = http.request(
                    "GET",
                    f"{config.api_url}/v1/sandboxes",
                    about,
                    token=config.api_key,
                    params=params,
                )
                page = parse(_SandboxPage, response, about)
                found.extend(SandboxInfo.from_wire(w) for w in page.items)
                cursor = page.next_cursor
                if not cursor or not page.items:
                    break
        return found if limit is None else found[:limit]

    def get_info(self) -> SandboxInfo:
        """Fetch the sandbox's current state from the control plane."""
        self._info = _get_info(self._http, self._config, self.id)
        return self._info

    def is_running(self) -> bool:
        """Whether the control plane reports the sandbox as running."""
        return self.get_info().is_running

    def set_timeout(self, seconds: int) -> SandboxInfo:
        """Kill the sandbox ``seconds`` from now instead of at its current deadline."""
        about = About("control", resource="sandbox", sandbox_id=self.id)
        response = self._http.request(
            "POST",
            f"{self._config.api_url}/v1/sandboxes/{self.id}/timeout",
            about,
            token=self._config.api_key,
            json={"timeout_s": seconds},
        )
        self._info = SandboxInfo.from_wire(parse(SandboxWire, response, about))
        return self._info

    def pause(self) -> SandboxInfo:
        """Save the sandbox's memory and files and stop it; it is not billed while paused.

        Commands and file calls fail until :meth:`Sandbox.resume`; running command streams
        end. Processes, open files and everything written are there after resume.
        """
        about = About("control", resource="sandbox", sandbox_id=self.id)
        response = self._http.request(
            "POST",
            f"{self._config.api_url}/v1/sandboxes/{self.id}/pause",
            about,
            token=self._config.api_key,
        )
        self._info = SandboxInfo.from_wire(parse(SandboxWire, response, about))
        return self._info

    @classmethod
    def resume(
        cls,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> Sandbox:
        """Continue a paused sandbox where it stopped, and connect to it."""
        if not _SANDBOX_ID_RE.match(sandbox_id):
            raise InvalidArgumentError(f"{sandbox_id!r} is not a sandbox id.")
        config = ConnectionConfig.resolve(
            api_key=api_key, api_url=api_url, request_timeout=request_timeout
        )
        about = About("control", resource="sandbox", sandbox_id=sandbox_id)
        http = HttpClient(config.request_timeout, transport)
        try:
            http.request(
                "POST",
                f"{config.api_url}/v1/sandboxes/{sandbox_id}/resume",
                about,
                token=config.api_key,
            )
        finally:
            http.close()
        return cls.connect(
            sandbox_id,
            api_key=api_key,
            api_url=api_url,
            request_timeout=request_timeout,
            transport=transport,
        )

    def snapshot(self) -> Snapshot:
        """Save this sandbox's memory, processes and files (its filesystem is synced first).

        The sandbox stops for a moment and runs on. Start new sandboxes from the snapshot
        with ``Sandbox.create(snapshot=...)``; it is kept until :func:`delete_snapshot`.
        """
        about = About("control", resource="sandbox", sandbox_id=self.id)
        response = self._http.request(
            "POST",
            f"{self._config.api_url}/v1/sandboxes/{self.id}/snapshots",
            about,
            token=self._config.api_key,
        )
        return Snapshot.from_wire(parse(SnapshotWire, response, about))

    def fork(self, n: int = 1) -> builtins.list[Sandbox]:
        """``n`` (1 to 10) new sandboxes in this one's current state, from one snapshot.

        Each is a new machine (own id, hostname, machine-id and random seed) with this
        sandbox's files, processes and memory, metadata and timeout length; from then on
        they all run apart. All or nothing: if one cannot start, none is left running.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
            raise InvalidArgumentError(f"n: must be between 1 and 10, got {n!r}", field="n")
        about = About("control", resource="sandbox", sandbox_id=self.id)
        response = self._http.request(
            "POST",
            f"{self._config.api_url}/v1/sandboxes/{self.id}/fork",
            about,
            token=self._config.api_key,
            json={"count": n},
            timeout=max(self._config.request_timeout, 60.0 * n),
        )
        forks: builtins.list[Sandbox] = []
        for wire in parse(ForkWire, response, about).items:
            http = HttpClient(self._config.request_timeout, self._http.transport)
            try:
                forks.append(type(self)._started(wire, self._config, http))
            except BaseException:
                http.close()
                raise
        return forks

    def kill(self) -> bool:
        """Kill the sandbox and close this client; False if it was already gone."""
        about = About("control", resource="sandbox", sandbox_id=self.id)
        try:
            self._http.request(
                "DELETE",
                f"{self._config.api_url}/v1/sandboxes/{self.id}",
                about,
                token=self._config.api_key,
            )
        except SandboxNotFoundError:
            return False
        finally:
            self.close()
        return True

    def close(self) -> None:
        """Release this client's connections without killing the sandbox."""
        self._http.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http.closed:
            return
        try:
            self.kill()
        except Exception:
            if exc is None:
                raise
            # The block's own exception is the one to see; the kill failure is secondary.

    def _wait_until_running(
        self, within_s: float, on_pending: Callable[[str, float], None] | None = None
    ) -> None:
        started = time.monotonic()
        told = -float("inf")  # the first report comes at once
        while self._info.state == SandboxState.PENDING:
            waited = time.monotonic() - started
            if waited >= within_s:
                raise SandboxTimeoutError(
                    f"Sandbox {self.id} was still pending after {within_s:g}s; "
                    f"{self._give_up_on_start()} Raise start_timeout to wait longer.",
                    sandbox_id=self.id,
                )
            if on_pending is not None and time.monotonic() - told >= PENDING_REPORT_S:
                told = time.monotonic()
                on_pending(self.id, waited)
            time.sleep(POLL_INTERVAL_S)
            self.get_info()
        if self._info.state in TERMINAL_STATES:
            reason = f" ({self._info.end_reason})" if self._info.end_reason else ""
            raise SandboxNotRunningError(
                f"Sandbox {self.id} ended as {self._info.state}{reason} while starting. "
                "Check the template name and the agent's logs.",
                sandbox_id=self.id,
            )


    def _give_up_on_start(self) -> str:
        """Kill a sandbox that did not start in time; says what happened, for the error."""
        try:
            self.kill()
        except CorralError as e:
            return (f"killing it failed ({e}): kill it with `corral sandbox kill {self.id}` "
                    "if it starts later.")  # fmt: skip
        return "it was killed, so it will not start later or be billed."


def _get_info(http: HttpClient, config: ConnectionConfig, sandbox_id: str) -> SandboxInfo:
    about = About("control", resource="sandbox", sandbox_id=sandbox_id)
    response = http.request(
        "GET", f"{config.api_url}/v1/sandboxes/{sandbox_id}", about, token=config.api_key
    )
    return SandboxInfo.from_wire(parse(SandboxWire, response, about))


def list_snapshots(
    *,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[Snapshot]:
    """Every snapshot of your tenant that is not deleted."""
    config = ConnectionConfig.resolve(
        api_key=api_key, api_url=api_url, request_timeout=request_timeout
    )
    about = About("control")
    out: list[Snapshot] = []
    with contextlib.closing(HttpClient(config.request_timeout, transport)) as http:
        cursor: str | None = None
        while True:
            params = {"limit": str(DEFAULT_PAGE_SIZE)}
            if cursor:
                params["cursor"] = cursor
            response = http.request(
                "GET", f"{config.api_url}/v1/snapshots", about, token=config.api_key,
                params=params,
            )
            page = parse(_SnapshotPage, response, about)
            out.extend(Snapshot.from_wire(w) for w in page.items)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor


def delete_snapshot(
    snapshot: Snapshot | str,
    *,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> None:
    """Delete a snapshot's saved state; sandboxes started from it run on."""
    snapshot_id = snapshot.id if isinstance(snapshot, Snapshot) else snapshot
    if not _SANDBOX_ID_RE.match(snapshot_id):
        raise InvalidArgumentError(f"{snapshot_id!r} is not a snapshot id.", field="snapshot")
    config = ConnectionConfig.resolve(
        api_key=api_key, api_url=api_url, request_timeout=request_timeout
    )
    about = About("control")
    with contextlib.closing(HttpClient(config.request_timeout, transport)) as http:
        http.request(
            "DELETE", f"{config.api_url}/v1/snapshots/{snapshot_id}", about,
            token=config.api_key,
        )
