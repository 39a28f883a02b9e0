"""Time window, replay and ordering of authentic jobs, at and around their boundaries.

The per-reason behaviour over a real nats-server is in
tests/integration/agent/test_job_verification.py; these pin the exact edges.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byoc_agent.protocol import messages, signing, verify
from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason
from byoc_agent.protocol.verify import CLOCK_SKEW_S

from .wire_examples import (
    AUDIENCE,
    CONTROL_PLANE_KEY,
    CREATE_JOB,
    NOW,
    MemoryReplayGuard,
    keyring_for,
)

FUZZ = settings(max_examples=200, deadline=None, database=None)


def _signed(job: messages.Job) -> bytes:
    return signing.sign(CONTROL_PLANE_KEY, messages.JOB_TYP, messages.to_json_bytes(job))


def _verify(
    job: messages.Job, *, now: float = NOW, replay: MemoryReplayGuard | None = None
) -> messages.Job:
    return verify.verify_job(
        _signed(job), keyring=keyring_for(CONTROL_PLANE_KEY), audience=AUDIENCE,
        replay=replay or MemoryReplayGuard(), now=now,
    )


def _reason(
    job: messages.Job, *, now: float = NOW, replay: MemoryReplayGuard | None = None
) -> RejectReason:
    with pytest.raises(EnvelopeRejectedError) as info:
        _verify(job, now=now, replay=replay)
    return info.value.reason


def test_a_valid_job_verifies_to_the_job_that_was_signed() -> None:
    """verify_job returns the model equal to the one the control plane signed."""
    assert _verify(CREATE_JOB) == CREATE_JOB


# -- seq and replay --------------------------------------------------------------------------


@FUZZ
@given(last=st.integers(0, 2**53), seq=st.integers(1, 2**53))
def test_a_job_is_accepted_exactly_when_its_seq_is_above_the_last_applied(
    last: int, seq: int
) -> None:
    """seq must strictly increase: lower or equal to the last applied is refused."""
    job = CREATE_JOB.model_copy(update={"seq": seq})
    replay = MemoryReplayGuard(last=last)
    if seq > last:
        assert _verify(job, replay=replay).seq == seq
    else:
        assert _reason(job, replay=replay) is RejectReason.SEQ_NOT_INCREASING


@pytest.mark.parametrize(("last", "accepted"), [(4, True), (5, False), (6, False), (100, False)])
def test_seq_boundary_around_the_last_applied(last: int, accepted: bool) -> None:
    """A job with seq 5 passes after 4 and is refused after 5, 6 or 100."""
    job = CREATE_JOB.model_copy(update={"seq": 5})
    replay = MemoryReplayGuard(last=last)
    if accepted:
        _verify(job, replay=replay)
    else:
        assert _reason(job, replay=replay) is RejectReason.SEQ_NOT_INCREASING


def test_a_job_id_already_applied_is_replayed_even_with_a_higher_seq() -> None:
    """A seen job id is refused however new its seq is."""
    job = CREATE_JOB.model_copy(update={"seq": 1000})
    replay = MemoryReplayGuard(applied={CREATE_JOB.job_id}, last=1)
    assert _reason(job, replay=replay) is RejectReason.REPLAYED


def test_replay_is_reported_before_seq_when_both_apply() -> None:
    """An old job delivered again is named a replay, not an ordering error."""
    replay = MemoryReplayGuard(applied={CREATE_JOB.job_id}, last=CREATE_JOB.seq)
    assert _reason(CREATE_JOB, replay=replay) is RejectReason.REPLAYED


def test_another_job_id_with_a_higher_seq_is_accepted_after_a_replay_guard_has_entries() -> None:
    """The replay guard refuses only ids it has seen."""
    replay = MemoryReplayGuard(applied={"job-9999"}, last=CREATE_JOB.seq - 1)
    assert _verify(CREATE_JOB, replay=replay) == CREATE_JOB


# -- time window -----------------------------------------------------------------------------

_IAT = NOW
_EXP = NOW + 300


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (_EXP + CLOCK_SKEW_S - 1, None),
        (_EXP + CLOCK_SKEW_S - 0.001, None),
        (_EXP + CLOCK_SKEW_S, RejectReason.EXPIRED),
        (_EXP + CLOCK_SKEW_S + 0.001, RejectReason.EXPIRED),
        (_EXP + 10_000, RejectReason.EXPIRED),
        (_IAT - CLOCK_SKEW_S, None),
        (_IAT - CLOCK_SKEW_S + 0.001, None),
        (_IAT - CLOCK_SKEW_S - 0.001, RejectReason.NOT_YET_VALID),
        (_IAT - CLOCK_SKEW_S - 1, RejectReason.NOT_YET_VALID),
        (_IAT - 10_000, RejectReason.NOT_YET_VALID),
        (_IAT, None),
        (_EXP, None),
    ],
)
def test_the_time_window_allows_thirty_seconds_of_skew_on_each_side(
    now: float, expected: RejectReason | None
) -> None:
    """Valid from iat - 30 s inclusive until exp + 30 s exclusive."""
    job = CREATE_JOB.model_copy(update={"iat": _IAT, "exp": _EXP})
    if expected is None:
        assert _verify(job, now=now) == job
    else:
        assert _reason(job, now=now) is expected


@pytest.mark.parametrize("exp", [_IAT, _IAT - 1, 0])
def test_a_job_whose_exp_is_not_after_its_iat_is_expired_whenever_it_arrives(exp: int) -> None:
    """An empty or inverted window is refused even when now lies between the two."""
    job = CREATE_JOB.model_copy(update={"iat": _IAT, "exp": exp})
    assert _reason(job, now=_IAT) is RejectReason.EXPIRED


def test_a_one_second_window_is_enough() -> None:
    """exp = iat + 1 is the shortest valid window."""
    job = CREATE_JOB.model_copy(update={"iat": _IAT, "exp": _IAT + 1})
    assert _verify(job, now=_IAT) == job


@FUZZ
@given(
    iat=st.integers(NOW - 1000, NOW + 1000),
    lifetime=st.integers(-100, 1000),
    offset=st.floats(-1200, 1200, allow_nan=False),
)
def test_the_time_window_outcome_matches_its_specification(
    iat: int, lifetime: int, offset: float
) -> None:
    """Expired if exp <= now - 30 or exp <= iat; else not yet valid if iat > now + 30."""
    exp = max(iat + lifetime, 0)
    now = NOW + offset
    job = CREATE_JOB.model_copy(update={"iat": iat, "exp": exp})
    if exp <= now - CLOCK_SKEW_S or exp <= iat:
        assert _reason(job, now=now) is RejectReason.EXPIRED
    elif iat > now + CLOCK_SKEW_S:
        assert _reason(job, now=now) is RejectReason.NOT_YET_VALID
    else:
        assert _verify(job, now=now) == job


def test_claims_are_checked_before_the_replay_guard_is_consulted() -> None:
    """An expired job is reported as expired, not as a replay of an applied id."""
    replay = MemoryReplayGuard(applied={CREATE_JOB.job_id}, last=CREATE_JOB.seq)
    assert _reason(CREATE_JOB, now=_EXP + 1000, replay=replay) is RejectReason.EXPIRED
