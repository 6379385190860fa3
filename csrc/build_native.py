"""cffi (API mode) build of netspark's native module, `netspark._native`: the arena
and the batch crc32c of a stream's extents (ISA-L, from libisal-dev)."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
HEADERS = ("arena.h", "checksum.h")
ffibuilder.cdef(
    "\n".join(
        line
        for header in HEADERS
        for line in (HERE / header).read_text().splitlines()
        if not line.startswith("#")
    )
)
ffibuilder.set_source(
    "netspark._native",
    "\n".join(f'#include "{header}"' for header in HEADERS),
    sources=[str((HERE / name).relative_to(HERE.parent)) for name in ("arena.c", "checksum.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread", "isal"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
