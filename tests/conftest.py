"""Fixtures shared by every test: real servers, never mocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.testing import NatsServer


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh real nats-server with JetStream, on a free port, for one test."""
    with NatsServer() as server:
        yield server
