/* See verbs.h. */
#include <infiniband/verbs.h>

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>

#include "verbs.h"

#define CHAIN 32 /* reads per ibv_post_send call */

int ns_post_send(struct ibv_qp *qp, uint64_t wr_id, uint64_t addr, uint32_t len,
                 uint32_t lkey, uint32_t imm, int flags)
{
    struct ibv_sge sge = {.addr = addr, .length = len, .lkey = lkey};
    struct ibv_send_wr wr, *bad = NULL;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = wr_id;
    wr.sg_list = len ? &sge : NULL;
    wr.num_sge = len ? 1 : 0;
    wr.opcode = IBV_WR_SEND_WITH_IMM;
    wr.imm_data = htonl(imm);
    wr.send_flags = ((flags & NS_SIGNALED) ? IBV_SEND_SIGNALED : 0) |
                    ((flags & NS_INLINE) && len ? IBV_SEND_INLINE : 0);
    return -ibv_post_send(qp, &wr, &bad);
}

int ns_post_recv(struct ibv_qp *qp, uint64_t wr_id, uint64_t addr, uint32_t len,
                 uint32_t lkey)
{
    struct ibv_sge sge = {.addr = addr, .length = len, .lkey = lkey};
    struct ibv_recv_wr wr = {.wr_id = wr_id, .sg_list = &sge, .num_sge = 1};
    struct ibv_recv_wr *bad = NULL;
    return -ibv_post_recv(qp, &wr, &bad);
}

int ns_post_reads(struct ibv_qp *qp, uint32_t n, const uint64_t *wr_ids,
                  const uint64_t *local, const uint32_t *lkeys,
                  const uint32_t *lengths, const uint64_t *remote,
                  const uint32_t *rkeys, const uint8_t *signaled,
                  uint32_t *posted)
{
    struct ibv_send_wr wrs[CHAIN];
    struct ibv_sge sges[CHAIN];
    *posted = 0;
    for (uint32_t start = 0; start < n; start += CHAIN) {
        uint32_t count = n - start < CHAIN ? n - start : CHAIN;
        memset(wrs, 0, count * sizeof wrs[0]);
        for (uint32_t j = 0; j < count; j++) {
            uint32_t i = start + j;
            sges[j] = (struct ibv_sge){.addr = local[i], .length = lengths[i],
                                       .lkey = lkeys[i]};
            wrs[j].wr_id = wr_ids[i];
            wrs[j].next = j + 1 < count ? &wrs[j + 1] : NULL;
            wrs[j].sg_list = &sges[j];
            wrs[j].num_sge = 1;
            wrs[j].opcode = IBV_WR_RDMA_READ;
            wrs[j].send_flags = signaled[i] ? IBV_SEND_SIGNALED : 0;
            wrs[j].wr.rdma.remote_addr = remote[i];
            wrs[j].wr.rdma.rkey = rkeys[i];
        }
        struct ibv_send_wr *bad = NULL;
        int err = ibv_post_send(qp, wrs, &bad);
        if (err) {
            *posted += bad ? (uint32_t)(bad - wrs) : 0;
            return -err;
        }
        *posted += count;
    }
    return 0;
}

int ns_poll(struct ibv_cq *cq, ns_wc *out, int max)
{
    struct ibv_wc wc[16];
    int total = 0;
    while (total < max) {
        int want = max - total < 16 ? max - total : 16;
        int n = ibv_poll_cq(cq, want, wc);
        if (n < 0)
            return total ? total : -EIO;
        for (int i = 0; i < n; i++) {
            ns_wc *o = &out[total + i];
            o->wr_id = wc[i].wr_id;
            o->status = wc[i].status;
            o->opcode = wc[i].opcode;
            o->byte_len = wc[i].byte_len;
            o->has_imm = (wc[i].wc_flags & IBV_WC_WITH_IMM) != 0;
            o->imm = o->has_imm ? ntohl(wc[i].imm_data) : 0;
            o->vendor_err = wc[i].vendor_err;
        }
        total += n;
        if (n < want)
            break;
    }
    return total;
}

static long elapsed_ms(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000L +
           (now.tv_nsec - start->tv_nsec) / 1000000L;
}

static long elapsed_us(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000000L +
           (now.tv_nsec - start->tv_nsec) / 1000L;
}

int ns_wait(struct ibv_cq *cq, struct ibv_comp_channel *channel, int extra_fd,
            int timeout_ms, int spin_us, ns_wc *out, int max)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (spin_us > 0 && elapsed_us(&start) < spin_us) {
        int n = ns_poll(cq, out, max);
        if (n)
            return n;
    }
    for (;;) {
        int n = ns_poll(cq, out, max);
        if (n)
            return n;
        /* Arm, then poll again: a completion that arrived before the arm
         * would raise no event. */
        if (ibv_req_notify_cq(cq, 0))
            return -EIO;
        n = ns_poll(cq, out, max);
        if (n)
            return n;
        int left = -1;
        if (timeout_ms >= 0) {
            left = timeout_ms - (int)elapsed_ms(&start);
            if (left <= 0)
                return 0;
        }
        struct pollfd fds[2] = {{.fd = channel->fd, .events = POLLIN},
                                {.fd = extra_fd, .events = POLLIN}};
        int ready = poll(fds, extra_fd >= 0 ? 2 : 1, left);
        if (ready < 0 && errno != EINTR)
            return -errno;
        if (ready <= 0)
            continue;
        if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL))
            return -ENODEV; /* the device went away */
        if (fds[0].revents & POLLIN) {
            struct ibv_cq *ev_cq;
            void *ev_ctx;
            if (ibv_get_cq_event(channel, &ev_cq, &ev_ctx) == 0)
                ibv_ack_cq_events(ev_cq, 1);
        } else if (extra_fd >= 0 && fds[1].revents) {
            return NS_WAIT_FD;
        }
    }
}
