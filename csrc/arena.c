#define _GNU_SOURCE
#include "arena.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NS_MAGIC 0x4b5250535445454eULL
#define NS_VERSION 1u

struct header {
    uint64_t magic;
    uint32_t version, block_size, max_blocks, slab_blocks, nslabs, pad;
    pthread_mutex_t mu;
    uint32_t active_slabs, free_blocks, leased_blocks, high_water;
    uint64_t grows, shrinks, reclaimed;
};

/* Layout after the struct: free bitmap (1 = free), owner pid per block,
 * leased count per slab, last-busy time per slab, active flag per slab. */
#define ALIGN8(x) (((x) + 7u) & ~(size_t)7u)

static size_t nwords(uint32_t max_blocks) { return (max_blocks + 63u) / 64u; }
static uint64_t *free_bits(struct header *h) {
    return (uint64_t *)((char *)h + ALIGN8(sizeof(struct header)));
}
static int32_t *owners(struct header *h) {
    return (int32_t *)(free_bits(h) + nwords(h->max_blocks));
}
static uint64_t *slab_busy(struct header *h) {
    return (uint64_t *)ALIGN8((size_t)(owners(h) + h->max_blocks));
}
static uint32_t *slab_leased(struct header *h) {
    return (uint32_t *)(slab_busy(h) + h->nslabs);
}
static uint8_t *slab_on(struct header *h) {
    return (uint8_t *)(slab_leased(h) + h->nslabs);
}

size_t ns_header_size(uint32_t max_blocks, uint32_t slab_blocks) {
    uint32_t nslabs = max_blocks / slab_blocks;
    return ALIGN8(sizeof(struct header)) + 8 * nwords(max_blocks) +
           ALIGN8(4 * (size_t)max_blocks) + 12 * (size_t)nslabs + nslabs;
}

/* ---- mapping and pages ---- */

