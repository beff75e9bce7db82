/* quant.c - group quantizer parameters (docs/DESIGN.md 2.2): scale and zero-point of a b-bit quantizer
 * for a range of values, rounded to their storage dtype. The kernel sets' `params` are these
 * (the scalar set's exactly; the AVX2 set's bit-identical for float16 storage). */
#include <math.h>

#include "internal.h"
#include "quant.h"

/* Largest |zero-point| aimed for: a zero-point stored in a 16-bit float keeps at least an
 * integer resolution up to here, so near-constant groups far from 0 stay accurate. */
static float zero_limit(int scale_dtype) {
    switch (scale_dtype) {
    case ADPQ_F16: return 1024.0f;
    case ADPQ_BF16: return 128.0f;
    default: return 4194304.0f;
    }
}

/* Rounds v to the storage dtype; returns 0, or -1 when it overflows. Scales that would be
 * smaller in magnitude than `tiny` become +-tiny so that 1/s stays finite. */
static inline int to_storage(const adpq_kernels *K, float v, int dtype, int is_scale, float *value,
                             uint32_t *stored) {
    static const float tiny_f32 = 1.1754943508222875e-38f; /* 2^-126 */
    if (dtype == ADPQ_F16) {
        uint16_t h = K->to_f16(v);
        if ((h & 0x7c00u) == 0x7c00u) return -1;
        if (is_scale && (h & 0x7fffu) == 0) h |= 1; /* +-2^-24, the smallest float16 */
        float r = K->from_f16(h);
        *value = r;
        *stored = h;
    } else if (dtype == ADPQ_BF16) {
        uint16_t h = adpq_f32_to_bf16(v);
        if ((h & 0x7f80u) == 0x7f80u) return -1;
        float r = adpq_bf16_to_f32(h);
        if (is_scale && fabsf(r) < tiny_f32) {
            r = copysignf(tiny_f32, v);
            h = adpq_f32_to_bf16(r);
        }
        *value = r;
        *stored = h;
    } else {
        if (!isfinite(v)) return -1;
        if (is_scale && fabsf(v) < tiny_f32) v = copysignf(tiny_f32, v);
        *value = v;
        memcpy(stored, &v, 4);
    }
    return 0;
}

int adpq_group_params(const adpq_kernels *K, float mn, float mx, int bits, int qmode, int scale_dtype,
                      adpq_qparams *p) {
    if (mn > mx) mn = mx = 0.0f; /* empty set (every weight of the group is an outlier) */
    if (qmode == ADPQ_Q_SYM) {
        float half = (float)(1 << (bits - 1));
        float vmax = (mx >= -mn) ? mx : mn; /* the value of largest magnitude, + on ties */
        float s = vmax / -half;             /* vmax maps to code 0, as in ggml's Q4_0 */
        if (s == 0.0f) s = 1.0f;
        if (to_storage(K, s, scale_dtype, 1, &p->s, &p->s_stored)) return ADPQ_ERR_RANGE;
        p->z = half;
        p->z_stored = 0;
    } else {
        float qmax = (float)((1 << bits) - 1);
        float range = mx - mn;
        if (!isfinite(range)) return ADPQ_ERR_RANGE;
        float s = range / qmax;
        float s_min = fabsf(mn) / zero_limit(scale_dtype);
        if (s < s_min) s = s_min;
        if (s == 0.0f) s = 1.0f; /* all zero */
        if (to_storage(K, s, scale_dtype, 1, &p->s, &p->s_stored)) return ADPQ_ERR_RANGE;
        float z = -mn / p->s;
        /* an integer zero-point puts a level exactly at 0 (|z| <= 1024 is exact in float16) */
        if (qmode == ADPQ_Q_ASYM_INT_ZERO) z = rintf(z);
        if (to_storage(K, z, scale_dtype, 0, &p->z, &p->z_stored)) return ADPQ_ERR_RANGE;
    }
    p->inv = 1.0f / p->s;
    return ADPQ_OK;
}

float adpq_stored_to_float(uint32_t stored, int dtype) {
    if (dtype == ADPQ_F16) return adpq_f16_to_f32((uint16_t)stored);
    if (dtype == ADPQ_BF16) return adpq_bf16_to_f32((uint16_t)stored);
    float f;
    memcpy(&f, &stored, 4);
    return f;
}

/* n groups: adpq_group_params with the kernels K (whose float16 conversion it uses) */
int adpq_params_loop(const adpq_kernels *K, const float *mn, const float *mx, int64_t n, int bits, int qmode,
                     int scale_dtype, float *inv, float *z, uint32_t *s_stored, uint32_t *z_stored) {
    for (int64_t i = 0; i < n; i++) {
        adpq_qparams p;
        if (adpq_group_params(K, mn[i], mx[i], bits, qmode, scale_dtype, &p)) return ADPQ_ERR_RANGE;
        inv[i] = p.inv;
        z[i] = p.z;
        s_stored[i] = p.s_stored;
        z_stored[i] = p.z_stored;
    }
    return ADPQ_OK;
}
