/* kernels_avx2.c - the AVX2 (+F16C) kernel set (adpq_kernels_avx2): twins of the scalar kernels in
 * kernels_scalar.c, chosen at run time by kernels.c. Same float32 operations in the same order as
 * the scalar code, so results are bit-identical (tests/c/test_core.c checks this; error_sums
 * agrees to rounding only, see there). Tails shorter than 8 use the scalar formulas. */
#include "internal.h"
#include "quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <math.h>

#define AVX2 __attribute__((target("avx2,f16c,popcnt")))
/* the GPTQ kernels: fused multiply-adds (kernels.c requires FMA for this set) */
#define AVX2FMA __attribute__((target("avx2,f16c,popcnt,fma")))

/* 8-bit lane masks -> 8 bytes of 0/1, a constant table (nothing to initialise before use) */
#define MB1(m, b) ((uint64_t)(((m) >> (b)) & 1) << (8 * (b)))
#define MB(m) (MB1(m, 0) | MB1(m, 1) | MB1(m, 2) | MB1(m, 3) | MB1(m, 4) | MB1(m, 5) | MB1(m, 6) | MB1(m, 7))
#define MB4(m) MB(m), MB((m) + 1), MB((m) + 2), MB((m) + 3)
#define MB16(m) MB4(m), MB4((m) + 4), MB4((m) + 8), MB4((m) + 12)
#define MB64(m) MB16(m), MB16((m) + 16), MB16((m) + 32), MB16((m) + 48)
static const uint64_t mask_bytes[256] = {MB64(0), MB64(64), MB64(128), MB64(192)};

AVX2 static inline __m256 abs8(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }

AVX2 static inline void store_codes8(uint8_t *dst, __m256 x) {
    __m256i q = _mm256_cvttps_epi32(x);
    __m128i p16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64((__m128i *)dst, _mm_packus_epi16(p16, p16));
}

AVX2 static inline __m256 quant8(__m256 w, __m256 inv, __m256 z, __m256 qmax) {
    __m256 x = _mm256_add_ps(_mm256_mul_ps(w, inv), z);
    x = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_max_ps(x, _mm256_setzero_ps());
    return _mm256_min_ps(x, qmax);
}

AVX2 static int64_t v_mask_gt(const float *w, int64_t n, float t, uint8_t *mask) {
    const __m256 tv = _mm256_set1_ps(t);
    int64_t c = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        int m = _mm256_movemask_ps(_mm256_cmp_ps(abs8(_mm256_loadu_ps(w + i)), tv, _CMP_GT_OQ));
        memcpy(mask + i, &mask_bytes[m], 8);
        c += __builtin_popcount((unsigned)m);
    }
    for (; i < n; i++) {
        mask[i] = fabsf(w[i]) > t;
        c += mask[i];
    }
    return c;
}

AVX2 static inline float hmin8(__m256 v) {
    __m128 a = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_min_ps(a, _mm_movehl_ps(a, a));
    a = _mm_min_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}
AVX2 static inline float hmax8(__m256 v) {
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}

/* Minimum and maximum are exact whatever the order. With check, a NaN is remembered by an
 * unordered compare (min/max drop it) and an Inf shows in the result. */
AVX2 static inline __attribute__((always_inline)) int minmax_span(const float *w, int64_t n, int check, float *mn,
                                                                  float *mx) {
    __m256 a = _mm256_set1_ps(INFINITY), b = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 x0 = _mm256_loadu_ps(w + i), x1 = _mm256_loadu_ps(w + i + 8);
        __m256 x2 = _mm256_loadu_ps(w + i + 16), x3 = _mm256_loadu_ps(w + i + 24);
        a = _mm256_min_ps(a, _mm256_min_ps(_mm256_min_ps(x0, x1), _mm256_min_ps(x2, x3)));
        b = _mm256_max_ps(b, _mm256_max_ps(_mm256_max_ps(x0, x1), _mm256_max_ps(x2, x3)));
        if (check)
            nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(x0, x1, _CMP_UNORD_Q), _mm256_cmp_ps(x2, x3, _CMP_UNORD_Q)));
    }
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(w + i);
        a = _mm256_min_ps(a, x);
        b = _mm256_max_ps(b, x);
        if (check) nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    }
    float lo = hmin8(a), hi = hmax8(b);
    int finite = _mm256_movemask_ps(nan) == 0;
    for (; i < n; i++) {
        if (check) finite &= isfinite(w[i]) != 0;
        lo = w[i] < lo ? w[i] : lo;
        hi = w[i] > hi ? w[i] : hi;
    }
    *mn = lo;
    *mx = hi;
    return !check || (finite && isfinite(lo) && isfinite(hi));
}

AVX2 static int v_minmax(const float *w, int64_t n, int check, float *mn, float *mx) {
    return minmax_span(w, n, check, mn, mx);
}

AVX2 static int v_minmax_groups(const float *w, int64_t n, int64_t g, int check, const int64_t *skip, float *mn,
                                float *mx) {
    int finite = 1;
    for (int64_t j = 0, off = 0; off < n; j++, off += g) {
        const int64_t len = n - off < g ? n - off : g;
        if (skip && skip[j]) continue;
        if (check)
            finite &= minmax_span(w + off, len, 1, mn + j, mx + j);
        else
            minmax_span(w + off, len, 0, mn + j, mx + j);
        mn[j] += 0.0f; /* canonical +0: SIMD and scalar min/max may differ in the sign of 0 */
        mx[j] += 0.0f;
    }
    return finite;
}

