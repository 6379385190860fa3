"""The arena: one shared-memory file of fixed-size blocks per executor.

The owner (the executor's netspark server) creates it as a memfd, so it can never
outlive every process that maps it: no file is left behind, SIGKILL included.
Other processes attach through `/proc/<owner pid>/fd/<fd>` (given in their
environment) or an inherited descriptor. The allocator state lives at the start
of the file (see csrc/arena.c), so leasing a block needs no round trip to the owner.

Only the owner pins (mlock is per mapping) and maintains: it pins slabs as they
become active, reclaims blocks of dead processes and gives idle slabs back.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from netspark._native import ffi, lib
from netspark.config import PREFIX, NetsparkConf

log = logging.getLogger(__name__)

HUGEPAGE = 2 << 20
_SHMEM_THP = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
_memlock_warned = False


class ArenaError(RuntimeError):
    """The arena could not be created, mapped or attached."""


class HugepagesUnavailable(ArenaError):
    """`buffer.hugepages=true` but the system has no free hugetlb pages for the arena."""


@dataclass(frozen=True)
class ArenaStats:
    block_size: int
    max_blocks: int
    total_blocks: int  # blocks of active slabs
    free_blocks: int
    leased_blocks: int
    high_water: int
    grows: int
    shrinks: int
    reclaimed: int
    page_kind: str  # hugetlb | thp | 4k
    pinned: bool

    def __str__(self) -> str:
        mib = self.block_size / (1 << 20)
        return (
            f"{self.total_blocks}/{self.max_blocks} blocks of {mib:g} MiB active, "
            f"{self.free_blocks} free, {self.leased_blocks} leased "
            f"(high water {self.high_water}), grows {self.grows}, shrinks {self.shrinks}, "
            f"reclaimed {self.reclaimed}, pages {self.page_kind}, "
            f"{'pinned' if self.pinned else 'not pinned'}"
        )


def _check(err: int, what: str) -> None:
    if err:
        raise ArenaError(f"{what}: {os.strerror(err)}")


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def free_hugepages() -> int:
    """Free 2 MB hugetlb pages of the system (0 when hugetlb is not configured)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("HugePages_Free:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _shmem_thp_allowed() -> bool:
    try:
        with open(_SHMEM_THP) as f:
            selected = f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return False
    return selected in ("always", "within_size", "advise", "force")


class Arena:
    """A mapping of the shared block arena; `create` makes one, `attach` maps it."""

    def __init__(self, fd: int, *, owner: bool, page_kind: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fd = fd
        self.owner = owner
        self.page_kind = page_kind
        self.clock = clock
        self.size = os.fstat(fd).st_size
        addr = ffi.new("void **")
        _check(lib.ns_map(fd, self.size, HUGEPAGE, addr), "mapping the netspark arena")
        self._base = ffi.cast("char *", addr[0])
        self.address = int(ffi.cast("uintptr_t", self._base))
        self._header = addr[0]
        if lib.ns_check(self._header):
            self._unmap()
            raise ArenaError("the file is not a netspark arena of this version")
        stats = self._raw_stats()
        self.block_size = stats.block_size
        self.max_blocks = stats.max_blocks
        self.slab_blocks = stats.slab_blocks
        self.data_offset = _round_up(
            lib.ns_header_size(self.max_blocks, self.slab_blocks), self.block_size
        )
        self.pinned = False
        self._pinned_slabs: set[int] = set()
        self._maintainer: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- creation and attachment ----

    @classmethod
    def create(cls, conf: NetsparkConf, *, name: str = "netspark",
               clock: Callable[[], float] = time.monotonic) -> Arena:
        """Creates an arena sized by `conf`, choosing the best pages the system has."""
        block = conf.buffer_blockSize
        slab_blocks = conf.buffer_slabSize // block
        max_blocks = max(slab_blocks, conf.buffer_poolSize // block // slab_blocks * slab_blocks)
        slab_bytes = slab_blocks * block
        initial_slabs = min(max_blocks // slab_blocks,
                            -(-conf.buffer_initialSize // slab_bytes))
        header = _round_up(lib.ns_header_size(max_blocks, slab_blocks), block)
        size = header + max_blocks * block
        upfront = header + initial_slabs * slab_bytes
        fd, kind = _create_file(name, conf.buffer_hugepages, block, size, upfront)
        try:
            hdr = ffi.new("void **")
            _check(lib.ns_map(fd, size, HUGEPAGE, hdr), "mapping the new arena")
            try:
                _check(lib.ns_init(hdr[0], block, max_blocks, slab_blocks, initial_slabs),
                       "initialising the arena header")
                if kind != "hugetlb" and lib.ns_advise_huge(hdr[0], size) == 0 \
                        and _shmem_thp_allowed():
                    kind = "thp"
            finally:
                lib.ns_unmap(hdr[0], size)
            arena = cls(fd, owner=True, page_kind=kind, clock=clock)
        except BaseException:
            os.close(fd)
            raise
        arena.pin_active_slabs()
        log.info("netspark arena: %s", arena.stats())
        return arena

    @classmethod
    def attach(cls, path: str, *, clock: Callable[[], float] = time.monotonic) -> Arena:
        """Maps an existing arena, e.g. `/proc/<owner pid>/fd/<fd>` of its owner."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise ArenaError(f"cannot open the netspark arena at {path}: {err.strerror}") from None
        try:
            return cls(fd, owner=False, page_kind="attached", clock=clock)
        except BaseException:
            os.close(fd)
            raise

    @property
    def path(self) -> str:
        """Where another process of this host can attach the arena."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    # ---- blocks ----

    def block_address(self, block_id: int) -> int:
        self._check_id(block_id)
        return self.address + self.data_offset + block_id * self.block_size

    def _start(self, block_id: int) -> ffi.CData:
        """A pointer to the first byte of a block (the id checked)."""
        self._check_id(block_id)
        return self._base + self.data_offset + block_id * self.block_size

    def block_view(self, block_id: int) -> memoryview:
        """A writable view of one block's memory (no copy)."""
        return memoryview(ffi.buffer(self._start(block_id), self.block_size))

    def guarded_view(self, block_id: int, on_last_ref: Callable[[int], None]) -> memoryview:
        """A view of the block that calls `on_last_ref(block_id)` once neither it nor any
        slice, array or object built on it is alive: so a block cannot be reused under
        a reader that still looks at it."""
        guard = ffi.gc(self._start(block_id), lambda _: on_last_ref(block_id))
        return memoryview(ffi.buffer(guard, self.block_size))

    def span_view(self, block_id: int, offset: int, size: int, keep: object) -> memoryview:
        """A view of `size` bytes from `offset` of `block_id` on into the blocks after it
        (consecutive blocks are adjacent in the mapping). It holds `keep` (the guarded
        views of those blocks) for as long as it, or anything built on it, is alive."""
        self._check_id(block_id + (offset + size - 1) // self.block_size)
        holder = ffi.gc(self._start(block_id) + offset, lambda _: keep)
        return memoryview(ffi.buffer(holder, size))

    def owner_of(self, block_id: int) -> int:
        """The pid that holds the block, 0 when it is free."""
        self._check_id(block_id)
        return lib.ns_owner(self._header, block_id)

    def _check_id(self, block_id: int) -> None:
        if not 0 <= block_id < self.max_blocks:
            raise IndexError(f"block {block_id} is outside the arena (0..{self.max_blocks - 1})")

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def lease(self, count: int, pid: int | None = None) -> list[int]:
        """Leases up to `count` blocks (fewer, maybe none, when the pool is at its cap)."""
        out = ffi.new("uint32_t[]", count)
        got = lib.ns_lease(self._header, self.fd, self.data_offset, pid or os.getpid(),
                           count, out, self.now_ms())
        if got < 0:
            raise ArenaError(f"could not back a new slab of the arena: {os.strerror(-got)}")
        return list(out[0:got])

    def release(self, block_ids: list[int], pid: int | None = None) -> None:
        ids = ffi.new("uint32_t[]", block_ids)
        err = lib.ns_release(self._header, pid or os.getpid(), ids, len(block_ids),
                             self.now_ms())
        if err:
            raise ArenaError(f"releasing blocks {block_ids}: not all are held by this process")

    def transfer(self, block_ids: list[int], to_pid: int, from_pid: int | None = None) -> None:
        """Hands blocks to another process (a committed output goes to the server)."""
        ids = ffi.new("uint32_t[]", block_ids)
        err = lib.ns_transfer(self._header, from_pid or os.getpid(), to_pid, ids,
                              len(block_ids))
        if err:
            raise ArenaError(f"transferring blocks {block_ids}: not all are held by the sender")

    # ---- owner's maintenance ----

    def reclaim_dead(self) -> int:
        """Frees blocks whose holder has died; returns how many."""
        return lib.ns_reclaim_dead(self._header, self.now_ms())

    def pin_active_slabs(self) -> None:
        """Pins the header and every active slab not pinned yet (owner only)."""
        if not self.owner:
            return
        slab_bytes = self.slab_blocks * self.block_size
        if not self._pinned_slabs and not self._try_pin(0, self.data_offset):
            return
        for slab in range(self.max_blocks // self.slab_blocks):
            if slab in self._pinned_slabs or not lib.ns_slab_active(self._header, slab):
                continue
            if not self._try_pin(self.data_offset + slab * slab_bytes, slab_bytes):
                return
            self._pinned_slabs.add(slab)
        self.pinned = True

    def _try_pin(self, offset: int, length: int) -> bool:
        global _memlock_warned
        err = lib.ns_pin(self._base + offset, length)
        if err == 0:
            return True
        self.pinned = False
        if not _memlock_warned:
            _memlock_warned = True
            soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft >> 10} KiB"
            log.warning(
                "netspark: cannot pin the buffer arena (%s); RLIMIT_MEMLOCK is %s. "
                "Going on unpinned (RDMA registration may fail). Raise the limit with "
                "`ulimit -l unlimited`, LimitMEMLOCK=infinity (systemd) or "
                "`--ulimit memlock=-1` (containers), or lower %sbuffer.poolSize.",
                os.strerror(err), limit, PREFIX,
            )
        return False

    def shrink_idle(self, idle_seconds: float, min_slabs: int) -> int:
        """Gives back to the OS slabs that have had no leased block for `idle_seconds`."""
        out = ffi.new("uint32_t[]", self.max_blocks // self.slab_blocks)
        done = lib.ns_shrink_idle(self._header, self.fd, self.data_offset, self.now_ms(),
                                  int(idle_seconds * 1000), min_slabs, out, len(out))
        slab_bytes = self.slab_blocks * self.block_size
        for slab in out[0:max(done, 0)]:
            if slab in self._pinned_slabs:
                self._pinned_slabs.discard(slab)
                lib.ns_unpin(self._base + self.data_offset + slab * slab_bytes, slab_bytes)
        return max(done, 0)

    def maintain(self, idle_seconds: float, min_slabs: int) -> None:
        """One round of the owner's upkeep: reclaim, pin new slabs, shrink idle ones."""
        reclaimed = self.reclaim_dead()
        if reclaimed:
            log.info("netspark arena: reclaimed %d blocks of dead processes", reclaimed)
        self.pin_active_slabs()
        self.shrink_idle(idle_seconds, min_slabs)

    def start_maintenance(self, idle_seconds: float, min_slabs: int,
                          interval: float = 1.0) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                self.maintain(idle_seconds, min_slabs)

        self._maintainer = threading.Thread(target=loop, name="netspark-arena", daemon=True)
        self._maintainer.start()

    # ---- stats and teardown ----

    def _raw_stats(self) -> ffi.CData:
        raw = ffi.new("ns_stats *")
        lib.ns_get_stats(self._header, raw)
        return raw

    def stats(self) -> ArenaStats:
        raw = self._raw_stats()
        return ArenaStats(
            block_size=raw.block_size, max_blocks=raw.max_blocks,
            total_blocks=raw.active_slabs * raw.slab_blocks, free_blocks=raw.free_blocks,
            leased_blocks=raw.leased_blocks, high_water=raw.high_water, grows=raw.grows,
            shrinks=raw.shrinks, reclaimed=raw.reclaimed, page_kind=self.page_kind,
            pinned=self.pinned,
        )

    def _unmap(self) -> None:
        if self._header is not None:
            lib.ns_unmap(self._header, self.size)
            self._header = None

    def close(self) -> None:
        """Unmaps the arena; views of it must no longer be used."""
        self._stop.set()
        if self._maintainer is not None:
            self._maintainer.join()
        self._unmap()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _create_file(name: str, hugepages: str, block: int, size: int,
                 upfront: int) -> tuple[int, str]:
    """A memfd of `size` bytes with `upfront` bytes backed; hugetlb when possible."""
    if hugepages != "false" and block % HUGEPAGE == 0:
        needed = -(-upfront // HUGEPAGE)
        if free_hugepages() >= needed:
            fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_HUGETLB)
            try:
                os.ftruncate(fd, size)
                _check(lib.ns_allocate(fd, 0, upfront), "allocating hugepages")
                return fd, "hugetlb"
            except (OSError, ArenaError) as err:
                os.close(fd)
                if hugepages == "true":
                    raise HugepagesUnavailable(f"hugetlb arena failed: {err}") from None
                log.info("netspark: hugetlb arena failed (%s); using normal pages", err)
    if hugepages == "true":
        have = free_hugepages()
        raise HugepagesUnavailable(
            f"{PREFIX}buffer.hugepages=true but the system has {have} free 2 MB hugepages "
            f"and the arena needs {-(-upfront // HUGEPAGE)} to start (with a "
            f"{block >> 10} KiB block size, which must be a multiple of 2 MB). Reserve "
            f"them (echo N > /proc/sys/vm/nr_hugepages) or set {PREFIX}buffer.hugepages=auto."
        )
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        err = lib.ns_allocate(fd, 0, upfront)
        if err in (errno.ENOSPC, errno.ENOMEM):
            raise ArenaError(f"cannot allocate the arena's first {upfront >> 20} MiB: "
                             f"{os.strerror(err)}")
        _check(err, "allocating the arena")
    except BaseException:
        os.close(fd)
        raise
    return fd, "4k"
