"""Run one command in a fresh gVisor sandbox from *this* process's network namespace.

``python netns_probe.py STATE_DIR TEMPLATES_ROOT COMMAND`` — the metadata test starts it
under ``nsenter --net`` so that runsc, and the agent code driving it, live in a namespace
where the stand-in metadata endpoint answers. Prints one JSON line: stdout, stderr, exit.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

from byoc_agent.runtimes.base import ExecRequest, Exit, SandboxSpec, Stderr, Stdout
from byoc_agent.runtimes.gvisor import GVisorRuntime


async def probe(state_dir: Path, templates_root: Path, command: str) -> dict[str, object]:
    runtime = GVisorRuntime(state_dir, templates_root)
    spec = SandboxSpec(
        sandbox_id=f"sec-netns-{uuid.uuid4().hex[:10]}",
        tenant_id="tenant-security",
        template="base",
        cpu=1,
        memory_mb=256,
        timeout_s=120,
    )
    handle = await runtime.create(spec)
    out: list[bytes] = []
    err: list[bytes] = []
    code: int | None = None
    try:
        async for event in runtime.exec(handle, ExecRequest(command, timeout_s=60)):
            if isinstance(event, Stdout):
                out.append(event.data)
            elif isinstance(event, Stderr):
                err.append(event.data)
            elif isinstance(event, Exit):
                code = event.exit_code
    finally:
        await runtime.destroy(handle)
    return {
        "stdout": b"".join(out).decode(errors="replace"),
        "stderr": b"".join(err).decode(errors="replace"),
        "exit_code": code,
    }


def main() -> None:
    state_dir, templates_root, command = sys.argv[1:4]
    result = asyncio.run(probe(Path(state_dir), Path(templates_root), command))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
