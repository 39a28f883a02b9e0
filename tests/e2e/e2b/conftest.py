"""The real ``e2b`` SDK against the e2e session's stack: only E2B's variables point it here.

Every test in this directory is marked ``e2b`` (``pytest -m e2b``) and runs the SDK as a
customer would: ``E2B_API_URL`` (the control plane), ``E2B_SANDBOX_URL`` (the agent's
data plane) and ``E2B_API_KEY`` (a Corral API key) in the environment, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.testing.stack import StackInfo

HERE = Path(__file__).resolve().parent


# The JavaScript check needs the npm registry once (npm ci); without it it skips with the
# reason, so it is not among the suites CI requires to run (tests/conftest.py _MUST_RUN).
OPTIONAL = {"test_e2b_js.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2b)
            if item.path.name not in OPTIONAL:
                for marker in ("e2e", "gvisor", "nats"):
                    item.add_marker(getattr(pytest.mark, marker))


def e2b_env(info: StackInfo) -> dict[str, str]:
    return {
        "E2B_API_URL": info.api_url,
        "E2B_SANDBOX_URL": info.data_plane_url,
        "E2B_API_KEY": info.api_key,
    }


@pytest.fixture(scope="module")
def e2b_stack(info: StackInfo) -> Iterator[StackInfo]:
    """The stack, with the three E2B variables set for the module and removed after it."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("E2B_DOMAIN", "E2B_DEBUG", "E2B_ACCESS_TOKEN"):
            mp.delenv(name, raising=False)
        for name, value in e2b_env(info).items():
            mp.setenv(name, value)
        yield info
