"""Run a command inside a small qemu VM with soft-RoCE (rdma_rxe) available.

The host's kernel has no RDMA support, so the RDMA tests run on a Debian
kernel in qemu. The guest mounts the host's `/` read-only over 9p at /host and
the checkout read-write over its own path inside it, brings up `rxe0` on
`dummy0` (192.168.100.1/24), chroots into /host and runs the command there:
the host's own Python, venv and rdma userspace, on the guest's kernel, with
the same paths as on the host. Only what is written under the checkout
survives the VM.

Library::

    from tests.rxe import vm
    result = vm.run_in_vm(["ibv_devinfo"], workdir=str(vm.REPO_ROOT), env={}, timeout=300)

Command line (exit status is the command's)::

    python -m tests.rxe.vm -- ibv_devinfo -d rxe0
    python -m tests.rxe.vm --env FOO=1 --timeout 600 -- .venv/bin/python -m pytest tests/rxe/inside
    python -m tests.rxe.vm --netns-kernel -- uname -r   # Debian 13's backports kernel

Environment: NETSPARK_RXE_CACHE (cache folder, default ~/.cache/netspark/rxe),
NETSPARK_RXE_ACCEL (tcg, the default, or kvm).

KVM: /dev/kvm exists on the machines this was built on, but it is a
paravirtual KVM that cannot boot a stock kernel (it hangs, or stops with
"KVM internal error"), and a trial boot to find out would cost as much as the
TCG run itself, so TCG is the default and KVM is used only when asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from tests.rxe.debian import NETNS_KERNEL_SUITE
from tests.rxe.image import Artifacts, PrepareError, default_cache_dir, prepare

__all__ = [
    "NETNS_KERNEL_SUITE",
    "REPO_ROOT",
    "Artifacts",
    "PrepareError",
    "VmError",
    "VmResult",
    "VmTimeout",
    "prepare",
    "run_in_vm",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_DIR_NAME = ".rxe-run"  # under the checkout; the guest writes results here
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PREFIX = "[rxe-vm] "
_PR_SET_PDEATHSIG = 1
# Paths go on the kernel command line, which is split on blanks.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Terminal control sequences the firmware prints (screen clears, modes).
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-~])")


class VmError(RuntimeError):
    """The VM did not run the command to completion; the message says why."""


class VmTimeout(VmError):
    """The VM ran past its time limit and was killed."""


@dataclasses.dataclass(frozen=True)
class VmResult:
    returncode: int
    output: str  # the VM's console: kernel, /init and the command's output
    seconds: float = 0.0


def run_in_vm(
    argv: Sequence[str],
    *,
    workdir: str,
    env: Mapping[str, str],
    timeout: float,
    mem_mb: int = 2048,
    smp: int = 2,
    share: Path | str = REPO_ROOT,
    artifacts: Artifacts | None = None,
    stream: TextIO | None = None,
    echo: bool = True,
) -> VmResult:
    """Boot the VM, run `argv` in `workdir` with exactly `env` (plus HOME=/tmp
    and a default PATH unless given), power off, and return its exit code and
    the console output.

    `share` is the folder mounted read-write (the checkout); everything else
    of the host is read-only in the guest. The console is echoed line by line
    to `stream` (default sys.stdout) with a prefix unless `echo` is false.
    Raises VmTimeout after `timeout` seconds, VmError if the command did not
    run to completion (kernel panic, /init failure, qemu error). No qemu
    process outlives the call.
    """
    if not argv:
        raise ValueError("argv is empty")
    if "=" in argv[0]:
        raise ValueError(f"argv[0] may not contain '=': {argv[0]!r}")
    share = Path(share).resolve()
    workdir = os.path.abspath(workdir)
    for path in (str(share), workdir):
        if not _SAFE_PATH.match(path):
            raise ValueError(f"path not usable in the VM (letters, digits, ._+-/ only): {path!r}")
    full_env = {"HOME": "/tmp", "PATH": DEFAULT_PATH, **env}
    for name in full_env:
        if not _ENV_NAME.match(name):
            raise ValueError(f"bad environment variable name: {name!r}")
    if artifacts is None:
        artifacts = prepare(default_cache_dir())

    runs = share / RUN_DIR_NAME
    runs.mkdir(exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    try:
        (rundir / "run.sh").write_text(
            run_script(argv, workdir=workdir, env=full_env, rundir=str(rundir))
        )
        cmd = qemu_command(artifacts, share=share, run=rundir.name, mem_mb=mem_mb, smp=smp)
        out = (stream or sys.stdout) if echo else None
        started = time.monotonic()
        qemu_rc, output = _run_qemu(cmd, timeout=timeout, stream=out)
        seconds = time.monotonic() - started
        return VmResult(_exit_code(rundir, qemu_rc, output), output, seconds)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
        with contextlib.suppress(OSError):
            runs.rmdir()  # unless another run is using it


def run_script(argv: Sequence[str], *, workdir: str, env: Mapping[str, str], rundir: str) -> str:
    """The /bin/sh script the guest runs in the chroot: records that it started,
    runs the command with exactly `env`, and writes its exit status to rc."""
    q = shlex.quote
    assignments = " ".join(q(f"{k}={v}") for k, v in env.items())
    return "\n".join(
        [
            "# generated by tests/rxe/vm.py",
            f"rundir={q(rundir)}",
            ': > "$rundir/started"',
            "ulimit -l unlimited 2>/dev/null",
            f'if ! cd {q(workdir)}; then echo 126 > "$rundir/rc"; exit 0; fi',
            f"env -i -- {assignments} {' '.join(q(a) for a in argv)} </dev/null",
            'echo "$?" > "$rundir/rc"',
            "sync",
            "",
        ]
    )


def qemu_command(
    artifacts: Artifacts, *, share: Path, run: str, mem_mb: int, smp: int
) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise VmError("qemu-system-x86_64 not found: install qemu-system-x86")
    append = f"console=ttyS0 quiet panic=-1 netspark.share={share} netspark.run={run}"
    virtfs = "local,security_model=none,multidevs=remap"
    return [
        qemu,
        "-nographic",
        "-no-reboot",
        "-nic", "none",  # no network card: nothing leaves the guest
        *_accel_args(),
        "-smp", str(smp),
        "-m", str(mem_mb),
        "-kernel", str(artifacts.kernel),
        "-initrd", str(artifacts.initramfs),
        "-append", append,
        "-virtfs", f"{virtfs},path=/,mount_tag=hostroot,readonly=on",
        "-virtfs", f"{virtfs},path={share},mount_tag=checkout",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip


def _accel_args() -> list[str]:
    accel = os.environ.get("NETSPARK_RXE_ACCEL", "tcg").strip().lower()
    if accel == "tcg":
        # qemu64, not max: max halves rxe throughput under TCG. Two vCPUs, or
        # busy-polling peers starve each other.
        # The x86-64-v2 extensions on top: numpy's wheels (and the JVM's code) need them.
        return ["-accel", "tcg,thread=multi", "-cpu", "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt"]
    if accel == "kvm":
        flags = Path("/proc/cpuinfo").read_text()
        if not re.search(r"\b(vmx|svm)\b", flags) or not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise VmError(
                "NETSPARK_RXE_ACCEL=kvm, but the CPU has no vmx/svm flag or /dev/kvm is not usable"
            )
        return ["-accel", "kvm", "-cpu", "host"]
    raise VmError(f"NETSPARK_RXE_ACCEL must be tcg or kvm, not {accel!r}")


def _run_qemu(cmd: list[str], *, timeout: float, stream: TextIO | None) -> tuple[int, str]:
    lines: list[str] = []
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    assert proc.stdout is not None
    pipe = proc.stdout

    def pump() -> None:
        for raw in iter(pipe.readline, b""):
            line = _ANSI.sub("", raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", ""))
            lines.append(line)
            if stream is not None:
                stream.write(f"{PREFIX}{line}\n")
                stream.flush()

    reader = threading.Thread(target=pump, name="rxe-vm-console", daemon=True)
    reader.start()
    try:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(timeout=5)
            raise VmTimeout(
                f"the VM did not finish within {timeout:.0f} s and was killed\n{_tail(lines)}"
            ) from None
        reader.join(timeout=5)
        return rc, "\n".join(lines) + "\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pipe.close()


def _die_with_parent() -> None:
    """In the child: have the kernel kill qemu if this process dies (SIGKILL,
    an unhandled SIGTERM), where the `finally` below never runs."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _exit_code(rundir: Path, qemu_rc: int, output: str) -> int:
    rc_file = rundir / "rc"
    if rc_file.exists():
        text = rc_file.read_text().strip()
        if text.lstrip("-").isdigit():
            return int(text)
        raise VmError(f"the guest wrote an unreadable exit code {text!r}\n{_tail(output)}")
    if "Kernel panic" in output:
        what = "the guest kernel panicked"
    elif "netspark-rxe: FAILED" in output:
        what = "the guest's /init failed before the command ran"
    elif (rundir / "started").exists():
        what = "the command started but the VM stopped before it finished"
    elif qemu_rc != 0:
        what = f"qemu exited with status {qemu_rc}"
    else:
        what = "the command never ran"
    raise VmError(f"{what} (no exit code was recorded)\n{_tail(output)}")


