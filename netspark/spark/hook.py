"""Run at interpreter start by netspark_hook.pth: wait, cheaply, for PySpark.

Nothing is imported here but the standard library. When `pyspark.core.context`
is first imported, its SparkContext is wrapped so that a context created with
`spark.netspark.enabled=true` activates netspark (netspark.spark.activate); other
contexts, and programs that never import PySpark, are untouched.
NETSPARK_HOOK=0 disables the hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType

TARGET = "pyspark.core.context"


class _ContextWatcher(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path, target=None):  # noqa: ANN001 (importlib's API)
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec):  # noqa: ANN201
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        try:
            from netspark.spark.activate import wrap_spark_context
        except Exception as err:  # never break PySpark because of netspark
            print(f"netspark: hook disabled: {err}", file=sys.stderr)
            return
        wrap_spark_context(module.SparkContext)


def install() -> None:
    if os.environ.get("NETSPARK_HOOK", "1") == "0" or TARGET in sys.modules:
        return
    if not any(isinstance(f, _ContextWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _ContextWatcher())


install()
