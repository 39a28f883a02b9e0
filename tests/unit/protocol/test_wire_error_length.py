"""A failed job's error message always fits in its result, however long the cause."""

from __future__ import annotations

from byoc_agent.agent import _wire_message
from byoc_agent.protocol import messages


def test_a_long_error_message_is_cut_to_what_a_result_carries() -> None:
    """A runsc panic runs to many kilobytes; the result must still be valid and signed, or
    the caller waits for a job that never answers."""
    long = "runsc run failed (128): " + "goroutine trace line\n" * 500
    cut = _wire_message(long)
    assert len(cut) == messages.MAX_ERROR_MESSAGE
    assert cut.startswith("runsc run failed (128): ")
    assert cut.endswith("…")
    assert messages.WireError(code="internal", message=cut).message == cut
    assert _wire_message("short") == "short"