/* 8 values of a row as float32 */
AVX2 static inline __attribute__((always_inline)) __m256 load8(const void *w, int dtype, int64_t i) {
    if (dtype == ADPQ_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (dtype == ADPQ_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}
/* one value as float32 (inline conversions: a call here would spill the caller's vectors) */
AVX2 static inline __attribute__((always_inline)) float load1(const void *w, int dtype, int64_t i) {
    if (dtype == ADPQ_F32) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    if (dtype == ADPQ_F16) return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* Appends the lanes of x0:x1 set in m (bit i: lane i of 16) as candidates at columns i0 + lane. */
AVX2 static inline void take_candidates(__m256 x0, __m256 x1, unsigned m, int64_t i0, uint32_t *vals, uint32_t *pos,
                                        int64_t *c) {
    uint32_t buf[16];
    _mm256_storeu_ps((float *)buf, x0);
    _mm256_storeu_ps((float *)(buf + 8), x1);
    while (m) {
        int bit = __builtin_ctz(m);
        vals[*c] = buf[bit];
        pos[(*c)++] = (uint32_t)(i0 + bit);
        m &= m - 1;
    }
}

/* The range of the weights of w[off, end) with |w| <= t (exact; for the rare groups where the
 * vector loop's shortcut below cannot tell). */
AVX2 static inline void range_below(const void *w, int dtype, int64_t off, int64_t end, float t, float *lo, float *hi) {
    float a = INFINITY, b = -INFINITY;
    for (int64_t i = off; i < end; i++) {
        float v = load1(w, dtype, i);
        if (fabsf(v) > t) continue;
        a = v < a ? v : a;
        b = v > b ? v : b;
    }
    *lo = a;
    *hi = b;
}

/* Magnitude keys compare as integers (|w| > t <=> key(w) > key(t) for finite values). 16 weights
 * per step. The vector loop replaces each candidate by +0 before its min/max (one and-not instead
 * of two blends): exact unless the group has candidates and the result touches 0, when the group's
 * range is computed again. NaN/Inf are candidates (their keys exceed any t), checked as they are
 * taken. */
AVX2 static inline __attribute__((always_inline)) int64_t gather_groups_t(const void *w, const int dtype, int64_t n,
                                                                          int64_t g, float t, uint32_t *vals,
                                                                          uint32_t *pos, float *mn, float *mx,
                                                                          float *row_f32) {
    const __m256i absm = _mm256_set1_epi32(0x7fffffff), tk = _mm256_set1_epi32((int)adpq_abs_key(t));
    const __m256 pinf = _mm256_set1_ps(INFINITY), ninf = _mm256_set1_ps(-INFINITY);
    int64_t c = 0;
    for (int64_t j = 0, off = 0; off < n; j++, off += g) {
        const int64_t end = n - off < g ? n : off + g, c0 = c;
        __m256 a = pinf, b = ninf;
        int64_t i = off;
        for (; i + 16 <= end; i += 16) {
            __m256 x0 = load8(w, dtype, i), x1 = load8(w, dtype, i + 8);
            if (dtype != ADPQ_F32 && row_f32) {
                _mm256_storeu_ps(row_f32 + i, x0);
                _mm256_storeu_ps(row_f32 + i + 8, x1);
            }
            __m256i g0 = _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_castps_si256(x0), absm), tk);
            __m256i g1 = _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_castps_si256(x1), absm), tk);
            __m256 y0 = _mm256_andnot_ps(_mm256_castsi256_ps(g0), x0), y1 = _mm256_andnot_ps(_mm256_castsi256_ps(g1), x1);
            a = _mm256_min_ps(a, _mm256_min_ps(y0, y1));
            b = _mm256_max_ps(b, _mm256_max_ps(y0, y1));
            /* the first candidate without a branch (most steps have none or one: a branch on
             * them mispredicts often), the others, rare, with one */
            const unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(g0)) |
                               (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(g1)) << 8;
            const unsigned lane = (unsigned)__builtin_ctz(m | 0x8000u);
            const float v = load1(w, dtype, i + lane);
            memcpy(&vals[c], &v, 4);
            pos[c] = (uint32_t)(i + lane);
            c += m != 0;
            if (m & (m - 1)) take_candidates(x0, x1, m & (m - 1), i, vals, pos, &c);
        }
        for (; i + 8 <= end; i += 8) {
            __m256 x = load8(w, dtype, i);
            if (dtype != ADPQ_F32 && row_f32) _mm256_storeu_ps(row_f32 + i, x);
            __m256i gt = _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_castps_si256(x), absm), tk);
            __m256 y = _mm256_andnot_ps(_mm256_castsi256_ps(gt), x);
            a = _mm256_min_ps(a, y);
            b = _mm256_max_ps(b, y);
            unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(gt));
            if (m) take_candidates(x, x, m, i, vals, pos, &c);
        }
        float lo = hmin8(a), hi = hmax8(b);
        for (; i < end; i++) {
            float v = load1(w, dtype, i);
            if (dtype != ADPQ_F32 && row_f32) row_f32[i] = v;
            if (!isfinite(v)) return -1;
            if (fabsf(v) > t) {
                memcpy(&vals[c], &v, 4);
                pos[c++] = (uint32_t)i;
            } else {
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
        }
        if (c > c0 && (lo == 0.0f || hi == 0.0f)) range_below(w, dtype, off, end, t, &lo, &hi);
        mn[j] = lo + 0.0f;
        mx[j] = hi + 0.0f;
    }
    /* NaN and Inf are always candidates (their keys exceed any t): look for them there */
    uint32_t bad = 0;
    for (int64_t k = 0; k < c; k++) bad |= (vals[k] & 0x7fffffffu) >= 0x7f800000u;
    return bad ? -1 : c;
}

AVX2 static int64_t v_gather_groups(const void *w, int dtype, int64_t n, int64_t g, float t, uint32_t *vals,
                                    uint32_t *pos, float *mn, float *mx, float *row_f32) {
    /* one instance per dtype, so that the loads are resolved at compile time */
    if (dtype == ADPQ_F32) return gather_groups_t(w, ADPQ_F32, n, g, t, vals, pos, mn, mx, row_f32);
    if (dtype == ADPQ_BF16) return gather_groups_t(w, ADPQ_BF16, n, g, t, vals, pos, mn, mx, row_f32);
    return gather_groups_t(w, ADPQ_F16, n, g, t, vals, pos, mn, mx, row_f32);
}

/* 8 float16 conversions at a time; any overflow (exponent all ones) reports ADPQ_ERR_RANGE. */
AVX2 static inline int f16_overflows(__m128i h) {
    const __m128i e = _mm_set1_epi16(0x7c00);
    return !_mm_testz_si128(_mm_cmpeq_epi16(_mm_and_si128(h, e), e), _mm_set1_epi16(-1));
}

/* adpq_group_params for 8 groups when the scale dtype is float16: the same float32 operations,
 * and F16C's round-to-nearest-even conversions. */
