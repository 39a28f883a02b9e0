"""Fixtures shared by every test: real servers, never mocks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.testing import postgres_database, postgres_unavailable_reason
from corral.testing import NatsServer

# In CI these suites must run, not skip: a skip there is a failure.
_MUST_RUN = ("gvisor", "nats", "postgres", "e2e", "console", "microvm")
# ... except these, which need what no CI machine here has (a real firecracker on KVM).
_MAY_SKIP = ("firecracker",)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh real nats-server with JetStream, on a free port, for one test."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh uniquely named PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'control-plane.db'}"
        return
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(f"PostgreSQL suite cannot run here: {reason}")
    with postgres_database() as url:
        yield url


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
        and not any(item.get_closest_marker(m) for m in _MAY_SKIP)
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {report.longrepr}"
