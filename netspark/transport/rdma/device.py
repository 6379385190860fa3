"""Opening an RDMA device and setting up what the data path runs on, over cffi.

`Device`: one per process (`open_device` caches it): context, protection
domain, the chosen port and GID (RoCE v2, IPv4-mapped by default), and the
limits that bound the data path (max message size, outstanding reads).
`SlabRegistrations`: one memory region per active slab of an arena, made on
first use and kept (registering is a page-pinning system call: never per read).
`QueuePair`: an RC queue pair with its own CQ and completion channel, moved
through INIT/RTR/RTS with the peer's endpoint exchanged out of band.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from typing import Any

from netspark.transport.protocol import RdmaEndpoint
from netspark.transport.rdma.errors import RdmaUnavailable, verbs_error

try:
    from netspark._verbs import ffi, lib
except ImportError as _err:  # built without libibverbs-dev
    ffi = lib = None
    _IMPORT_ERROR: ImportError | None = _err
else:
    _IMPORT_ERROR = None

log = logging.getLogger(__name__)

NOT_BUILT = (
    "netspark was built without RDMA support: <infiniband/verbs.h> was not found when it "
    "was installed. Install libibverbs-dev and ibverbs-providers, then reinstall netspark "
    "(pip install -e .), or set spark.netspark.transport=tcp"
)
MTU_BYTES = {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}  # enum ibv_mtu -> bytes
_IPV4_MAPPED = bytes(10) + b"\xff\xff"
# RC retry timing: 4.096 us * 2**14 = 67 ms per try, 7 tries: a dead peer is
# detected in about half a second, long enough for a slow (TCG) soft-RoCE peer.
QP_TIMEOUT = 14
QP_RETRY_COUNT = 7


def require_built() -> None:
    if lib is None:
        raise RdmaUnavailable(f"{NOT_BUILT} ({_IMPORT_ERROR})")


@dataclass(frozen=True)
class DeviceLimits:
    max_msg: int  # bytes of one RDMA READ
    max_rd_atomic: int  # RDMA READs outstanding per queue pair
    max_qp_wr: int
    mtu: int  # bytes, the port's active MTU


class Device:
    """An open RDMA device: context, protection domain, port and GID."""

    def __init__(self, name: str = "", port: int = 1, gid_index: int = -1,
                 address: str = "") -> None:
        """`address`: the IPv4 address this process's server advertises; unless `name`
        and `gid_index` say otherwise, the device and GID are the ones that carry it."""
        require_built()
        self.ctx, self.name = _open_context(name, port, address)
        try:
            self.port = port
            self.limits = self._query_limits()
            self.gid_index, self.gid = self._choose_gid(gid_index, address)
            self.pd = lib.ibv_alloc_pd(self.ctx)
            if self.pd == ffi.NULL:
                raise verbs_error(f"ibv_alloc_pd on {self.name}", ffi.errno)
        except BaseException:
            lib.ibv_close_device(self.ctx)
            raise
        self.pid = os.getpid()
        log.info("netspark: RDMA device %s port %d GID index %d (%s), MTU %d, max message "
                 "%d, %d reads in flight per peer", self.name, port, self.gid_index,
                 gid_text(self.gid), self.limits.mtu, self.limits.max_msg,
                 self.limits.max_rd_atomic)

    def _query_limits(self) -> DeviceLimits:
        dev = ffi.new("struct ibv_device_attr *")
        if err := lib.ibv_query_device(self.ctx, dev):
            raise verbs_error(f"ibv_query_device on {self.name}", err)
        if self.port > dev.phys_port_cnt:
            raise RdmaUnavailable(f"{self.name} has {dev.phys_port_cnt} port(s), "
                                  f"spark.netspark.rdma.port={self.port}")
        attr = ffi.new("struct ibv_port_attr *")
        if err := lib.ibv_query_port(self.ctx, self.port, attr):
            raise verbs_error(f"ibv_query_port {self.name}:{self.port}", err)
        if attr.state != lib.IBV_PORT_ACTIVE:
            raise RdmaUnavailable(f"port {self.port} of {self.name} is not active "
                                  f"(state {attr.state}): is its network interface up?")
        if attr.link_layer != lib.IBV_LINK_LAYER_ETHERNET:
            raise RdmaUnavailable(f"{self.name} is not a RoCE device (link layer "
                                  f"{attr.link_layer}); netspark speaks RoCE v2")
        rd = min(dev.max_qp_rd_atom, dev.max_qp_init_rd_atom, 255)
        return DeviceLimits(max_msg=attr.max_msg_sz, max_rd_atomic=max(1, rd),
                            max_qp_wr=dev.max_qp_wr, mtu=MTU_BYTES.get(attr.active_mtu, 1024))

    def _choose_gid(self, wanted: int, address: str) -> tuple[int, bytes]:
        entry = ffi.new("struct ibv_gid_entry *")
        if wanted < 0 and address:
            index = _gid_index_of(self.ctx, self.port, address)
            if index is not None:
                return index, _gid_of(address)
            log.warning("netspark: %s port %d has no RoCE v2 GID for %s (the advertised "
                        "address); using its first IPv4 GID", self.name, self.port, address)
        if wanted >= 0:
            if err := lib.ibv_query_gid_ex(self.ctx, self.port, wanted, entry, 0):
                raise RdmaUnavailable(f"GID index {wanted} of {self.name}:{self.port} "
                                      f"is not usable: {os.strerror(abs(err))}")
            gid = bytes(ffi.buffer(entry.gid.raw))
            if address and gid != _gid_of(address):
                own = _gid_index_of(self.ctx, self.port, address)
                log.warning("netspark: spark.netspark.rdma.gidIndex=%d is %s on %s, not the "
                            "RoCE v2 GID of %s (the advertised address; %s): peers may not "
                            "reach it", wanted, gid_text(gid), self.name, address,
                            "not on this device" if own is None else f"that is index {own}")
            return wanted, gid
        for index in range(256):
            if lib.ibv_query_gid_ex(self.ctx, self.port, index, entry, 0):
                continue  # an empty slot of the table
            raw = bytes(ffi.buffer(entry.gid.raw))
            if entry.gid_type == lib.IBV_GID_TYPE_ROCE_V2 and raw.startswith(_IPV4_MAPPED):
                return index, raw
        raise RdmaUnavailable(f"{self.name} port {self.port} has no RoCE v2 IPv4-mapped GID: "
                              "give its interface an IPv4 address, or set "
                              "spark.netspark.rdma.gidIndex")

    def register(self, address: int, length: int, remote_read: bool) -> Any:
        """An ibv_mr over [address, address+length); never remote write."""
        access = lib.IBV_ACCESS_LOCAL_WRITE | (lib.IBV_ACCESS_REMOTE_READ if remote_read else 0)
        mr = lib.ibv_reg_mr(self.pd, ffi.cast("void *", address), length, access)
        if mr == ffi.NULL:
            raise verbs_error(f"registering {length >> 10} KiB with {self.name} (is "
                              "RLIMIT_MEMLOCK high enough?)", ffi.errno)
        return mr

    def close(self) -> None:
        if self.ctx is not None:
            lib.ibv_dealloc_pd(self.pd)
            lib.ibv_close_device(self.ctx)
            self.ctx = None


def gid_text(gid: bytes) -> str:
    return ":".join(gid[i:i + 2].hex() for i in range(0, 16, 2))


def _gid_of(address: str) -> bytes | None:
    """The RoCE v2 GID of an IPv4 address (IPv4-mapped), None if it is not one."""
    try:
        return _IPV4_MAPPED + socket.inet_aton(address)
    except OSError:
        return None


def _gid_index_of(ctx: Any, port: int, address: str) -> int | None:
    """The index of the RoCE v2 GID of IPv4 `address` in a port's table, if it is there."""
    wanted = _gid_of(address)
    if wanted is None:
        return None
    entry = ffi.new("struct ibv_gid_entry *")
    for index in range(256):
        if lib.ibv_query_gid_ex(ctx, port, index, entry, 0):
            continue
        if entry.gid_type == lib.IBV_GID_TYPE_ROCE_V2 and bytes(ffi.buffer(entry.gid.raw)) \
                == wanted:
            return index
    return None


