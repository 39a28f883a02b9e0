"""Fixtures for the billing tests: a price book, a ledger, and the FOCUS validator."""

from __future__ import annotations

import os

import pytest
from focus_validator_runner import FocusValidator

from billing import PriceBook, UsageLedger

INSTALL_HINT = (
    "focus-validator 2.2.1 (Python >= 3.12) is not installed; install it with "
    "`python3.12 -m venv .venv/focus && .venv/focus/bin/pip install focus-validator==2.2.1 "
    "'pyarrow<23'` or set CORRAL_FOCUS_VALIDATOR"
)


@pytest.fixture
def ledger() -> UsageLedger:
    """An empty usage ledger."""
    return UsageLedger()


@pytest.fixture
def pricebook() -> PriceBook:
    """The default price book."""
    return PriceBook()


@pytest.fixture(scope="session")
def focus_validator() -> FocusValidator:
    """The real FinOps validator; missing is a failure in CI and a loud skip elsewhere."""
    validator = FocusValidator.locate()
    if validator is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    return validator
