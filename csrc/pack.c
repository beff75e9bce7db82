/* pack.c - little-endian bit streams of b-bit values: value i occupies bits [i*b, i*b+b).
 * For b = 3 that is 8 codes in 3 bytes, so 3-bit codes cost exactly 3.0 bits. */
#include "internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "adpq: the bit streams are written for little-endian hosts"
#endif

/* Generic, any alignment: ORs one value into the stream. */
static inline void put_bits(uint8_t *dst, uint64_t bitpos, uint32_t v, int bits) {
    uint64_t byte = bitpos >> 3;
    int shift = (int)(bitpos & 7);
    uint64_t x = (uint64_t)v << shift;
    int nbytes = (shift + bits + 7) >> 3;
    for (int i = 0; i < nbytes; i++) dst[byte + i] |= (uint8_t)(x >> (8 * i));
}

static inline uint32_t get_bits(const uint8_t *src, uint64_t bitpos, int bits) {
    uint64_t byte = bitpos >> 3;
    int shift = (int)(bitpos & 7);
    int nbytes = (shift + bits + 7) >> 3;
    uint64_t x = 0;
    for (int i = 0; i < nbytes; i++) x |= (uint64_t)src[byte + i] << (8 * i);
    return (uint32_t)((x >> shift) & ((bits == 32) ? 0xffffffffu : ((1u << bits) - 1u)));
}

/* 8 codes of `bits` bits (one per byte of c, little-endian) -> 8*bits bits, by folding pairs. */
static inline uint64_t fold8(uint64_t c, int bits) {
    switch (bits) {
    case 2:
        c = (c | (c >> 6)) & 0x000f000f000f000full;
        c = (c | (c >> 12)) & 0x000000ff000000ffull;
        return (c | (c >> 24)) & 0xffffull;
    case 3:
        c = (c | (c >> 5)) & 0x003f003f003f003full;
        c = (c | (c >> 10)) & 0x00000fff00000fffull;
        return (c | (c >> 20)) & 0xffffffull;
    case 4:
        c = (c | (c >> 4)) & 0x00ff00ff00ff00ffull;
        c = (c | (c >> 8)) & 0x0000ffff0000ffffull;
        return (c | (c >> 16)) & 0xffffffffull;
    default:
        return c;
    }
}

static inline uint64_t unfold8(uint64_t x, int bits) {
    switch (bits) {
    case 2:
        x = (x | (x << 24)) & 0x000000ff000000ffull;
        x = (x | (x << 12)) & 0x000f000f000f000full;
        return (x | (x << 6)) & 0x0303030303030303ull;
    case 3:
        x = (x | (x << 20)) & 0x00000fff00000fffull;
        x = (x | (x << 10)) & 0x003f003f003f003full;
        return (x | (x << 5)) & 0x0707070707070707ull;
    case 4:
        x = (x | (x << 16)) & 0x0000ffff0000ffffull;
        x = (x | (x << 8)) & 0x00ff00ff00ff00ffull;
        return (x | (x << 4)) & 0x0f0f0f0f0f0f0f0full;
    default:
        return x;
    }
}

/* The low `bytes` bytes at p, little-endian, in whole-register loads (a memcpy of 3 bytes into a
 * uint64_t is two narrow stores and a wide reload, which stalls on failed store forwarding). */
static inline uint64_t load_le(const uint8_t *p, int bytes) {
    uint16_t h;
    uint32_t w;
    uint64_t d;
    switch (bytes) {
    case 2:
        memcpy(&h, p, 2);
        return h;
    case 3:
        memcpy(&h, p, 2);
        return (uint64_t)h | (uint64_t)p[2] << 16;
    case 4:
        memcpy(&w, p, 4);
        return w;
    case 8:
        memcpy(&d, p, 8);
        return d;
    default: {
        uint64_t x = 0;
        for (int b = 0; b < bytes; b++) x |= (uint64_t)p[b] << (8 * b);
        return x;
    }
    }
}