def _open_context(name: str, port: int = 1, address: str = "") -> tuple[Any, str]:
    """The named device; unnamed, the one whose GIDs hold `address`, else the first."""
    count = ffi.new("int *")
    devices = lib.ibv_get_device_list(count)
    if devices == ffi.NULL:
        raise RdmaUnavailable(f"no RDMA devices: ibv_get_device_list failed "
                              f"({os.strerror(ffi.errno)}); is a driver (e.g. rdma_rxe) loaded?")
    try:
        names = [ffi.string(lib.ibv_get_device_name(devices[i])).decode()
                 for i in range(count[0])]
        if not names:
            raise RdmaUnavailable("no RDMA device on this host (/sys/class/infiniband is "
                                  "empty); load a driver or use spark.netspark.transport=tcp")
        if name and name not in names:
            raise RdmaUnavailable(f"RDMA device {name!r} (spark.netspark.rdma.device) not "
                                  f"found; this host has {', '.join(names)}")
        order = [names.index(name)] if name else list(range(len(names)))
        for chosen in order:
            ctx = lib.ibv_open_device(devices[chosen])
            if ctx == ffi.NULL:
                if name:
                    raise RdmaUnavailable(f"cannot open RDMA device {names[chosen]}: "
                                          f"{os.strerror(ffi.errno)}")
                continue
            if name or not address or _gid_index_of(ctx, port, address) is not None:
                return ctx, names[chosen]
            lib.ibv_close_device(ctx)
        ctx = lib.ibv_open_device(devices[0])  # none carries the address: as before
        if ctx == ffi.NULL:
            raise RdmaUnavailable(f"cannot open RDMA device {names[0]}: "
                                  f"{os.strerror(ffi.errno)}")
        if address:
            log.warning("netspark: no RDMA device has a GID for %s (the advertised address); "
                        "using %s", address, names[0])
        return ctx, names[0]
    finally:
        lib.ibv_free_device_list(devices)


