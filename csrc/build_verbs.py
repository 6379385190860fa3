"""cffi (API mode) build of `netspark._verbs`, netspark's libibverbs binding.

Optional: setup.py builds it only where <infiniband/verbs.h> exists (Debian's
libibverbs-dev). The declarations below are partial (`...;`): the C compiler
fills in the real layouts from verbs.h, so they follow the installed
rdma-core. Set-up calls (device, PD, MR, CQ, QP) are bound directly; the data
path is csrc/verbs.c.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

IBV_CDEF = """
struct ibv_device;
struct ibv_srq;
struct ibv_context { struct ibv_device *device; int async_fd; ...; };
struct ibv_pd { ...; };
struct ibv_cq { ...; };
struct ibv_comp_channel { int fd; ...; };
struct ibv_mr { void *addr; size_t length; uint32_t lkey; uint32_t rkey; ...; };

enum ibv_qp_state { IBV_QPS_RESET, IBV_QPS_INIT, IBV_QPS_RTR, IBV_QPS_RTS, IBV_QPS_ERR, ... };
enum ibv_qp_type { IBV_QPT_RC, ... };
enum ibv_mtu { IBV_MTU_256, IBV_MTU_512, IBV_MTU_1024, IBV_MTU_2048, IBV_MTU_4096, ... };
enum ibv_port_state { IBV_PORT_ACTIVE, ... };
enum ibv_gid_type { IBV_GID_TYPE_IB, IBV_GID_TYPE_ROCE_V1, IBV_GID_TYPE_ROCE_V2, ... };
enum ibv_event_type { IBV_EVENT_DEVICE_FATAL, IBV_EVENT_PORT_ERR, ... };

#define IBV_ACCESS_LOCAL_WRITE ...
#define IBV_ACCESS_REMOTE_READ ...
#define IBV_LINK_LAYER_ETHERNET ...
#define IBV_QP_STATE ...
#define IBV_QP_ACCESS_FLAGS ...
#define IBV_QP_PKEY_INDEX ...
#define IBV_QP_PORT ...
#define IBV_QP_AV ...
#define IBV_QP_PATH_MTU ...
#define IBV_QP_TIMEOUT ...
#define IBV_QP_RETRY_CNT ...
#define IBV_QP_RNR_RETRY ...
#define IBV_QP_RQ_PSN ...
#define IBV_QP_MAX_QP_RD_ATOMIC ...
#define IBV_QP_MIN_RNR_TIMER ...
#define IBV_QP_SQ_PSN ...
#define IBV_QP_MAX_DEST_RD_ATOMIC ...
#define IBV_QP_DEST_QPN ...

struct ibv_device_attr {
    uint64_t max_mr_size; int max_qp_wr; int max_sge; int max_cqe;
    int max_qp_rd_atom; int max_qp_init_rd_atom; uint8_t phys_port_cnt; ...;
};
struct ibv_port_attr {
    enum ibv_port_state state; enum ibv_mtu max_mtu; enum ibv_mtu active_mtu;
    int gid_tbl_len; uint32_t max_msg_sz; uint16_t lid; uint8_t link_layer; ...;
};
union ibv_gid { uint8_t raw[16]; ...; };
struct ibv_gid_entry {
    union ibv_gid gid; uint32_t gid_index; uint32_t port_num; uint32_t gid_type;
    uint32_t ndev_ifindex;
};
struct ibv_qp_cap {
    uint32_t max_send_wr; uint32_t max_recv_wr; uint32_t max_send_sge;
    uint32_t max_recv_sge; uint32_t max_inline_data;
};
struct ibv_qp_init_attr {
    void *qp_context; struct ibv_cq *send_cq; struct ibv_cq *recv_cq;
    struct ibv_srq *srq; struct ibv_qp_cap cap; enum ibv_qp_type qp_type;
    int sq_sig_all; ...;
};
struct ibv_qp { uint32_t qp_num; enum ibv_qp_state state; ...; };
struct ibv_global_route {
    union ibv_gid dgid; uint32_t flow_label; uint8_t sgid_index; uint8_t hop_limit;
    uint8_t traffic_class; ...;
};
struct ibv_ah_attr {
    struct ibv_global_route grh; uint16_t dlid; uint8_t sl; uint8_t src_path_bits;
    uint8_t static_rate; uint8_t is_global; uint8_t port_num; ...;
};
struct ibv_qp_attr {
    enum ibv_qp_state qp_state; enum ibv_mtu path_mtu; uint32_t rq_psn; uint32_t sq_psn;
    uint32_t dest_qp_num; unsigned int qp_access_flags; struct ibv_ah_attr ah_attr;
    uint16_t pkey_index; uint8_t max_rd_atomic; uint8_t max_dest_rd_atomic;
    uint8_t min_rnr_timer; uint8_t port_num; uint8_t timeout; uint8_t retry_cnt;
    uint8_t rnr_retry; ...;
};
struct ibv_async_event { enum ibv_event_type event_type; ...; };

struct ibv_device **ibv_get_device_list(int *num_devices);
void ibv_free_device_list(struct ibv_device **list);
const char *ibv_get_device_name(struct ibv_device *device);
struct ibv_context *ibv_open_device(struct ibv_device *device);
int ibv_close_device(struct ibv_context *context);
int ibv_query_device(struct ibv_context *context, struct ibv_device_attr *attr);
int ibv_query_port(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *attr);
int ibv_query_gid_ex(struct ibv_context *context, uint32_t port_num, uint32_t gid_index,
                     struct ibv_gid_entry *entry, uint32_t flags);
struct ibv_pd *ibv_alloc_pd(struct ibv_context *context);
int ibv_dealloc_pd(struct ibv_pd *pd);
struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access);
int ibv_dereg_mr(struct ibv_mr *mr);
struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *context);
int ibv_destroy_comp_channel(struct ibv_comp_channel *channel);
struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe, void *cq_context,
                             struct ibv_comp_channel *channel, int comp_vector);
int ibv_destroy_cq(struct ibv_cq *cq);
struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr);
int ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int attr_mask);
int ibv_destroy_qp(struct ibv_qp *qp);
int ibv_query_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int attr_mask,
                 struct ibv_qp_init_attr *init_attr);
const char *ibv_wc_status_str(int status);
int ibv_get_async_event(struct ibv_context *context, struct ibv_async_event *event);
void ibv_ack_async_event(struct ibv_async_event *event);
"""


def _own_cdef() -> str:
    """verbs.h without preprocessor lines, its #define constants as cffi `...`."""
    lines = []
    for line in (HERE / "verbs.h").read_text().splitlines():
        if line.startswith("#define NS_"):
            lines.append(f"#define {line.split()[1]} ...")
        elif not line.startswith("#"):
            lines.append(line)
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(IBV_CDEF + _own_cdef())
ffibuilder.set_source(
    "netspark._verbs",
    '#include <infiniband/verbs.h>\n#include "verbs.h"',
    sources=[str((HERE / "verbs.c").relative_to(HERE.parent))],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["ibverbs"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
