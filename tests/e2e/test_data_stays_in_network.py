"""Command output and file contents never pass through the control plane or NATS."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest

from corral import Sandbox
from corral.testing.stack import LocalStack, StackInfo

pytestmark = [pytest.mark.e2e, pytest.mark.gvisor, pytest.mark.nats, pytest.mark.asyncio]


def _files_containing(root: Path, needle: bytes, skip: Path) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and skip not in path.parents and needle in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


async def test_a_canary_in_files_and_output_never_reaches_the_control_plane_or_nats(
    stack: LocalStack, info: StackInfo
) -> None:
    """A canary written to a file and printed by a command appears in the SDK's result,
    and nowhere in NATS traffic, JetStream storage, the control-plane database or logs."""
    canary = f"CANARY-{uuid.uuid4().hex}"
    captured: list[bytes] = []
    # NATS runs with per-agent users; an unrestricted observer user watches everything.
    nc = await nats.connect(info.nats_url, user_credentials=str(stack.nats_observer_creds()))

    heartbeat = asyncio.Event()

    async def capture(msg: Any) -> None:
        captured.append(msg.subject.encode() + b" " + msg.data)
        if msg.subject.endswith(".heartbeat"):
            heartbeat.set()

    await nc.subscribe(">", cb=capture)
    await nc.flush()

    def use_sandbox() -> str:
        with Sandbox.create(api_url=info.api_url, api_key=info.api_key) as sb:
            sb.files.write("/root/secret.txt", canary)
            out = sb.commands.run("cat /root/secret.txt; echo; cat /root/secret.txt >&2").stdout
            assert sb.files.read("/root/secret.txt") == canary
            return out

    stdout = await asyncio.to_thread(use_sandbox)
    # Everything the sandbox work caused is in the capture once a heartbeat sent after it
    # has arrived (NATS keeps per-connection order).
    heartbeat.clear()
    async with asyncio.timeout(15):
        await heartbeat.wait()
    await nc.close()

    assert canary in stdout, "the canary must reach the SDK, or this test proves nothing"
    assert captured, "the capture saw no NATS traffic at all, so it could not have failed"
    assert not [m[:80] for m in captured if canary.encode() in m]
    sandbox_files = stack.home / "agent" / "runtime"
    leaks = _files_containing(stack.home, canary.encode(), skip=sandbox_files)
    assert leaks == [], f"canary found outside the sandbox in: {leaks}"
