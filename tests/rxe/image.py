"""What the soft-RoCE test VM boots: a Debian kernel and a small initramfs.

`prepare()` is idempotent and keeps everything in a cache folder
(`$NETSPARK_RXE_CACHE`, else `~/.cache/netspark/rxe`; delete it to pick up a
newer Debian kernel):

- the host's Debian packages the guest borrows (the guest chroots into the
  host's own `/`, shared read-only over 9p, so the host's rdma userspace,
  Python and venv are what runs inside the VM);
- the Debian kernel, the host release's or NETNS_KERNEL_SUITE's (see
  tests/rxe/debian.py, which does all the apt and dpkg work);
- an uncompressed initramfs (newc cpio, written here in Python) holding
  busybox-static, the kernel modules the guest needs in load order, and the
  `/init` script `GUEST_INIT`.

Stdlib only.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.rxe.debian import PrepareError, ensure_host_packages, ensure_kernel

HOST_PACKAGES = (
    "qemu-system-x86",
    "busybox-static",
    "ibverbs-providers",
    "ibverbs-utils",
    "libibverbs-dev",
    "perftest",
    "rdmacm-utils",
    "python3-pyverbs",
    "iproute2",
    "kmod",
)
# What the guest loads, in this order; each module's own dependencies (read
# with `modinfo -F depends`) are loaded before it. crc32_generic must precede
# rdma_rxe, which asks the crypto API for "crc32" and fails with ENOENT
# without it.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_rng",
    "9pnet_virtio",
    "9p",
    "crc32_generic",
    "ib_core",
    "ib_uverbs",
    "udp_tunnel",
    "ip6_udp_tunnel",
    "rdma_rxe",
    "ib_cm",
    "iw_cm",
    "rdma_cm",
    "rdma_ucm",
    "dummy",
    "veth",
)
# Nice to have (entropy for the guest's Python), or gone from newer kernels
# (crc32 is a library there, built in); nothing breaks without them.
OPTIONAL_MODULES = frozenset({"virtio_rng", "crc32_generic"})

BUSYBOX = Path("/bin/busybox")

# Address of dummy0 inside the VM. The VM has no network card (-nic none), so
# nothing sent to it can leave the guest.
GUEST_ADDR = "192.168.100.1"
GUEST_PREFIX = 24

# The guest's /init (busybox sh). The kernel command line names the checkout
# (netspark.share=) and the run folder under its .rxe-run/ (netspark.run=)
# whose run.sh (written by vm.py) runs the command and records its exit code.
# Order of the rxe bring-up matters on 6.1: adding rxe0 to a netdev that is
# already up leaves the port DOWN, so address, then rxe link, then link up.
GUEST_INIT = rf"""#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
say() {{ echo "netspark-rxe: $*"; }}
die() {{ say "FAILED: $*"; sync; poweroff -f; sleep 10; exit 1; }}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
share=
run=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        netspark.share=*) share="${{arg#*=}}" ;;
        netspark.run=*) run="${{arg#*=}}" ;;
    esac
done
[ -n "$share" ] && [ -n "$run" ] || die "netspark.share= or netspark.run= missing"

