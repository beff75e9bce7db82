/* quant.h - group quantizer parameters (quant.c) and the stored arrays' element access, shared by
 * the kernel sets, the quantize driver and the dequantizer. Not the API. */
#ifndef ADPQ_QUANT_H
#define ADPQ_QUANT_H

#include <math.h>

#include "internal.h"

/* One code: clamp(rint(w * inv + z), 0, qmax), round half to even. */
static inline uint8_t adpq_code_of(float w, float inv, float z, float qmax) {
    float x = rintf(w * inv + z);
    x = x < 0.0f ? 0.0f : x;
    x = x > qmax ? qmax : x;
    return (uint8_t)x;
}

typedef struct {
    float s, z, inv;     /* scale and zero-point as stored (rounded), and 1/s */
    uint32_t s_stored;   /* storage bits: float16/bfloat16 in the low 16 bits, or float32 */
    uint32_t z_stored;
} adpq_qparams;

/* Parameters of a b-bit quantizer for values in [mn, mx] (mn > mx: empty set). ADPQ_ERR_RANGE
 * when a scale or zero-point overflows the storage dtype. */
/* quantizer kinds */
enum { ADPQ_Q_ASYM = 0, ADPQ_Q_SYM = 1, ADPQ_Q_ASYM_INT_ZERO = 2 };
static inline int adpq_qmode(const adpq_config *cfg) {
    return cfg->symmetric ? ADPQ_Q_SYM : cfg->integer_zero ? ADPQ_Q_ASYM_INT_ZERO : ADPQ_Q_ASYM;
}
int adpq_group_params(const adpq_kernels *K, float mn, float mx, int bits, int qmode, int scale_dtype,
                      adpq_qparams *p);
float adpq_stored_to_float(uint32_t stored, int dtype);
int adpq_params_loop(const adpq_kernels *K, const float *mn, const float *mx, int64_t n, int bits, int qmode,
                     int scale_dtype, float *inv, float *z, uint32_t *s_stored, uint32_t *z_stored);


/* GPTQ's rounding of row r of one column (internal.h, adpq_gptq_col): the scalar kernel, and the AVX2
 * kernel's rows past its last full vector. Returns ADPQ_GPTQ_* flags. */
static inline int adpq_gptq_round_row(const adpq_gptq_col *c, int64_t r) {
    const float x = c->x[r];
    if (!isfinite(x)) return ADPQ_GPTQ_NONFINITE;
    int flags = 0;
    uint8_t code = adpq_code_of(x, c->inv[r], c->z[r], c->qmax);
    float q = ((float)code - c->z[r]) * c->s[r];
    if (c->mask[r]) {
        if (!c->so) {
            const uint16_t h = adpq_f32_to_f16(x);
            if ((h & 0x7c00u) == 0x7c00u) flags |= ADPQ_GPTQ_F16;
            q = adpq_f16_to_f32(h);
        } else {
            code = adpq_code_of(x, c->invo[r], c->zo[r], c->qmax);
            q = ((float)code - c->zo[r]) * c->so[r];
        }
    }
    const float e = q - c->w[r];
    if (!isfinite(e)) flags |= ADPQ_GPTQ_NONFINITE;
    c->codes[r] = code;
    c->x[r] = q;
    c->e[r] = e;
    return flags;
}

/* element i of an array of 1/2/4-byte counts, or of 2/4-byte stored scales */
static inline void adpq_put_stored(void *arr, int64_t i, uint32_t v, int bytes) {
    if (bytes == 2) {
        uint16_t h = (uint16_t)v;
        memcpy((uint8_t *)arr + 2 * i, &h, 2);
    } else {
        memcpy((uint8_t *)arr + 4 * i, &v, 4);
    }
}
static inline uint32_t adpq_get_stored(const void *arr, int64_t i, int bytes) {
    if (bytes == 2) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)arr + 2 * i, 2);
        return h;
    }
    uint32_t v;
    memcpy(&v, (const uint8_t *)arr + 4 * i, 4);
    return v;
}
static inline void adpq_put_count(void *arr, int64_t i, int64_t v, int bytes) {
    if (bytes == 1)
        ((uint8_t *)arr)[i] = (uint8_t)v;
    else if (bytes == 2)
        ((uint16_t *)arr)[i] = (uint16_t)v;
    else
        ((uint32_t *)arr)[i] = (uint32_t)v;
}
static inline int64_t adpq_get_count(const void *arr, int64_t i, int bytes) {
    if (bytes == 1) return ((const uint8_t *)arr)[i];
    if (bytes == 2) return ((const uint16_t *)arr)[i];
    return ((const uint32_t *)arr)[i];
}

#endif