AVX2 static inline __attribute__((always_inline)) int params8_f16(const float *mn, const float *mx, int bits, int qmode,
                                                                  float *inv, float *z, uint32_t *s_stored,
                                                                  uint32_t *z_stored) {
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    const __m256 half = _mm256_set1_ps((float)(1 << (bits - 1))), qmax = _mm256_set1_ps((float)((1 << bits) - 1));
    const __m128i mag = _mm_set1_epi16(0x7fff), lsb = _mm_set1_epi16(1);
    __m256 a = _mm256_loadu_ps(mn), b = _mm256_loadu_ps(mx);
    __m256 empty = _mm256_cmp_ps(a, b, _CMP_GT_OQ); /* every weight an outlier: [0, 0] */
    a = _mm256_andnot_ps(empty, a);
    b = _mm256_andnot_ps(empty, b);
    __m256 s, zz;
    if (qmode == ADPQ_Q_SYM) {
        __m256 vmax = _mm256_blendv_ps(a, b, _mm256_cmp_ps(b, _mm256_xor_ps(a, sign), _CMP_GE_OQ));
        s = _mm256_div_ps(vmax, _mm256_xor_ps(half, sign));
        zz = half;
    } else {
        __m256 range = _mm256_sub_ps(b, a);
        if (_mm256_movemask_ps(_mm256_cmp_ps(range, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ))) return ADPQ_ERR_RANGE;
        s = _mm256_div_ps(range, qmax);
        __m256 s_min = _mm256_div_ps(_mm256_andnot_ps(sign, a), _mm256_set1_ps(1024.0f));
        s = _mm256_blendv_ps(s, s_min, _mm256_cmp_ps(s, s_min, _CMP_LT_OQ));
        zz = zero;
    }
    s = _mm256_blendv_ps(s, one, _mm256_cmp_ps(s, zero, _CMP_EQ_OQ));
    __m128i hs = _mm256_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT);
    if (f16_overflows(hs)) return ADPQ_ERR_RANGE;
    hs = _mm_or_si128(hs, _mm_and_si128(_mm_cmpeq_epi16(_mm_and_si128(hs, mag), _mm_setzero_si128()), lsb));
    s = _mm256_cvtph_ps(hs);
    __m256i zst = _mm256_setzero_si256();
    if (qmode != ADPQ_Q_SYM) {
        zz = _mm256_div_ps(_mm256_xor_ps(a, sign), s);
        if (qmode == ADPQ_Q_ASYM_INT_ZERO) zz = _mm256_round_ps(zz, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m128i hz = _mm256_cvtps_ph(zz, _MM_FROUND_TO_NEAREST_INT);
        if (f16_overflows(hz)) return ADPQ_ERR_RANGE;
        zz = _mm256_cvtph_ps(hz);
        zst = _mm256_cvtepu16_epi32(hz);
    }
    _mm256_storeu_ps(inv, _mm256_div_ps(one, s));
    _mm256_storeu_ps(z, zz);
    _mm256_storeu_si256((__m256i *)s_stored, _mm256_cvtepu16_epi32(hs));
    _mm256_storeu_si256((__m256i *)z_stored, zst);
    return ADPQ_OK;
}

/* Float16 scales: 8 groups at a time, the last few padded with [0, 0] groups (always valid);
 * other dtypes: the scalar loop. */
AVX2 static int v_params(const float *mn, const float *mx, int64_t n, int bits, int qmode, int scale_dtype, float *inv,
                         float *z, uint32_t *s_stored, uint32_t *z_stored) {
    if (scale_dtype != ADPQ_F16)
        return adpq_params_loop(&adpq_kernels_avx2, mn, mx, n, bits, qmode, scale_dtype, inv, z, s_stored, z_stored);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        if (params8_f16(mn + i, mx + i, bits, qmode, inv + i, z + i, s_stored + i, z_stored + i)) return ADPQ_ERR_RANGE;
    if (i < n) {
        float a[8] = {0}, b[8] = {0}, iv[8], zv[8];
        uint32_t ss[8], zs[8];
        const size_t rest = (size_t)(n - i);
        memcpy(a, mn + i, rest * sizeof(float));
        memcpy(b, mx + i, rest * sizeof(float));
        if (params8_f16(a, b, bits, qmode, iv, zv, ss, zs)) return ADPQ_ERR_RANGE;
        memcpy(inv + i, iv, rest * sizeof(float));
        memcpy(z + i, zv, rest * sizeof(float));
        memcpy(s_stored + i, ss, rest * sizeof(uint32_t));
        memcpy(z_stored + i, zs, rest * sizeof(uint32_t));
    }
    return ADPQ_OK;
}

/* Eight codes as int32: rounding by the conversion (MXCSR's round-to-nearest-even, as rintf),
 * clamping to qmax before it and to 0 by the unsigned saturation of the packs that follow. */
AVX2 static inline __m256i code8i(const float *w, __m256 inv, __m256 z, __m256 qmax) {
    return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(w), inv), z), qmax));
}

AVX2 static inline __attribute__((always_inline)) void codes_span(const float *w, int64_t n, float inv, float z, int qmax,
                                                                   uint8_t *codes) {
    const __m256 iv = _mm256_set1_ps(inv), zv = _mm256_set1_ps(z), qv = _mm256_set1_ps((float)qmax);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i ab = _mm256_packus_epi32(code8i(w + i, iv, zv, qv), code8i(w + i + 8, iv, zv, qv));
        __m256i cd = _mm256_packus_epi32(code8i(w + i + 16, iv, zv, qv), code8i(w + i + 24, iv, zv, qv));
        /* per 128-bit lane: 4 codes of each of the 4 vectors; the permute restores their order */
        __m256i q = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
        _mm256_storeu_si256((__m256i *)(codes + i), q);
    }
    for (; i + 8 <= n; i += 8) store_codes8(codes + i, quant8(_mm256_loadu_ps(w + i), iv, zv, qv));
    for (; i < n; i++) codes[i] = adpq_code_of(w[i], inv, z, (float)qmax);
}

AVX2 static void v_codes_groups(const float *w, int64_t n, int64_t g, const float *inv, const float *z, int qmax,
                                uint8_t *codes) {
    for (int64_t j = 0, off = 0; off < n; j++, off += g) codes_span(w + off, n - off < g ? n - off : g, inv[j], z[j], qmax, codes + off);
}

