"""The guest kernel, the initramfs and the root-disk images microVMs boot from.

Everything here is built once and cached under one directory; each artefact sits next to a
stamp naming what it was built from, and is rebuilt (into a temporary name, then renamed)
only when that changes:

    <cache>/kernel/<abi>/vmlinuz          Debian's ``linux-image-cloud-amd64`` kernel
    <cache>/kernel/<abi>/modules/*.ko     the virtio modules it needs (the rest is built in)
    <cache>/initrd-<hash>.cpio            busybox, those modules, /init, guestd.py, wire.py
    <cache>/disks/<template>-<stamp>.ext4 the template's tree as an ext4 image (mkfs.ext4 -d)

The kernel comes from the Debian archive (``apt-get download`` + ``dpkg -x``), so no kernel
is built here. Its ABI name changes with security updates; it is resolved through
``apt-cache depends linux-image-cloud-amd64``. ``CORRAL_AGENT_MICROVM_KERNEL`` names a kernel
image to use instead (it must have ext4 built in and virtio as modules or built in).

CLI: ``python -m byoc_agent.runtimes.guest.image build --cache DIR [--template-root DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from byoc_agent.protocol.errors import CorralError
from byoc_agent.runtimes import templates

KERNEL_PACKAGE = "linux-image-cloud-amd64"
# Loaded in this order; dependencies are resolved from each module's own modinfo.
GUEST_MODULES = ("virtio_mmio", "virtio_blk", "virtio_console", "virtio_net")
BUSYBOX = Path("/bin/busybox")
HERE = Path(__file__).resolve().parent
DISK_HEADROOM = 2 << 30  # free space in a fresh root disk (the image file is sparse)

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko; done
if grep -q corral.probe=1 /proc/cmdline; then echo corral-probe-ok; reboot -f; fi
ip link set lo up
if grep -q corral.net=1 /proc/cmdline; then
  n=0
  while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 500 ]; do n=$((n+1)); sleep 0.01; done
  ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up || echo "corral-init: no network"
fi
n=0
while [ ! -b /dev/vda ]; do
  n=$((n+1)); [ $n -gt 1000 ] && { echo "corral-init: no root disk"; reboot -f; }
  sleep 0.01
done
mount -t ext4 -o noatime /dev/vda /newroot || { echo "corral-init: cannot mount root"; reboot -f; }
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/corral /newroot/dev /newroot/proc /newroot/sys
cp /guest/guestd.py /guest/wire.py /newroot/run/corral/
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /usr/bin/python3 /run/corral/guestd.py --init
"""


class GuestImageError(CorralError):
    """The guest kernel, initramfs or root disk could not be prepared."""


@dataclass(frozen=True, slots=True)
class GuestBoot:
    """What QEMU needs to boot a sandbox: kernel, initramfs and the template's disk."""

    kernel: Path
    initrd: Path
    disk: Path


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise GuestImageError(
            f"{' '.join(argv[:3])} failed ({proc.returncode}): {' | '.join(tail)}"
        )
    return proc.stdout


def _kernel_abi_package() -> str:
    """``linux-image-<abi>`` that the cloud meta-package currently points at."""
    for attempt in range(2):
        try:
            out = _run(["apt-cache", "depends", KERNEL_PACKAGE])
        except (GuestImageError, FileNotFoundError):
            out = ""
        for line in out.splitlines():
            word = line.strip()
            if word.startswith("Depends: linux-image-"):
                return word.split(":", 1)[1].strip()
        if attempt == 0 and shutil.which("apt-get"):
            _run(["apt-get", "update", "-q"])  # the package lists may be missing or stale
    raise GuestImageError(
        f"cannot resolve {KERNEL_PACKAGE} with apt-cache; run apt-get update, or set "
        "CORRAL_AGENT_MICROVM_KERNEL to a kernel image"
    )


def _module_deps(ko: Path) -> list[str]:
    data = ko.read_bytes()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    raw = data[at + len(b"\0depends=") : data.index(b"\0", at + 1)].decode()
    return [d for d in raw.split(",") if d]


