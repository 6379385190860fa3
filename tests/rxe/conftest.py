"""Host side of the soft-RoCE (rdma_rxe) suite.

Tests marked `rxe` need a VM: the session fixture `rxe_guest_run` boots a qemu
VM (tests/rxe/vm.py) on the host release's Debian kernel that runs `pytest
tests/rxe/inside -m rxe_guest` with the host's own venv, and hands the inner
result (exit code, per-test outcomes from JUnit XML, recorded metrics) to the
host tests. `rxe_netns_run` boots a second one, on Debian 13's backports kernel
(whose rxe works between network namespaces), for NETNS_SUITE with each RoCE
host in a namespace of its own (tests/rxe/inside/hosts.py). The JVMs stay on
the first: under TCG they crashed or hung on the newer kernel. Booting once per
test would cost a boot each.

They are opt-in, since they take a minute and may install Debian packages:
run them with `pytest -m rxe tests/rxe` (or NETSPARK_RXE=1). Without that they
are skipped with a message saying how.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.rxe import vm

GUEST_SUITE = "tests/rxe/inside"
GUEST_MARKER = "rxe_guest"
NETNS_SUITE = "tests/rxe/inside/test_rdma_two_hosts.py"


@dataclasses.dataclass(frozen=True)
class GuestRun:
    returncode: int  # of the inner pytest
    output: str  # the VM console
    seconds: float  # boot to power-off
    outcomes: dict[str, str]  # inner test id -> passed | failed | error | skipped
    metrics: dict[str, float]  # recorded by the inner tests (record_metric)
    kernel: str  # the guest's kernel version


_RUNS_KEY = pytest.StashKey[dict[str, GuestRun]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rxe: needs the soft-RoCE qemu VM (one boot per session);"
        " opt in with -m rxe or NETSPARK_RXE=1",
    )
    config.addinivalue_line(
        "markers",
        f"{GUEST_MARKER}: runs inside the soft-RoCE VM; skips where there is no RDMA device",
    )


def _rxe_requested(config: pytest.Config) -> bool:
    if os.environ.get("NETSPARK_RXE") == "1":
        return True
    markexpr = config.getoption("markexpr", default="") or ""
    return "rxe" in re.findall(r"\w+", markexpr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _rxe_requested(config):
        return
    skip = pytest.mark.skip(
        reason="soft-RoCE VM tests are opt-in: pytest -m rxe tests/rxe (or NETSPARK_RXE=1)"
    )
    for item in items:
        if item.get_closest_marker("rxe") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def rxe_guest_run(request: pytest.FixtureRequest) -> GuestRun:
    """Boot the VM once and run the inner suite in it."""
    return _boot(request, "main", GUEST_SUITE, suite=None, env={})


@pytest.fixture(scope="session")
def rxe_netns_run(request: pytest.FixtureRequest) -> GuestRun:
    """Boot the newer kernel once and run the two-host tests there, between namespaces."""
    return _boot(request, "netns", NETNS_SUITE, suite=vm.NETNS_KERNEL_SUITE,
                 env={"NETSPARK_RXE_NETNS": "1"})


def _boot(request: pytest.FixtureRequest, name: str, tests: str, *, suite: str | None,
          env: dict[str, str]) -> GuestRun:
    share = vm.REPO_ROOT
    runs = share / vm.RUN_DIR_NAME
    runs.mkdir(exist_ok=True)
    results = Path(tempfile.mkdtemp(prefix="results-", dir=runs))
    try:
        junit = results / "junit.xml"
        argv = [
            sys.executable, "-m", "pytest", tests,
            "-m", GUEST_MARKER,
            "-p", "no:cacheprovider",
            "-v", "-s", "-rfEs",
            f"--junitxml={junit}",
        ]  # fmt: skip
        env = {
            **env,
            "PATH": os.environ.get("PATH", vm.DEFAULT_PATH),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "NETSPARK_RXE_GUEST": "1",
            "NETSPARK_RXE_RESULTS": str(results),
        }
        if "VIRTUAL_ENV" in os.environ:
            env["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
        timeout = float(os.environ.get("NETSPARK_RXE_TIMEOUT", "2400"))
        artifacts = vm.prepare(suite=suite)
        with _live_output(request.config):
            result = vm.run_in_vm(
                argv, workdir=str(share), env=env, timeout=timeout, share=share,
                artifacts=artifacts, mem_mb=4096,  # room for the inner Spark cluster's JVMs
            )
        metrics_file = results / "metrics.json"
        run = GuestRun(
            returncode=result.returncode,
            output=result.output,
            seconds=result.seconds,
            outcomes=_junit_outcomes(junit) if junit.exists() else {},
            metrics=json.loads(metrics_file.read_text()) if metrics_file.exists() else {},
            kernel=artifacts.kernel_version,
        )
    finally:
        shutil.rmtree(results, ignore_errors=True)
        with contextlib.suppress(OSError):
            runs.rmdir()  # unless another run is using it
    request.config.stash.setdefault(_RUNS_KEY, {})[name] = run
    return run


def _live_output(config: pytest.Config) -> contextlib.AbstractContextManager[None]:
    """Let the VM console through pytest's capture, so CI logs show progress."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        return contextlib.nullcontext()
    return capman.global_and_fixture_disabled()


def _junit_outcomes(path: Path) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                break
        outcomes[name] = outcome
    return outcomes


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    runs = terminalreporter.config.stash.get(_RUNS_KEY, {})
    if not runs:
        return
    terminalreporter.section("soft-RoCE VM")
    for name, run in runs.items():
        counts: dict[str, int] = {}
        for outcome in run.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "no results"
        terminalreporter.write_line(
            f"{name} boot ({run.kernel}): inner pytest exit {run.returncode} ({summary})"
            f" in {run.seconds:.1f} s of VM time"
        )
        for metric, value in sorted(run.metrics.items()):
            terminalreporter.write_line(f"{metric}: {value:.4g}")
