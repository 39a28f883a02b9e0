"""Exec events as NDJSON lines: every event round-trips; an error line raises its type."""

from __future__ import annotations

import pytest

from byoc_agent.protocol.errors import (
    CorralError,
    InvalidArgumentError,
    SandboxNotRunningError,
)
from byoc_agent.runtimes.base import Exit, Stderr, Stdout
from byoc_agent.runtimes.exec_stream import decode_line, encode_error, encode_event


@pytest.mark.parametrize(
    "event",
    [Stdout(b""), Stdout(b"\x00\xff\n"), Stderr(b"err"), Exit(0), Exit(124, timed_out=True)],
)
def test_each_event_round_trips(event: Stdout | Stderr | Exit) -> None:
    line = encode_event(event)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert decode_line(line) == event


def test_an_error_line_raises_the_error_it_names() -> None:
    with pytest.raises(SandboxNotRunningError, match="gone"):
        decode_line(encode_error(SandboxNotRunningError("gone")))
    with pytest.raises(InvalidArgumentError, match="bad cwd"):
        decode_line(encode_error(InvalidArgumentError("bad cwd")))


@pytest.mark.parametrize(
    "line",
    [b"", b"{", b"[]", b'{"type": "stdout"}', b'{"type": "stdout", "data": "!"}',
     b'{"type": "exit", "exit_code": "0", "timed_out": false}',
     b'{"type": "exit", "exit_code": 0, "timed_out": 1}', b'{"type": "nope"}'],
)  # fmt: skip
def test_a_malformed_line_is_a_corral_error(line: bytes) -> None:
    with pytest.raises(CorralError, match="malformed"):
        decode_line(line)
