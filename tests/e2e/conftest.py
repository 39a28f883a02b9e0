"""One real Corral stack (nats-server, control plane, gVisor agent) for the e2e session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import AdminClient
from corral.testing import free_port
from corral.testing.stack import LocalStack, StackInfo

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / ".corral" / "templates"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "gVisor sandboxes need root (runsc and cgroups)"
    import shutil

    if shutil.which("runsc") is None:
        return "runsc is not installed (make test installs it)"
    return None


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """The whole stack as real processes, on free ports, in a temporary home."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="corral-e2e-") as home:
        s = LocalStack(
            Path(home),
            ports={"nats": free_port(), "api": free_port(), "dataplane": free_port()},
            templates_dir=TEMPLATES,
        )
        try:
            s.start()
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="session")
def info(stack: LocalStack) -> StackInfo:
    return stack.start()  # idempotent: returns the running stack's credentials


@pytest.fixture(scope="session")
def admin(info: StackInfo) -> Iterator[AdminClient]:
    with AdminClient(info.admin_token, api_url=info.api_url) as client:
        yield client
