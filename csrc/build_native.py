"""cffi (API mode) build of netspark's native arena module, `netspark._native`."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef(
    "\n".join(
        line
        for line in (HERE / "arena.h").read_text().splitlines()
        if not line.startswith("#")
    )
)
ffibuilder.set_source(
    "netspark._native",
    '#include "arena.h"',
    sources=[str((HERE / "arena.c").relative_to(HERE.parent))],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
