"""Builds netspark: its native part (cffi, API mode) from csrc/, and the .pth hook
that activates netspark in any PySpark program when spark.netspark.enabled=true."""

from pathlib import Path

import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK = "netspark_hook.pth"


class BuildWithHook(build_py):
    """Puts the .pth hook at the top of site-packages, where Python runs it at start-up."""

    def run(self) -> None:
        super().run()
        self.copy_file(HOOK, str(Path(self.build_lib) / HOOK))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / HOOK)]


class EditableWithHook(editable_wheel):
    """`pip install -e .` too: the editable wheel's root lands in site-packages.
    (`_install_namespaces` is the step that writes into that root.)"""

    def _install_namespaces(self, installation_dir: str, pth_prefix: str) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(HOOK, Path(installation_dir) / HOOK)


setup(
    packages=find_packages(include=["netspark", "netspark.*"]),
    cffi_modules=["csrc/build_native.py:ffibuilder"],
    cmdclass={"build_py": BuildWithHook, "editable_wheel": EditableWithHook},
)
