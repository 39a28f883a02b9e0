"""The bare-metal inventory tools an operator runs: describe this machine, check readiness."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from provider_cases import loopback_hosts, write_inventory

from byoc_agent.providers.baremetal import main as baremetal_main
from byoc_agent.providers.baremetal import this_machine


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_this_machine_describes_the_host_it_runs_on() -> None:
    """cpu from os.cpu_count, memory from the page count, loopback address: ready at once."""
    machine = this_machine()
    assert machine["cpu"] == os.cpu_count()
    assert isinstance(machine["memory_mib"], int)
    assert machine["memory_mib"] > 0
    assert machine["address"] == "127.0.0.1"


def test_the_check_command_reports_each_machine_and_fails_when_none_is_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m byoc_agent.providers.baremetal check FILE`` exits 1 with no ready host."""
    ok = write_inventory(tmp_path / "ok.json", loopback_hosts(None)[:1])
    assert baremetal_main(["check", str(ok)]) == 0
    assert "ready" in capsys.readouterr().out
    bad = write_inventory(tmp_path / "bad.json", loopback_hosts(_closed_port())[:1])
    assert baremetal_main(["check", str(bad), "--timeout", "0.5"]) == 1
    assert "NOT READY" in capsys.readouterr().out
    local = tmp_path / "local.json"
    assert baremetal_main(["local", str(local)]) == 0
    assert json.loads(local.read_text())["hosts"][0]["id"] == "local"