void adpq_pack_body_scalar(const uint8_t *codes, int64_t n, int bits, uint8_t *out) {
    switch (bits) { /* one loop per width, so that fold8 is specialised */
#define PACK_BODY(B)                                                                                                   \
    case B:                                                                                                            \
        for (int64_t k = 0; k < n; k += 8, out += B) {                                                                 \
            uint64_t c;                                                                                                \
            memcpy(&c, codes + k, 8);                                                                                  \
            uint64_t x = fold8(c, B);                                                                                  \
            memcpy(out, &x, B); /* little-endian host: the low B bytes */                                              \
        }                                                                                                              \
        break;
        PACK_BODY(2)
        PACK_BODY(3)
        PACK_BODY(4)
        PACK_BODY(8)
#undef PACK_BODY
    }
}

void adpq_pack_codes(const adpq_kernels *K, uint8_t *dst, int64_t first, const uint8_t *codes, int64_t n, int bits) {
    int64_t i = 0;
    /* head: until the code position is a multiple of 8 (a byte boundary for every b) */
    while (i < n && ((first + i) & 7)) {
        put_bits(dst, (uint64_t)(first + i) * (uint64_t)bits, codes[i], bits);
        i++;
    }
    int64_t body = (n - i) / 8 * 8;
    K->pack_body(codes + i, body, bits, dst + ((first + i) >> 3) * bits);
    i += body;
    for (; i < n; i++) put_bits(dst, (uint64_t)(first + i) * (uint64_t)bits, codes[i], bits);
}

void adpq_unpack_codes(const uint8_t *src, int64_t first, int64_t n, int bits, uint8_t *codes) {
    int64_t i = 0;
    while (i < n && ((first + i) & 7)) {
        codes[i] = (uint8_t)get_bits(src, (uint64_t)(first + i) * (uint64_t)bits, bits);
        i++;
    }
    const uint8_t *in = src + ((first + i) >> 3) * bits;
    switch (bits) { /* one loop per width, so that unfold8 is specialised (as in pack_body) */
#define UNPACK_BODY(B)                                                                                                 \
    case B:                                                                                                            \
        for (; i + 8 <= n; i += 8, in += B) {                                                                          \
            uint64_t c = unfold8(load_le(in, B), B);                                                                   \
            memcpy(codes + i, &c, 8);                                                                                  \
        }                                                                                                              \
        break;
        UNPACK_BODY(2)
        UNPACK_BODY(3)
        UNPACK_BODY(4)
        UNPACK_BODY(8)
#undef UNPACK_BODY
    default:
        for (; i + 8 <= n; i += 8, in += bits) {
            uint64_t c = unfold8(load_le(in, bits), bits);
            memcpy(codes + i, &c, 8);
        }
    }
    for (; i < n; i++) codes[i] = (uint8_t)get_bits(src, (uint64_t)(first + i) * (uint64_t)bits, bits);
}

void adpq_pack_u32(uint8_t *dst, int64_t first, const uint32_t *vals, int64_t n, int bits) {
    if (bits > 24 || n == 0) {
        for (int64_t i = 0; i < n; i++) put_bits(dst, (uint64_t)(first + i) * (uint64_t)bits, vals[i], bits);
        return;
    }
    /* a 64-bit accumulator, flushed 32 bits at a time; it starts with the bits already in the
     * first byte (values before `first`) and ORs its last partial byte */
    const uint64_t bitpos = (uint64_t)first * (uint64_t)bits;
    uint8_t *out = dst + (bitpos >> 3);
    int nacc = (int)(bitpos & 7);
    uint64_t acc = out[0] & ((1u << nacc) - 1u);
    const uint32_t vmask = (1u << bits) - 1u;
    for (int64_t i = 0; i < n; i++) {
        acc |= (uint64_t)(vals[i] & vmask) << nacc;
        nacc += bits;
        if (nacc >= 32) {
            uint32_t lo = (uint32_t)acc;
            memcpy(out, &lo, 4);
            out += 4;
            acc >>= 32;
            nacc -= 32;
        }
    }
    for (; nacc > 0; nacc -= 8, acc >>= 8) *out++ |= (uint8_t)acc;
}

void adpq_unpack_u32(const uint8_t *src, int64_t first, int64_t n, int bits, uint32_t *vals) {
    for (int64_t i = 0; i < n; i++) vals[i] = get_bits(src, (uint64_t)(first + i) * (uint64_t)bits, bits);
}
