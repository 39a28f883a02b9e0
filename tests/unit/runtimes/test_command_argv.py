"""Which commands skip /bin/sh: only those the shell would run unchanged."""

from __future__ import annotations

import pytest

from byoc_agent.runtimes.gvisor import command_argv


@pytest.mark.parametrize(
    "cmd", ["true", "ls -la /tmp", "python3 -m http.server 8000", "git status"]
)
def test_plain_words_run_without_a_shell(cmd: str) -> None:
    """A command of plain words is exec'd directly, split on spaces."""
    assert command_argv(cmd) == cmd.split()


@pytest.mark.parametrize(
    "cmd",
    [
        "echo $HOME", "ls *.py", "a && b", "a | b", "cat < f", "FOO=1 env", "cd /tmp",
        "exit 3", 'python3 -c "print(1)"', "ls  -la", " ls", "echo hi", "a; b", "ls ~",
        "sleep 1 &", "",
    ],
)
def test_anything_with_shell_meaning_goes_through_sh(cmd: str) -> None:
    """Expansion, quoting, operators, assignments, builtins and odd spacing keep sh -c."""
    assert command_argv(cmd) == ["/bin/sh", "-c", cmd]
