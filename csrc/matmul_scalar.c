/* matmul_scalar.c - the scalar reference of the matmul kernels (adpq_kernels.mm_*, see internal.h):
 * plain loops in column order, one float32 sum per output. The AVX2 twins (matmul_avx2.c) compute
 * the same sums in another order, so the two sets agree to float rounding only. */
#include <float.h>
#include <math.h>

#include "internal.h"

/* One sum per group, added to the row's: a rounding error that grows with the group, not the row. */
void adpq_mm_bytes_scalar(const uint8_t *q, int64_t cols, int64_t g, const float *s, const float *nzs, const float *x,
                          int64_t xs, int nx, float *out) {
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t k = 0, j0 = 0; j0 < cols; k++, j0 += g) {
        const int64_t j1 = cols - j0 < g ? cols : j0 + g;
        float ga[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t j = j0; j < j1; j++) {
            const float w = (float)q[j] * s[k] + nzs[k];
            for (int i = 0; i < nx; i++) ga[i] += w * x[i * xs + j];
        }
        for (int i = 0; i < nx; i++) acc[i] += ga[i];
    }
    for (int i = 0; i < nx; i++) out[i] = acc[i];
}

void adpq_mm_packed_scalar(const uint8_t *codes, int bits, int64_t cols, int64_t g, const float *s,
                           const float *nzs, const float *x, int64_t xs, int nx, float *out) {
    enum { CHUNK = 256 };
    uint8_t q[CHUNK];
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t k = 0, j0 = 0; j0 < cols; k++, j0 += g) {
        const int64_t j1 = cols - j0 < g ? cols : j0 + g;
        float ga[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t c0 = j0; c0 < j1; c0 += CHUNK) {
            const int64_t len = j1 - c0 < CHUNK ? j1 - c0 : CHUNK;
            adpq_unpack_codes(codes, c0, len, bits, q);
            for (int64_t j = 0; j < len; j++) {
                const float w = (float)q[j] * s[k] + nzs[k];
                for (int i = 0; i < nx; i++) ga[i] += w * x[i * xs + c0 + j];
            }
        }
        for (int i = 0; i < nx; i++) acc[i] += ga[i];
    }
    for (int i = 0; i < nx; i++) out[i] = acc[i];
}

void adpq_mm_decode_scalar(const uint8_t *codes, int bits, int64_t n, float s, float nzs, float *out) {
    enum { CHUNK = 256 };
    uint8_t q[CHUNK];
    for (int64_t j0 = 0; j0 < n; j0 += CHUNK) {
        const int64_t len = n - j0 < CHUNK ? n - j0 : CHUNK;
        adpq_unpack_codes(codes, j0, len, bits, q);
        for (int64_t j = 0; j < len; j++) out[j0 + j] = (float)q[j] * s + nzs;
    }
}

void adpq_mm_tile_scalar(const float *x, int64_t xs, const float *w, int64_t ws, int64_t k, int nx, int nw, float *out,
                         int64_t os) {
    for (int i = 0; i < nx; i++)
        for (int j = 0; j < nw; j++) {
            float acc = 0.0f;
            for (int64_t t = 0; t < k; t++) acc += x[i * xs + t] * w[j * ws + t];
            out[i * os + j] += acc;
        }
}

/* int8 activations: the integer dot of each block exactly, then acc += dot * (d_b * s_k) in float
 * (the AVX2 kernel's formula, summed in column order). */
void adpq_mm_q8_scalar(const uint8_t *codes, int bits, int64_t cols, int64_t bpg, const float *s, const int8_t *xq,
                       const float *xd, int64_t xbs, int nx, float *out) {
    const int64_t nb = (cols + 31) / 32;
    const int bias = bits == 8 ? 128 : 0;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    uint8_t q[32];
    for (int64_t b = 0; b < nb; b++) {
        const int len = cols - 32 * b < 32 ? (int)(cols - 32 * b) : 32;
        const float sk = s[b / bpg];
        adpq_unpack_codes(codes, 32 * b, len, bits, q);
        for (int i = 0; i < nx; i++) {
            const int8_t *xb = xq + (i * xbs + b) * 32;
            int32_t dot = 0;
            for (int p = 0; p < 32; p++) {
                const int j = adpq_q8_pos(bits, p);
                if (j < len) dot += ((int32_t)q[j] - bias) * xb[p];
            }
            acc[i] += (float)dot * (xd[i * xbs + b] * sk);
        }
    }
    for (int i = 0; i < nx; i++) out[i] = acc[i];
}

void adpq_q8_quantize_scalar(const float *x, int64_t cols, int bits, int8_t *xq, float *xd, int32_t *xsum) {
    for (int64_t b = 0; b * 32 < cols; b++) {
        const float *xb = x + 32 * b;
        const int len = cols - 32 * b < 32 ? (int)(cols - 32 * b) : 32;
        float amax = 0.0f;
        int bad = 0;
        for (int j = 0; j < len; j++) {
            const float a = fabsf(xb[j]);
            bad |= !(a <= FLT_MAX);
            amax = a > amax ? a : amax;
        }
        const float d = bad ? NAN : amax / 127.0f, id = bad || d == 0.0f ? 0.0f : 1.0f / d;
        int32_t sum = 0;
        for (int p = 0; p < 32; p++) {
            const int j = adpq_q8_pos(bits, p);
            float v = j < len && !bad ? rintf(xb[j] * id) : 0.0f;
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            xq[32 * b + p] = (int8_t)v;
            sum += (int32_t)v;
        }
        xd[b] = d;
        xsum[b] = sum;
    }
}

/* mm_q8's dots, then per row and group: ga += dot * d_b, acc += ga * s_k */
void adpq_mm_q8_rows_scalar(const uint8_t *const *codes, int nr, int bits, int64_t cols, int64_t bpg, const float *s,
                            int64_t G, const int8_t *xq, const float *xd, const uint8_t *pf, int64_t pfs, float *out) {
    (void)pf; /* a hint for the vector kernel */
    (void)pfs;
    const int64_t nb = (cols + 31) / 32;
    const int bias = bits == 8 ? 128 : 0;
    uint8_t q[32];
    for (int r = 0; r < nr; r++) {
        float acc = 0.0f;
        for (int64_t k = 0, b = 0; b < nb; k++) {
            const int64_t b1 = nb - b < bpg ? nb : b + bpg;
            float ga = 0.0f;
            for (; b < b1; b++) {
                const int len = cols - 32 * b < 32 ? (int)(cols - 32 * b) : 32;
                adpq_unpack_codes(codes[r], 32 * b, len, bits, q);
                int32_t dot = 0;
                for (int p = 0; p < 32; p++) {
                    const int j = adpq_q8_pos(bits, p);
                    if (j < len) dot += ((int32_t)q[j] - bias) * xq[32 * b + p];
                }
                ga += (float)dot * xd[b];
            }
            acc += ga * s[r * G + k];
        }
        out[r] = acc;
    }
}

/* 4 chains (a row has tens of outliers: one chain would wait on the add's latency) */
float adpq_mm_corr_scalar(const int32_t *col, const float *delta, int64_t n, const float *x) {
    float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
    int64_t o = 0;
    for (; o + 4 <= n; o += 4) {
        c0 += delta[o] * x[col[o]];
        c1 += delta[o + 1] * x[col[o + 1]];
        c2 += delta[o + 2] * x[col[o + 2]];
        c3 += delta[o + 3] * x[col[o + 3]];
    }
    for (; o < n; o++) c0 += delta[o] * x[col[o]];
    return (c0 + c1) + (c2 + c3);
}
