"""Exec events as NDJSON lines: the one encoding exec output is streamed with over HTTP.

The data plane (to SDKs) and hostd (to the manager agent) both send a command's events as
one JSON object per line::

    {"type": "stdout", "data": "<base64>"}
    {"type": "stderr", "data": "<base64>"}
    {"type": "exit", "exit_code": 0, "timed_out": false}      the last line, exactly once
    {"type": "error", "code": "<ErrorCode>", "message": "..."} instead of exit, on failure
"""

from __future__ import annotations

import base64
import binascii
import json

from byoc_agent.protocol.errors import CorralError, error_from_code
from byoc_agent.runtimes.base import ExecEvent, Exit, Stderr, Stdout


def encode_event(event: ExecEvent) -> bytes:
    if isinstance(event, Exit):
        obj: dict[str, object] = {
            "type": "exit", "exit_code": event.exit_code, "timed_out": event.timed_out
        }
    else:
        obj = {
            "type": "stdout" if isinstance(event, Stdout) else "stderr",
            "data": base64.b64encode(event.data).decode("ascii"),
        }
    return json.dumps(obj).encode() + b"\n"


def encode_error(error: CorralError) -> bytes:
    return json.dumps(
        {"type": "error", "code": error.code.value, "message": error.message}
    ).encode() + b"\n"


def decode_line(line: str | bytes) -> ExecEvent:
    """One line back to its event; an ``error`` line raises the typed error it names.

    Raises CorralError for a line that is none of the four shapes.
    """
    try:
        obj = json.loads(line)
        kind = obj["type"]
        if kind in ("stdout", "stderr"):
            data = base64.b64decode(obj["data"], validate=True)
            return Stdout(data) if kind == "stdout" else Stderr(data)
        if kind == "exit" and type(obj["exit_code"]) is int and type(obj["timed_out"]) is bool:
            return Exit(exit_code=obj["exit_code"], timed_out=obj["timed_out"])
        if kind == "error":
            error = error_from_code(str(obj["code"]), str(obj["message"]))
        else:
            error = CorralError(f"malformed exec event of type {str(kind)[:40]!r}")
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise CorralError(f"malformed exec event line ({type(e).__name__})") from None
    raise error
