/* netspark's verbs data path: what Python cannot do well.
 *
 * ibv_post_send, ibv_post_recv and ibv_poll_cq are static inline functions of
 * <infiniband/verbs.h>, so they need compiled callers (cffi API mode). Each
 * call here posts or polls a whole batch, and cffi releases the GIL around it,
 * so a reader waiting for its RDMA READs does not hold up the other threads.
 * Device, PD, MR and QP set-up stays in Python (cffi declarations in
 * build_verbs.py): it is off the data path.
 *
 * Every function returns 0 (or a count) on success and a negative errno on
 * failure; none of them allocates.
 */
#ifndef NETSPARK_VERBS_H
#define NETSPARK_VERBS_H

#include <stdint.h>

/* One work completion, flattened; imm is in host byte order. */
typedef struct {
    uint64_t wr_id;
    uint32_t status;
    uint32_t opcode;
    uint32_t byte_len;
    uint32_t imm;
    uint32_t has_imm;
    uint32_t vendor_err;
} ns_wc;

/* Flags of ns_post_send. */
#define NS_SIGNALED 1
#define NS_INLINE 2

/* ns_wait's answer when extra_fd became readable before any completion. */
#define NS_WAIT_FD (-100000)

/* One SEND_WITH_IMM of len bytes at addr (lkey unused when NS_INLINE). */
int ns_post_send(struct ibv_qp *qp, uint64_t wr_id, uint64_t addr, uint32_t len,
                 uint32_t lkey, uint32_t imm, int flags);
/* One receive buffer. */
int ns_post_recv(struct ibv_qp *qp, uint64_t wr_id, uint64_t addr, uint32_t len,
                 uint32_t lkey);
/* n RDMA READs, chained; signaled[i] != 0 asks a completion for read i. On
 * failure *posted says how many of them the device took. */
int ns_post_reads(struct ibv_qp *qp, uint32_t n, const uint64_t *wr_ids,
                  const uint64_t *local, const uint32_t *lkeys,
                  const uint32_t *lengths, const uint64_t *remote,
                  const uint32_t *rkeys, const uint8_t *signaled,
                  uint32_t *posted);
/* Up to max completions, without waiting. */
int ns_poll(struct ibv_cq *cq, ns_wc *out, int max);
/* Up to max completions, waiting up to timeout_ms (-1: forever): first by
 * polling for spin_us microseconds (a reply often comes sooner than an
 * interrupt-driven wake-up), then blocked on the completion channel (no
 * endless busy loop: soft-RoCE peers may share one CPU). Returns the count,
 * 0 on timeout, NS_WAIT_FD if extra_fd (>= 0) became readable first, or
 * -errno. */
int ns_wait(struct ibv_cq *cq, struct ibv_comp_channel *channel, int extra_fd,
            int timeout_ms, int spin_us, ns_wc *out, int max);

#endif
