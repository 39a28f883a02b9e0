"""Root filesystem templates that sandboxes start from.

A template is a directory tree built from a :class:`TemplateRecipe` (today: Debian
``debootstrap``). Layout under the templates root::

    <root>/<name>/rootfs     the tree sandboxes use read-only (overlay lower layer)
    <root>/<name>/stamp      SHA-256 of the recipe that built ``rootfs``
    <root>/<name>.lock       fcntl lock held while building

Building measures, then acts: a template whose stamp matches its recipe is reused; any
other state (no stamp, old recipe, half-finished build) is rebuilt into a temporary
directory next to ``rootfs`` and renamed into place, and the stamp is written last, so
a crash at any point leaves either the old template, or no current template — never a
half-built one that looks current.

CLI: ``python -m byoc_agent.runtimes.templates build --root DIR [--name base]``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from byoc_agent.protocol.errors import CorralError, TemplateNotFoundError

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TemplateRecipe:
    """Everything that decides a template's contents; its hash is the template's version."""

    suite: str
    variant: str
    include: tuple[str, ...]
    mirror: str
    # Shell commands run with ``chroot rootfs /bin/sh -c`` after debootstrap, in order.
    post_steps: tuple[str, ...] = ()

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


RECIPES: Mapping[str, TemplateRecipe] = {
    "base": TemplateRecipe(
        suite="bookworm",
        variant="minbase",
        # python3, not python3-minimal: the minimal package lacks json and friends.
        include=("python3",),
        mirror="http://deb.debian.org/debian",
        post_steps=("apt-get clean", "rm -rf /var/lib/apt/lists/*"),
    ),
}

ROOTFS = "rootfs"
STAMP = "stamp"


def _recipe(name: str) -> TemplateRecipe:
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(sorted(RECIPES))
        raise TemplateNotFoundError(
            f"unknown template {name!r}; known templates: {known}", template=name
        ) from None


def _read_stamp(root: Path, name: str) -> str | None:
    try:
        return (root / name / STAMP).read_text().strip()
    except FileNotFoundError:
        return None


def is_current(root: Path, name: str) -> bool:
    """True when ``<root>/<name>/rootfs`` was built from the current recipe."""
    stamp = _read_stamp(root, name)
    return stamp is not None and stamp == _recipe(name).digest() and (root / name / ROOTFS).is_dir()


def template_rootfs(root: Path, name: str) -> Path:
    """The rootfs of a built, current template; raises TemplateNotFoundError otherwise."""
    recipe = _recipe(name)
    if _read_stamp(root, name) != recipe.digest() or not (root / name / ROOTFS).is_dir():
        raise TemplateNotFoundError(
            f"template {name!r} is not built (or is out of date) under {root}; build it with "
            f"`python -m byoc_agent.runtimes.templates build --root {root} --name {name}`",
            template=name,
        )
    return root / name / ROOTFS


def list_templates(root: Path) -> list[str]:
    """Names of the templates under ``root`` whose stamp matches their current recipe."""
    return sorted(name for name in RECIPES if is_current(root, name))


@contextmanager
def _locked(path: Path, progress: Progress) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another build to release {path}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class TemplateBuildError(CorralError):
    """A template build step failed (network, disk, a bad recipe); the old template stays."""


def _run(argv: list[str], progress: Progress) -> None:
    """Run a build step, forwarding its output line by line to ``progress``."""
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            line = line.rstrip()
            progress(line)
            tail = [*tail[-19:], line]
        rc = proc.wait()
    if rc != 0:
        raise TemplateBuildError(f"{argv[0]} exited with {rc}: " + " | ".join(tail[-5:]))


def _build(recipe: TemplateRecipe, dest: Path, progress: Progress) -> None:
    argv = [
        "debootstrap",
        f"--variant={recipe.variant}",
        *([f"--include={','.join(recipe.include)}"] if recipe.include else []),
        recipe.suite,
        str(dest),
        recipe.mirror,
    ]
    _run(argv, progress)
    for step in recipe.post_steps:
        progress(f"post-step: {step}")
        _run(["chroot", str(dest), "/bin/sh", "-c", step], progress)


def _remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def ensure_template(root: Path, name: str, progress: Progress | None = None) -> Path:
    """Build template ``name`` under ``root`` unless its stamp is current; returns its rootfs.

    Blocking (a debootstrap takes ~30 s): call it from a thread in async code.
    Raises TemplateNotFoundError for an unknown name, TemplateBuildError if building fails.
    """
    recipe = _recipe(name)
    say: Progress = progress if progress is not None else _log_progress(name)
    digest = recipe.digest()
    tdir = root / name
    if is_current(root, name):
        return tdir / ROOTFS
    with _locked(root / f"{name}.lock", say):
        if is_current(root, name):  # somebody else built it while we waited
            say(f"template {name} already built by another process")
            return tdir / ROOTFS
        tdir.mkdir(parents=True, exist_ok=True)
        for stale in tdir.glob(".build-*"):  # leftovers of a crashed build
            say(f"removing leftover {stale.name}")
            _remove_tree(stale)
        for stale in tdir.glob(".old-*"):
            _remove_tree(stale)
        started = time.monotonic()
        say(f"building template {name} (recipe {digest[:12]}) into {tdir}")
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=tdir))
        try:
            _build(recipe, build, say)
        except BaseException:
            _remove_tree(build)
            raise
        # Invalidate first, swap, then stamp: the stamp is only ever next to its own rootfs.
        (tdir / STAMP).unlink(missing_ok=True)
        current = tdir / ROOTFS
        old = tdir / f".old-{time.time_ns()}"
        if current.exists():
            current.rename(old)
        build.rename(current)
        stamp_tmp = tdir / f".{STAMP}.tmp"
        stamp_tmp.write_text(digest + "\n")
        stamp_tmp.rename(tdir / STAMP)
        # Sandboxes still running on the old tree keep their overlay mount; the
        # directory goes away for everyone else.
        _remove_tree(old)
        say(f"template {name} built in {time.monotonic() - started:.1f} s")
    return current


def _log_progress(name: str) -> Progress:
    bound = log.bind(template=name)

    def emit(line: str) -> None:
        bound.info("template_build", step=line)

    return emit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m byoc_agent.runtimes.templates")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a template unless it is already current")
    build.add_argument("--root", type=Path, required=True, help="templates root directory")
    build.add_argument("--name", default="base", help=f"one of: {', '.join(sorted(RECIPES))}")
    sub.add_parser("list", help="list current templates").add_argument(
        "--root", type=Path, required=True
    )
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    if args.command == "list":
        for name in list_templates(root):
            print(name)
        return 0
    try:
        path = ensure_template(root, args.name, progress=lambda line: print(line, flush=True))
    except (TemplateNotFoundError, TemplateBuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
