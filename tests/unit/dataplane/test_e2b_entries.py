"""How the E2B filesystem service reads ``find -printf`` output and resolves paths."""

from __future__ import annotations

import pytest
from connectrpc.errors import ConnectError

from byoc_agent.dataplane.e2b.filesystem import parse_entries, sandbox_path
from byoc_agent.dataplane.envd.filesystem import filesystem_pb

pytestmark = pytest.mark.e2b



def _record(*fields: str) -> bytes:
    return b"".join(f.encode() + b"\0" for f in fields)


def test_files_directories_and_symlinks_become_entry_infos() -> None:
    raw = (
        _record("/srv/a.txt", "f", "f", "12", "644", "-rw-r--r--", "root", "root",
                "1700000000.5", "")
        + _record("/srv/d", "d", "d", "4096", "755", "drwxr-xr-x", "root", "staff",
                  "1700000001.0000000000", "")
        + _record("/srv/link", "l", "d", "1", "777", "lrwxrwxrwx", "root", "root",
                  "1700000002", "/srv/d")
    )
    a, d, link = parse_entries(raw)
    assert (a.name, a.type, a.size, a.mode, a.permissions) == (
        "a.txt", filesystem_pb.FileType.FILE, 12, 0o644, "-rw-r--r--"
    )
    assert a.modified_time is not None
    assert (a.modified_time.seconds, a.modified_time.nanos) == (1700000000, 500000000)
    assert not a.has_field("symlink_target")
    assert (d.type, d.group) == (filesystem_pb.FileType.DIRECTORY, "staff")
    assert link.is_symlink
    assert link.type == filesystem_pb.FileType.DIRECTORY  # the target's type, as envd reports
    assert link.symlink_target == "/srv/d"


def test_a_truncated_record_is_dropped_not_misread() -> None:
    raw = _record("/srv/a", "f", "f", "1", "644", "-rw-r--r--", "root", "root", "1", "")
    assert len(parse_entries(raw + b"/srv/partial\0f\0")) == 1


@pytest.mark.parametrize(
    ("given", "resolved"),
    [("/etc/../etc/hosts", "/etc/hosts"), ("notes.txt", "/root/notes.txt"), ("/", "/")],
)
def test_paths_are_absolute_and_relative_ones_start_at_root_home(
    given: str, resolved: str
) -> None:
    assert sandbox_path(given) == resolved


@pytest.mark.parametrize("bad", ["", "a\x00b", "/" + "x" * 5000])
def test_bad_paths_are_invalid_arguments(bad: str) -> None:
    with pytest.raises(ConnectError):
        sandbox_path(bad)
