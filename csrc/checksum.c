#include "checksum.h"

#include <isa-l/crc.h>

uint32_t ns_crc32c(const unsigned char *data, uint64_t length) {
    /* ISA-L takes an int length and leaves out the standard final inversion */
    const uint64_t chunk = 1u << 30;
    uint32_t crc = 0xffffffffu;
    for (; length > chunk; data += chunk, length -= chunk)
        crc = crc32_iscsi((unsigned char *)data, (int)chunk, crc);
    return crc32_iscsi((unsigned char *)data, (int)length, crc) ^ 0xffffffffu;
}

void ns_crc32c_many(const ns_extents *extents, int count, unsigned char *verdicts,
                    const int *stop) {
    const ns_extents *e = extents;
    for (int i = 0; i < count && !__atomic_load_n(stop, __ATOMIC_ACQUIRE); i++) {
        uint64_t offset = e->offsets[i], length = e->lengths[i];
        if (e->blocks[i] >= e->max_blocks || offset >= e->block_size)
            offset = length = 0;
        else if (length > e->block_size - offset)
            length = e->block_size - offset;
        const unsigned char *at = e->data + e->blocks[i] * e->block_size + offset;
        unsigned char verdict =
            ns_crc32c(at, length) == e->expected[i] ? NS_CRC_MATCHES : NS_CRC_DIFFERS;
        __atomic_store_n(&verdicts[i], verdict, __ATOMIC_RELEASE);
    }
}

void ns_crc_stop(int *stop) {
    __atomic_store_n(stop, 1, __ATOMIC_RELEASE);
}
