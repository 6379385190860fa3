/* crc32c of many extents in one call, for a helper thread that verifies a stream's
 * extents ahead of its reader. cffi releases the GIL around the call, so the whole
 * run overlaps the reader's unpickling; the CRC itself is ISA-L's crc32_iscsi.
 *
 * The helper publishes each extent's verdict as one byte (release order): 0 not yet
 * checked, 1 matches the recorded crc, 2 does not. One byte, so a reader that sees
 * a verdict sees the whole of it; a reader that sees 0 checks the extent itself,
 * so it never waits for the helper.
 */
#ifndef NETSPARK_CHECKSUM_H
#define NETSPARK_CHECKSUM_H

#include <stdint.h>

/* The standard CRC-32C (Castagnoli) of `length` bytes. */
uint32_t ns_crc32c(const unsigned char *data, uint64_t length);

enum { NS_UNCHECKED = 0, NS_CRC_MATCHES = 1, NS_CRC_DIFFERS = 2 };

/* The extents of a stream: extent i is lengths[i] bytes at offsets[i] of block
 * blocks[i], in an arena whose `max_blocks` blocks of `block_size` bytes start at
 * `data`. An extent is clamped to its block (and one outside the arena is empty):
 * the reader refuses such an extent, and the helper must not read past the arena. */
typedef struct {
    unsigned char *data;
    uint64_t block_size, max_blocks;
    const uint32_t *blocks, *offsets, *lengths, *expected;
} ns_extents;

/* verdicts[i] = whether the crc32c of extent i is expected[i], for i in order,
 * until *stop is set. */
void ns_crc32c_many(const ns_extents *extents, int count, unsigned char *verdicts,
                    const int *stop);

void ns_crc_stop(int *stop);  /* *stop = 1, release order */

#endif
