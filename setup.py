"""Builds netspark: its native part (cffi, API mode) from csrc/, the .pth hook that
activates netspark in any PySpark program when spark.netspark.enabled=true, and (best
effort) the JVM shuffle manager's jar from jvm/ (see netspark/jvm/build.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK = "netspark_hook.pth"
VERBS_HEADER = "infiniband/verbs.h"


def _has_verbs_header() -> bool:
    """Whether libibverbs-dev is installed: the RDMA module is built only then."""
    import sysconfig

    env = [*os.environ.get("C_INCLUDE_PATH", "").split(":"),
           *os.environ.get("CPATH", "").split(":")]
    dirs = [*env, sysconfig.get_config_var("INCLUDEDIR") or "", "/usr/local/include",
            "/usr/include",
            *(str(p) for p in Path("/usr/include").glob("*-linux-gnu"))]
    return any(d and (Path(d) / VERBS_HEADER).is_file() for d in dirs)


CFFI_MODULES = ["csrc/build_native.py:ffibuilder"]
if os.environ.get("NETSPARK_RDMA", "auto") != "0" and _has_verbs_header():
    CFFI_MODULES.append("csrc/build_verbs.py:ffibuilder")
else:
    print(f"netspark: {VERBS_HEADER} not found (or NETSPARK_RDMA=0): building without RDMA "
          "(install libibverbs-dev for it)")


class BuildWithHook(build_py):
    """Puts the .pth hook at the top of site-packages, where Python runs it at start-up."""

    def run(self) -> None:
        if not self.editable_mode:  # editable installs use the jar in place (scripts/setup.sh)
            _build_jar()
        super().run()
        self.copy_file(HOOK, str(Path(self.build_lib) / HOOK))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / HOOK)]


def _build_jar() -> None:
    """Builds netspark/jvm/netspark-shuffle.jar if this build environment can (a JDK and
    pyspark present) so that the wheel carries it; without, netspark works on without the
    JVM part and `python -m netspark.jvm.build` can make it later."""
    run = subprocess.run([sys.executable, "-m", "netspark.jvm.build"], capture_output=True,
                         text=True, cwd=Path(__file__).parent,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    print((run.stdout + run.stderr).strip() or "netspark: JVM jar build said nothing")


class EditableWithHook(editable_wheel):
    """`pip install -e .` too: the editable wheel's root lands in site-packages.
    (`_install_namespaces` is the step that writes into that root.)"""

    def _install_namespaces(self, installation_dir: str, pth_prefix: str) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(HOOK, Path(installation_dir) / HOOK)


setup(
    packages=find_packages(include=["netspark", "netspark.*"]),
    package_data={"netspark.jvm": ["*.jar"]},
    cffi_modules=CFFI_MODULES,
    cmdclass={"build_py": BuildWithHook, "editable_wheel": EditableWithHook},
)
