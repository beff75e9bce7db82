/* outliers.c - the pieces of the Adaptive-LASSO outlier selection (docs/DESIGN.md 2.1).
 *
 * With the identity design, b_i = sign(w_i) max(|w_i| - lambda' / |w_i|^gamma, 0), so the outliers
 * O = {i : b_i != 0} = {i : |w_i|^(1+gamma) > lambda'}: the weights of largest magnitude. Solving
 * lambda' for a target count is therefore a selection (the k-th largest |w|), never a sort.
 * Ties at the threshold are taken in row-major order; weights equal to 0 are never outliers.
 */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

static inline void swap_u32(uint32_t *a, uint32_t *b) {
    uint32_t t = *a;
    *a = *b;
    *b = t;
}

/* Exact k-th largest by three histogram passes over 11/11/10-bit digits: O(n), no allocation.
 * After each pass the keys of the chosen digit are swapped to the front (keys are reordered, as
 * by every selection here), so the next pass reads only those. The quickselect below falls back to it when its pivots
 * degrade, so selection stays O(n). */
static uint32_t radix_kth_largest(uint32_t *keys, int64_t n, int64_t k) {
    static const int shifts[3] = {21, 10, 0};
    static const uint32_t widths[3] = {11, 11, 10};
    int64_t hist[2048];
    uint32_t prefix = 0;
    for (int p = 0; p < 3; p++) {
        const int nb = 1 << widths[p];
        const uint32_t dmask = (uint32_t)(nb - 1);
        memset(hist, 0, sizeof(int64_t) * (size_t)nb);
        for (int64_t i = 0; i < n; i++) hist[(keys[i] >> shifts[p]) & dmask]++;
        int64_t above = 0;
        int d = nb - 1;
        for (; d > 0; d--) {
            if (above + hist[d] >= k) break;
            above += hist[d];
        }
        prefix |= (uint32_t)d << shifts[p];
        k -= above; /* the rank among the keys of digit d */
        int64_t m = 0;
        for (int64_t i = 0; p < 2 && i < n; i++) {
            const uint32_t v = keys[i];
            if (((v >> shifts[p]) & dmask) == (uint32_t)d) {
                keys[i] = keys[m];
                keys[m++] = v;
            }
        }
        if (p < 2) n = m;
    }
    return prefix;
}

static uint32_t quickselect(uint32_t *keys, int64_t n, int64_t k);

uint32_t adpq_select_kth_largest(uint32_t *keys, int64_t n, int64_t k) {
    /* large sets: a histogram of the top 16 bits (sign and exponent, 7 bits of mantissa) finds the
     * bucket of the k-th largest; its keys, moved to the front, are few */
    enum { BUCKETS = 1 << 15 };
    if (n < 4096) return quickselect(keys, n, k);
    if (n < 65536) return radix_kth_largest(keys, n, k); /* (quickselect is slow on the many equal keys of
                                                            weights that were quantized before) */
    uint32_t *hist = n < UINT32_MAX ? (uint32_t *)calloc(BUCKETS, sizeof(uint32_t)) : NULL;
    if (!hist) return quickselect(keys, n, k);
    for (int64_t i = 0; i < n; i++) hist[keys[i] >> 16]++;
    int64_t above = 0;
    uint32_t b = BUCKETS - 1;
    for (; b > 0 && above + hist[b] < k; b--) above += hist[b];
    free(hist);
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t v = keys[i];
        if (v >> 16 == b) {
            keys[i] = keys[m];
            keys[m++] = v;
        }
    }
    return quickselect(keys, m, k - above);
}

static uint32_t quickselect(uint32_t *keys, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1; /* index in descending order */
    int rounds = 0;
    while (hi > lo) {
        if (++rounds > 64) return radix_kth_largest(keys + lo, hi - lo + 1, want - lo + 1);
        int64_t mid = lo + (hi - lo) / 2;
        /* median of three, descending */
        if (keys[mid] > keys[lo]) swap_u32(&keys[mid], &keys[lo]);
        if (keys[hi] > keys[lo]) swap_u32(&keys[hi], &keys[lo]);
        if (keys[hi] > keys[mid]) swap_u32(&keys[hi], &keys[mid]);
        uint32_t pivot = keys[mid];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (keys[i] > pivot) i++;
            while (keys[j] < pivot) j--;
            if (i <= j) {
                swap_u32(&keys[i], &keys[j]);
                i++;
                j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return keys[want];
    }
    return keys[want];
}

float adpq_float_floor(double t) {
    float f = (float)t;
    if ((double)f > t) f = nextafterf(f, 0.0f);
    return f;
}

double adpq_lam_factor(double lam, double gamma) {
    return pow(lam * 0.5, 1.0 / (1.0 + gamma));
}

int64_t adpq_outlier_count(double ratio, int64_t n) {
    return (int64_t)floor(ratio * (double)n + 0.5);
}
