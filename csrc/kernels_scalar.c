/* kernels_scalar.c - the scalar reference kernel set (adpq_kernels_scalar).
 *
 * Every kernel here has an AVX2 twin in kernels_avx2.c that must give identical results: the same
 * float32 operations in the same order (the build disables FMA contraction: the GPTQ kernels call
 * fmaf/fma where their twins use a fused multiply-add, nowhere else), round half to even
 * (tests/c/test_core.c compares the two sets on random and edge inputs). */
#include <math.h>

#include "internal.h"
#include "quant.h"

static int64_t s_mask_gt(const float *w, int64_t n, float t, uint8_t *mask) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) {
        mask[i] = fabsf(w[i]) > t;
        c += mask[i];
    }
    return c;
}

static int s_minmax(const float *w, int64_t n, int check, float *mn, float *mx) {
    float a = INFINITY, b = -INFINITY;
    int finite = 1;
    for (int64_t i = 0; i < n; i++) {
        finite &= isfinite(w[i]) != 0;
        a = w[i] < a ? w[i] : a;
        b = w[i] > b ? w[i] : b;
    }
    *mn = a;
    *mx = b;
    return !check || finite;
}

static int s_params(const float *mn, const float *mx, int64_t n, int bits, int qmode, int scale_dtype, float *inv,
                    float *z, uint32_t *s_stored, uint32_t *z_stored) {
    return adpq_params_loop(&adpq_kernels_scalar, mn, mx, n, bits, qmode, scale_dtype, inv, z, s_stored, z_stored);
}

static void s_codes(const float *w, int64_t n, float inv, float z, int qmax, uint8_t *codes) {
    float q = (float)qmax;
    for (int64_t i = 0; i < n; i++) codes[i] = adpq_code_of(w[i], inv, z, q);
}

static int s_minmax_groups(const float *w, int64_t n, int64_t g, int check, const int64_t *skip, float *mn,
                           float *mx) {
    int finite = 1;
    for (int64_t j = 0, off = 0; off < n; j++, off += g) {
        if (skip && skip[j]) continue;
        finite &= s_minmax(w + off, n - off < g ? n - off : g, check, mn + j, mx + j);
        mn[j] += 0.0f; /* canonical +0 */
        mx[j] += 0.0f;
    }
    return finite;
}

static void s_codes_groups(const float *w, int64_t n, int64_t g, const float *inv, const float *z, int qmax,
                           uint8_t *codes) {
    for (int64_t j = 0, off = 0; off < n; j++, off += g) s_codes(w + off, n - off < g ? n - off : g, inv[j], z[j], qmax, codes + off);
}

static inline float value_of(const void *w, int dtype, int64_t i) {
    if (dtype == ADPQ_F32) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    return dtype == ADPQ_BF16 ? adpq_bf16_to_f32(h) : adpq_f16_to_f32(h);
}

static int64_t s_gather_groups(const void *w, int dtype, int64_t n, int64_t g, float t, uint32_t *vals, uint32_t *pos,
                               float *mn, float *mx, float *row_f32) {
    int64_t c = 0;
    for (int64_t j = 0, off = 0; off < n; j++, off += g) {
        float a = INFINITY, b = -INFINITY;
        for (int64_t i = off; i < n && i < off + g; i++) {
            float v = value_of(w, dtype, i);
            if (row_f32) row_f32[i] = v;
            if (!isfinite(v)) return -1;
            if (fabsf(v) > t) {
                memcpy(&vals[c], &v, 4);
                pos[c++] = (uint32_t)i;
            } else {
                a = v < a ? v : a;
                b = v > b ? v : b;
            }
        }
        mn[j] = a + 0.0f;
        mx[j] = b + 0.0f;
    }
    return c;
}

static int64_t s_mask_positions(const uint8_t *mask, int64_t n, uint32_t *pos) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++)
        if (mask[i]) pos[c++] = (uint32_t)i;
    return c;
}

static void s_abs_accumulate(const void *w, int dtype, int64_t n, float *acc) {
    for (int64_t i = 0; i < n; i++) acc[i] += fabsf(value_of(w, dtype, i));
}

static void s_mul_row(const void *w, int dtype, const float *mul, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = value_of(w, dtype, i) * mul[i];
}

static void s_dequant(const uint8_t *codes, int64_t n, float s, float z, const float *mul, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = ((float)codes[i] - z) * s;
    if (mul)
        for (int64_t i = 0; i < n; i++) out[i] *= mul[i];
}

static void s_f16_to_f32(const uint16_t *src, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = adpq_f16_to_f32(src[i]);
}

static void s_bf16_to_f32(const uint16_t *src, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = adpq_bf16_to_f32(src[i]);
}

static void s_error_sums(const float *w, const float *h, int64_t n, double *acc, float *mm) {
    double se = acc[0], sw = acc[1], me = acc[2];
    for (int64_t i = 0; i < n; i++) {
        double a = w[i], e = a - (double)h[i];
        se += e * e;
        sw += a * a;
        me = fabs(e) > me ? fabs(e) : me;
        mm[0] = w[i] < mm[0] ? w[i] : mm[0];
        mm[1] = w[i] > mm[1] ? w[i] : mm[1];
        mm[2] = h[i] < mm[2] ? h[i] : mm[2];
        mm[3] = h[i] > mm[3] ? h[i] : mm[3];
    }
    acc[0] = se;
    acc[1] = sw;
    acc[2] = me;
}

