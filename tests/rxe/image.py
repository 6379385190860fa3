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
# The second boot's kernel: rdma_rxe carries traffic between network namespaces
# from Linux 7 on (its UDP sockets became per namespace); Debian 12's kernels
# are 6.1 and 6.12, so that boot runs Debian 13's backports kernel, downloaded
# from the host's own Debian archive. The guest's userspace is still the host's.
NETNS_KERNEL_SUITE = "trixie-backports"

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


def prepare(cache_dir: Path | str | None = None, *, suite: str | None = None) -> Artifacts:
    """Make sure the kernel and initramfs exist in the cache; return their paths.
    The kernel is the host's own Debian release's, or the one of `suite`."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    ensure_host_packages(HOST_PACKAGES)
    with open(cache / ".lock", "w") as lock:  # one preparer at a time per cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        version, root = _ensure_kernel(cache, suite)
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


def _ensure_kernel(cache: Path, suite: str | None) -> tuple[str, Path]:
    """Return (kernel version, unpacked packages' root), downloading once."""
    state = cache / f"kernel-{suite or 'host'}.json"
    if state.exists():
        info = json.loads(state.read_text())
        root = cache / info["package"]
        if (root / ".complete").exists():
            return info["version"], root
    apt = _KernelApt(cache / "apt", suite)
    package = apt.current_kernel_package()
    root = cache / package
    if not (root / ".complete").exists():
        _download_and_unpack(apt, [package, *apt.kernel_parts(package)], root)
    version = package.removeprefix("linux-image-")
    state.write_text(json.dumps({"package": package, "version": version}) + "\n")
    return version, root


class _KernelApt:
    """apt as the host has it, or with a private package list of `suite` only, on
    the Debian archive the host's own sources name (the host's apt state is never
    touched)."""

    def __init__(self, folder: Path, suite: str | None) -> None:
        self.suite = suite
        self.options: list[str] = []
        if suite is None:
            return
        (folder / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (folder / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        sources = folder / "sources.list"
        sources.write_text(f"deb {_host_debian_archive()} {suite} main\n")
        self.options = [
            "-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={folder / 'lists'}",
            "-o", f"Dir::Cache={folder / 'cache'}", "-o", "APT::Architectures::=amd64",
        ]  # fmt: skip
        _apt_get([*self.options, "update"], check=True)

    def current_kernel_package(self) -> str:
        """The linux-image package KERNEL_META_PACKAGE points at."""
        pattern = re.compile(r"Depends:\s*(linux-image-\d[\w.+-]*-amd64)\s*$", re.MULTILINE)
        for attempt in range(2):
            found = pattern.findall(self._cache("depends", KERNEL_META_PACKAGE))
            found = [p for p in found if not p.endswith("-cloud-amd64")]
            if found:
                return found[0]
            if attempt == 0 and self.suite is None and os.geteuid() == 0:
                _apt_get(["update"], check=True)  # the host's lists: stale or missing
        raise PrepareError(
            f"cannot resolve the kernel package from `apt-cache depends {KERNEL_META_PACKAGE}`"
            f" in {self.suite or 'the host sources'} (run `apt-get update` as root first)"
        )

    def kernel_parts(self, package: str) -> list[str]:
        """The packages a split kernel package (Debian 13's) keeps its vmlinuz
        and modules in: linux-binary-<version>, linux-modules-<version>."""
        version = re.escape(package.removeprefix("linux-image-"))
        pattern = re.compile(rf"Depends:\s*(linux-(?:binary|modules)-{version})\s*$", re.M)
        return sorted(set(pattern.findall(self._cache("depends", package))))

    def _cache(self, *args: str) -> str:
        proc = subprocess.run(["apt-cache", *self.options, *args], capture_output=True,
                              text=True, check=False)
        return proc.stdout


def _host_debian_archive() -> str:
    """The Debian archive URI of the host's own sources (not its security one)."""
    uris: list[str] = []
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if not path.is_file() or not path.name.endswith((".list", ".sources")):
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            if line.startswith("URIs:"):
                uris += words[1:]
            elif words[:1] == ["deb"]:
                uris += [w for w in words[1:] if "://" in w][:1]
    debian = [u.rstrip("/") for u in uris if u.rstrip("/").endswith("/debian")]
    if not debian:
        raise PrepareError("no Debian archive (a URI ending in /debian) in the host's apt sources")
    return debian[0]


def _download_and_unpack(apt: _KernelApt, packages: list[str], root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root.parent, prefix="download-") as tmp:
        opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        _apt_get([*apt.options, *opts, "download", *packages], check=True, cwd=Path(tmp))
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != len(packages):
            raise PrepareError(f"apt-get download {' '.join(packages)} gave {debs}")
        partial = Path(tmp) / "root"
        for deb in debs:
            subprocess.run(["dpkg", "-x", str(deb), str(partial)], check=True)
        if root.exists():
            shutil.rmtree(root)
        partial.rename(root)
    (root / ".complete").write_text(" ".join(packages) + "\n")


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
