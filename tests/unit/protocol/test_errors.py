"""Wire error codes rebuild the right typed errors; rejections carry their reason."""

from __future__ import annotations

import pytest

from byoc_agent.protocol import errors
from byoc_agent.protocol.errors import (
    CapacityError,
    CommandTimeoutError,
    CorralError,
    EnvelopeRejectedError,
    ErrorCode,
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    NotFoundError,
    PermanentError,
    QuotaExceededError,
    RejectReason,
    RetryableError,
    SandboxNotRunningError,
    TemplateNotFoundError,
    error_from_code,
)

_TYPED = [
    (ErrorCode.INVALID_ARGUMENT, InvalidArgumentError),
    (ErrorCode.NOT_FOUND, NotFoundError),
    (ErrorCode.TEMPLATE_NOT_FOUND, TemplateNotFoundError),
    (ErrorCode.FILE_NOT_FOUND, FileNotFoundInSandboxError),
    (ErrorCode.SANDBOX_NOT_RUNNING, SandboxNotRunningError),
    (ErrorCode.TIMEOUT, CommandTimeoutError),
    (ErrorCode.CAPACITY, CapacityError),
    (ErrorCode.QUOTA_EXCEEDED, QuotaExceededError),
    (ErrorCode.UNAVAILABLE, RetryableError),
]

# Codes that are part of the wire set but have no error class to rebuild on this side.
_UNTYPED = [
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.FORBIDDEN,
    ErrorCode.CONFLICT,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.RATE_LIMITED,  # an HTTP answer of the control plane; agents never send it
    ErrorCode.REJECTED,
    ErrorCode.INTERNAL,
]


@pytest.mark.parametrize(("code", "cls"), _TYPED, ids=[c.value for c, _ in _TYPED])
def test_a_wire_code_with_an_error_class_rebuilds_exactly_that_class(
    code: ErrorCode, cls: type[CorralError]
) -> None:
    """error_from_code returns the class that owns the code, with the message and code kept."""
    error = error_from_code(code.value, "what went wrong")
    assert type(error) is cls
    assert error.code is code
    assert str(error) == error.message == "what went wrong"


@pytest.mark.parametrize("code", _UNTYPED, ids=[c.value for c in _UNTYPED])
def test_a_wire_code_without_an_error_class_becomes_a_plain_internal_corral_error(
    code: ErrorCode,
) -> None:
    """Codes no class rebuilds (rejected needs a reason) come back as a plain CorralError."""
    error = error_from_code(code.value, "m")
    assert type(error) is CorralError
    assert error.code is ErrorCode.INTERNAL
    assert not error.retryable


@pytest.mark.parametrize("code", ["", "NOT_FOUND", "not_found ", "teapot", "\u00e9", "0"])
def test_an_unknown_wire_code_becomes_a_plain_corral_error_instead_of_raising(code: str) -> None:
    """Unknown or differently spelled codes never raise; they become a plain CorralError."""
    error = error_from_code(code, "m")
    assert type(error) is CorralError
    assert error.message == "m"


def test_every_wire_code_is_covered_by_these_tests() -> None:
    """Adding an ErrorCode forces a decision about how error_from_code rebuilds it."""
    assert {c for c, _ in _TYPED} | set(_UNTYPED) == set(ErrorCode)


def test_only_capacity_and_unavailable_are_retryable() -> None:
    """Retryable errors are the capacity and transport ones; everything else is permanent."""
    retryable = {code for code, _ in _TYPED if error_from_code(code.value, "m").retryable}
    assert retryable == {ErrorCode.CAPACITY, ErrorCode.UNAVAILABLE}


def test_every_error_class_is_either_retryable_or_permanent() -> None:
    """The error tree splits below the root, as the errors module docstring draws it."""
    classes = [
        v for v in vars(errors).values()
        if isinstance(v, type) and issubclass(v, CorralError) and v is not CorralError
    ]
    assert classes
    for cls in classes:
        assert issubclass(cls, RetryableError) != issubclass(cls, PermanentError), cls
        assert cls.retryable == issubclass(cls, RetryableError), cls


def test_a_rejection_names_its_reason_and_keeps_only_the_fields_that_were_given() -> None:
    """EnvelopeRejectedError prefixes the reason, carries it, and drops None fields."""
    error = EnvelopeRejectedError(
        RejectReason.REPLAYED, "job id already applied", job_id="job-1", agent_id=None
    )
    assert str(error) == "replayed: job id already applied"
    assert error.reason is RejectReason.REPLAYED
    assert error.code is ErrorCode.REJECTED
    assert error.fields == {"job_id": "job-1"}
    assert isinstance(error, PermanentError)
