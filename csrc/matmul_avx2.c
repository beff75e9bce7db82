/* matmul_avx2.c - the AVX2 (+FMA) matmul kernels (adpq_kernels.mm_*, see internal.h). They compute
 * the scalar kernels' sums (matmul_scalar.c) in 8 lanes with fused multiply-adds, so they agree
 * with them to float rounding only (the build has -ffp-contract=off: FMA only where written).
 *
 * mm_packed decodes 8 codes of b bits (b bytes at a byte boundary) in one register: the stream's
 * 32-bit word broadcast to 8 lanes, shifted right by 0, b, ..., 7b and masked (8 bits: the 8
 * bytes widened). The weight is then q * s + (-z * s) in one FMA and the product another. */
#include <float.h>
#include <math.h>

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

/* ------------------------------------------------------------------ int8 activations (mm_q8)
 * 32 codes of a block decoded to 32 unsigned bytes in adpq_q8_pos order (internal.h), then
 * maddubs against the int8 activations, madd with ones to int32, and one FMA by d_b * s_k.
 * 8 bits: q - 128 as signed bytes with the sign trick (|q - 128| unsigned times x * sign(q - 128):
 * pairs stay within int16, exact). */
AVX2 static INLINE __m256i q8_decode(const uint8_t *p, const int bits) {
    if (bits == 4) {
        /* the 16 bytes in both lanes, the high lane shifted by 4: low nibbles, then high nibbles */
        const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
        return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
    }
    if (bits == 2) {
        int64_t w;
        memcpy(&w, p, 8);
        const __m256i v = _mm256_srlv_epi64(_mm256_set1_epi64x(w), _mm256_setr_epi64x(0, 2, 4, 6));
        return _mm256_and_si256(v, _mm256_set1_epi8(0x03));
    }
    if (bits == 3) {
        /* 16-bit windows holding each code (lanes of 8 codes = 3 bytes: bases 0, 3 | 6, 9), multiplied
         * so that the code lands at bits 8..10, shifted down, packed to bytes, masked */
        const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
        const __m256i ia = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 1, 2, 1, 2, 1, 2, 2, 3, 2, 3, 3, 4, 3, 4, 3, 4, 4, 5, 4, 5, 4,
                                            5, 5, 6, 5, 6);
        const __m256i ib = _mm256_add_epi8(ia, _mm256_set1_epi8(6));
        const __m256i mul = _mm256_setr_epi16(256, 32, 4, 128, 16, 2, 64, 8, 256, 32, 4, 128, 16, 2, 64, 8);
        const __m256i a = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(v, ia), mul), 8);
        const __m256i b = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(v, ib), mul), 8);
        return _mm256_and_si256(_mm256_packus_epi16(a, b), _mm256_set1_epi8(0x07));
    }
    return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), _mm256_set1_epi8((char)0x80));
}

/* 8 int32 partial dots of codes (decoded) against 32 int8 activations */
AVX2 static INLINE __m256 q8_dotv(__m256i q, __m256i xv, const int bits) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p16;
    if (bits == 8)
        p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q));
    else
        p16 = _mm256_maddubs_epi16(q, xv);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
}

AVX2 static INLINE __m256 q8_dot(__m256i q, const int8_t *x, const int bits) {
    return q8_dotv(q, _mm256_loadu_si256((const __m256i *)x), bits);
}

/* per block: acc += dot * (d_b * s_k), two chains (pairs of blocks, swapped at each group's end) */
AVX2 static INLINE void q8_body(const uint8_t *codes, const int bits, int64_t cols, int64_t bpg, const float *s,
                                const int8_t *xq, const float *xd, int64_t xbs, const int nx, float *out) {
    const int64_t nb = (cols + 31) / 32, step = 4 * bits;
    __m256 a0[4], a1[4];
    for (int i = 0; i < nx; i++) a0[i] = a1[i] = _mm256_setzero_ps();
    for (int64_t k = 0, b = 0; b < nb; k++) {
        const int64_t b1 = nb - b < bpg ? nb : b + bpg;
        const float sk = s[k];
        for (; b + 2 <= b1; b += 2) {
            const __m256i q0 = q8_decode(codes + b * step, bits), q1 = q8_decode(codes + (b + 1) * step, bits);
            for (int i = 0; i < nx; i++) {
                const int64_t xb = i * xbs + b;
                a0[i] = _mm256_fmadd_ps(q8_dot(q0, xq + xb * 32, bits), _mm256_set1_ps(xd[xb] * sk), a0[i]);
                a1[i] = _mm256_fmadd_ps(q8_dot(q1, xq + xb * 32 + 32, bits), _mm256_set1_ps(xd[xb + 1] * sk), a1[i]);
            }
        }
        if (b < b1) {
            const __m256i q0 = q8_decode(codes + b * step, bits);
            for (int i = 0; i < nx; i++) {
                const int64_t xb = i * xbs + b;
                a0[i] = _mm256_fmadd_ps(q8_dot(q0, xq + xb * 32, bits), _mm256_set1_ps(xd[xb] * sk), a0[i]);
                const __m256 t = a0[i];
                a0[i] = a1[i];
                a1[i] = t;
            }
            b++;
        }
    }
    for (int i = 0; i < nx; i++) out[i] = hsum8(_mm256_add_ps(a0[i], a1[i]));
}

