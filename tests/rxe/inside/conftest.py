"""Tests that run inside the soft-RoCE VM.

The host's kernel has no RDMA, so `tests/rxe/test_vm_smoke.py` boots one VM
(tests/rxe/vm.py) that runs `pytest tests/rxe/inside -m rxe_guest` there. On
a machine without an RDMA device these tests skip; inside the VM
(NETSPARK_RXE_GUEST=1) a missing device is a failure instead, so a broken
bring-up cannot pass as a run of skips.

pyverbs: Debian's python3-pyverbs (rdma-core 44) is installed for the system
Python in /usr/lib/python3/dist-packages. The project's venv is CPython 3.11
too, so the same extension modules load in it: they link libpython3.11.so.1.0
by soname, which the venv's (shared-library) interpreter has already loaded,
so they bind to the running interpreter. The directory is appended, not
prepended, so the venv's own packages win. Running the RDMA tests in the
venv's interpreter (rather than /usr/bin/python3) keeps them next to
netspark's own code, which is what later tests will exercise.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

RDMA_SYSFS = Path("/sys/class/infiniband")
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
IN_GUEST = os.environ.get("NETSPARK_RXE_GUEST") == "1"


def rdma_devices() -> list[str]:
    try:
        return sorted(p.name for p in RDMA_SYSFS.iterdir())
    except OSError:
        return []


def _make_pyverbs_importable() -> None:
    try:
        import pyverbs  # noqa: F401
    except ImportError:
        if sys.version_info[:2] == (3, 11) and DEBIAN_DIST_PACKAGES not in sys.path:
            sys.path.append(DEBIAN_DIST_PACKAGES)


_make_pyverbs_importable()


@pytest.fixture(scope="session", autouse=True)  # before any module's fixture makes links
def _needs_rdma_device() -> None:
    if rdma_devices():
        return
    if IN_GUEST:
        pytest.fail(f"inside the rxe VM but {RDMA_SYSFS} lists no device: the rxe bring-up failed")
    pytest.skip("no RDMA device: runs inside the soft-RoCE VM (pytest -m rxe tests/rxe)")


@pytest.fixture
def record_metric() -> Callable[[str, float], None]:
    """Record a figure for the host to report (in $NETSPARK_RXE_RESULTS/metrics.json)."""
    results = os.environ.get("NETSPARK_RXE_RESULTS")

    def record(name: str, value: float) -> None:
        print(f"metric {name} = {value:.4g}")
        if not results:
            return
        path = Path(results) / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {}
        metrics[name] = value
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    return record
