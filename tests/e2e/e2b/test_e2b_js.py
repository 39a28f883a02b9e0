"""E2B's JavaScript SDK from npm, unchanged, run by Node against the same stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from corral.testing.stack import StackInfo

JS = Path(__file__).resolve().parent / "js"


def _node_modules() -> str | None:
    """Install the pinned ``e2b`` from package-lock.json; the reason when that cannot be done."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed"
    if (JS / "node_modules" / "e2b" / "package.json").exists():
        return None
    try:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=JS, capture_output=True, text=True, timeout=300, check=False,
        )
    except subprocess.TimeoutExpired:
        return "npm ci took over 300 s (is the npm registry reachable?)"
    if done.returncode != 0:
        return f"npm ci failed (is the npm registry reachable?): {done.stderr.strip()[-300:]}"
    return None


def test_the_js_sdk_creates_runs_a_command_and_reads_a_file(e2b_stack: StackInfo) -> None:
    """Sandbox.create, commands.run and files.write/read from Node, through Corral."""
    reason = _node_modules()
    if reason is not None:
        pytest.skip(reason)
    env = dict(os.environ)  # e2b_stack has set the three E2B_ variables
    assert env["E2B_SANDBOX_URL"] == e2b_stack.data_plane_url
    done = subprocess.run(
        ["node", "check.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["stdout"] == "from js: 42\n"
    assert out["exitCode"] == 0
    assert out["text"] == "written by the JS SDK"
    assert out["cat"] == "written by the JS SDK"
