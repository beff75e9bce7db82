/* matmul_avx2.c - the AVX2 (+FMA) matmul kernels (adpq_kernels.mm_*, see internal.h). They compute
 * the scalar kernels' sums (matmul_scalar.c) in 8 lanes with fused multiply-adds, so they agree
 * with them to float rounding only (the build has -ffp-contract=off: FMA only where written).
 *
 * mm_packed decodes 8 codes of b bits (b bytes at a byte boundary) in one register: the stream's
 * 32-bit word broadcast to 8 lanes, shifted right by 0, b, ..., 7b and masked (8 bits: the 8
 * bytes widened). The weight is then q * s + (-z * s) in one FMA and the product another. */
#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) inline

AVX2 static INLINE float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}

/* 8 codes of `bits` at p as floats (reads 4 bytes at p when bits < 8) */
AVX2 static INLINE __m256 decode8(const uint8_t *p, const int bits, __m256i shifts, __m256i mask) {
    if (bits == 8) return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    uint32_t w;
    memcpy(&w, p, 4);
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), shifts), mask));
}

/* U blocks of 8 per step, each with its own accumulators (U * nx chains hide the FMA latency) */
AVX2 static INLINE void packed_body(const uint8_t *codes, const int bits, int64_t cols, int64_t g,
                                    const float *s, const float *nzs, const float *x, int64_t xs, const int nx,
                                    float *out) {
    enum { U_MAX = 4 };
    const int U = nx == 1 ? 4 : 2;
    const __m256i shifts = _mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 4 * bits, 5 * bits, 6 * bits, 7 * bits);
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    __m256 acc[U_MAX][4];
    for (int u = 0; u < U; u++)
        for (int i = 0; i < nx; i++) acc[u][i] = _mm256_setzero_ps();
    int64_t j = 0, off = 0; /* column, and byte offset of its block */
    for (int64_t k = 0; j < cols; k++) {
        const __m256 sv = _mm256_broadcast_ss(s + k), zv = _mm256_broadcast_ss(nzs + k);
        const int64_t jend = cols - j < g ? cols : j + g;
        for (; j + 8 * U <= jend; j += 8 * U) {
            for (int u = 0; u < U; u++, off += bits) {
                const __m256 w = _mm256_fmadd_ps(decode8(codes + off, bits, shifts, mask), sv, zv);
                for (int i = 0; i < nx; i++)
                    acc[u][i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i * xs + j + 8 * u), acc[u][i]);
            }
        }
        for (; j < jend; j += 8, off += bits) {
            const __m256 w = _mm256_fmadd_ps(decode8(codes + off, bits, shifts, mask), sv, zv);
            for (int i = 0; i < nx; i++) acc[0][i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i * xs + j), acc[0][i]);
        }
    }
    for (int i = 0; i < nx; i++) {
        __m256 a = acc[0][i];
        for (int u = 1; u < U; u++) a = _mm256_add_ps(a, acc[u][i]);
        out[i] = hsum8(a);
    }
}

#define PACKED_NX(B)                                                                                                   \
    switch (nx) {                                                                                                      \
    case 1: packed_body(codes, B, cols, g, s, nzs, x, xs, 1, out); break;                                       \
    case 2: packed_body(codes, B, cols, g, s, nzs, x, xs, 2, out); break;                                       \
    case 3: packed_body(codes, B, cols, g, s, nzs, x, xs, 3, out); break;                                       \
    default: packed_body(codes, B, cols, g, s, nzs, x, xs, 4, out); break;                                      \
    }

/* one instance per (bits, nx), so that both are constants in the loops */
AVX2 void adpq_mm_packed_avx2(const uint8_t *codes, int bits, int64_t cols, int64_t g, const float *s,
                              const float *nzs, const float *x, int64_t xs, int nx, float *out) {
    switch (bits) {
    case 2: PACKED_NX(2) break;
    case 3: PACKED_NX(3) break;
    case 4: PACKED_NX(4) break;
    default: PACKED_NX(8) break;
    }
}

AVX2 static INLINE void decode_body(const uint8_t *codes, const int bits, int64_t n, float s, float nzs, float *out) {
    const __m256i shifts = _mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 4 * bits, 5 * bits, 6 * bits, 7 * bits);
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(nzs);
    for (int64_t j = 0; j < n; j += 8, codes += bits)
        _mm256_storeu_ps(out + j, _mm256_fmadd_ps(decode8(codes, bits, shifts, mask), sv, zv));
}

