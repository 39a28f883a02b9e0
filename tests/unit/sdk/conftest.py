"""Fixtures for SDK and CLI tests: the fake control plane and data plane, served for real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake_corral import ADMIN_TOKEN, FakeCorral, ServedApp


@pytest.fixture(scope="session")
def _served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeCorral, str]]:
    fake = FakeCorral(Path(tmp_path_factory.mktemp("fake-corral")))
    control = ServedApp(fake.control_app()).start()
    data = ServedApp(fake.data_app()).start()
    fake.data_plane_url = data.url
    try:
        yield fake, control.url
    finally:
        control.stop()
        data.stop()


@pytest.fixture
def fake(_served: tuple[FakeCorral, str], monkeypatch: pytest.MonkeyPatch) -> FakeCorral:
    """A freshly reset fake, with CORRAL_API_URL/KEY/ADMIN_TOKEN pointing the SDK at it."""
    state, url = _served
    state.reset()
    monkeypatch.setenv("CORRAL_API_URL", url)
    monkeypatch.setenv("CORRAL_API_KEY", state.acme_key)
    monkeypatch.setenv("CORRAL_ADMIN_TOKEN", ADMIN_TOKEN)
    return state


@pytest.fixture
def api_url(_served: tuple[FakeCorral, str]) -> str:
    """The fake control plane's base URL."""
    return _served[1]
