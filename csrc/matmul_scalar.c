/* matmul_scalar.c - the scalar reference of the matmul kernels (adpq_kernels.mm_*, see internal.h):
 * plain loops in column order, one float32 sum per output. The AVX2 twins (matmul_avx2.c) compute
 * the same sums in another order, so the two sets agree to float rounding only. */
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