AVX2 void adpq_mm_decode_avx2(const uint8_t *codes, int bits, int64_t n, float s, float nzs, float *out) {
    switch (bits) {
    case 2: decode_body(codes, 2, n, s, nzs, out); break;
    case 3: decode_body(codes, 3, n, s, nzs, out); break;
    case 4: decode_body(codes, 4, n, s, nzs, out); break;
    default: decode_body(codes, 8, n, s, nzs, out); break;
    }
}

AVX2 static INLINE void bytes_body(const uint8_t *q, int64_t cols, int64_t g, const float *s, const float *nzs,
                                   const float *x, int64_t xs, const int nx, float *out) {
    __m256 acc[4];
    float tail[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < nx; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t k = 0, j = 0; j < cols; k++) {
        const __m256 sv = _mm256_broadcast_ss(s + k), zv = _mm256_broadcast_ss(nzs + k);
        const int64_t jend = cols - j < g ? cols : j + g;
        for (; j + 8 <= jend; j += 8) {
            const __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + j))));
            const __m256 w = _mm256_fmadd_ps(qf, sv, zv);
            for (int i = 0; i < nx; i++) acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i * xs + j), acc[i]);
        }
        for (; j < jend; j++) {
            const float w = (float)q[j] * s[k] + nzs[k];
            for (int i = 0; i < nx; i++) tail[i] += w * x[i * xs + j];
        }
    }
    for (int i = 0; i < nx; i++) out[i] = hsum8(acc[i]) + tail[i];
}

AVX2 void adpq_mm_bytes_avx2(const uint8_t *q, int64_t cols, int64_t g, const float *s, const float *nzs, const float *x,
                             int64_t xs, int nx, float *out) {
    switch (nx) {
    case 1: bytes_body(q, cols, g, s, nzs, x, xs, 1, out); break;
    case 2: bytes_body(q, cols, g, s, nzs, x, xs, 2, out); break;
    case 3: bytes_body(q, cols, g, s, nzs, x, xs, 3, out); break;
    default: bytes_body(q, cols, g, s, nzs, x, xs, 4, out); break;
    }
}

/* lanes [0, n) of 8 set (n in 1..7): the tail of a row, loaded with a mask (nothing read past it) */
AVX2 static INLINE __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* the register tile: nx * nw accumulators (4 x 3 = 12, plus 3 weight and 1 activation registers) */
AVX2 static INLINE void tile_body(const float *x, int64_t xs, const float *w, int64_t ws, int64_t k, const int nx,
                                  const int nw, float *out, int64_t os) {
    __m256 acc[4][3];
    for (int i = 0; i < nx; i++)
        for (int j = 0; j < nw; j++) acc[i][j] = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= k; t += 8) {
        __m256 wv[3];
        for (int j = 0; j < nw; j++) wv[j] = _mm256_loadu_ps(w + j * ws + t);
        for (int i = 0; i < nx; i++) {
            const __m256 xv = _mm256_loadu_ps(x + i * xs + t);
            for (int j = 0; j < nw; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    if (t < k) {
        const __m256i m = tail_mask(k - t);
        __m256 wv[3];
        for (int j = 0; j < nw; j++) wv[j] = _mm256_maskload_ps(w + j * ws + t, m);
        for (int i = 0; i < nx; i++) {
            const __m256 xv = _mm256_maskload_ps(x + i * xs + t, m);
            for (int j = 0; j < nw; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < nx; i++)
        for (int j = 0; j < nw; j++) out[i * os + j] += hsum8(acc[i][j]);
}

#define TILE(NX, NW) tile_body(x, xs, w, ws, k, NX, NW, out, os)
#define TILE_NW(NX)                                                                                                    \
    switch (nw) {                                                                                                      \
    case 1: TILE(NX, 1); break;                                                                                        \
    case 2: TILE(NX, 2); break;                                                                                        \
    default: TILE(NX, 3); break;                                                                                       \
    }

AVX2 void adpq_mm_tile_avx2(const float *x, int64_t xs, const float *w, int64_t ws, int64_t k, int nx, int nw, float *out,
                            int64_t os) {
    switch (nx) {
    case 1: TILE_NW(1) break;
    case 2: TILE_NW(2) break;
    case 3: TILE_NW(3) break;
    default: TILE_NW(4) break;
    }
}

#endif