_devices: dict[tuple[int, str, int, int, str], Device] = {}
_devices_lock = threading.Lock()


def open_device(name: str = "", port: int = 1, gid_index: int = -1,
                address: str = "") -> Device:
    """The process's Device for these settings, opened once (re-opened after a fork)."""
    key = (os.getpid(), name, port, gid_index, address)
    with _devices_lock:
        if key not in _devices:
            _devices[key] = Device(name, port, gid_index, address)
        return _devices[key]


def forget_device(device: Device) -> None:
    """Drops a device that failed (e.g. went away), so the next open tries afresh."""
    with _devices_lock:
        for key, dev in list(_devices.items()):
            if dev is device:
                del _devices[key]


class SlabRegistrations:
    """Memory regions over an arena's slabs, one per slab, made on first use.

    The arena is mostly unbacked address space (it grows by slabs), so it cannot be
    registered whole: registering pins, and would back every page of the cap.
    """

    def __init__(self, device: Device, base: int, slab_bytes: int, remote_read: bool) -> None:
        self.device = device
        self.base = base  # address of slab 0 in this process
        self.slab_bytes = slab_bytes
        self.remote_read = remote_read
        self._mrs: dict[int, Any] = {}
        self._lock = threading.Lock()

    def mr_for(self, address: int, length: int) -> Any:
        """The MR covering [address, address+length) (all in one slab)."""
        slab, start = divmod(address - self.base, self.slab_bytes)
        if address < self.base or start + length > self.slab_bytes:
            raise ValueError(f"{length} bytes at {address:#x} are not inside one arena slab")
        with self._lock:
            mr = self._mrs.get(slab)
            if mr is None:
                mr = self.device.register(self.base + slab * self.slab_bytes, self.slab_bytes,
                                          self.remote_read)
                self._mrs[slab] = mr
            return mr

    def register_slabs(self, slabs: list[int]) -> None:
        for slab in slabs:
            self.mr_for(self.base + slab * self.slab_bytes, 1)

    def close(self) -> None:
        with self._lock:
            for mr in self._mrs.values():
                lib.ibv_dereg_mr(mr)
            self._mrs.clear()