AVX2 static int64_t v_mask_positions(const uint8_t *mask, int64_t n, uint32_t *pos) {
    int64_t i = 0, c = 0;
    for (; i + 32 <= n; i += 32) {
        /* bytes are 0/1: shifting 16-bit lanes left by 7 moves each byte's bit 0 to its bit 7 */
        unsigned m = (unsigned)_mm256_movemask_epi8(
            _mm256_slli_epi16(_mm256_loadu_si256((const __m256i *)(mask + i)), 7));
        while (m) {
            pos[c++] = (uint32_t)(i + __builtin_ctz(m));
            m &= m - 1;
        }
    }
    for (; i < n; i++)
        if (mask[i]) pos[c++] = (uint32_t)i;
    return c;
}

AVX2 static float v_from_f16(uint16_t h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }

/* (one instance per dtype, so that the loads are resolved at compile time) */
AVX2 static inline __attribute__((always_inline)) void abs_accumulate_t(const void *w, const int dtype, int64_t n,
                                                                         float *acc) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_loadu_ps(acc + i), _mm256_andnot_ps(sign, load8(w, dtype, i))));
    for (; i < n; i++) acc[i] += fabsf(load1(w, dtype, i));
}

AVX2 static void v_abs_accumulate(const void *w, int dtype, int64_t n, float *acc) {
    if (dtype == ADPQ_F32) abs_accumulate_t(w, ADPQ_F32, n, acc);
    else if (dtype == ADPQ_BF16) abs_accumulate_t(w, ADPQ_BF16, n, acc);
    else abs_accumulate_t(w, ADPQ_F16, n, acc);
}

AVX2 static inline __attribute__((always_inline)) void mul_row_t(const void *w, const int dtype, const float *mul,
                                                                  int64_t n, float *out) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(load8(w, dtype, i), _mm256_loadu_ps(mul + i)));
    for (; i < n; i++) out[i] = load1(w, dtype, i) * mul[i];
}

AVX2 static void v_mul_row(const void *w, int dtype, const float *mul, int64_t n, float *out) {
    if (dtype == ADPQ_F32) mul_row_t(w, ADPQ_F32, mul, n, out);
    else if (dtype == ADPQ_BF16) mul_row_t(w, ADPQ_BF16, mul, n, out);
    else mul_row_t(w, ADPQ_F16, mul, n, out);
}

AVX2 static void v_dequant(const uint8_t *codes, int64_t n, float s, float z, const float *mul, float *out) {
    const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
    int64_t i = 0;
    if (mul) {
        for (; i + 8 <= n; i += 8) {
            __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + i))));
            __m256 v = _mm256_mul_ps(_mm256_sub_ps(q, zv), sv);
            _mm256_storeu_ps(out + i, _mm256_mul_ps(v, _mm256_loadu_ps(mul + i)));
        }
        for (; i < n; i++) {
            float v = ((float)codes[i] - z) * s;
            out[i] = v * mul[i];
        }
        return;
    }
    for (; i + 8 <= n; i += 8) {
        __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + i))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_sub_ps(q, zv), sv));
    }
    for (; i < n; i++) out[i] = ((float)codes[i] - z) * s;
}

AVX2 static void v_f16_to_f32(const uint16_t *src, int64_t n, float *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = adpq_f16_to_f32(src[i]);
}

AVX2 static void v_bf16_to_f32(const uint16_t *src, int64_t n, float *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(v, 16));
    }
    for (; i < n; i++) dst[i] = adpq_bf16_to_f32(src[i]);
}

/* 32 codes per step, combined by multiply-adds: bytes (c0, c1) -> c0 + c1 << b in 16-bit lanes,
 * pairs of those -> 4 codes in 32-bit lanes (2 and 3 bits), then the bytes that hold the stream
 * are gathered by a shuffle. 3 bits: each step stores 16 bytes at out and at out + 6, past the 12
 * bytes it owns; those are rewritten by the next step, and the last steps (where that would pass
 * the n*3/8 bytes of out) run the scalar body. */
AVX2 static void v_pack_body(const uint8_t *codes, int64_t n, int bits, uint8_t *out) {
    int64_t k = 0;
    if (bits == 8) {
        memcpy(out, codes, (size_t)n);
        return;
    }
    if (bits == 4) {
        const __m256i m = _mm256_set1_epi16(0x1001); /* bytes (1, 16) */
        for (; k + 32 <= n; k += 32, out += 16) {
            __m256i p = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(codes + k)), m);
            p = _mm256_permute4x64_epi64(_mm256_packus_epi16(p, p), 0x08); /* qwords 0 and 2 */
            _mm_storeu_si128((__m128i *)out, _mm256_castsi256_si128(p));
        }
    } else if (bits == 2) {
        const __m256i m1 = _mm256_set1_epi16(0x0401), m2 = _mm256_set1_epi32(0x00100001); /* (1, 4), (1, 16) */
        const __m256i shuf = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8,
                                              12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        const __m256i gather = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
        for (; k + 32 <= n; k += 32, out += 8) {
            __m256i p = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(codes + k)), m1);
            p = _mm256_shuffle_epi8(_mm256_madd_epi16(p, m2), shuf);
            p = _mm256_permutevar8x32_epi32(p, gather);
            _mm_storel_epi64((__m128i *)out, _mm256_castsi256_si128(p));
        }
    } else {
        const __m256i m1 = _mm256_set1_epi16(0x0801), m2 = _mm256_set1_epi32(0x00400001); /* (1, 8), (1, 64) */
        const __m256i shuf = _mm256_setr_epi8(0, 1, 2, 8, 9, 10, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 2, 8,
                                              9, 10, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        /* a step at code k writes bytes [3k/8, 3k/8 + 22) */
        for (; (n - k) * 3 >= 16 * 3 + 128; k += 32, out += 12) {
            __m256i p = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(codes + k)), m1);
            p = _mm256_madd_epi16(p, m2);                        /* 12 bits in each 32-bit lane */
            p = _mm256_or_si256(p, _mm256_srli_epi64(p, 20));    /* 24 bits in each 64-bit lane */
            p = _mm256_shuffle_epi8(p, shuf);
            _mm_storeu_si128((__m128i *)out, _mm256_castsi256_si128(p));
            _mm_storeu_si128((__m128i *)(out + 6), _mm256_extracti128_si256(p, 1));
        }
    }
    adpq_pack_body_scalar(codes + k, n - k, bits, out);
}

