/* quant_avx2.c - AVX2 (+F16C) twins of the scalar kernels in quant.c, selected at run time.
 * Same float32 operations in the same order as the scalar code, so results are bit-identical
 * (tests/test_kernels.py checks this). Tails shorter than 8 use the scalar formulas. */
#include "internal.h"
#include "quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <math.h>

#define AVX2 __attribute__((target("avx2,f16c,popcnt")))

/* 8-bit lane masks -> 8 bytes of 0/1 */
static uint64_t mask_bytes[256];
static int mask_bytes_ready = 0;

static void init_mask_bytes(void) {
    for (int m = 0; m < 256; m++) {
        uint64_t v = 0;
        for (int b = 0; b < 8; b++)
            if (m & (1 << b)) v |= (uint64_t)1 << (8 * b);
        mask_bytes[m] = v;
    }
    mask_bytes_ready = 1;
}

AVX2 static inline __m256 abs8(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }

AVX2 static inline __m256 lane_mask(const uint8_t *mask) {
    __m128i b = _mm_loadl_epi64((const __m128i *)mask);
    __m256i v = _mm256_cvtepu8_epi32(b);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(v, _mm256_setzero_si256()));
}

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

AVX2 static int v_all_finite(const float *w, int64_t n) {
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) ok = _mm256_and_ps(ok, _mm256_cmp_ps(abs8(_mm256_loadu_ps(w + i)), inf, _CMP_LT_OQ));
    if (_mm256_movemask_ps(ok) != 0xff) return 0;
    for (; i < n; i++)
        if (!isfinite(w[i])) return 0;
    return 1;
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

/* Minimum and maximum are exact whatever the order; callers canonicalise -0 to +0. */
AVX2 static void v_minmax(const float *w, int64_t n, float *mn, float *mx) {
    __m256 a = _mm256_set1_ps(INFINITY), b = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(w + i);
        a = _mm256_min_ps(a, x);
        b = _mm256_max_ps(b, x);
    }
    float lo = hmin8(a), hi = hmax8(b);
    for (; i < n; i++) {
        lo = w[i] < lo ? w[i] : lo;
        hi = w[i] > hi ? w[i] : hi;
    }
    *mn = lo;
    *mx = hi;
}

AVX2 static void v_minmax_split(const float *w, const uint8_t *mask, int64_t n, float *in_mn, float *in_mx,
                                float *out_mn, float *out_mx) {
    const __m256 pinf = _mm256_set1_ps(INFINITY), ninf = _mm256_set1_ps(-INFINITY);
    __m256 a = pinf, b = ninf, c = pinf, d = ninf;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(w + i);
        __m256 m = lane_mask(mask + i);
        a = _mm256_min_ps(a, _mm256_blendv_ps(x, pinf, m));
        b = _mm256_max_ps(b, _mm256_blendv_ps(x, ninf, m));
        c = _mm256_min_ps(c, _mm256_blendv_ps(pinf, x, m));
        d = _mm256_max_ps(d, _mm256_blendv_ps(ninf, x, m));
    }
    float ia = hmin8(a), ib = hmax8(b), oc = hmin8(c), od = hmax8(d);
    for (; i < n; i++) {
        if (mask[i]) {
            oc = w[i] < oc ? w[i] : oc;
            od = w[i] > od ? w[i] : od;
        } else {
            ia = w[i] < ia ? w[i] : ia;
            ib = w[i] > ib ? w[i] : ib;
        }
    }
    *in_mn = ia;
    *in_mx = ib;
    *out_mn = oc;
    *out_mx = od;
}

AVX2 static void v_codes(const float *w, int64_t n, float inv, float z, int qmax, uint8_t *codes) {
    const __m256 iv = _mm256_set1_ps(inv), zv = _mm256_set1_ps(z), qv = _mm256_set1_ps((float)qmax);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store_codes8(codes + i, quant8(_mm256_loadu_ps(w + i), iv, zv, qv));
    for (; i < n; i++) codes[i] = adpq_code_of(w[i], inv, z, (float)qmax);
}

AVX2 static void v_codes_split(const float *w, const uint8_t *mask, int64_t n, float inv, float z, float inv_o,
                               float z_o, int qmax, uint8_t *codes) {
    const __m256 iv = _mm256_set1_ps(inv), zv = _mm256_set1_ps(z), qv = _mm256_set1_ps((float)qmax);
    const __m256 iov = _mm256_set1_ps(inv_o), zov = _mm256_set1_ps(z_o);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 m = lane_mask(mask + i);
        store_codes8(codes + i,
                     quant8(_mm256_loadu_ps(w + i), _mm256_blendv_ps(iv, iov, m), _mm256_blendv_ps(zv, zov, m), qv));
    }
    for (; i < n; i++)
        codes[i] = mask[i] ? adpq_code_of(w[i], inv_o, z_o, (float)qmax) : adpq_code_of(w[i], inv, z, (float)qmax);
}

AVX2 static int64_t v_gather_gt(const float *w, int64_t n, float t, uint32_t *keys) {
    const __m256 tv = _mm256_set1_ps(t), inf = _mm256_set1_ps(INFINITY);
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    int64_t c = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 a = abs8(_mm256_loadu_ps(w + i));
        ok = _mm256_and_ps(ok, _mm256_cmp_ps(a, inf, _CMP_LT_OQ));
        unsigned m = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(a, tv, _CMP_GT_OQ));
        while (m) {
            int b = __builtin_ctz(m);
            keys[c++] = adpq_abs_key(w[i + b]);
            m &= m - 1;
        }
    }
    if (_mm256_movemask_ps(ok) != 0xff) return -1;
    for (; i < n; i++) {
        if (!isfinite(w[i])) return -1;
        if (fabsf(w[i]) > t) keys[c++] = adpq_abs_key(w[i]);
    }
    return c;
}

