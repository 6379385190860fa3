"""The Debian side of the soft-RoCE VM's preparation: apt and dpkg, nothing else.

The host packages the harness needs (installed with apt-get when missing, as root),
and the kernel the guest boots: the `linux-image-*-amd64` package that Debian's
`linux-image-amd64` points at (not the `-cloud` flavour, which has no
`CONFIG_RDMA_RXE`), in the host's own release or in another suite (a private package
list on the Debian archive the host's sources name), fetched with `apt-get download`
and unpacked with `dpkg -x` into the cache, never installed.

Stdlib only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

KERNEL_META_PACKAGE = "linux-image-amd64"
# The second boot's kernel: rdma_rxe carries traffic between network namespaces
# from Linux 7 on (its UDP sockets became per namespace); Debian 12's kernels
# are 6.1 and 6.12, so that boot runs Debian 13's backports kernel, downloaded
# from the host's own Debian archive. The guest's userspace is still the host's.
NETNS_KERNEL_SUITE = "trixie-backports"


class PrepareError(RuntimeError):
    """The VM's artifacts could not be prepared; the message says why."""


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
    if apt_get(install).returncode != 0:
        apt_get(["update"], check=True)  # stale or missing package lists
        apt_get(install, check=True)
    still = missing_packages(missing)
    if still:
        raise PrepareError("apt-get install did not install: " + " ".join(still))


def apt_get(
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


def ensure_kernel(cache: Path, suite: str | None) -> tuple[str, Path]:
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
        apt_get([*self.options, "update"], check=True)

    def current_kernel_package(self) -> str:
        """The linux-image package KERNEL_META_PACKAGE points at."""
        pattern = re.compile(r"Depends:\s*(linux-image-\d[\w.+-]*-amd64)\s*$", re.MULTILINE)
        for attempt in range(2):
            found = pattern.findall(self._cache("depends", KERNEL_META_PACKAGE))
            found = [p for p in found if not p.endswith("-cloud-amd64")]
            if found:
                return found[0]
            if attempt == 0 and self.suite is None and os.geteuid() == 0:
                apt_get(["update"], check=True)  # the host's lists: stale or missing
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
        apt_get([*apt.options, *opts, "download", *packages], check=True, cwd=Path(tmp))
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