class QueuePair:
    """An RC queue pair with its own completion queue and channel."""

    def __init__(self, device: Device, send_depth: int, recv_depth: int, *,
                 serve_reads: bool, inline: int = 256) -> None:
        self.device = device
        self.serve_reads = serve_reads
        self.qp = self.cq = self.channel = ffi.NULL
        try:
            self._create(send_depth, recv_depth, inline)
            self._to_init()
        except BaseException:
            self.close()
            raise
        self.psn = secrets.randbelow(1 << 24)

    def _create(self, send_depth: int, recv_depth: int, inline: int) -> None:
        dev = self.device
        self.channel = lib.ibv_create_comp_channel(dev.ctx)
        if self.channel == ffi.NULL:
            raise verbs_error("ibv_create_comp_channel", ffi.errno)
        self.cq = lib.ibv_create_cq(dev.ctx, send_depth + recv_depth, ffi.NULL, self.channel, 0)
        if self.cq == ffi.NULL:
            raise verbs_error("ibv_create_cq", ffi.errno)
        attr = ffi.new("struct ibv_qp_init_attr *")
        attr.send_cq = attr.recv_cq = self.cq
        attr.qp_type = lib.IBV_QPT_RC
        attr.sq_sig_all = 0  # selective signaling
        cap = attr.cap
        cap.max_send_wr, cap.max_recv_wr = send_depth, recv_depth
        cap.max_send_sge = cap.max_recv_sge = 1
        cap.max_inline_data = inline
        self.qp = lib.ibv_create_qp(dev.pd, attr)
        if self.qp == ffi.NULL and inline:  # a device without inline sends
            cap.max_inline_data = 0
            self.qp = lib.ibv_create_qp(dev.pd, attr)
        if self.qp == ffi.NULL:
            raise verbs_error("ibv_create_qp", ffi.errno)
        self.max_inline = attr.cap.max_inline_data
        self.send_depth = send_depth

    def _modify(self, attr: Any, mask: int, what: str) -> None:
        if err := lib.ibv_modify_qp(self.qp, attr, mask):
            raise verbs_error(f"moving queue pair {self.qp.qp_num} to {what}", err)

    def _to_init(self) -> None:
        attr = ffi.new("struct ibv_qp_attr *")
        attr.qp_state = lib.IBV_QPS_INIT
        attr.pkey_index = 0
        attr.port_num = self.device.port
        # The serving side lets peers READ; nobody may ever WRITE into an arena.
        attr.qp_access_flags = lib.IBV_ACCESS_REMOTE_READ if self.serve_reads else 0
        self._modify(attr, lib.IBV_QP_STATE | lib.IBV_QP_PKEY_INDEX | lib.IBV_QP_PORT
                     | lib.IBV_QP_ACCESS_FLAGS, "INIT")

    def endpoint(self) -> RdmaEndpoint:
        return RdmaEndpoint(self.qp.qp_num, self.psn, self.device.gid, self.device.limits.mtu)

    def connect(self, remote: RdmaEndpoint) -> None:
        """INIT -> RTR -> RTS towards `remote`."""
        dev = self.device
        mtu = min(remote.mtu, dev.limits.mtu)
        attr = ffi.new("struct ibv_qp_attr *")
        attr.qp_state = lib.IBV_QPS_RTR
        attr.path_mtu = {v: k for k, v in MTU_BYTES.items()}[mtu]
        attr.dest_qp_num = remote.qpn
        attr.rq_psn = remote.psn
        attr.max_dest_rd_atomic = dev.limits.max_rd_atomic
        attr.min_rnr_timer = 12
        ah = attr.ah_attr
        ah.is_global = 1
        ah.port_num = dev.port
        ah.dlid = remote.lid
        ffi.memmove(ah.grh.dgid.raw, remote.gid, 16)
        ah.grh.sgid_index = dev.gid_index
        ah.grh.hop_limit = 64
        self._modify(attr, lib.IBV_QP_STATE | lib.IBV_QP_AV | lib.IBV_QP_PATH_MTU
                     | lib.IBV_QP_DEST_QPN | lib.IBV_QP_RQ_PSN | lib.IBV_QP_MAX_DEST_RD_ATOMIC
                     | lib.IBV_QP_MIN_RNR_TIMER, "RTR")
        attr = ffi.new("struct ibv_qp_attr *")
        attr.qp_state = lib.IBV_QPS_RTS
        attr.sq_psn = self.psn
        attr.timeout = QP_TIMEOUT
        attr.retry_cnt = QP_RETRY_COUNT
        attr.rnr_retry = 7  # credits prevent RNR; if one happens anyway, keep trying
        attr.max_rd_atomic = dev.limits.max_rd_atomic
        self._modify(attr, lib.IBV_QP_STATE | lib.IBV_QP_SQ_PSN | lib.IBV_QP_TIMEOUT
                     | lib.IBV_QP_RETRY_CNT | lib.IBV_QP_RNR_RETRY | lib.IBV_QP_MAX_QP_RD_ATOMIC,
                     "RTS")

    def close(self) -> None:
        if self.qp != ffi.NULL:
            lib.ibv_destroy_qp(self.qp)
            self.qp = ffi.NULL
        if self.cq != ffi.NULL:
            lib.ibv_destroy_cq(self.cq)
            self.cq = ffi.NULL
        if self.channel != ffi.NULL:
            lib.ibv_destroy_comp_channel(self.channel)
            self.channel = ffi.NULL