AVX2 static uint16_t v_to_f16(float v) {
    return (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT), 0);
}

/* Four double lanes per half-vector; the sums add in another order than the scalar loop
 * (results agree to rounding, not bit for bit: they feed reports, not codes). */
AVX2 static void v_error_sums(const float *w, const float *h, int64_t n, double *acc, float *mm) {
    const __m256d sign = _mm256_set1_pd(-0.0);
    __m256d se0 = _mm256_setzero_pd(), se1 = se0, sw0 = se0, sw1 = se0, me0 = se0, me1 = se0;
    __m256 wmn = _mm256_set1_ps(mm[0]), wmx = _mm256_set1_ps(mm[1]), hmn = _mm256_set1_ps(mm[2]),
           hmx = _mm256_set1_ps(mm[3]);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wv = _mm256_loadu_ps(w + i), hv = _mm256_loadu_ps(h + i);
        wmn = _mm256_min_ps(wmn, wv);
        wmx = _mm256_max_ps(wmx, wv);
        hmn = _mm256_min_ps(hmn, hv);
        hmx = _mm256_max_ps(hmx, hv);
        __m256d wl = _mm256_cvtps_pd(_mm256_castps256_ps128(wv)), wh = _mm256_cvtps_pd(_mm256_extractf128_ps(wv, 1));
        __m256d hl = _mm256_cvtps_pd(_mm256_castps256_ps128(hv)), hh = _mm256_cvtps_pd(_mm256_extractf128_ps(hv, 1));
        __m256d el = _mm256_sub_pd(wl, hl), eh = _mm256_sub_pd(wh, hh);
        se0 = _mm256_add_pd(se0, _mm256_mul_pd(el, el));
        se1 = _mm256_add_pd(se1, _mm256_mul_pd(eh, eh));
        sw0 = _mm256_add_pd(sw0, _mm256_mul_pd(wl, wl));
        sw1 = _mm256_add_pd(sw1, _mm256_mul_pd(wh, wh));
        me0 = _mm256_max_pd(me0, _mm256_andnot_pd(sign, el));
        me1 = _mm256_max_pd(me1, _mm256_andnot_pd(sign, eh));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(se0, se1));
    acc[0] += (t[0] + t[1]) + (t[2] + t[3]);
    _mm256_storeu_pd(t, _mm256_add_pd(sw0, sw1));
    acc[1] += (t[0] + t[1]) + (t[2] + t[3]);
    _mm256_storeu_pd(t, _mm256_max_pd(me0, me1));
    for (int k = 0; k < 4; k++) acc[2] = t[k] > acc[2] ? t[k] : acc[2];
    mm[0] = hmin8(wmn);
    mm[1] = hmax8(wmx);
    mm[2] = hmin8(hmn);
    mm[3] = hmax8(hmx);
    for (; i < n; i++) {
        double a = w[i], e = a - (double)h[i];
        acc[0] += e * e;
        acc[1] += a * a;
        acc[2] = fabs(e) > acc[2] ? fabs(e) : acc[2];
        mm[0] = w[i] < mm[0] ? w[i] : mm[0];
        mm[1] = w[i] > mm[1] ? w[i] : mm[1];
        mm[2] = h[i] < mm[2] ? h[i] : mm[2];
        mm[3] = h[i] > mm[3] ? h[i] : mm[3];
    }
}

/* The bin of each value with the scalar formula in double (same bins), 8 at a time. The bins leave
 * the vector registers through general registers: stored to memory and loaded back one by one, the
 * loads wait on failed store forwarding (half the speed on Zen 1). */
AVX2 static void v_histogram(const float *x, int64_t n, double lo, double scale, int bins, int64_t *hist) {
    const __m256d lov = _mm256_set1_pd(lo), sc = _mm256_set1_pd(scale);
    const __m128i zero = _mm_setzero_si128(), top = _mm_set1_epi32(bins - 1);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i);
        __m256d a = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xv)), lov), sc);
        __m256d b = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1)), lov), sc);
        __m128i ia = _mm_min_epi32(_mm_max_epi32(_mm256_cvttpd_epi32(a), zero), top);
        __m128i ib = _mm_min_epi32(_mm_max_epi32(_mm256_cvttpd_epi32(b), zero), top);
        const uint64_t a0 = (uint64_t)_mm_cvtsi128_si64(ia), a1 = (uint64_t)_mm_extract_epi64(ia, 1);
        const uint64_t b0 = (uint64_t)_mm_cvtsi128_si64(ib), b1 = (uint64_t)_mm_extract_epi64(ib, 1);
        hist[(uint32_t)a0]++;
        hist[a0 >> 32]++;
        hist[(uint32_t)a1]++;
        hist[a1 >> 32]++;
        hist[(uint32_t)b0]++;
        hist[b0 >> 32]++;
        hist[(uint32_t)b1]++;
        hist[b1 >> 32]++;
    }
    for (; i < n; i++) {
        double v = ((double)x[i] - lo) * scale; /* as the scalar kernel */
        hist[v >= bins ? bins - 1 : v >= 1 ? (int64_t)v : 0]++;
    }
}

/* ------------------------------------------------------------------ GPTQ's c -= a @ b (internal.h)
 * Tiles of R (4 or 1) rows x V (3, 2 or 1) vectors of columns: R * V sums in named registers (not an
 * array, so that they stay in registers at any optimisation level), each row's a[t] broadcast
 * against the V vectors of b's row t, which the R rows share. Every element: a sum from 0 in t
 * order, one fused multiply-add per term (fmaf / fma in the scalar kernel), then one subtraction: the
 * scalar kernel's bits, whatever the tile. 4 x 3 is 12 independent sums, 3 registers for b's row and 1
 * for a[t]: all 16 registers, the most work per load (the 4 x 2 tile runs ~15% slower on Zen 4). */