int ns_map(int fd, size_t len, size_t align, void **out) {
    /* Reserve len + align, then place the shared mapping on an aligned
     * address so that huge pages can back it. */
    char *raw = mmap(NULL, len + align, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) return errno;
    char *aligned = (char *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    void *p = mmap(aligned, len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_FIXED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        munmap(raw, len + align);
        return err;
    }
    if (aligned > raw) munmap(raw, aligned - raw);
    size_t tail = (raw + len + align) - (aligned + len);
    if (tail) munmap(aligned + len, tail);
    *out = aligned;
    return 0;
}

int ns_unmap(void *addr, size_t len) { return munmap(addr, len) ? errno : 0; }
int ns_pin(void *addr, size_t len) { return mlock(addr, len) ? errno : 0; }
int ns_unpin(void *addr, size_t len) { return munlock(addr, len) ? errno : 0; }

int ns_advise_huge(void *addr, size_t len) {
    return madvise(addr, len, MADV_HUGEPAGE) ? errno : 0;
}

int ns_allocate(int fd, uint64_t offset, uint64_t len) {
    return fallocate(fd, 0, (off_t)offset, (off_t)len) ? errno : 0;
}

int ns_punch(int fd, uint64_t offset, uint64_t len) {
    int mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    return fallocate(fd, mode, (off_t)offset, (off_t)len) ? errno : 0;
}

/* ---- allocator ---- */

static void set_free(struct header *h, uint32_t id, int is_free) {
    uint64_t bit = 1ull << (id % 64);
    if (is_free) free_bits(h)[id / 64] |= bit;
    else free_bits(h)[id / 64] &= ~bit;
}

/* The owner table and slab flags are written before the bitmap and counters,
 * so after a holder died mid-operation everything else is derived again. */
static void rebuild(struct header *h) {
    memset(free_bits(h), 0, 8 * nwords(h->max_blocks));
    h->active_slabs = h->free_blocks = h->leased_blocks = 0;
    for (uint32_t s = 0; s < h->nslabs; s++) {
        slab_leased(h)[s] = 0;
        if (!slab_on(h)[s]) continue;
        h->active_slabs++;
        for (uint32_t id = s * h->slab_blocks; id < (s + 1) * h->slab_blocks; id++) {
            if (owners(h)[id] < 0) owners(h)[id] = -owners(h)[id];
            if (owners(h)[id] == 0) {
                set_free(h, id, 1);
                h->free_blocks++;
            } else {
                slab_leased(h)[s]++;
                h->leased_blocks++;
            }
        }
    }
}

static int lock(struct header *h) {
    int rc = pthread_mutex_lock(&h->mu);
    if (rc == EOWNERDEAD) {
        rebuild(h);
        pthread_mutex_consistent(&h->mu);
        rc = 0;
    }
    return rc;
}

static void unlock(struct header *h) { pthread_mutex_unlock(&h->mu); }

int ns_init(void *hdr, uint32_t block_size, uint32_t max_blocks,
            uint32_t slab_blocks, uint32_t initial_slabs) {
    struct header *h = hdr;
    if (!slab_blocks || max_blocks % slab_blocks || initial_slabs * slab_blocks > max_blocks)
        return EINVAL;
    memset(h, 0, ns_header_size(max_blocks, slab_blocks));
    h->version = NS_VERSION;
    h->block_size = block_size;
    h->max_blocks = max_blocks;
    h->slab_blocks = slab_blocks;
    h->nslabs = max_blocks / slab_blocks;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&h->mu, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc) return rc;
    for (uint32_t s = 0; s < initial_slabs; s++) slab_on(h)[s] = 1;
    rebuild(h);
    __atomic_store_n(&h->magic, NS_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

int ns_check(void *hdr) {
    struct header *h = hdr;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != NS_MAGIC) return EINVAL;
    return h->version == NS_VERSION ? 0 : EPROTO;
}

static int64_t find_free(struct header *h) {
    size_t n = nwords(h->max_blocks);
    uint64_t *bits = free_bits(h);
    for (size_t w = 0; w < n; w++)
        if (bits[w]) return (int64_t)(w * 64 + (size_t)__builtin_ctzll(bits[w]));
    return -1;
}

static int grow(struct header *h, int fd, uint64_t data_offset, uint64_t now_ms) {
    for (uint32_t s = 0; s < h->nslabs; s++) {
        if (slab_on(h)[s]) continue;
        uint64_t slab_bytes = (uint64_t)h->slab_blocks * h->block_size;
        int err = ns_allocate(fd, data_offset + s * slab_bytes, slab_bytes);
        if (err) return err;
        slab_on(h)[s] = 1;
        slab_busy(h)[s] = now_ms;
        for (uint32_t id = s * h->slab_blocks; id < (s + 1) * h->slab_blocks; id++)
            set_free(h, id, 1);
        h->free_blocks += h->slab_blocks;
        h->active_slabs++;
        h->grows++;
        return 0;
    }
    return EDQUOT; /* every slab is active: the pool is at its cap */
}

int ns_lease(void *hdr, int fd, uint64_t data_offset, int32_t pid,
             uint32_t n, uint32_t *out, uint64_t now_ms) {
    struct header *h = hdr;
    if (pid <= 0) return -EINVAL;
    int rc = lock(h);
    if (rc) return -rc;
    uint32_t got = 0;
    while (got < n) {
        int64_t id = find_free(h);
        if (id < 0) {
            int err = grow(h, fd, data_offset, now_ms);
            if (err) {
                if (got == 0 && err != EDQUOT) rc = -err;
                break;
            }
            continue;
        }
        uint32_t s = (uint32_t)id / h->slab_blocks;
        owners(h)[id] = pid;
        set_free(h, (uint32_t)id, 0);
        h->free_blocks--;
        h->leased_blocks++;
        slab_leased(h)[s]++;
        slab_busy(h)[s] = now_ms;
        out[got++] = (uint32_t)id;
    }
    if (h->leased_blocks > h->high_water) h->high_water = h->leased_blocks;
    unlock(h);
    return rc ? rc : (int)got;
}

/* Marks every id as held by `pid` (negated), or undoes and fails when one is
 * not: so a bad list changes nothing. */
static int claim_all(struct header *h, int32_t pid, const uint32_t *ids, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] >= h->max_blocks || owners(h)[ids[i]] != pid) {
            for (uint32_t j = 0; j < i; j++) owners(h)[ids[j]] = pid;
            return -EPERM;
        }
        owners(h)[ids[i]] = -pid;
    }
    return 0;
}

