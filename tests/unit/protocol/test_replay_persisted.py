"""The replay guard on disk: whatever order jobs arrive in and however often the agent
restarts, a job id already applied and a seq not above the last applied are refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byoc_agent.protocol import messages, verify
from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason
from byoc_agent.state import AgentStateStore

from .wire_examples import CREATE_JOB

pytestmark = pytest.mark.security

# Each step: a job (id chosen from a small pool, so replays happen), a seq, and whether the
# agent restarts (closes and reopens its state file) before it arrives.
steps = st.lists(
    st.tuples(st.integers(0, 7), st.integers(1, 12), st.booleans()), min_size=1, max_size=25
)


@settings(max_examples=40, deadline=None, database=None)
@given(steps=steps)
def test_replays_and_non_increasing_seqs_are_refused_across_restarts(
    steps: list[tuple[int, int, bool]],
) -> None:
    """The SQLite guard agrees with a model of it at every step, restarts included."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent-state.db"
        store = AgentStateStore(path)
        applied: set[str] = set()
        last = 0
        try:
            for n, seq, restart in steps:
                if restart:
                    store.close()
                    store = AgentStateStore(path)
                job = CREATE_JOB.model_copy(update={"job_id": f"job-{n:04d}", "seq": seq})
                expected = (RejectReason.REPLAYED if job.job_id in applied
                            else RejectReason.SEQ_NOT_INCREASING if seq <= last else None)
                if expected is not None:
                    with pytest.raises(EnvelopeRejectedError) as e:
                        verify.check_job_order(job, replay=store)
                    assert e.value.reason is expected
                    continue
                verify.check_job_order(job, replay=store)
                store.accept_job(job.job_id, job.seq, messages.to_json_bytes(job))
                applied.add(job.job_id)
                last = seq
        finally:
            store.close()
