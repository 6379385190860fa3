/* crc32c of many extents in one call, for a helper thread that verifies a stream's
 * extents ahead of its reader. cffi releases the GIL around the call, so the whole
 * run overlaps the reader's unpickling; the CRC itself is ISA-L's crc32_iscsi.
 *
 * The helper publishes each result by setting done[i] (release order) after
 * crcs[i]; the reader takes crcs[i] only after seeing done[i] (acquire order) and
 * otherwise computes the extent itself, so it never waits for the helper.
 */
#ifndef NETSPARK_CHECKSUM_H
#define NETSPARK_CHECKSUM_H

#include <stdint.h>

/* The standard CRC-32C (Castagnoli) of `length` bytes. */
uint32_t ns_crc32c(const unsigned char *data, uint64_t length);

/* crcs[i] = ns_crc32c(data[i], lengths[i]) for i in order, until *stop is set. */
void ns_crc32c_many(int count, unsigned char *const *data, const uint32_t *lengths,
                    uint32_t *crcs, int *done, const int *stop);

int ns_crc_done(const int *done, int index);  /* done[index], acquire order */
void ns_crc_stop(int *stop);                  /* *stop = 1, release order */

#endif