int ns_release(void *hdr, int32_t pid, const uint32_t *ids, uint32_t n,
               uint64_t now_ms) {
    struct header *h = hdr;
    if (pid <= 0) return -EINVAL;
    int rc = lock(h);
    if (rc) return -rc;
    rc = claim_all(h, pid, ids, n);
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
        uint32_t s = ids[i] / h->slab_blocks;
        owners(h)[ids[i]] = 0;
        set_free(h, ids[i], 1);
        h->free_blocks++;
        h->leased_blocks--;
        slab_leased(h)[s]--;
        slab_busy(h)[s] = now_ms;
    }
    unlock(h);
    return rc;
}

int ns_transfer(void *hdr, int32_t from_pid, int32_t to_pid,
                const uint32_t *ids, uint32_t n) {
    struct header *h = hdr;
    if (from_pid <= 0 || to_pid <= 0) return -EINVAL;
    int rc = lock(h);
    if (rc) return -rc;
    rc = claim_all(h, from_pid, ids, n);
    for (uint32_t i = 0; rc == 0 && i < n; i++) owners(h)[ids[i]] = to_pid;
    unlock(h);
    return rc;
}

int32_t ns_owner(void *hdr, uint32_t id) {
    struct header *h = hdr;
    if (id >= h->max_blocks) return -1;
    return __atomic_load_n(&owners(h)[id], __ATOMIC_RELAXED);
}

static int is_dead(int32_t pid) { return kill(pid, 0) == -1 && errno == ESRCH; }

int ns_reclaim_dead(void *hdr, uint64_t now_ms) {
    struct header *h = hdr;
    int rc = lock(h);
    if (rc) return -rc;
    int32_t last_pid = 0, last_dead = 0;
    int reclaimed = 0;
    for (uint32_t id = 0; id < h->max_blocks; id++) {
        int32_t pid = owners(h)[id];
        if (pid <= 0) continue;
        if (pid != last_pid) {
            last_pid = pid;
            last_dead = is_dead(pid);
        }
        if (!last_dead) continue;
        uint32_t s = id / h->slab_blocks;
        owners(h)[id] = 0;
        set_free(h, id, 1);
        h->free_blocks++;
        h->leased_blocks--;
        slab_leased(h)[s]--;
        slab_busy(h)[s] = now_ms;
        reclaimed++;
    }
    h->reclaimed += (uint64_t)reclaimed;
    unlock(h);
    return reclaimed;
}

int ns_shrink_idle(void *hdr, int fd, uint64_t data_offset, uint64_t now_ms,
                   uint64_t idle_ms, uint32_t min_slabs, uint32_t *out,
                   uint32_t max) {
    struct header *h = hdr;
    int rc = lock(h);
    if (rc) return -rc;
    uint32_t done = 0;
    uint64_t slab_bytes = (uint64_t)h->slab_blocks * h->block_size;
    for (uint32_t s = h->nslabs; s-- > 0 && done < max && h->active_slabs > min_slabs;) {
        if (!slab_on(h)[s] || slab_leased(h)[s] || now_ms - slab_busy(h)[s] < idle_ms)
            continue;
        slab_on(h)[s] = 0;
        for (uint32_t id = s * h->slab_blocks; id < (s + 1) * h->slab_blocks; id++)
            set_free(h, id, 0);
        h->free_blocks -= h->slab_blocks;
        h->active_slabs--;
        h->shrinks++;
        ns_punch(fd, data_offset + s * slab_bytes, slab_bytes);
        out[done++] = s;
    }
    unlock(h);
    return (int)done;
}

int ns_slab_active(void *hdr, uint32_t slab) {
    struct header *h = hdr;
    return slab < h->nslabs && __atomic_load_n(&slab_on(h)[slab], __ATOMIC_RELAXED);
}

void ns_get_stats(void *hdr, ns_stats *out) {
    struct header *h = hdr;
    if (lock(h)) return;
    out->block_size = h->block_size;
    out->max_blocks = h->max_blocks;
    out->slab_blocks = h->slab_blocks;
    out->active_slabs = h->active_slabs;
    out->free_blocks = h->free_blocks;
    out->leased_blocks = h->leased_blocks;
    out->high_water = h->high_water;
    out->grows = h->grows;
    out->shrinks = h->shrinks;
    out->reclaimed = h->reclaimed;
    unlock(h);
}
