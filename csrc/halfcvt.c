/* halfcvt.c - float32 <-> float16 / bfloat16, round-to-nearest-even, bit-exact with NumPy
 * (astype(np.float16)) and ml_dtypes (astype(bfloat16)) for every finite input. */
#include <math.h>
#include <string.h>

#include "internal.h"

uint16_t adpq_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) /* >= 65520: rounds to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: a float16 subnormal or zero */
        /* |f| * 2^24 is exact; rint rounds half to even in units of 2^-24. */
        float v = rintf(fabsf(f) * 16777216.0f);
        return (uint16_t)(sign | (uint32_t)v);
    }
    uint32_t t = ax - 0x38000000u; /* rebias the exponent from 127 to 15 */
    t += 0x0fffu + ((t >> 13) & 1u);
    return (uint16_t)(sign | (t >> 13));
}

float adpq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        float v = (float)m * (1.0f / 16777216.0f); /* subnormal: m * 2^-24, exact */
        memcpy(&x, &v, 4);
        x |= sign;
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else {
        x = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t adpq_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float adpq_bf16_to_f32(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