def _tail(output: str | list[str], n: int = 40) -> str:
    lines = output.splitlines() if isinstance(output, str) else output
    return "--- last lines of the VM console ---\n" + "\n".join(lines[-n:])


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.rxe.vm",
        description="Run a command in a qemu VM with soft-RoCE (rxe0 on dummy0);"
        " exit with its status.",
    )
    parser.add_argument(
        "--workdir", default=os.getcwd(), help="directory to run in (default: the current one)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the guest; repeatable",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds before the VM is killed (default 600)"
    )
    parser.add_argument("--mem", type=int, default=2048, help="guest memory in MiB (default 2048)")
    parser.add_argument("--smp", type=int, default=2, help="guest vCPUs (default 2)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the VM console")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="build the cached kernel and initramfs, then exit",
    )
    parser.add_argument(
        "--netns-kernel",
        action="store_true",
        help=f"boot Debian's {NETNS_KERNEL_SUITE} kernel, whose rxe works between"
        " network namespaces, instead of the host release's",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    opts = parser.parse_args(args)

    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    try:
        suite = NETNS_KERNEL_SUITE if opts.netns_kernel else None
        artifacts = prepare(default_cache_dir(), suite=suite)
        if opts.prepare_only:
            print(f"kernel {artifacts.kernel}")
            print(f"initramfs {artifacts.initramfs}")
            print(f"modules {' '.join(artifacts.modules)}")
            return 0
        if not command:
            parser.error("no command given (put it after --)")
        # The host's PATH (and venv) by default, so `python` means the same inside.
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH)}
        if "VIRTUAL_ENV" in os.environ:
            env["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
        for item in opts.env:
            name, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--env wants NAME=VALUE, got {item!r}")
            env[name] = value
        result = run_in_vm(
            command,
            workdir=opts.workdir,
            env=env,
            timeout=opts.timeout,
            mem_mb=opts.mem,
            smp=opts.smp,
            artifacts=artifacts,
            echo=not opts.quiet,
        )
    except (PrepareError, VmError, ValueError) as exc:
        print(f"rxe vm: {exc}", file=sys.stderr)
        return 125
    print(f"rxe vm: exit status {result.returncode} after {result.seconds:.1f} s", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
