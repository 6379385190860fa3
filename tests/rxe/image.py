"""What the soft-RoCE test VM boots: a Debian kernel and a small initramfs.

`prepare()` is idempotent and keeps everything in a cache folder
(`$NETSPARK_RXE_CACHE`, else `~/.cache/netspark/rxe`; delete it to pick up a
newer Debian kernel):

- the host's Debian packages the guest borrows (the guest chroots into the
  host's own `/`, shared read-only over 9p, so the host's rdma userspace,
  Python and venv are what runs inside the VM);
- the Debian `linux-image-*-amd64` kernel (not the `-cloud` flavour, which has
  no `CONFIG_RDMA_RXE`), fetched with `apt-get download` and unpacked with
  `dpkg -x` into the cache, never installed;
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
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

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
KERNEL_META_PACKAGE = "linux-image-amd64"

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
# Nice to have (entropy for the guest's Python); nothing breaks without it.
OPTIONAL_MODULES = frozenset({"virtio_rng"})

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


class PrepareError(RuntimeError):
    """The VM's artifacts could not be prepared; the message says why."""


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


def prepare(cache_dir: Path | str | None = None) -> Artifacts:
    """Make sure the kernel and initramfs exist in the cache; return their paths."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    ensure_host_packages(HOST_PACKAGES)
    with open(cache / ".lock", "w") as lock:  # one preparer at a time per cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        version, root = _ensure_kernel(cache)
        return _ensure_initramfs(cache, version, root)


# --- host packages ----------------------------------------------------------


def missing_packages(packages: Iterable[str]) -> list[str]:
    wanted = list(packages)
    if shutil.which("dpkg-query") is None:
        raise PrepareError("the rxe VM harness needs a Debian-based host (no dpkg-query found)")
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *wanted],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {
        name
        for name, _, status in (line.partition(" ") for line in proc.stdout.splitlines())
        if status == "installed"
    }
    return [p for p in wanted if p not in installed]


def ensure_host_packages(packages: Iterable[str]) -> None:
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise PrepareError(
            "the rxe VM harness needs these Debian packages on the host: "
            + " ".join(missing)
            + "\ninstall them as root: apt-get install -y --no-install-recommends "
            + " ".join(missing)
        )
    install = ["install", "-y", "--no-install-recommends", *missing]
    if _apt_get(install).returncode != 0:
        _apt_get(["update"], check=True)  # stale or missing package lists
        _apt_get(install, check=True)
    still = missing_packages(missing)
    if still:
        raise PrepareError("apt-get install did not install: " + " ".join(still))


def _apt_get(
    args: list[str], *, check: bool = False, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=600", *args]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if check and proc.returncode != 0:
        raise PrepareError(
            f"`{' '.join(cmd)}` failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc


# --- kernel -----------------------------------------------------------------


def _ensure_kernel(cache: Path) -> tuple[str, Path]:
    """Return (kernel version, unpacked package root), downloading once."""
    state = cache / "kernel.json"
    if state.exists():
        info = json.loads(state.read_text())
        root = cache / info["package"]
        if (root / ".complete").exists():
            return info["version"], root
    package = _current_kernel_package()
    root = cache / package
    if not (root / ".complete").exists():
        _download_and_unpack(package, root)
    version = package.removeprefix("linux-image-")
    state.write_text(json.dumps({"package": package, "version": version}) + "\n")
    return version, root


def _current_kernel_package() -> str:
    pattern = re.compile(r"Depends:\s*(linux-image-\d[\w.+-]*-amd64)\s*$", re.MULTILINE)
    for attempt in range(2):
        proc = subprocess.run(
            ["apt-cache", "depends", KERNEL_META_PACKAGE],
            capture_output=True,
            text=True,
            check=False,
        )
        found = pattern.findall(proc.stdout)
        found = [p for p in found if not p.endswith("-cloud-amd64")]
        if found:
            return found[0]
        if attempt == 0 and os.geteuid() == 0:
            _apt_get(["update"], check=True)
    raise PrepareError(
        f"cannot resolve the kernel package from `apt-cache depends {KERNEL_META_PACKAGE}`"
        " (run `apt-get update` as root first)"
    )


def _download_and_unpack(package: str, root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root.parent, prefix="download-") as tmp:
        opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        _apt_get([*opts, "download", package], check=True, cwd=Path(tmp))
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise PrepareError(f"apt-get download {package} gave {debs}")
        partial = Path(tmp) / "root"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(partial)], check=True)
        if root.exists():
            shutil.rmtree(root)
        partial.rename(root)
    (root / ".complete").write_text(package + "\n")


# --- modules ----------------------------------------------------------------


def _module_name(path: Path) -> str:
    return path.name.split(".ko", 1)[0].replace("-", "_")


def resolve_modules(
    modules_dir: Path, wanted: Iterable[str], optional: frozenset[str] = frozenset()
) -> list[Path]:
    """Module files for `wanted` and their dependencies, dependencies first.

    Modules built into the kernel (listed in modules.builtin) are skipped.
    """
    index = {_module_name(p): p for p in modules_dir.rglob("*.ko*")}
    builtin_file = modules_dir / "modules.builtin"
    builtin = (
        {_module_name(Path(line)) for line in builtin_file.read_text().split()}
        if builtin_file.exists()
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
            if name in optional:
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
    kernel = root / "boot" / f"vmlinuz-{version}"
    modules_dir = root / "lib" / "modules" / version
    if not kernel.exists() or not modules_dir.is_dir():
        raise PrepareError(
            f"unpacked kernel package in {root} lacks {kernel.name} or lib/modules/{version}"
        )
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