#define GS_ROW(r, V)                                                                                                   \
    x = GS_BC(a##r + t);                                                                                               \
    c##r##0 = GS_FMA(x, b0, c##r##0);                                                                                  \
    if (V > 1) c##r##1 = GS_FMA(x, b1, c##r##1);                                                                       \
    if (V > 2) c##r##2 = GS_FMA(x, b2, c##r##2);
#define GS_OUT(r, N, V)                                                                                                \
    GS_ST(c + r * cs, GS_SUB(GS_LD(c + r * cs), c##r##0));                                                             \
    if (V > 1) GS_ST(c + r * cs + N, GS_SUB(GS_LD(c + r * cs + N), c##r##1));                                         \
    if (V > 2) GS_ST(c + r * cs + 2 * N, GS_SUB(GS_LD(c + r * cs + 2 * N), c##r##2));
/* (GS_ZERO, GS_LD, GS_BC, GS_FMA, GS_SUB, GS_ST: the vector operations of T, defined below) */
#define GS_AHEAD 8
#define GS_TILE(NAME, T, VT, N, R, V, PF)                                                                              \
    AVX2FMA static void NAME(T *c, int64_t cs, const T *a, int64_t as, const T *b, int64_t bs, int64_t k) {           \
        VT c00 = GS_ZERO(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00, c20 = c00, c21 = c00, c22 = c00,    \
           c30 = c00, c31 = c00, c32 = c00;                                                                            \
        const T *a0 = a, *a1 = R > 1 ? a + as : a, *a2 = R > 1 ? a + 2 * as : a, *a3 = R > 1 ? a + 3 * as : a;       \
        for (int r = 0; r < R; r++) { /* c's tile, wanted after the sums (a hint: the same results without) */       \
            _mm_prefetch((const char *)(c + r * cs), _MM_HINT_T0);                                                     \
            _mm_prefetch((const char *)(c + r * cs + V * N) - 1, _MM_HINT_T0);                                         \
        }                                                                                                              \
        for (int64_t t = 0; t < k; t++) {                                                                              \
            const T *br = b + t * bs;                                                                                  \
            if (PF && t + GS_AHEAD < k) { /* b's rows ahead: the first tile of a strip reads them from far away */      \
                _mm_prefetch((const char *)(br + GS_AHEAD * bs), _MM_HINT_T0);                                         \
                _mm_prefetch((const char *)(br + GS_AHEAD * bs + V * N) - 1, _MM_HINT_T0);                             \
            }                                                                                                          \
            const VT b0 = GS_LD(br), b1 = V > 1 ? GS_LD(br + N) : b0, b2 = V > 2 ? GS_LD(br + 2 * N) : b0;             \
            VT x;                                                                                                      \
            GS_ROW(0, V)                                                                                               \
            if (R > 1) {                                                                                               \
                GS_ROW(1, V)                                                                                           \
                GS_ROW(2, V)                                                                                           \
                GS_ROW(3, V)                                                                                           \
            }                                                                                                          \
        }                                                                                                              \
        GS_OUT(0, N, V)                                                                                                \
        if (R > 1) {                                                                                                   \
            GS_OUT(1, N, V)                                                                                            \
            GS_OUT(2, N, V)                                                                                            \
            GS_OUT(3, N, V)                                                                                            \
        }                                                                                                              \
    }

#define GS_ZERO _mm256_setzero_ps
#define GS_LD _mm256_loadu_ps
#define GS_BC _mm256_broadcast_ss
#define GS_FMA _mm256_fmadd_ps
#define GS_SUB _mm256_sub_ps
#define GS_ST _mm256_storeu_ps
GS_TILE(gs_f32_4x3p, float, __m256, 8, 4, 3, 1)
GS_TILE(gs_f32_4x3, float, __m256, 8, 4, 3, 0)
GS_TILE(gs_f32_1x3, float, __m256, 8, 1, 3, 0)
GS_TILE(gs_f32_4x1, float, __m256, 8, 4, 1, 0)
GS_TILE(gs_f32_1x1, float, __m256, 8, 1, 1, 0)
#undef GS_ZERO
#undef GS_LD
#undef GS_BC
#undef GS_FMA
#undef GS_SUB
#undef GS_ST
#define GS_ZERO _mm256_setzero_pd
#define GS_LD _mm256_loadu_pd
#define GS_BC _mm256_broadcast_sd
#define GS_FMA _mm256_fmadd_pd
#define GS_SUB _mm256_sub_pd
#define GS_ST _mm256_storeu_pd
GS_TILE(gs_f64_4x3p, double, __m256d, 4, 4, 3, 1)
GS_TILE(gs_f64_4x3, double, __m256d, 4, 4, 3, 0)
GS_TILE(gs_f64_1x3, double, __m256d, 4, 1, 3, 0)
GS_TILE(gs_f64_4x1, double, __m256d, 4, 4, 1, 0)
GS_TILE(gs_f64_1x1, double, __m256d, 4, 1, 1, 0)

/* the tiles over (m, n): strips of 3 vectors, then of 1, then single columns with the scalar formula (FMA:
 * fmaf / fma, one instruction here) */
#define GS_KERNEL(NAME, T, N, T43P, T43, T13, T41, T11, FMA)                                                           \
    AVX2FMA static void NAME(T *c, int64_t cs, const T *a, int64_t as, const T *b, int64_t bs, int64_t m,              \
                             int64_t n, int64_t k) {                                                                   \
        int64_t j = 0;                                                                                                 \
        for (; j + 3 * N <= n; j += 3 * N) {                                                                           \
            int64_t i = 0;                                                                                             \
            if (m >= 4) {                                                                                              \
                T43P(c + j, cs, a, as, b + j, bs, k);                                                                  \
                i = 4;                                                                                                 \
            }                                                                                                          \
            for (; i + 4 <= m; i += 4) T43(c + i * cs + j, cs, a + i * as, as, b + j, bs, k);                          \
            for (; i < m; i++) T13(c + i * cs + j, cs, a + i * as, as, b + j, bs, k);                                  \
        }                                                                                                              \
        for (; j + N <= n; j += N) {                                                                                   \
            int64_t i = 0;                                                                                             \
            for (; i + 4 <= m; i += 4) T41(c + i * cs + j, cs, a + i * as, as, b + j, bs, k);                          \
            for (; i < m; i++) T11(c + i * cs + j, cs, a + i * as, as, b + j, bs, k);                                  \
        }                                                                                                              \
        for (; j < n; j++)                                                                                             \
            for (int64_t i = 0; i < m; i++) {                                                                          \
                T acc = 0;                                                                                             \
                for (int64_t t = 0; t < k; t++) acc = FMA(a[i * as + t], b[t * bs + j], acc);                          \
                c[i * cs + j] -= acc;                                                                                  \
            }                                                                                                          \
    }
GS_KERNEL(v_gemm_sub, float, 8, gs_f32_4x3p, gs_f32_4x3, gs_f32_1x3, gs_f32_4x1, gs_f32_1x1, fmaf)
GS_KERNEL(v_gemm_sub_f64, double, 4, gs_f64_4x3p, gs_f64_4x3, gs_f64_1x3, gs_f64_4x1, gs_f64_1x1, fma)

/* GPTQ's update of later columns (internal.h): per 16 rows with q = 4 (the quads of columns the
 * solver rounds between its updates), the 8 error vectors in registers; else per 8 rows, the errors
 * from memory; the last rows with the scalar formula. Each element: fnmadd in t order. */
AVX2FMA static void v_gptq_update(float *x, int64_t xs, int64_t n, const float *e, int64_t es, int q, const float *u,
                                  int64_t us, int64_t nr) {
    int64_t r = 0;
    if (q == 4)
        for (; r + 16 <= nr; r += 16) {
            const __m256 e0a = _mm256_loadu_ps(e + r), e0b = _mm256_loadu_ps(e + r + 8);
            const __m256 e1a = _mm256_loadu_ps(e + es + r), e1b = _mm256_loadu_ps(e + es + r + 8);
            const __m256 e2a = _mm256_loadu_ps(e + 2 * es + r), e2b = _mm256_loadu_ps(e + 2 * es + r + 8);
            const __m256 e3a = _mm256_loadu_ps(e + 3 * es + r), e3b = _mm256_loadu_ps(e + 3 * es + r + 8);
            for (int64_t j = 0; j < n; j++) {
                float *xj = x + j * xs + r;
                const float *uj = u + j * us;
                __m256 xa = _mm256_loadu_ps(xj), xb = _mm256_loadu_ps(xj + 8), b;
                b = _mm256_broadcast_ss(uj);
                xa = _mm256_fnmadd_ps(e0a, b, xa);
                xb = _mm256_fnmadd_ps(e0b, b, xb);
                b = _mm256_broadcast_ss(uj + 1);
                xa = _mm256_fnmadd_ps(e1a, b, xa);
                xb = _mm256_fnmadd_ps(e1b, b, xb);
                b = _mm256_broadcast_ss(uj + 2);
                xa = _mm256_fnmadd_ps(e2a, b, xa);
                xb = _mm256_fnmadd_ps(e2b, b, xb);
                b = _mm256_broadcast_ss(uj + 3);
                xa = _mm256_fnmadd_ps(e3a, b, xa);
                xb = _mm256_fnmadd_ps(e3b, b, xb);
                _mm256_storeu_ps(xj, xa);
                _mm256_storeu_ps(xj + 8, xb);
            }
        }
    for (; r + 8 <= nr; r += 8)
        for (int64_t j = 0; j < n; j++) {
            float *xj = x + j * xs + r;
            __m256 xa = _mm256_loadu_ps(xj);
            for (int t = 0; t < q; t++)
                xa = _mm256_fnmadd_ps(_mm256_loadu_ps(e + t * es + r), _mm256_broadcast_ss(u + j * us + t), xa);
            _mm256_storeu_ps(xj, xa);
        }
    for (; r < nr; r++)
        for (int64_t j = 0; j < n; j++) {
            float v = x[j * xs + r];
            for (int t = 0; t < q; t++) v = fmaf(-e[t * es + r], u[j * us + t], v);
            x[j * xs + r] = v;
        }
}

/* GPTQ's rounding of one column (internal.h), 8 rows at a time, the last rows as the scalar kernel:
 * quant8 is adpq_code_of (its max(., 0) gives +0, as the scalar (float)code); float16 outliers through
 * F16C, as the to_f16 / from_f16 kernels. */
AVX2FMA static int v_gptq_round(const adpq_gptq_col *c, int64_t nr) {
    const __m256 qmax = _mm256_set1_ps(c->qmax), inf = _mm256_set1_ps(INFINITY);
    const __m128i exp16 = _mm_set1_epi16(0x7c00);
    __m256 bad = _mm256_setzero_ps();
    __m128i f16bad = _mm_setzero_si128();
    int64_t r = 0;
    for (; r + 8 <= nr; r += 8) {
        const __m256 x = _mm256_loadu_ps(c->x + r), z = _mm256_loadu_ps(c->z + r);
        const __m256 nf = _mm256_cmp_ps(abs8(x), inf, _CMP_NLT_UQ); /* Inf or NaN */
        bad = _mm256_or_ps(bad, nf);
        __m256 k = quant8(x, _mm256_loadu_ps(c->inv + r), z, qmax);
        __m256 q = _mm256_mul_ps(_mm256_sub_ps(k, z), _mm256_loadu_ps(c->s + r));
        uint64_t mb;
        memcpy(&mb, c->mask + r, 8);
        if (mb) {
            const __m128i m8 = _mm_loadl_epi64((const __m128i *)(c->mask + r));
            const __m256 m = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(m8), _mm256_setzero_si256()));
            if (!c->so) {
                const __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
                const __m256i nfi = _mm256_castps_si256(nf); /* (the finite outliers only, as the scalar loop) */
                const __m128i nf16 = _mm_packs_epi32(_mm256_castsi256_si128(nfi), _mm256_extracti128_si256(nfi, 1));
                const __m128i m16 = _mm_andnot_si128(nf16, _mm_cmpgt_epi16(_mm_cvtepu8_epi16(m8), _mm_setzero_si128()));
                f16bad = _mm_or_si128(f16bad, _mm_and_si128(m16, _mm_cmpeq_epi16(_mm_and_si128(h, exp16), exp16)));
                q = _mm256_blendv_ps(q, _mm256_cvtph_ps(h), m);
            } else {
                const __m256 zo = _mm256_loadu_ps(c->zo + r);
                const __m256 ko = quant8(x, _mm256_loadu_ps(c->invo + r), zo, qmax);
                k = _mm256_blendv_ps(k, ko, m);
                q = _mm256_blendv_ps(q, _mm256_mul_ps(_mm256_sub_ps(ko, zo), _mm256_loadu_ps(c->so + r)), m);
            }
        }
        const __m256 e = _mm256_sub_ps(q, _mm256_loadu_ps(c->w + r));
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(abs8(e), inf, _CMP_NLT_UQ));
        store_codes8(c->codes + r, k);
        _mm256_storeu_ps(c->x + r, q);
        _mm256_storeu_ps(c->e + r, e);
    }
    int flags = (_mm256_movemask_ps(bad) ? ADPQ_GPTQ_NONFINITE : 0) | (_mm_movemask_epi8(f16bad) ? ADPQ_GPTQ_F16 : 0);
    for (; r < nr; r++) flags |= adpq_gptq_round_row(c, r);
    return flags;
}

/* the transposes (internal.h): 8 x 8 blocks in registers, the edges element by element */
AVX2 static void v_transpose(float *dst, int64_t ds, const float *src, int64_t ss, int64_t rows, int64_t cols) {
    int64_t i = 0;
    for (; i + 8 <= rows; i += 8) {
        const float *s = src + i * ss;
        int64_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            const __m256 r0 = _mm256_loadu_ps(s + j), r1 = _mm256_loadu_ps(s + ss + j),
                         r2 = _mm256_loadu_ps(s + 2 * ss + j), r3 = _mm256_loadu_ps(s + 3 * ss + j),
                         r4 = _mm256_loadu_ps(s + 4 * ss + j), r5 = _mm256_loadu_ps(s + 5 * ss + j),
                         r6 = _mm256_loadu_ps(s + 6 * ss + j), r7 = _mm256_loadu_ps(s + 7 * ss + j);
            const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                         t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
                         t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee),
                         u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee),
                         u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee),
                         u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
            float *d = dst + j * ds + i;
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
        for (; j < cols; j++)
            for (int64_t k = 0; k < 8; k++) dst[j * ds + i + k] = s[k * ss + j];
    }
    for (; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) dst[j * ds + i] = src[i * ss + j];
}

AVX2 static void v_transpose_u8(uint8_t *dst, int64_t ds, const uint8_t *src, int64_t ss, int64_t rows, int64_t cols) {
    int64_t i = 0;
    for (; i + 8 <= rows; i += 8) {
        const uint8_t *s = src + i * ss;
        int64_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            const __m128i b0 = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(s + j)),
                                                 _mm_loadl_epi64((const __m128i *)(s + ss + j)));
            const __m128i b1 = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(s + 2 * ss + j)),
                                                 _mm_loadl_epi64((const __m128i *)(s + 3 * ss + j)));
            const __m128i b2 = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(s + 4 * ss + j)),
                                                 _mm_loadl_epi64((const __m128i *)(s + 5 * ss + j)));
            const __m128i b3 = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(s + 6 * ss + j)),
                                                 _mm_loadl_epi64((const __m128i *)(s + 7 * ss + j)));
            const __m128i c0 = _mm_unpacklo_epi16(b0, b1), c1 = _mm_unpackhi_epi16(b0, b1);
            const __m128i c2 = _mm_unpacklo_epi16(b2, b3), c3 = _mm_unpackhi_epi16(b2, b3);
            const __m128i d0 = _mm_unpacklo_epi32(c0, c2), d1 = _mm_unpackhi_epi32(c0, c2);
            const __m128i d2 = _mm_unpacklo_epi32(c1, c3), d3 = _mm_unpackhi_epi32(c1, c3);
            uint8_t *d = dst + j * ds + i;
            _mm_storel_epi64((__m128i *)d, d0);
            _mm_storel_epi64((__m128i *)(d + ds), _mm_unpackhi_epi64(d0, d0));
            _mm_storel_epi64((__m128i *)(d + 2 * ds), d1);
            _mm_storel_epi64((__m128i *)(d + 3 * ds), _mm_unpackhi_epi64(d1, d1));
            _mm_storel_epi64((__m128i *)(d + 4 * ds), d2);
            _mm_storel_epi64((__m128i *)(d + 5 * ds), _mm_unpackhi_epi64(d2, d2));
            _mm_storel_epi64((__m128i *)(d + 6 * ds), d3);
            _mm_storel_epi64((__m128i *)(d + 7 * ds), _mm_unpackhi_epi64(d3, d3));
        }
        for (; j < cols; j++)
            for (int64_t k = 0; k < 8; k++) dst[j * ds + i + k] = s[k * ss + j];
    }
    for (; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) dst[j * ds + i] = src[i * ss + j];
}

