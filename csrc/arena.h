/* The shared block arena: memory mapping, pinning, and a block allocator whose
 * state lives in shared memory so that every process of an executor can lease
 * and release blocks without a round trip to the owner.
 *
 * The allocator header sits at the start of the arena file, followed by the
 * data blocks. A robust process-shared mutex guards it: a process that dies
 * holding the lock leaves the header to be rebuilt from the owner table, which
 * is always written first and so is authoritative.
 */
#ifndef NETSPARK_ARENA_H
#define NETSPARK_ARENA_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t block_size;
    uint32_t max_blocks;
    uint32_t slab_blocks;
    uint32_t active_slabs;
    uint32_t free_blocks;
    uint32_t leased_blocks;
    uint32_t high_water;
    uint64_t grows;
    uint64_t shrinks;
    uint64_t reclaimed;
} ns_stats;

/* Mapping and pages. Each returns 0 or an errno value. */
int ns_map(int fd, size_t len, size_t align, void **out);
int ns_unmap(void *addr, size_t len);
int ns_pin(void *addr, size_t len);
int ns_unpin(void *addr, size_t len);
int ns_advise_huge(void *addr, size_t len);
int ns_allocate(int fd, uint64_t offset, uint64_t len);
int ns_punch(int fd, uint64_t offset, uint64_t len);

/* Allocator over the header at `hdr` (the first ns_header_size() bytes). */
size_t ns_header_size(uint32_t max_blocks, uint32_t slab_blocks);
int ns_init(void *hdr, uint32_t block_size, uint32_t max_blocks,
            uint32_t slab_blocks, uint32_t initial_slabs);
int ns_check(void *hdr);
/* Leases up to n blocks to `pid`, growing by whole slabs when needed (the
 * caller's fd and data offset let it back a new slab with fallocate).
 * Returns the number leased (possibly 0) or -errno. */
int ns_lease(void *hdr, int fd, uint64_t data_offset, int32_t pid,
             uint32_t n, uint32_t *out, uint64_t now_ms);
/* Returns 0, or -EPERM when a block is not held by `pid` (nothing changed). */
int ns_release(void *hdr, int32_t pid, const uint32_t *ids, uint32_t n,
               uint64_t now_ms);
int ns_transfer(void *hdr, int32_t from_pid, int32_t to_pid,
                const uint32_t *ids, uint32_t n);
int32_t ns_owner(void *hdr, uint32_t id);
int ns_reclaim_dead(void *hdr, uint64_t now_ms);
/* Retires slabs idle for idle_ms, keeping min_slabs, and gives their pages
 * back to the OS (under the lock, so a concurrent grow cannot be punched out).
 * Writes their indices to out (up to max) and returns how many. */
int ns_shrink_idle(void *hdr, int fd, uint64_t data_offset, uint64_t now_ms,
                   uint64_t idle_ms, uint32_t min_slabs, uint32_t *out,
                   uint32_t max);
int ns_slab_active(void *hdr, uint32_t slab);
void ns_get_stats(void *hdr, ns_stats *out);

#endif
