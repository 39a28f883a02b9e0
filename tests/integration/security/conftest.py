"""Fixtures for the security suite: real gVisor sandboxes and host-side probes.

Every test here is marked ``security`` (``pytest -m security``); the sandbox tests are
also marked ``gvisor`` and skip loudly where runsc, root or debootstrap are missing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from byoc_agent.runtimes.base import SandboxHandle, SandboxSpec
from byoc_agent.runtimes.gvisor import GVisorRuntime
from byoc_agent.runtimes.templates import ensure_template

REPO = Path(__file__).resolve().parents[3]
TEMPLATES_ROOT = REPO / ".corral" / "templates"  # shared with the runtime contract suite


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.security)


def gvisor_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "gVisor sandboxes need root (runsc run, overlay and loop mounts, cgroups)"
    for binary, package in (("runsc", "runsc"), ("debootstrap", "debootstrap")):
        if shutil.which(binary) is None:
            return f"{binary} is not on PATH (Debian package {package})"
    return None


@pytest.fixture(scope="session")
def templates_root() -> Path:
    reason = gvisor_unavailable()
    if reason is not None:
        pytest.skip(reason)
    ensure_template(TEMPLATES_ROOT, "base")
    return TEMPLATES_ROOT


@dataclass
class Sandboxes:
    """Makes gVisor runtimes and sandboxes for one test and destroys them all afterwards."""

    root: Path
    templates_root: Path
    made: list[tuple[GVisorRuntime, SandboxHandle]] = field(default_factory=list)

    def runtime(self, **options: int) -> GVisorRuntime:
        return GVisorRuntime(self.root / "state", self.templates_root, **options)

    async def create(
        self, runtime: GVisorRuntime, *, memory_mb: int = 256, cpu: int = 1
    ) -> SandboxHandle:
        spec = SandboxSpec(
            sandbox_id=f"sec-{uuid.uuid4().hex[:12]}",
            tenant_id="tenant-security",
            template="base",
            cpu=cpu,
            memory_mb=memory_mb,
            timeout_s=300,
        )
        handle = await runtime.create(spec)
        self.made.append((runtime, handle))
        return handle

    async def destroy_all(self) -> None:
        for runtime, handle in self.made:
            await runtime.destroy(handle)


@pytest_asyncio.fixture
async def sandboxes(tmp_path: Path, templates_root: Path) -> AsyncIterator[Sandboxes]:
    made = Sandboxes(tmp_path, templates_root)
    try:
        yield made
    finally:
        await made.destroy_all()


@pytest.fixture
def host_secret(tmp_path: Path) -> Callable[[], tuple[Path, str]]:
    """A file on the host, outside every sandbox, holding a random secret."""

    def make() -> tuple[Path, str]:
        secret = f"host-secret-{uuid.uuid4().hex}"
        path = tmp_path / "host-only" / "secret.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(secret + "\n")
        return path, secret

    return make