const adpq_kernels adpq_kernels_avx2 = {
    .name = "avx2",
    .mask_gt = v_mask_gt,
    .minmax = v_minmax,
    .params = v_params,
    .minmax_groups = v_minmax_groups,
    .codes_groups = v_codes_groups,
    .gather_groups = v_gather_groups,
    .abs_accumulate = v_abs_accumulate,
    .mul_row = v_mul_row,
    .dequant = v_dequant,
    .f16_to_f32 = v_f16_to_f32,
    .bf16_to_f32 = v_bf16_to_f32,
    .pack_body = v_pack_body,
    .to_f16 = v_to_f16,
    .from_f16 = v_from_f16,
    .mask_positions = v_mask_positions,
    .error_sums = v_error_sums,
    .histogram = v_histogram,
    .mm_packed = adpq_mm_packed_avx2,
    .mm_bytes = adpq_mm_bytes_avx2,
    .mm_decode = adpq_mm_decode_avx2,
    .mm_tile = adpq_mm_tile_avx2,
    .mm_q8 = adpq_mm_q8_avx2,
    .mm_q8_rows = adpq_mm_q8_rows_avx2,
    .mm_corr = adpq_mm_corr_avx2,
    .q8_quantize = adpq_q8_quantize_avx2,
    .gemm_sub = v_gemm_sub,
    .gemm_sub_f64 = v_gemm_sub_f64,
    .gptq_update = v_gptq_update,
    .gptq_round = v_gptq_round,
    .transpose = v_transpose,
    .transpose_u8 = v_transpose_u8,
};

#endif