AVX2 static int64_t v_count_mask(const uint8_t *mask, int64_t n) {
    __m256i acc = _mm256_setzero_si256();
    int64_t i = 0, c = 0;
    for (; i + 32 <= n; i += 32)
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(mask + i)),
                                                    _mm256_setzero_si256()));
    int64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, acc);
    c = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < n; i++) c += mask[i];
    return c;
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

AVX2 static void v_dequant(const uint8_t *codes, int64_t n, float s, float z, float *out) {
    const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
    int64_t i = 0;
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

/* 32 codes per step: fold each 8-byte lane to 8*bits bits (as pack.c's fold8), gather the
 * low bytes of the lanes with a shuffle, store. Each step stores 16 bytes at out and at
 * out + 2*bits, past the 4*bits bytes it owns; the bytes past are rewritten by the next step,
 * and the last steps (where that would pass the n*bits/8 bytes of out) run the scalar body. */
AVX2 static void v_pack_body(const uint8_t *codes, int64_t n, int bits, uint8_t *out) {
    int64_t k = 0;
    if (bits == 8) {
        memcpy(out, codes, (size_t)n);
        return;
    }
    __m256i m1, m2, m3, shuf;
    int s1, s2, s3;
    if (bits == 2) {
        m1 = _mm256_set1_epi64x(0x000f000f000f000fll), m2 = _mm256_set1_epi64x(0x000000ff000000ffll),
        m3 = _mm256_set1_epi64x(0xffffll), s1 = 6, s2 = 12, s3 = 24;
        shuf = _mm256_setr_epi8(0, 1, 8, 9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 8, 9, -1, -1, -1,
                                -1, -1, -1, -1, -1, -1, -1, -1, -1);
    } else if (bits == 3) {
        m1 = _mm256_set1_epi64x(0x003f003f003f003fll), m2 = _mm256_set1_epi64x(0x00000fff00000fffll),
        m3 = _mm256_set1_epi64x(0xffffffll), s1 = 5, s2 = 10, s3 = 20;
        shuf = _mm256_setr_epi8(0, 1, 2, 8, 9, 10, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 2, 8, 9, 10, -1, -1,
                                -1, -1, -1, -1, -1, -1, -1, -1);
    } else {
        m1 = _mm256_set1_epi64x(0x00ff00ff00ff00ffll), m2 = _mm256_set1_epi64x(0x0000ffff0000ffffll),
        m3 = _mm256_set1_epi64x(0xffffffffll), s1 = 4, s2 = 8, s3 = 16;
        shuf = _mm256_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 2, 3, 8, 9, 10, 11,
                                -1, -1, -1, -1, -1, -1, -1, -1);
    }
    const __m128i c1 = _mm_cvtsi32_si128(s1), c2 = _mm_cvtsi32_si128(s2), c3 = _mm_cvtsi32_si128(s3);
    /* a step at code k writes bytes [k*bits/8, k*bits/8 + 2*bits + 16) */
    for (; (n - k) * bits >= 16 * bits + 128; k += 32) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(codes + k));
        c = _mm256_and_si256(_mm256_or_si256(c, _mm256_srl_epi64(c, c1)), m1);
        c = _mm256_and_si256(_mm256_or_si256(c, _mm256_srl_epi64(c, c2)), m2);
        c = _mm256_and_si256(_mm256_or_si256(c, _mm256_srl_epi64(c, c3)), m3);
        c = _mm256_shuffle_epi8(c, shuf);
        _mm_storeu_si128((__m128i *)out, _mm256_castsi256_si128(c));
        _mm_storeu_si128((__m128i *)(out + 2 * bits), _mm256_extracti128_si256(c, 1));
        out += 4 * bits;
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

/* The bin of each value with the scalar formula in double (same bins), 8 at a time. */
AVX2 static void v_histogram(const float *x, int64_t n, double lo, double scale, int bins, int64_t *hist) {
    const __m256d lov = _mm256_set1_pd(lo), sc = _mm256_set1_pd(scale);
    const __m128i zero = _mm_setzero_si128(), top = _mm_set1_epi32(bins - 1);
    int32_t idx[8];
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i);
        __m256d a = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xv)), lov), sc);
        __m256d b = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1)), lov), sc);
        __m128i ia = _mm_min_epi32(_mm_max_epi32(_mm256_cvttpd_epi32(a), zero), top);
        __m128i ib = _mm_min_epi32(_mm_max_epi32(_mm256_cvttpd_epi32(b), zero), top);
        _mm_storeu_si128((__m128i *)idx, ia);
        _mm_storeu_si128((__m128i *)(idx + 4), ib);
        for (int k = 0; k < 8; k++) hist[idx[k]]++;
    }
    for (; i < n; i++) {
        int64_t b = (int64_t)(((double)x[i] - lo) * scale);
        hist[b < 0 ? 0 : b >= bins ? bins - 1 : b]++;
    }
}

const adpq_kernels adpq_kernels_avx2 = {
    "avx2",        v_all_finite, v_mask_gt, v_minmax,     v_minmax_split, v_codes,
    v_codes_split, v_gather_gt,  v_dequant, v_f16_to_f32, v_bf16_to_f32, v_pack_body, v_to_f16,
    v_from_f16,    v_count_mask, v_mask_positions, v_error_sums, v_histogram,
};

int adpq_avx2_supported(void) {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c"))) return 0;
    if (!mask_bytes_ready) init_mask_bytes();
    return 1;
}
#endif