#define Q8_NX(B)                                                                                                       \
    switch (nx) {                                                                                                      \
    case 1: q8_body(codes, B, cols, bpg, s, xq, xd, xbs, 1, out); break;                                               \
    case 2: q8_body(codes, B, cols, bpg, s, xq, xd, xbs, 2, out); break;                                               \
    case 3: q8_body(codes, B, cols, bpg, s, xq, xd, xbs, 3, out); break;                                               \
    default: q8_body(codes, B, cols, bpg, s, xq, xd, xbs, 4, out); break;                                              \
    }

AVX2 void adpq_mm_q8_avx2(const uint8_t *codes, int bits, int64_t cols, int64_t bpg, const float *s, const int8_t *xq,
                          const float *xd, int64_t xbs, int nx, float *out) {
    switch (bits) {
    case 2: Q8_NX(2) break;
    case 3: Q8_NX(3) break;
    case 4: Q8_NX(4) break;
    default: Q8_NX(8) break;
    }
}

/* mm_q8_rows: per block, the activations and d_b loaded once for the nr rows; per row one chain
 * ga += dot * d_b in the group, then acc += ga * s_k (nr rows: nr chains of about 9 instructions per
 * block each, enough to hide the FMA latency); the nr sums reduced together at the end. The next
 * pass's rows are prefetched along (4 rows' streams: the hardware prefetcher alone left the matrices
 * that do not fit in the cache at a third of the read bandwidth). */
AVX2 static INLINE void q8_rows_body(const uint8_t *const *codes, const int nr, const int bits, int64_t cols,
                                     int64_t bpg, const float *s, int64_t G, const int8_t *xq, const float *xd,
                                     const uint8_t *pf, int64_t pfs, float *out) {
    const int64_t nb = (cols + 31) / 32, step = 4 * bits;
    const uint8_t *cp[4];
    __m256 acc[4], ga[4];
    for (int r = 0; r < 4; r++) {
        cp[r] = codes[r < nr ? r : 0];
        acc[r] = _mm256_setzero_ps();
    }
    for (int64_t k = 0, b = 0; b < nb; k++) {
        const int64_t b1 = nb - b < bpg ? nb : b + bpg;
        for (int r = 0; r < nr; r++) ga[r] = _mm256_setzero_ps();
        for (; b < b1; b++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + 32 * b));
            const __m256 dv = _mm256_broadcast_ss(xd + b);
            for (int64_t o = 0; o < 4 * step; o += 64) /* the lines of the next pass's 4 blocks */
                _mm_prefetch((const char *)(pf + (b * pfs + (o < pfs ? o : 0))), _MM_HINT_T0);
            for (int r = 0; r < nr; r++)
                ga[r] = _mm256_fmadd_ps(q8_dotv(q8_decode(cp[r] + b * step, bits), xv, bits), dv, ga[r]);
        }
        for (int r = 0; r < nr; r++) acc[r] = _mm256_fmadd_ps(ga[r], _mm256_broadcast_ss(s + r * G + k), acc[r]);
    }
    /* lanes of row r: ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), whatever the other rows */
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    float o[4];
    _mm_storeu_ps(o, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    for (int r = 0; r < nr; r++) out[r] = o[r];
}

#define Q8R_NR(B)                                                                                                      \
    switch (nr) {                                                                                                      \
    case 1: q8_rows_body(codes, 1, B, cols, bpg, s, G, xq, xd, pf, pfs, out); break;                                            \
    case 2: q8_rows_body(codes, 2, B, cols, bpg, s, G, xq, xd, pf, pfs, out); break;                                            \
    case 3: q8_rows_body(codes, 3, B, cols, bpg, s, G, xq, xd, pf, pfs, out); break;                                            \
    default: q8_rows_body(codes, 4, B, cols, bpg, s, G, xq, xd, pf, pfs, out); break;                                           \
    }

