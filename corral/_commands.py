"""Running commands in a sandbox over the data plane's NDJSON exec stream."""

from __future__ import annotations

import base64
import binascii
import codecs
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from corral._dataplane import DataPlane
from corral._http import About, converted, error_from_event
from corral._wire import ExecEventWire
from corral.errors import (
    APIError,
    CommandExitError,
    CommandTimeoutError,
    InvalidArgumentError,
    ServiceUnavailableError,
)

#: What ``timeout=None`` asks for: a day, the longest a sandbox may live.
MAX_COMMAND_TIMEOUT_S = 86400

#: Extra seconds the client waits for the stream beyond the command's own timeout.
STREAM_GRACE_S = 30.0

OutputHandler = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a finished command printed and how it exited (``exit_code`` 0 is success)."""

    stdout: str
    stderr: str
    exit_code: int
    cmd: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> CommandResult:
        """Return self if the command exited 0, else raise :class:`CommandExitError`."""
        if self.exit_code == 0:
            return self
        tail = self.stderr.strip().splitlines()[-1:] or self.stdout.strip().splitlines()[-1:]
        said = f": {tail[0][:200]}" if tail else ""
        raise CommandExitError(
            f"Command {self.cmd!r} exited with code {self.exit_code}{said}",
            exit_code=self.exit_code,
            stdout=self.stdout,
            stderr=self.stderr,
        )


class _Output:
    """Decodes one output stream incrementally, so split UTF-8 sequences survive."""

    def __init__(self, handler: OutputHandler | None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._handler = handler
        self._parts: list[str] = []

    def feed(self, data: bytes, *, final: bool = False) -> None:
        text = self._decoder.decode(data, final=final)
        if text:
            self._parts.append(text)
            if self._handler is not None:
                self._handler(text)

    def text(self) -> str:
        return "".join(self._parts)


class Commands:
    """``sandbox.commands``: run shell commands inside the sandbox."""

    def __init__(self, data_plane: DataPlane) -> None:
        self._dp = data_plane

    def run(
        self,
        cmd: str,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = 60,
        stdin: str | bytes | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> CommandResult:
        """Run ``cmd`` with ``sh -c`` and wait for it; output streams to the callbacks live.

        A non-zero exit is returned, not raised (call ``.check()`` to raise). A command
        still running after ``timeout`` seconds is killed and raises CommandTimeoutError;
        ``timeout=None`` lets it run as long as the sandbox may live (a day).
        """
        sid = self._dp.sandbox_id
        if timeout is not None and timeout <= 0:
            raise InvalidArgumentError(
                f"timeout must be positive seconds or None, got {timeout!r}.", field="timeout"
            )
        body: dict[str, object] = {"cmd": cmd, "env": dict(envs or {})}
        if cwd is not None:
            body["cwd"] = cwd
        body["timeout_s"] = MAX_COMMAND_TIMEOUT_S if timeout is None else timeout
        if stdin is not None:
            raw = stdin.encode() if isinstance(stdin, str) else stdin
            body["stdin"] = base64.b64encode(raw).decode("ascii")
        read_timeout = None if timeout is None else timeout + STREAM_GRACE_S
        about = About("data", resource="sandbox", sandbox_id=sid)
        stdout, stderr = _Output(on_stdout), _Output(on_stderr)
        response = self._dp.open(
            "POST",
            f"/v1/sandboxes/{sid}/exec",
            about,
            json=body,
            timeout=httpx.Timeout(self._dp.http.timeout, read=read_timeout),
        )
        url = str(response.request.url)
        try:
            with converted(about, url):
                try:
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        event = _parse_event(line, sid)
                        if event.type in ("stdout", "stderr"):
                            out = stdout if event.type == "stdout" else stderr
                            out.feed(_b64(event.data, sid))
                        elif event.type == "exit":
                            stdout.feed(b"", final=True)
                            stderr.feed(b"", final=True)
                            if event.timed_out:
                                raise CommandTimeoutError(
                                    f"Command {cmd!r} in sandbox {sid} ran past its "
                                    f"{timeout}s timeout and was killed; raise timeout= or "
                                    "make it faster.",
                                    stdout=stdout.text(),
                                    stderr=stderr.text(),
                                    sandbox_id=sid,
                                )
                            return CommandResult(
                                stdout.text(), stderr.text(), _exit_code(event, sid), cmd
                            )
                        elif event.type == "error":
                            raise error_from_event(event.code, event.message, about)
                except httpx.ReadTimeout as e:
                    raise CommandTimeoutError(
                        f"No output or exit from command {cmd!r} in sandbox {sid} within "
                        f"{read_timeout}s; the data plane stopped answering.",
                        stdout=stdout.text(),
                        stderr=stderr.text(),
                        sandbox_id=sid,
                    ) from e
        finally:
            response.close()
        raise ServiceUnavailableError(
            f"The exec stream for sandbox {sid} ended before command {cmd!r} exited (the agent "
            "may have restarted). Run the command again.",
            sandbox_id=sid,
        )


def _parse_event(line: str, sandbox_id: str) -> ExecEventWire:
    try:
        return ExecEventWire.model_validate_json(line)
    except ValidationError as e:
        raise APIError(
            f"Unreadable exec event from the data plane of sandbox {sandbox_id}: {line[:120]!r}",
            sandbox_id=sandbox_id,
        ) from e


def _b64(data: str, sandbox_id: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as e:
        raise APIError(
            f"Exec output from sandbox {sandbox_id} was not valid base64.", sandbox_id=sandbox_id
        ) from e


def _exit_code(event: ExecEventWire, sandbox_id: str) -> int:
    if event.exit_code is None:
        raise APIError(
            f"Exec exit event from sandbox {sandbox_id} carried no exit_code.",
            sandbox_id=sandbox_id,
        )
    return event.exit_code
