"""envd's ``process.Process`` service over the agent's runtime.

A started command is a :class:`_Process` in the :class:`ProcessTable`: one task reads
the runtime's exec stream and fans stdout/stderr out to every stream attached to it
(``Start`` and any ``Connect``). Pids are the table's own numbers, not pids inside the
sandbox. Detaching a stream leaves the command running; ``SendSignal`` (SIGKILL or
SIGTERM) stops it the way the runtime stops any command (its whole process group).

Command lifetime: the client's deadline (``Connect-Timeout-Ms``, the SDK's ``timeout``)
plus :data:`DEADLINE_GRACE_S`, so the client gives up first and reports its own timeout;
without a deadline, :data:`MAX_COMMAND_S`. A command ends at the latest with its sandbox.

Not served (``unimplemented``): PTYs, stdin streaming (``stdin=True``, ``SendInput``,
``StreamInput``, ``CloseStdin``) and ``Update`` — the runtime takes stdin up front only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shlex
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import structlog
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from byoc_agent.dataplane.e2b.access import Caller, EnvdError, from_corral, resolve
from byoc_agent.dataplane.envd.process import process_connect, process_pb
from byoc_agent.dataplane.server import SandboxAccess
from byoc_agent.protocol import messages
from byoc_agent.protocol.errors import CorralError
from byoc_agent.runtimes.base import ExecRequest, Exit, Stderr, Stdout

log = structlog.get_logger(__name__)

DEADLINE_GRACE_S = 2.0
MAX_COMMAND_S = 86400.0
KEEPALIVE_HEADER = "keepalive-ping-interval"
DEFAULT_KEEPALIVE_S = 50.0
KILLED_EXIT = 137

_Chunk = tuple[str, bytes]  # ("stdout" | "stderr", data)


@dataclass(slots=True, eq=False)
class _Process:
    pid: int
    sandbox_id: str
    config: process_pb.ProcessConfig
    tag: str | None
    listeners: list[asyncio.Queue[_Chunk | None]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    end: process_pb.ProcessEvent.EndEvent | None = None
    error: EnvdError | None = None

    def subscribe(self) -> asyncio.Queue[_Chunk | None]:
        queue: asyncio.Queue[_Chunk | None] = asyncio.Queue()
        if self.end is not None or self.error is not None:
            queue.put_nowait(None)
        else:
            self.listeners.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[_Chunk | None]) -> None:
        with contextlib.suppress(ValueError):
            self.listeners.remove(queue)

    def publish(self, item: _Chunk | None) -> None:
        for queue in self.listeners:
            queue.put_nowait(item)

    def info(self) -> process_pb.ProcessInfo:
        return process_pb.ProcessInfo(config=self.config, pid=self.pid, tag=self.tag)


class ProcessTable:
    """Commands started through the E2B surface that have not ended yet, per sandbox."""

    def __init__(self, access: SandboxAccess) -> None:
        self._access = access
        self._by_pid: dict[int, _Process] = {}
        self._pids = itertools.count(1000)

    def running(self, sandbox_id: str) -> list[_Process]:
        return [p for p in self._by_pid.values() if p.sandbox_id == sandbox_id]

    def find(self, sandbox_id: str, selector: process_pb.ProcessSelector | None) -> _Process:
        match selector.selector if selector is not None else None:
            case Oneof(field="pid", value=int(pid)):
                proc = self._by_pid.get(pid)
                if proc is not None and proc.sandbox_id == sandbox_id:
                    return proc
                raise ConnectError(Code.NOT_FOUND, f"process with pid {pid} not found")
            case Oneof(field="tag", value=str(tag)):
                for proc in self.running(sandbox_id):
                    if proc.tag == tag:
                        return proc
                raise ConnectError(Code.NOT_FOUND, f"process with tag {tag!r} not found")
            case _:
                raise ConnectError(Code.INVALID_ARGUMENT, "process selector needs a pid or a tag")

    def start(
        self, caller: Caller, config: process_pb.ProcessConfig, tag: str | None, timeout_s: float
    ) -> _Process:
        if not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd is empty")
        cwd = config.cwd if config.has_field("cwd") and config.cwd else None
        if cwd is not None and not cwd.startswith("/"):
            cwd = f"/root/{cwd}"
        request = ExecRequest(
            cmd=shlex.join([config.cmd, *config.args]),
            env=dict(config.envs),
            cwd=cwd,
            timeout_s=timeout_s,
        )
        proc = _Process(
            pid=next(self._pids), sandbox_id=caller.sandbox_id, config=config, tag=tag
        )
        self._by_pid[proc.pid] = proc
        proc.task = asyncio.create_task(self._run(caller, proc, request), name=f"e2b-{proc.pid}")
        return proc

    async def _run(self, caller: Caller, proc: _Process, request: ExecRequest) -> None:
        bound = log.bind(sandbox_id=caller.sandbox_id, pid=proc.pid)
        events = self._access.runtime.exec(caller.handle, request)
        try:
            async for event in events:
                if isinstance(event, Stdout):
                    proc.publish(("stdout", event.data))
                elif isinstance(event, Stderr):
                    proc.publish(("stderr", event.data))
                elif isinstance(event, Exit):
                    proc.end = _end_event(event)
        except CorralError as e:
            proc.error = from_corral(e, caller.sandbox_id)
        except asyncio.CancelledError:
            proc.end = process_pb.ProcessEvent.EndEvent(
                exit_code=KILLED_EXIT, exited=False, status="signal: killed",
                error="signal: killed",
            )
            bound.info("e2b_process_killed")
        except Exception as e:  # a runtime bug must still end the streams attached to it
            bound.exception("e2b_process_failed", error_type=type(e).__name__)
            proc.error = EnvdError(500, "the command failed in the agent")
        finally:
            if isinstance(events, AsyncGenerator):  # closing it kills a command still running
                with contextlib.suppress(Exception):
                    await events.aclose()
            if proc.end is None and proc.error is None:
                proc.error = EnvdError(500, "the command ended without an exit status")
            self._by_pid.pop(proc.pid, None)
            proc.publish(None)
            proc.listeners.clear()

    async def kill(self, proc: _Process) -> None:
        task = proc.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _end_event(event: Exit) -> process_pb.ProcessEvent.EndEvent:
    if event.timed_out:
        return process_pb.ProcessEvent.EndEvent(
            exit_code=event.exit_code, exited=False, status="signal: killed",
            error="the command ran past its timeout",
        )
    return process_pb.ProcessEvent.EndEvent(
        exit_code=event.exit_code, exited=True, status=f"exit status {event.exit_code}"
    )


def _start(pid: int) -> process_pb.ProcessEvent:
    start: Oneof[Literal["start"], process_pb.ProcessEvent.StartEvent] = Oneof(
        "start", process_pb.ProcessEvent.StartEvent(pid=pid)
    )
    return process_pb.ProcessEvent(event=start)


def _keepalive() -> process_pb.ProcessEvent:
    ping: Oneof[Literal["keepalive"], process_pb.ProcessEvent.KeepAlive] = Oneof(
        "keepalive", process_pb.ProcessEvent.KeepAlive()
    )
    return process_pb.ProcessEvent(event=ping)


def _data(kind: str, data: bytes) -> process_pb.ProcessEvent:
    if kind == "stdout":
        stdout: Oneof[Literal["stdout"], bytes] = Oneof("stdout", data)
        event = process_pb.ProcessEvent.DataEvent(output=stdout)
    else:
        stderr: Oneof[Literal["stderr"], bytes] = Oneof("stderr", data)
        event = process_pb.ProcessEvent.DataEvent(output=stderr)
    chunk: Oneof[Literal["data"], process_pb.ProcessEvent.DataEvent] = Oneof("data", event)
    return process_pb.ProcessEvent(event=chunk)


def _end(end: process_pb.ProcessEvent.EndEvent) -> process_pb.ProcessEvent:
    last: Oneof[Literal["end"], process_pb.ProcessEvent.EndEvent] = Oneof("end", end)
    return process_pb.ProcessEvent(event=last)


def _keepalive_s(headers: Mapping[str, str]) -> float:
    raw = headers.get(KEEPALIVE_HEADER, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_KEEPALIVE_S
    return min(max(value, 1.0), 300.0)


async def _follow(
    proc: _Process, queue: asyncio.Queue[_Chunk | None], keepalive_s: float
) -> AsyncIterator[process_pb.ProcessEvent]:
    """Start event, output as it comes (keepalives while quiet), then end or the error."""
    try:
        yield _start(proc.pid)
        while True:
            try:
                async with asyncio.timeout(keepalive_s):
                    item = await queue.get()
            except TimeoutError:
                yield _keepalive()
                continue
            if item is None:
                break
            kind, data = item
            yield _data(kind, data)
        if proc.error is not None:
            raise proc.error.connect()
        if proc.end is not None:
            yield _end(proc.end)
    finally:
        proc.unsubscribe(queue)


class ProcessService(process_connect.Process):
    """The Connect handlers; each call is authorized by its own headers."""

    def __init__(self, access: SandboxAccess, table: ProcessTable) -> None:
        self._access = access
        self._table = table

    def _caller(self, headers: Mapping[str, str]) -> Caller:
        try:
            return resolve(self._access, headers, messages.Scope.EXEC)
        except EnvdError as e:
            raise e.connect() from e

    async def list(
        self,
        request: process_pb.ListRequest,
        ctx: RequestContext[process_pb.ListRequest, process_pb.ListResponse],
    ) -> process_pb.ListResponse:
        caller = self._caller(ctx.request_headers)
        procs = self._table.running(caller.sandbox_id)
        return process_pb.ListResponse(processes=[p.info() for p in procs])

    async def start(
        self,
        request: process_pb.StartRequest,
        ctx: RequestContext[process_pb.StartRequest, process_pb.StartResponse],
    ) -> AsyncIterator[process_pb.StartResponse]:
        caller = self._caller(ctx.request_headers)
        if request.pty is not None:
            raise ConnectError(Code.UNIMPLEMENTED, "Corral sandboxes have no PTY")
        if request.has_field("stdin") and request.stdin:
            raise ConnectError(
                Code.UNIMPLEMENTED,
                "stdin streaming is not supported by Corral; start with stdin=False",
            )
        if request.process is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "process is required")
        deadline_ms = ctx.timeout_ms
        timeout_s = (
            deadline_ms / 1000.0 + DEADLINE_GRACE_S if deadline_ms else MAX_COMMAND_S
        )
        tag = request.tag if request.has_field("tag") else None
        proc = self._table.start(caller, request.process, tag, min(timeout_s, MAX_COMMAND_S))
        queue = proc.subscribe()
        async for event in _follow(proc, queue, _keepalive_s(ctx.request_headers)):
            yield process_pb.StartResponse(event=event)

    async def connect(
        self,
        request: process_pb.ConnectRequest,
        ctx: RequestContext[process_pb.ConnectRequest, process_pb.ConnectResponse],
    ) -> AsyncIterator[process_pb.ConnectResponse]:
        caller = self._caller(ctx.request_headers)
        proc = self._table.find(caller.sandbox_id, request.process)
        queue = proc.subscribe()
        async for event in _follow(proc, queue, _keepalive_s(ctx.request_headers)):
            yield process_pb.ConnectResponse(event=event)

    async def send_signal(
        self,
        request: process_pb.SendSignalRequest,
        ctx: RequestContext[process_pb.SendSignalRequest, process_pb.SendSignalResponse],
    ) -> process_pb.SendSignalResponse:
        caller = self._caller(ctx.request_headers)
        if request.signal not in (process_pb.Signal.SIGKILL, process_pb.Signal.SIGTERM):
            raise ConnectError(Code.INVALID_ARGUMENT, "signal must be SIGKILL or SIGTERM")
        proc = self._table.find(caller.sandbox_id, request.process)
        await self._table.kill(proc)
        return process_pb.SendSignalResponse()