AVX2 void adpq_mm_q8_rows_avx2(const uint8_t *const *codes, int nr, int bits, int64_t cols, int64_t bpg, const float *s,
                               int64_t G, const int8_t *xq, const float *xd, const uint8_t *pf, int64_t pfs, float *out) {
    switch (bits) {
    case 2: Q8R_NR(2) break;
    case 3: Q8R_NR(3) break;
    case 4: Q8R_NR(4) break;
    default: Q8R_NR(8) break;
    }
}

/* 8 outliers per gather, 16 per step */
AVX2 float adpq_mm_corr_avx2(const int32_t *col, const float *delta, int64_t n, const float *x) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t o = 0;
    for (; o + 16 <= n; o += 16) {
        const __m256i c0 = _mm256_loadu_si256((const __m256i *)(col + o)), c1 = _mm256_loadu_si256((const __m256i *)(col + o + 8));
        a0 = _mm256_fmadd_ps(_mm256_i32gather_ps(x, c0, 4), _mm256_loadu_ps(delta + o), a0);
        a1 = _mm256_fmadd_ps(_mm256_i32gather_ps(x, c1, 4), _mm256_loadu_ps(delta + o + 8), a1);
    }
    float t0 = 0.0f, t1 = 0.0f; /* the last n % 16 (a gather of few lanes costs more than loads) */
    for (; o + 2 <= n; o += 2) {
        t0 += delta[o] * x[col[o]];
        t1 += delta[o + 1] * x[col[o + 1]];
    }
    if (o < n) t0 += delta[o] * x[col[o]];
    return (n >= 16 ? hsum8(_mm256_add_ps(a0, a1)) : 0.0f) + (t0 + t1);
}

/* the scalar kernel's quantization (matmul_scalar.c) in vectors: the same float32 operations
 * (cvtps rounds to nearest even as rint does), then the bytes put in adpq_q8_pos order by shuffles */
AVX2 static INLINE __m256i q8_order(__m256i v, const int bits) {
    if (bits == 4) { /* per lane: evens, odds; then the quadwords 0, 2, 1, 3 */
        const __m256i e = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12,
                                           14, 1, 3, 5, 7, 9, 11, 13, 15);
        return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, e), 0xD8);
    }
    if (bits == 2) { /* per lane: by column mod 4; then the dwords 0, 4, 1, 5, 2, 6, 3, 7 */
        const __m256i e = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13,
                                           2, 6, 10, 14, 3, 7, 11, 15);
        return _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, e), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    }
    if (bits == 3) return _mm256_permute4x64_epi64(v, 0xD8);
    return v;
}

AVX2 static INLINE void q8_quantize_body(const float *x, int64_t cols, const int bits, int8_t *xq, float *xd,
                                         int32_t *xsum) {
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (int64_t b = 0; b * 32 < cols; b++) {
        const float *xb = x + 32 * b;
        float pad[32];
        if (cols - 32 * b < 32) {
            memset(pad, 0, sizeof(pad));
            memcpy(pad, xb, sizeof(float) * (size_t)(cols - 32 * b));
            xb = pad;
        }
        __m256 v[4], m = _mm256_setzero_ps();
        int bad = 0;
        for (int u = 0; u < 4; u++) {
            v[u] = _mm256_loadu_ps(xb + 8 * u);
            const __m256 a = _mm256_andnot_ps(sign, v[u]);
            bad |= _mm256_movemask_ps(_mm256_cmp_ps(a, big, _CMP_NLE_UQ));
            m = _mm256_max_ps(m, a);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        const float amax = _mm_cvtss_f32(h);
        const float d = bad ? NAN : amax / 127.0f, id = bad || d == 0.0f ? 0.0f : 1.0f / d;
        const __m256 idv = _mm256_set1_ps(id);
        __m256i q[4];
        for (int u = 0; u < 4; u++)
            q[u] = bad ? _mm256_setzero_si256()
                       : _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[u], idv), lo), hi));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        const __m256i nat = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(xq + 32 * b), q8_order(nat, bits));
        xd[b] = d;
        xsum[b] = _mm_cvtsi128_si32(s4);
    }
}

AVX2 void adpq_q8_quantize_avx2(const float *x, int64_t cols, int bits, int8_t *xq, float *xd, int32_t *xsum) {
    switch (bits) {
    case 2: q8_quantize_body(x, cols, 2, xq, xd, xsum); break;
    case 3: q8_quantize_body(x, cols, 3, xq, xd, xsum); break;
    case 4: q8_quantize_body(x, cols, 4, xq, xd, xsum); break;
    default: q8_quantize_body(x, cols, 8, xq, xd, xsum); break;
    }
}

#endif
