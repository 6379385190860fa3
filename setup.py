"""Builds netspark and its native part (cffi, API mode) from csrc/."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["netspark", "netspark.*"]),
    cffi_modules=["csrc/build_native.py:ffibuilder"],
)
