"""Fixtures shared by every test: real servers, never mocks."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from corral.testing import NatsServer

# In CI these suites must run, not skip: a skip there is a failure.
_MUST_RUN = ("gvisor", "nats", "postgres", "e2e")


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh real nats-server with JetStream, on a free port, for one test."""
    with NatsServer() as server:
        yield server


_BILLING_WORDS = ("billing", "meter", "usage", "invoice")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag the billing suite (``pytest -m billing``) by where its tests live."""
    for item in items:
        where = str(item.path.relative_to(item.config.rootpath)).lower()
        if any(w in where for w in _BILLING_WORDS):
            item.add_marker(pytest.mark.billing)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if (
        os.environ.get("CI")
        and report.skipped
        and any(item.get_closest_marker(m) for m in _MUST_RUN)
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {report.longrepr}"
