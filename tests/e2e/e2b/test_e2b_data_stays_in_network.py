"""Through the e2b SDK too, command output and file contents never reach the control plane."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
from e2b import Sandbox

from corral.testing.stack import LocalStack, StackInfo

pytestmark = pytest.mark.asyncio


def _files_containing(root: Path, needle: bytes, skip: Path) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents and needle in p.read_bytes()
    ]


async def test_an_e2b_canary_never_reaches_the_control_plane_or_nats(
    stack: LocalStack, e2b_stack: StackInfo
) -> None:
    """A canary written with ``files.write`` and printed by ``commands.run`` reaches the SDK
    and nothing else: not NATS traffic, JetStream storage, the database or any log."""
    canary = f"E2B-CANARY-{uuid.uuid4().hex}"
    captured: list[bytes] = []
    heartbeat = asyncio.Event()
    # NATS runs with per-agent users; an unrestricted observer user watches everything.
    nc = await nats.connect(
        e2b_stack.nats_url, user_credentials=str(stack.nats_observer_creds())
    )

    async def capture(msg: Any) -> None:
        captured.append(msg.subject.encode() + b" " + msg.data)
        if msg.subject.endswith(".heartbeat"):
            heartbeat.set()

    await nc.subscribe(">", cb=capture)
    await nc.flush()

    def use_sandbox() -> str:
        sbx = Sandbox.create(timeout=120)
        try:
            sbx.files.write("/root/secret.txt", canary)
            out = sbx.commands.run("cat /root/secret.txt; cat /root/secret.txt >&2").stdout
            assert sbx.files.read("/root/secret.txt") == canary
            return out
        finally:
            sbx.kill()

    stdout = await asyncio.to_thread(use_sandbox)
    heartbeat.clear()
    async with asyncio.timeout(15):
        await heartbeat.wait()
    await nc.close()

    assert canary in stdout, "the canary must reach the SDK, or this test proves nothing"
    assert captured, "the capture saw no NATS traffic at all, so it could not have failed"
    assert not [m[:80] for m in captured if canary.encode() in m]
    leaks = _files_containing(stack.home, canary.encode(), skip=stack.home / "agent" / "runtime")
    assert leaks == [], f"canary found outside the sandbox in: {leaks}"
