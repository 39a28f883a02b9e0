"""Fixtures for the Runtime contract suite (runtimes listed in runtime_factories.RUNTIMES)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from runtime_factories import RUNTIMES, TEMPLATES_ROOT, RuntimeFactory, Sandboxes

from byoc_agent.runtimes.base import Runtime, SandboxHandle
from byoc_agent.runtimes.templates import ensure_template


@pytest.fixture(scope="session")
def templates_root() -> Path:
    """The base template, built once per machine (reused while its recipe is unchanged)."""
    ensure_template(TEMPLATES_ROOT, "base")
    return TEMPLATES_ROOT


@pytest.fixture(params=[pytest.param(f, id=f.name, marks=f.mark) for f in RUNTIMES])
def runtime_factory(request: pytest.FixtureRequest) -> Iterator[RuntimeFactory]:
    """Each runtime in RUNTIMES in turn; skipped loudly where it cannot run. Whatever the
    factory started for the test is stopped after it (after the sandboxes are destroyed)."""
    factory: RuntimeFactory = request.param
    reason = factory.unavailable()
    if reason is not None:
        pytest.skip(f"{factory.name}: {reason}")
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def runtime(runtime_factory: RuntimeFactory, state_dir: Path, templates_root: Path) -> Runtime:
    return runtime_factory.make(state_dir, templates_root)


@pytest_asyncio.fixture
async def sandboxes(runtime: Runtime, request: pytest.FixtureRequest) -> AsyncIterator[Sandboxes]:
    made = Sandboxes(runtime, request.node.name)
    try:
        yield made
    finally:
        await made.destroy_all()


@pytest_asyncio.fixture
async def sandbox(sandboxes: Sandboxes) -> SandboxHandle:
    """One running sandbox from the base template (1 CPU, 256 MB)."""
    return await sandboxes.create()