static void s_histogram(const float *x, int64_t n, double lo, double scale, int bins, int64_t *hist) {
    for (int64_t i = 0; i < n; i++) {
        double v = ((double)x[i] - lo) * scale; /* clipped before the conversion: also NaN and huge v */
        hist[v >= bins ? bins - 1 : v >= 1 ? (int64_t)v : 0]++;
    }
}

/* GPTQ's c -= a @ b (internal.h): row by row, the sums of up to 64 columns side by side, each from 0
 * in t order by fused multiply-adds (FMA: fmaf / fma, as the AVX2 set's _mm256_fmadd) */
#define GEMM_SUB(NAME, T, FMA)                                                                                         \
    static void NAME(T *c, int64_t cs, const T *a, int64_t as, const T *b, int64_t bs, int64_t m, int64_t n,           \
                     int64_t k) {                                                                                      \
        T acc[64];                                                                                                     \
        for (int64_t j0 = 0; j0 < n; j0 += 64) {                                                                       \
            const int64_t nj = n - j0 < 64 ? n - j0 : 64;                                                              \
            for (int64_t i = 0; i < m; i++) {                                                                          \
                for (int64_t j = 0; j < nj; j++) acc[j] = 0;                                                           \
                for (int64_t t = 0; t < k; t++) {                                                                      \
                    const T x = a[i * as + t], *br = b + t * bs + j0;                                                  \
                    for (int64_t j = 0; j < nj; j++) acc[j] = FMA(x, br[j], acc[j]);                                   \
                }                                                                                                      \
                T *cr = c + i * cs + j0;                                                                               \
                for (int64_t j = 0; j < nj; j++) cr[j] -= acc[j];                                                      \
            }                                                                                                          \
        }                                                                                                              \
    }
GEMM_SUB(s_gemm_sub, float, fmaf)
GEMM_SUB(s_gemm_sub_f64, double, fma)

/* GPTQ's update of later columns (internal.h): x -= e * u, one fused multiply-add per term, in t order */
static void s_gptq_update(float *x, int64_t xs, int64_t n, const float *e, int64_t es, int q, const float *u,
                          int64_t us, int64_t nr) {
    for (int64_t j = 0; j < n; j++) {
        float *xj = x + j * xs;
        for (int t = 0; t < q; t++) {
            const float ut = u[j * us + t], *et = e + t * es;
            for (int64_t r = 0; r < nr; r++) xj[r] = fmaf(-et[r], ut, xj[r]);
        }
    }
}

/* GPTQ's rounding of one column (internal.h) */
static int s_gptq_round(const adpq_gptq_col *c, int64_t nr) {
    int flags = 0;
    for (int64_t r = 0; r < nr; r++) flags |= adpq_gptq_round_row(c, r);
    return flags;
}

/* the transposes (internal.h) */
static void s_transpose(float *dst, int64_t ds, const float *src, int64_t ss, int64_t rows, int64_t cols) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) dst[j * ds + i] = src[i * ss + j];
}

static void s_transpose_u8(uint8_t *dst, int64_t ds, const uint8_t *src, int64_t ss, int64_t rows, int64_t cols) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) dst[j * ds + i] = src[i * ss + j];
}

const adpq_kernels adpq_kernels_scalar = {
    .name = "scalar",
    .mask_gt = s_mask_gt,
    .minmax = s_minmax,
    .params = s_params,
    .minmax_groups = s_minmax_groups,
    .codes_groups = s_codes_groups,
    .gather_groups = s_gather_groups,
    .abs_accumulate = s_abs_accumulate,
    .mul_row = s_mul_row,
    .dequant = s_dequant,
    .f16_to_f32 = s_f16_to_f32,
    .bf16_to_f32 = s_bf16_to_f32,
    .pack_body = adpq_pack_body_scalar,
    .to_f16 = adpq_f32_to_f16,
    .from_f16 = adpq_f16_to_f32,
    .mask_positions = s_mask_positions,
    .error_sums = s_error_sums,
    .histogram = s_histogram,
    .mm_packed = adpq_mm_packed_scalar,
    .mm_bytes = adpq_mm_bytes_scalar,
    .mm_decode = adpq_mm_decode_scalar,
    .mm_tile = adpq_mm_tile_scalar,
    .mm_q8 = adpq_mm_q8_scalar,
    .mm_q8_rows = adpq_mm_q8_rows_scalar,
    .mm_corr = adpq_mm_corr_scalar,
    .q8_quantize = adpq_q8_quantize_scalar,
    .gemm_sub = s_gemm_sub,
    .gemm_sub_f64 = s_gemm_sub_f64,
    .gptq_update = s_gptq_update,
    .gptq_round = s_gptq_round,
    .transpose = s_transpose,
    .transpose_u8 = s_transpose_u8,
};