say "loading modules"
for m in /modules/*.ko; do
    insmod "$m" || die "insmod $m"
done

say "mounting the host root (ro) and $share (rw)"
p9=trans=virtio,version=9p2000.L,msize=524288
mount -t 9p -o "$p9,ro,cache=loose" hostroot /host || die "mount hostroot"
mount -t proc proc /host/proc || die "mount /host/proc"
mount -t sysfs sysfs /host/sys || die "mount /host/sys"
mount -t devtmpfs devtmpfs /host/dev || die "mount /host/dev"
mkdir -p /host/dev/shm /host/dev/pts
# devtmpfs has no /dev/fd: bash's process substitution (Spark's launcher) needs it.
ln -sf /proc/self/fd /host/dev/fd
ln -sf /proc/self/fd/0 /host/dev/stdin
ln -sf /proc/self/fd/1 /host/dev/stdout
ln -sf /proc/self/fd/2 /host/dev/stderr
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm || die "mount /host/dev/shm"
mount -t devpts devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || die "mount /host/tmp"
[ -d /host/run ] && mount -t tmpfs -o mode=755 tmpfs /host/run
mkdir -p "/host$share" 2>/dev/null
mount -t 9p -o "$p9,cache=mmap" checkout "/host$share" || die "mount checkout on $share"

say "bringing up rxe0 on dummy0"
host() {{ chroot /host /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }}
host ip link set lo up || die "lo up"
host ip addr add {GUEST_ADDR}/{GUEST_PREFIX} dev dummy0 || die "address on dummy0"
host rdma link add rxe0 type rxe netdev dummy0 || die "rdma link add rxe0"
host ip link set dummy0 up || die "dummy0 up"
state=/sys/class/infiniband/rxe0/ports/1/state
i=0
until grep -q ACTIVE "$state" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -le 100 ] || die "rxe0 port 1 not ACTIVE: $(cat "$state" 2>&1)"
    usleep 100000
done
say "rxe0 port 1: $(cat "$state")"

ulimit -l unlimited
say "running the command"
chroot /host /bin/sh "$share/.rxe-run/$run/run.sh" </dev/null
sync
umount "/host$share" 2>/dev/null
say "powering off"
poweroff -f
sleep 10
"""


@dataclasses.dataclass(frozen=True)
class Artifacts:
    cache_dir: Path
    kernel_version: str  # e.g. "6.1.0-56-amd64"
    kernel: Path  # vmlinuz
    initramfs: Path  # uncompressed newc cpio
    modules: tuple[str, ...]  # module names in the guest's load order


def default_cache_dir() -> Path:
    env = os.environ.get("NETSPARK_RXE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "netspark" / "rxe"


def prepare(cache_dir: Path | str | None = None, *, suite: str | None = None) -> Artifacts:
    """Make sure the kernel and initramfs exist in the cache; return their paths.
    The kernel is the host's own Debian release's, or the one of `suite`."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    ensure_host_packages(HOST_PACKAGES)
    with open(cache / ".lock", "w") as lock:  # one preparer at a time per cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        version, root = ensure_kernel(cache, suite)
        return _ensure_initramfs(cache, version, root)


# --- modules ----------------------------------------------------------------


def _module_name(path: Path) -> str:
    return path.name.split(".ko", 1)[0].replace("-", "_")


def resolve_modules(
    modules_dir: Path, wanted: Iterable[str], optional: frozenset[str] = frozenset()
) -> list[Path]:
    """Module files for `wanted` and their dependencies, dependencies first.

    Modules built into the kernel (listed in modules.builtin) are skipped. Debian
    13's packages ship no modules.builtin: there a module without a file is taken
    as built in (virtio_pci, 9p and crc32 are), and the guest's /init fails loudly
    if it is not.
    """
    index = {_module_name(p): p for p in modules_dir.rglob("*.ko*")}
    builtin_file = modules_dir / "modules.builtin"
    listed = builtin_file.exists()
    builtin = (
        {_module_name(Path(line)) for line in builtin_file.read_text().split()}
        if listed
        else set()
    )
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise PrepareError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        path = index.get(name)
        if path is None:
            if name in optional or not listed:
                return
            raise PrepareError(f"kernel module {name} not found under {modules_dir}")
        for dep in _modinfo_depends(path):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append(path)

    for name in wanted:
        visit(name, ())
    return order


def _modinfo_depends(path: Path) -> list[str]:
    proc = subprocess.run(
        ["modinfo", "-F", "depends", str(path)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise PrepareError(f"modinfo failed on {path}: {proc.stderr.strip()}")
    return [d for d in proc.stdout.strip().split(",") if d]


def _read_module(path: Path) -> bytes:
    """The module's ELF bytes; busybox insmod cannot read compressed modules."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise PrepareError(f"{path.name} is zstd-compressed: install the zstd package")
        return subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True).stdout
    return data


# --- initramfs --------------------------------------------------------------


def _ensure_initramfs(cache: Path, version: str, root: Path) -> Artifacts:
    # Debian 13 keeps vmlinuz beside the modules, under /usr; Debian 12 in /boot.
    modules_dir = next((d for d in (root / "usr/lib/modules" / version,
                                    root / "lib/modules" / version) if d.is_dir()), None)
    kernel = next((k for k in (root / "boot" / f"vmlinuz-{version}",
                               root / "usr/lib/modules" / version / "vmlinuz") if k.exists()),
                  None)
    if kernel is None or modules_dir is None:
        raise PrepareError(f"unpacked kernel packages in {root} lack vmlinuz or the modules "
                           f"of {version}")
    if not BUSYBOX.exists():
        raise PrepareError(f"{BUSYBOX} missing: install busybox-static")
    init = GUEST_INIT.encode()
    busybox_stat = BUSYBOX.stat()
    key = hashlib.sha256(
        json.dumps(
            [
                version,
                GUEST_MODULES,
                init.hex(),
                busybox_stat.st_size,
                busybox_stat.st_mtime_ns,
                _CPIO_FORMAT,
            ]
        ).encode()
    ).hexdigest()[:16]
    image = cache / f"initramfs-{version}-{key}.cpio"
    names_file = image.with_suffix(".modules")
    if image.exists() and names_file.exists():
        names = tuple(names_file.read_text().split())
        return Artifacts(cache, version, kernel, image, names)

    paths = resolve_modules(modules_dir, GUEST_MODULES, OPTIONAL_MODULES)
    names = tuple(_module_name(p) for p in paths)
    writer = CpioWriter()
    for d in (
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "host",
        "tmp",
        "modules",
    ):
        writer.add_dir(d)
    writer.add_device("dev/console", 0o600, major=5, minor=1)
    writer.add_device("dev/null", 0o666, major=1, minor=3)
    writer.add_file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    writer.add_file("init", init, 0o755)
    for i, path in enumerate(paths):
        writer.add_file(f"modules/{i:02d}-{_module_name(path)}.ko", _read_module(path), 0o644)
    for old in cache.glob(f"initramfs-{version}-*"):
        old.unlink()
    tmp = image.with_suffix(".tmp")
    tmp.write_bytes(writer.finish())
    tmp.rename(image)
    names_file.write_text("\n".join(names) + "\n")
    return Artifacts(cache, version, kernel, image, names)


_CPIO_FORMAT = "newc-1"


class CpioWriter:
    """Writes an uncompressed newc ("070701") cpio archive, as the kernel reads it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, 0o040000 | mode, b"", nlink=2)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def add_device(self, name: str, mode: int, *, major: int, minor: int) -> None:
        self._entry(name, 0o020000 | mode, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", ino=0)
        return b"".join(self._parts)

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes,
        *,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
        ino: int | None = None,
    ) -> None:
        if ino is None:
            ino, self._ino = self._ino, self._ino + 1
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts.append(_pad4(header + encoded))
        self._parts.append(_pad4(data))


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)