def ensure_kernel(cache: Path) -> Path:
    """The guest kernel directory (vmlinuz + modules/ + modules.order), fetched once."""
    override = os.environ.get("CORRAL_AGENT_MICROVM_KERNEL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise GuestImageError(f"CORRAL_AGENT_MICROVM_KERNEL={override} is not a file")
        kdir = cache / "kernel" / ("custom-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12])
        if not (kdir / "vmlinuz").exists():
            (kdir / "modules").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, kdir / "vmlinuz")
            (kdir / "modules.order").write_text("")
        return kdir
    package = _kernel_abi_package()
    abi = package.removeprefix("linux-image-")
    kdir = cache / "kernel" / abi
    if (kdir / "modules.order").exists():
        return kdir
    with _locked(cache / "kernel.lock"):
        if (kdir / "modules.order").exists():
            return kdir
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            work = Path(tmp)
            os.chmod(work, 0o755)  # noqa: S103 (apt's download user must read the dir)
            _run(["apt-get", "download", "-q", package], cwd=work)
            debs = list(work.glob("*.deb"))
            if not debs:
                raise GuestImageError(f"apt-get download {package} produced no .deb")
            _run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")])
            build = work / "kernel"
            (build / "modules").mkdir(parents=True)
            shutil.copyfile(work / "x" / "boot" / f"vmlinuz-{abi}", build / "vmlinuz")
            found = {p.stem: p for p in (work / "x" / "lib" / "modules").rglob("*.ko")}
            order: list[str] = []

            def add(name: str) -> None:
                if name in order:
                    return
                if name not in found:
                    raise GuestImageError(f"kernel {abi} has no module {name}")
                for dep in _module_deps(found[name]):
                    add(dep)
                order.append(name)

            for name in GUEST_MODULES:
                add(name)
            for name in order:
                shutil.copyfile(found[name], build / "modules" / f"{name}.ko")
            (build / "modules.order").write_text("\n".join(order) + "\n")
            kdir.parent.mkdir(parents=True, exist_ok=True)
            if kdir.exists():
                shutil.rmtree(kdir)
            build.rename(kdir)
    return kdir


def _initrd_digest(kdir: Path) -> str:
    h = hashlib.sha256()
    h.update(INIT_SCRIPT.encode())
    h.update(str(kdir.name).encode())
    for name in ("guestd.py", "wire.py"):
        h.update((HERE / name).read_bytes())
    return h.hexdigest()[:16]


def ensure_initrd(cache: Path, kdir: Path) -> Path:
    """The initramfs for ``kdir`` with the current guest daemon (uncompressed newc cpio)."""
    if not BUSYBOX.exists():
        raise GuestImageError("/bin/busybox is missing (Debian package busybox-static)")
    target = cache / f"initrd-{_initrd_digest(kdir)}.cpio"
    if target.exists():
        return target
    with _locked(cache / "initrd.lock"):
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            root = Path(tmp) / "root"
            for d in ("bin", "lib/modules", "guest", "proc", "sys", "dev", "newroot"):
                (root / d).mkdir(parents=True)
            shutil.copyfile(BUSYBOX, root / "bin" / "busybox")
            os.chmod(root / "bin" / "busybox", 0o755)  # noqa: S103 (an executable)
            (root / "init").write_text(INIT_SCRIPT)
            os.chmod(root / "init", 0o755)  # noqa: S103 (an executable)
            for ko in (kdir / "modules").glob("*.ko"):
                shutil.copyfile(ko, root / "lib" / "modules" / ko.name)
            shutil.copyfile(kdir / "modules.order", root / "modules.order")
            for name in ("guestd.py", "wire.py"):
                shutil.copyfile(HERE / name, root / "guest" / name)
            names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
            out = Path(tmp) / "initrd.cpio"
            with open(out, "wb") as fh:
                proc = subprocess.run(
                    ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                    cwd=root,
                    input="\n".join(names).encode(),
                    stdout=fh,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            if proc.returncode != 0:
                raise GuestImageError(f"cpio failed: {proc.stderr.decode().strip()}")
            out.rename(target)
    return target


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def ensure_disk(cache: Path, templates_root: Path, template: str) -> Path:
    """The template's tree as an ext4 image; sandboxes boot from copy-on-write overlays of it.

    Raises TemplateNotFoundError when the template is not built (or its recipe changed).
    """
    rootfs = templates.template_rootfs(templates_root, template)
    stamp = (templates_root / template / templates.STAMP).read_text().strip()[:16]
    target = cache / "disks" / f"{template}-{stamp}.ext4"
    if target.exists():
        return target
    with _locked(cache / "disks.lock"):
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        size = _tree_size(rootfs) * 2 + DISK_HEADROOM
        with open(tmp, "wb") as fh:
            fh.truncate(size)
        _run(["mkfs.ext4", "-q", "-F", "-L", "corral-root", "-d", str(rootfs), str(tmp)])
        tmp.rename(target)
        for old in target.parent.glob(f"{template}-*.ext4"):
            if old != target:
                old.unlink(missing_ok=True)
    return target


def ensure_boot(cache: Path, templates_root: Path, template: str) -> GuestBoot:
    """Everything a sandbox of ``template`` boots from (blocking: call from a thread)."""
    cache.mkdir(parents=True, exist_ok=True)
    kdir = ensure_kernel(cache)
    return GuestBoot(
        kernel=kdir / "vmlinuz",
        initrd=ensure_initrd(cache, kdir),
        disk=ensure_disk(cache, templates_root, template),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m byoc_agent.runtimes.guest.image")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="fetch the kernel, build the initramfs (and a disk)")
    build.add_argument("--cache", type=Path, required=True)
    build.add_argument("--template-root", type=Path, help="also build this root's disk image")
    build.add_argument("--template", default="base")
    args = parser.parse_args(argv)
    try:
        kdir = ensure_kernel(args.cache)
        print(kdir / "vmlinuz")
        print(ensure_initrd(args.cache, kdir))
        if args.template_root is not None:
            print(ensure_disk(args.cache, args.template_root, args.template))
    except CorralError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
