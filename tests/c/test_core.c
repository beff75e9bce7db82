/* test_core.c - the C core's tests, without Python (in the spirit of ggml's tests/test-quantize-fns.cpp).
 *
 *   make -C tests/c run              build into BUILD (default build/ctest) and run
 *   make -C tests/c SANITIZE=1 run   the same under AddressSanitizer + UBSan
 *
 * - kernels: every function of adpq_kernels gives bit-identical results in the scalar and AVX2 sets
 *   on random and edge inputs (lengths 0..70 and longer odd ones, ties at .5, values past qmax, NaN
 *   and Inf, float16/bfloat16 subnormals and overflow); error_sums agrees to rounding only (the
 *   AVX2 sums add in another order, documented in kernels_avx2.c).
 * - conversions: float16/bfloat16 rounding against known values and exhaustive round trips.
 * - pack: code streams of 2/3/4/8 bits and index streams of 1..32 bits at odd offsets, against a
 *   bit-by-bit reference, and back.
 * - matmul (test_matmul.c): adpq_matmul against a double product of adpq_dequantize's matrix.
 * - gptq: the kernels' products, updates, rounding and transposes against their formula (fused
 *   multiply-adds where the kernels say so); adpq_gptq_inverse's U^T U = the damped,
 *   permuted H^-1; adpq_gptq the same on both kernel sets and thread counts, values on their codes'
 *   levels, and its errors (not positive definite, NaN/Inf, float16 overflow, bad arguments).
 * - quantize: adpq_quantize -> adpq_dequantize over bits x quantizer kind x outlier format x scope x
 *   scale dtype x group size on both kernel sets: identical arrays, each weight at its nearest
 *   level (clamped) of its group's stored quantizer, outliers the largest weights, the mask of
 *   adpq_outlier_mask, rejected NaN/Inf and bad arguments, and both routes alike.
 * Prints one line per check group and a summary; exits 1 on any failure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adpq.h"
#include "check.h"
#include "internal.h"
#include "quant.h"

/* ------------------------------------------------------------------ checks */

static long long n_checks, n_failed;
long long grp_checks, grp_failed;
static int n_groups, n_groups_failed;
static const char *grp_name;

void begin(const char *name) {
    grp_name = name;
    grp_checks = grp_failed = 0;
}

void end(void) {
    n_groups++;
    n_checks += grp_checks;
    n_failed += grp_failed;
    if (grp_failed) n_groups_failed++;
    printf("%-4s %-52s %9lld checks%s\n", grp_failed ? "FAIL" : "ok", grp_name, grp_checks,
           grp_failed ? ", some failed" : "");
    fflush(stdout);
}

/* ------------------------------------------------------------------ inputs */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
uint64_t rnd64(void) { /* splitmix64 */
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
double unif(void) { return (double)(rnd64() >> 11) * 0x1p-53; }
int64_t below(int64_t n) { return (int64_t)(rnd64() % (uint64_t)n); }
float normal(void) {
    double u = unif() + 0x1p-60, v = unif();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}
static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t f_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
/* the same bits, or both NaN (NaN payloads may differ between conversions) */
static int same_f(float a, float b) { return f_bits(a) == f_bits(b) || (isnan(a) && isnan(b)); }
/* equal as values (+0 == -0) */
static int eq_f(float a, float b) { return a == b || (isnan(a) && isnan(b)); }

/* kinds of float input */
enum { IN_NORMAL, IN_EDGE, IN_NONFINITE, IN_TIES, IN_ZEROS, IN_KINDS };

static float edge_value(void) {
    static const float v[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 0x1p-126f, 0x1p-24f, 0x1p-25f, 65504.0f, 65520.0f,
                              -65520.0f, 1e30f, -1e30f, 0.5f, -0.5f, 1.5f, 2.5f, -2.5f, 3.4e38f, -3.4e38f};
    return v[below((int64_t)(sizeof(v) / sizeof(v[0])))];
}

static void fill(float *w, int64_t n, int kind) {
    for (int64_t i = 0; i < n; i++) {
        float x = normal() * (unif() < 0.05 ? 20.0f : 1.0f);
        switch (kind) {
        case IN_EDGE:
            if (unif() < 0.3) x = edge_value();
            break;
        case IN_NONFINITE:
            if (unif() < 0.1) x = unif() < 0.5 ? NAN : (unif() < 0.5 ? INFINITY : -INFINITY);
            break;
        case IN_TIES: /* k + 0.5 and k: round-half-even decides, codes past qmax and below 0 */
            x = (float)(below(40) - 12) + (unif() < 0.6 ? 0.5f : 0.0f);
            break;
        case IN_ZEROS:
            if (unif() < 0.5) x = unif() < 0.5 ? 0.0f : -0.0f;
            break;
        }
        w[i] = x;
    }
}

/* 16-bit floats: conversions of random values, subnormals, the largest values; with nonfinite, some NaN/Inf */
static void fill16(uint16_t *h, int64_t n, int dtype, int nonfinite) {
    for (int64_t i = 0; i < n; i++) {
        float x = normal() * (unif() < 0.05 ? 100.0f : 0.1f);
        uint16_t b = dtype == ADPQ_F16 ? adpq_f32_to_f16(x) : adpq_f32_to_bf16(x);
        double u = unif();
        if (u < 0.1) b = (uint16_t)(rnd64() & 0x83ff);                       /* subnormal or zero */
        else if (u < 0.15) b = dtype == ADPQ_F16 ? 0x7bff : 0x7f7f;            /* the largest finite */
        else if (u < 0.2) b = (uint16_t)(b | 0x8000);
        if (nonfinite && unif() < 0.05) b = dtype == ADPQ_F16 ? (unif() < 0.5 ? 0x7c00 : 0x7e01) : 0xff81;
        h[i] = b;
    }
}

static const int64_t LENS[] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,  16,  17,  18,  19,
                               20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35,  36,  37,  38,  39,
                               40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,  56,  57,  58,  59,
                               60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 95, 127, 129, 255, 257, 1001};
#define NLENS ((int)(sizeof(LENS) / sizeof(LENS[0])))
#define MAXLEN 1024

/* ------------------------------------------------------------------ kernels, scalar vs AVX2 */

static void test_kernels_elementwise(const adpq_kernels *S, const adpq_kernels *V) {
    static float w[MAXLEN + 8], a1[MAXLEN + 8], a2[MAXLEN + 8], mul[MAXLEN + 8];
    static uint8_t m1[MAXLEN + 8], m2[MAXLEN + 8], codes[MAXLEN + 8];
    static uint16_t h[MAXLEN + 8];
    static uint32_t p1[MAXLEN + 8], p2[MAXLEN + 8];

    begin("kernels: mask_gt, mask_positions");
    for (int li = 0; li < NLENS; li++)
        for (int kind = 0; kind < IN_KINDS; kind++) {
            const int64_t n = LENS[li];
            fill(w, n, kind);
            float t = unif() < 0.2 ? 0.0f : (n && unif() < 0.3) ? fabsf(w[below(n)]) : fabsf(normal());
            int64_t c1 = S->mask_gt(w, n, t, m1), c2 = V->mask_gt(w, n, t, m2);
            CHECK(c1 == c2 && !memcmp(m1, m2, (size_t)n), "mask_gt n=%lld kind=%d: counts %lld %lld", (long long)n, kind,
                  (long long)c1, (long long)c2);
            c1 = S->mask_positions(m1, n, p1);
            c2 = V->mask_positions(m1, n, p2);
            CHECK(c1 == c2 && !memcmp(p1, p2, sizeof(uint32_t) * (size_t)c1), "mask_positions n=%lld", (long long)n);
        }
    end();

    begin("kernels: minmax (with the NaN/Inf check)");
    for (int li = 1; li < NLENS; li++)
        for (int kind = 0; kind < IN_KINDS; kind++)
            for (int check = 0; check < 2; check++) {
                const int64_t n = LENS[li];
                fill(w, n, kind);
                float mn1, mx1, mn2, mx2;
                int f1 = S->minmax(w, n, check, &mn1, &mx1), f2 = V->minmax(w, n, check, &mn2, &mx2);
                int has_nan = 0, finite = 1;
                for (int64_t i = 0; i < n; i++) has_nan |= isnan(w[i]), finite &= isfinite(w[i]) != 0;
                CHECK(f1 == f2, "minmax flag n=%lld kind=%d check=%d: %d %d", (long long)n, kind, check, f1, f2);
                if (check) CHECK(f1 == finite, "minmax misses a NaN/Inf n=%lld", (long long)n);
                /* values are specified without NaN; the sign of a zero may differ (callers add +0) */
                if (!has_nan)
                    CHECK(eq_f(mn1, mn2) && eq_f(mx1, mx2), "minmax n=%lld kind=%d: %g %g vs %g %g", (long long)n, kind,
                          mn1, mx1, mn2, mx2);
            }
    end();

    begin("kernels: dequant, abs_accumulate, mul_row");
    for (int li = 0; li < NLENS; li++)
        for (int dtype = 0; dtype < 3; dtype++) {
            const int64_t n = LENS[li];
            for (int64_t i = 0; i < n; i++) codes[i] = (uint8_t)below(256), mul[i] = normal();
            const float s = normal() * 0.1f, z = (float)below(16) + (unif() < 0.5 ? 0.37f : 0.0f);
            for (int with_mul = 0; with_mul < 2; with_mul++) {
                S->dequant(codes, n, s, z, with_mul ? mul : NULL, a1);
                V->dequant(codes, n, s, z, with_mul ? mul : NULL, a2);
                CHECK(!memcmp(a1, a2, sizeof(float) * (size_t)n), "dequant n=%lld mul=%d", (long long)n, with_mul);
            }
            const void *src = w;
            if (dtype == ADPQ_F32) fill(w, n, IN_EDGE);
            else fill16(h, n, dtype, 0), src = h;
            for (int64_t i = 0; i < n; i++) a1[i] = a2[i] = normal();
            S->abs_accumulate(src, dtype, n, a1);
            V->abs_accumulate(src, dtype, n, a2);
            CHECK(!memcmp(a1, a2, sizeof(float) * (size_t)n), "abs_accumulate n=%lld dtype=%d", (long long)n, dtype);
            S->mul_row(src, dtype, mul, n, a1);
            V->mul_row(src, dtype, mul, n, a2);
            CHECK(!memcmp(a1, a2, sizeof(float) * (size_t)n), "mul_row n=%lld dtype=%d", (long long)n, dtype);
        }
    end();

    begin("kernels: f16_to_f32, bf16_to_f32 (all 65536)");
    {
        uint16_t *all = malloc(sizeof(uint16_t) * 65536);
        float *o1 = malloc(sizeof(float) * 65536), *o2 = malloc(sizeof(float) * 65536);
        for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
        for (int off = 0; off < 9; off++) { /* odd offsets and lengths: the tails */
            const int64_t n = 65536 - off - 3 * off;
            S->f16_to_f32(all + off, n, o1);
            V->f16_to_f32(all + off, n, o2);
            int bad = 0;
            for (int64_t i = 0; i < n; i++) bad += !same_f(o1[i], o2[i]);
            CHECK(!bad, "f16_to_f32 offset %d: %d values differ", off, bad);
            S->bf16_to_f32(all + off, n, o1);
            V->bf16_to_f32(all + off, n, o2);
            bad = 0;
            for (int64_t i = 0; i < n; i++) bad += !same_f(o1[i], o2[i]);
            CHECK(!bad, "bf16_to_f32 offset %d: %d values differ", off, bad);
        }
        int bad = 0;
        for (int i = 0; i < 65536; i++) bad += !same_f(S->from_f16((uint16_t)i), V->from_f16((uint16_t)i));
        CHECK(!bad, "from_f16: %d values differ", bad);
        free(all);
        free(o1);
        free(o2);
    }
    end();

    begin("kernels: to_f16 (ties, subnormals, overflow)");
    {
        int bad = 0;
        /* every midpoint between neighbouring float16 values (a tie) and its two float32 neighbours */
        for (uint32_t hb = 0; hb < 0x7c00; hb++) {
            const float lo = adpq_f16_to_f32((uint16_t)hb), hi = adpq_f16_to_f32((uint16_t)(hb + 1));
            const float mid = (float)(((double)lo + (double)hi) / 2);
            const float cand[3] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
            for (int k = 0; k < 3; k++)
                for (int sgn = 0; sgn < 2; sgn++) {
                    const float x = sgn ? -cand[k] : cand[k];
                    bad += S->to_f16(x) != V->to_f16(x);
                }
        }
        CHECK(!bad, "to_f16 at float16 midpoints: %d differ", bad);
        bad = 0;
        for (int i = 0; i < 1 << 21; i++) { /* random bit patterns: every exponent, float32 subnormals, NaN */
            const float x = bits_f((uint32_t)rnd64());
            const uint16_t a = S->to_f16(x), b = V->to_f16(x);
            bad += a != b && !(isnan(x) && (a & 0x7c00) == 0x7c00 && (b & 0x7c00) == 0x7c00 && (a & 0x3ff) && (b & 0x3ff));
        }
        CHECK(!bad, "to_f16 on random bits: %d differ", bad);
    }
    end();

    begin("kernels: error_sums (to rounding), histogram");
    for (int li = 0; li < NLENS; li++)
        for (int kind = 0; kind < 2; kind++) {
            const int64_t n = LENS[li];
            fill(w, n, kind == 0 ? IN_NORMAL : IN_ZEROS);
            for (int64_t i = 0; i < n; i++) a1[i] = w[i] + normal() * 0.01f;
            double acc1[3] = {1.5, 2.5, 0.125}, acc2[3] = {1.5, 2.5, 0.125};
            float mm1[4] = {INFINITY, -INFINITY, INFINITY, -INFINITY}, mm2[4];
            memcpy(mm2, mm1, sizeof(mm1));
            S->error_sums(w, a1, n, acc1, mm1);
            V->error_sums(w, a1, n, acc2, mm2);
            CHECK(fabs(acc1[0] - acc2[0]) <= 1e-12 * fabs(acc1[0]) && fabs(acc1[1] - acc2[1]) <= 1e-12 * fabs(acc1[1]) &&
                      acc1[2] == acc2[2],
                  "error_sums n=%lld: %.17g %.17g %.17g vs %.17g %.17g %.17g", (long long)n, acc1[0], acc1[1], acc1[2],
                  acc2[0], acc2[1], acc2[2]);
            CHECK(eq_f(mm1[0], mm2[0]) && eq_f(mm1[1], mm2[1]) && eq_f(mm1[2], mm2[2]) && eq_f(mm1[3], mm2[3]),
                  "error_sums min/max n=%lld", (long long)n);
            /* bins over a range a little narrower than the data's: clipping at both ends */
            int64_t h1[64] = {0}, h2[64] = {0};
            const int bins = 1 + (int)below(64);
            const double lo = -1.5, scale = bins / 3.0;
            S->histogram(w, n, lo, scale, bins, h1);
            V->histogram(w, n, lo, scale, bins, h2);
            CHECK(!memcmp(h1, h2, sizeof(h1)), "histogram n=%lld bins=%d", (long long)n, bins);
        }
    end();
}

/* n groups of g (the last one shorter) */
static int64_t ngroups(int64_t n, int64_t g) { return (n + g - 1) / g; }

static void test_kernels_groups(const adpq_kernels *S, const adpq_kernels *V) {
    static float w[MAXLEN + 8], mn1[MAXLEN + 8], mx1[MAXLEN + 8], mn2[MAXLEN + 8], mx2[MAXLEN + 8];
    static float inv[MAXLEN + 8], z[MAXLEN + 8], r1[MAXLEN + 8], r2[MAXLEN + 8];
    static uint8_t c1[MAXLEN + 8], c2[MAXLEN + 8];
    static uint16_t h[MAXLEN + 8];
    static uint32_t v1[MAXLEN + 8], v2[MAXLEN + 8], p1[MAXLEN + 8], p2[MAXLEN + 8];
    static int64_t skip[MAXLEN + 8];
    static const int64_t GS[] = {1, 3, 8, 13, 16, 32, 64, 128};

    begin("kernels: minmax_groups, codes_groups");
    for (int li = 0; li < NLENS; li++)
        for (int gi = 0; gi < 8; gi++)
            for (int kind = 0; kind < IN_KINDS; kind++) {
                const int64_t n = LENS[li], g = GS[gi], G = ngroups(n, g);
                fill(w, n, kind);
                int has_nan = 0;
                for (int64_t i = 0; i < n; i++) has_nan |= isnan(w[i]);
                for (int64_t j = 0; j < G; j++) {
                    skip[j] = unif() < 0.3;
                    mn1[j] = mn2[j] = mx1[j] = mx2[j] = 12345.0f; /* skipped groups are left alone */
                }
                for (int check = 0; check < 2; check++) {
                    const int64_t *sk = check ? skip : NULL;
                    int f1 = S->minmax_groups(w, n, g, check, sk, mn1, mx1);
                    int f2 = V->minmax_groups(w, n, g, check, sk, mn2, mx2);
                    CHECK(f1 == f2, "minmax_groups flag n=%lld g=%lld kind=%d", (long long)n, (long long)g, kind);
                    if (!has_nan)
                        CHECK(!memcmp(mn1, mn2, sizeof(float) * (size_t)G) && !memcmp(mx1, mx2, sizeof(float) * (size_t)G),
                              "minmax_groups n=%lld g=%lld kind=%d check=%d", (long long)n, (long long)g, kind, check);
                }
                if (kind == IN_NONFINITE) continue; /* (codes of NaN are never asked for) */
                for (int bits = 2; bits <= 8; bits *= 2) {
                    const int qmax = (1 << bits) - 1;
                    for (int64_t j = 0; j < G; j++) {
                        /* ties: inv 1 and integer z keep the .5 of IN_TIES; else random parameters */
                        inv[j] = kind == IN_TIES ? 1.0f : 1.0f / (0.05f + (float)unif());
                        z[j] = kind == IN_TIES ? (float)below(8) : (float)(unif() * qmax);
                    }
                    S->codes_groups(w, n, g, inv, z, qmax, c1);
                    V->codes_groups(w, n, g, inv, z, qmax, c2);
                    CHECK(!memcmp(c1, c2, (size_t)n), "codes_groups n=%lld g=%lld bits=%d kind=%d", (long long)n,
                          (long long)g, bits, kind);
                }
            }
    end();

    begin("kernels: params (every bits, kind, scale dtype)");
    for (int li = 0; li < NLENS; li++)
        for (int bits = 2; bits <= 8; bits *= 2)
            for (int qmode = 0; qmode < 3; qmode++)
                for (int sd = 0; sd < 3; sd++) {
                    const int64_t n = LENS[li];
                    for (int64_t i = 0; i < n; i++) {
                        float a = normal(), b = normal();
                        double u = unif();
                        if (u < 0.1) a = b = 0.0f;                                 /* all zero */
                        else if (u < 0.2) a = b = normal() * 1e3f;                 /* constant, far from 0 */
                        else if (u < 0.25) a = 1e-30f, b = -3e-30f;                /* a scale below float16's range */
                        else if (u < 0.3) a = 100.0f, b = 100.0f + (float)unif(); /* narrow, far from 0 */
                        else if (u < 0.35) a = -0.0f, b = (float)unif();           /* a signed zero at one end */
                        mn1[i] = a < b ? a : b;
                        mx1[i] = a < b ? b : a;
                        if (u > 0.95) mn1[i] = INFINITY, mx1[i] = -INFINITY; /* empty: every weight an outlier */
                    }
                    if (n && unif() < 0.2) mx1[below(n)] = 1e6f; /* overflows float16 scales: ADPQ_ERR_RANGE */
                    uint32_t s1[MAXLEN + 8], z1[MAXLEN + 8], s2[MAXLEN + 8], z2[MAXLEN + 8];
                    int e1 = S->params(mn1, mx1, n, bits, qmode, sd, inv, z, s1, z1);
                    int e2 = V->params(mn1, mx1, n, bits, qmode, sd, r1, r2, s2, z2);
                    CHECK(e1 == e2, "params status n=%lld bits=%d qmode=%d sd=%d: %d %d", (long long)n, bits, qmode, sd,
                          e1, e2);
                    if (e1 || e2) continue;
                    CHECK(!memcmp(inv, r1, sizeof(float) * (size_t)n) && !memcmp(z, r2, sizeof(float) * (size_t)n) &&
                              !memcmp(s1, s2, sizeof(uint32_t) * (size_t)n) && !memcmp(z1, z2, sizeof(uint32_t) * (size_t)n),
                          "params n=%lld bits=%d qmode=%d sd=%d", (long long)n, bits, qmode, sd);
                }
    end();

    begin("kernels: gather_groups (float32, float16, bfloat16)");
    for (int li = 0; li < NLENS; li++)
        for (int gi = 2; gi < 8; gi++)
            for (int dtype = 0; dtype < 3; dtype++)
                for (int kind = 0; kind < IN_KINDS; kind++) {
                    const int64_t n = LENS[li], g = GS[gi], G = ngroups(n, g);
                    const void *src = w;
                    if (dtype == ADPQ_F32) {
                        fill(w, n, kind);
                    } else {
                        fill16(h, n, dtype, kind == IN_NONFINITE);
                        src = h;
                    }
                    const float t = unif() < 0.2 ? 0.0f : fabsf(normal()) * (dtype == ADPQ_F32 ? 1.0f : 0.1f);
                    float *row1 = dtype == ADPQ_F32 ? NULL : r1, *row2 = dtype == ADPQ_F32 ? NULL : r2;
                    int64_t k1 = S->gather_groups(src, dtype, n, g, t, v1, p1, mn1, mx1, row1);
                    int64_t k2 = V->gather_groups(src, dtype, n, g, t, v2, p2, mn2, mx2, row2);
                    CHECK(k1 == k2, "gather_groups count n=%lld g=%lld dtype=%d kind=%d: %lld %lld", (long long)n,
                          (long long)g, dtype, kind, (long long)k1, (long long)k2);
                    if (k1 < 0 || k1 != k2) continue;
                    CHECK(!memcmp(v1, v2, 4 * (size_t)k1) && !memcmp(p1, p2, 4 * (size_t)k1) &&
                              !memcmp(mn1, mn2, sizeof(float) * (size_t)G) && !memcmp(mx1, mx2, sizeof(float) * (size_t)G),
                          "gather_groups n=%lld g=%lld dtype=%d kind=%d", (long long)n, (long long)g, dtype, kind);
                    if (row1) CHECK(!memcmp(r1, r2, sizeof(float) * (size_t)n), "gather_groups row n=%lld", (long long)n);
                }
    end();

    begin("kernels: pack_body (2, 3, 4, 8 bits)");
    for (int64_t n = 0; n <= 520; n += 8)
        for (int bits = 2; bits <= 8; bits = bits == 4 ? 8 : bits + 1) {
            const size_t nb = (size_t)n * (size_t)bits / 8;
            uint8_t *o1 = malloc(nb + 1), *o2 = malloc(nb + 1); /* exact size: AddressSanitizer sees overruns */
            for (int64_t i = 0; i < n; i++) c1[i] = (uint8_t)below(1 << bits);
            S->pack_body(c1, n, bits, o1);
            V->pack_body(c1, n, bits, o2);
            CHECK(!memcmp(o1, o2, nb), "pack_body n=%lld bits=%d", (long long)n, bits);
            free(o1);
            free(o2);
        }
    end();
}

/* ------------------------------------------------------------------ conversions */

static void test_conversions(void) {
    begin("halfcvt: float16/bfloat16 rounding and round trips");
    static const struct { float x; uint16_t h; } F16[] = {
        {0.0f, 0x0000},       {-0.0f, 0x8000},     {1.0f, 0x3c00},      {65504.0f, 0x7bff},   {65519.99f, 0x7bff},
        {65520.0f, 0x7c00},   {1e9f, 0x7c00},      {-1e9f, 0xfc00},     {0x1p-24f, 0x0001},   {0x1p-25f, 0x0000},
        {0x1.8p-25f, 0x0001}, {0x1.8p-24f, 0x0002}, {0x1.4p-24f, 0x0001}, {0x1p-14f, 0x0400},  {0x1.ffcp-15f, 0x0400},
        {1.0009765625f, 0x3c01}, {1.00048828125f, 0x3c00}, {1.00146484375f, 0x3c02}, {1e-30f, 0x0000},
        {INFINITY, 0x7c00},   {-INFINITY, 0xfc00},
    };
    for (size_t i = 0; i < sizeof(F16) / sizeof(F16[0]); i++)
        CHECK(adpq_f32_to_f16(F16[i].x) == F16[i].h, "f32_to_f16(%a) = %04x, want %04x", F16[i].x,
              adpq_f32_to_f16(F16[i].x), F16[i].h);
    CHECK((adpq_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (adpq_f32_to_f16(NAN) & 0x3ff), "f32_to_f16(NaN) is not NaN");
    static const struct { uint32_t x; uint16_t h; } BF[] = {
        {0x3f800000, 0x3f80}, {0x3f808000, 0x3f80}, {0x3f818000, 0x3f82}, {0x3f808001, 0x3f81},
        {0x7f7fffff, 0x7f80}, {0x00000001, 0x0000}, {0x00008000, 0x0000}, {0x00018000, 0x0002}, {0x80000000, 0x8000},
    };
    for (size_t i = 0; i < sizeof(BF) / sizeof(BF[0]); i++)
        CHECK(adpq_f32_to_bf16(bits_f(BF[i].x)) == BF[i].h, "f32_to_bf16(%08x) = %04x, want %04x", BF[i].x,
              adpq_f32_to_bf16(bits_f(BF[i].x)), BF[i].h);
    CHECK(isnan(adpq_bf16_to_f32(adpq_f32_to_bf16(NAN))), "bf16 NaN");
    int bad16 = 0, badbf = 0;
    for (uint32_t hb = 0; hb < 65536; hb++) {
        const uint16_t h = (uint16_t)hb;
        if ((h & 0x7c00) != 0x7c00 || !(h & 0x3ff)) bad16 += adpq_f32_to_f16(adpq_f16_to_f32(h)) != h;
        if ((h & 0x7f80) != 0x7f80 || !(h & 0x7f)) badbf += adpq_f32_to_bf16(adpq_bf16_to_f32(h)) != h;
    }
    CHECK(!bad16, "float16 round trips: %d fail", bad16);
    CHECK(!badbf, "bfloat16 round trips: %d fail", badbf);
    CHECK(adpq_f16_to_f32(0x0001) == 0x1p-24f && adpq_f16_to_f32(0x03ff) == 0x1.ff8p-15f &&
              adpq_f16_to_f32(0xfbff) == -65504.0f && isinf(adpq_f16_to_f32(0x7c00)),
          "f16_to_f32 subnormals and limits");
    end();
}

/* ------------------------------------------------------------------ pack */

static void ref_put(uint8_t *dst, uint64_t bit, uint32_t v, int bits) {
    for (int b = 0; b < bits; b++)
        if (v >> b & 1) dst[(bit + (uint64_t)b) >> 3] |= (uint8_t)(1u << ((bit + (uint64_t)b) & 7));
}
static uint32_t ref_get(const uint8_t *src, uint64_t bit, int bits) {
    uint32_t v = 0;
    for (int b = 0; b < bits; b++) v |= (uint32_t)(src[(bit + (uint64_t)b) >> 3] >> ((bit + (uint64_t)b) & 7) & 1) << b;
    return v;
}

static void test_pack(const adpq_kernels *S, const adpq_kernels *V) {
    begin("pack: codes of 2/3/4/8 bits at odd offsets");
    for (int bits = 2; bits <= 8; bits = bits == 4 ? 8 : bits + 1)
        for (int64_t first = 0; first < 19; first++)
            for (int li = 0; li < NLENS; li++) {
                const int64_t n = LENS[li] > 300 ? 300 : LENS[li];
                const size_t nb = (size_t)(((first + n) * bits + 7) / 8) + 1;
                uint8_t *codes = malloc((size_t)n + 8), *back = malloc((size_t)n + 8), *ref = calloc(nb, 1);
                uint8_t *d1 = calloc(nb, 1), *d2 = calloc(nb, 1);
                for (int64_t i = 0; i < n; i++) codes[i] = (uint8_t)below(1 << bits), ref_put(ref, (uint64_t)(first + i) * (uint64_t)bits, codes[i], bits);
                adpq_pack_codes(S, d1, first, codes, n, bits);
                adpq_pack_codes(V, d2, first, codes, n, bits);
                CHECK(!memcmp(d1, ref, nb) && !memcmp(d2, ref, nb), "pack_codes bits=%d first=%lld n=%lld", bits,
                      (long long)first, (long long)n);
                adpq_unpack_codes(ref, first, n, bits, back);
                CHECK(!memcmp(back, codes, (size_t)n), "unpack_codes bits=%d first=%lld n=%lld", bits, (long long)first,
                      (long long)n);
                free(codes);
                free(back);
                free(ref);
                free(d1);
                free(d2);
            }
    end();

    begin("pack: index streams of 1..32 bits at odd offsets");
    for (int bits = 1; bits <= 32; bits++)
        for (int64_t first = 0; first < 11; first += (first < 3 ? 1 : 3))
            for (int64_t n = 0; n < 90; n += 1 + n / 8) {
                const size_t nb = (size_t)(((first + n) * bits + 7) / 8) + 1;
                uint32_t *vals = malloc(sizeof(uint32_t) * (size_t)(n + 1)), *back = malloc(sizeof(uint32_t) * (size_t)(n + 1));
                uint8_t *ref = calloc(nb, 1), *d = calloc(nb, 1);
                /* the values before `first` are someone else's: random bits that must survive */
                for (int64_t i = 0; i < first; i++) {
                    const uint32_t v = (uint32_t)rnd64() & (bits == 32 ? 0xffffffffu : (1u << bits) - 1u);
                    ref_put(ref, (uint64_t)i * (uint64_t)bits, v, bits);
                    ref_put(d, (uint64_t)i * (uint64_t)bits, v, bits);
                }
                for (int64_t i = 0; i < n; i++) {
                    vals[i] = (uint32_t)rnd64() & (bits == 32 ? 0xffffffffu : (1u << bits) - 1u);
                    ref_put(ref, (uint64_t)(first + i) * (uint64_t)bits, vals[i], bits);
                }
                adpq_pack_u32(d, first, vals, n, bits);
                CHECK(!memcmp(d, ref, nb), "pack_u32 bits=%d first=%lld n=%lld", bits, (long long)first, (long long)n);
                adpq_unpack_u32(ref, first, n, bits, back);
                CHECK(!memcmp(back, vals, sizeof(uint32_t) * (size_t)n), "unpack_u32 bits=%d first=%lld n=%lld", bits,
                      (long long)first, (long long)n);
                free(vals);
                free(back);
                free(ref);
                free(d);
            }
    end();
}

/* ------------------------------------------------------------------ quantize -> dequantize */

typedef struct {
    adpq_layout lay;
    adpq_qmatrix q;
    int rc;
    char err[ADPQ_ERRLEN];
} qres;

/* adpq_quantize with the kernel set `kernels` as the process default */
static void quantize_with(const char *kernels, const adpq_matrix *m, const adpq_config *cfg, qres *r) {
    memset(r, 0, sizeof(*r));
    r->rc = adpq_layout_of(m->rows, m->cols, cfg, &r->lay, r->err);
    if (r->rc) return;
    r->q.codes = malloc((size_t)r->lay.code_bytes);
    r->q.scales = malloc((size_t)(r->lay.num_groups * r->lay.scale_bytes));
    r->q.zeros = cfg->symmetric ? NULL : malloc((size_t)(r->lay.num_groups * r->lay.scale_bytes));
    if (adpq_set_kernels(kernels)) {
        r->rc = -1;
        return;
    }
    r->rc = adpq_quantize(m, cfg, &r->q, r->err);
}

static void qres_free(qres *r) {
    adpq_free_outliers(&r->q);
    free(r->q.codes);
    free(r->q.scales);
    free(r->q.zeros);
}

static int same_bytes(const void *a, const void *b, int64_t n) {
    if (n <= 0) return 1;
    return a && b && !memcmp(a, b, (size_t)n);
}

/* every stored array of a and b equal */
static int same_q(const qres *a, const qres *b, const adpq_config *cfg) {
    const adpq_layout *L = &a->lay;
    const int64_t n = a->q.num_outliers, ng = a->q.num_outlier_groups, sb = L->scale_bytes;
    if (a->rc || b->rc || n != b->q.num_outliers || ng != b->q.num_outlier_groups) return 0;
    return same_bytes(a->q.codes, b->q.codes, L->code_bytes) && same_bytes(a->q.scales, b->q.scales, L->num_groups * sb) &&
           (cfg->symmetric || same_bytes(a->q.zeros, b->q.zeros, L->num_groups * sb)) &&
           (!n || same_bytes(a->q.outlier_counts, b->q.outlier_counts, L->num_groups * L->count_bytes)) &&
           same_bytes(a->q.outlier_indices, b->q.outlier_indices, (n * L->index_bits + 7) / 8) &&
           (a->q.outlier_scales == NULL) == (b->q.outlier_scales == NULL) &&
           (!a->q.outlier_scales || same_bytes(a->q.outlier_scales, b->q.outlier_scales, ng * sb)) &&
           (!a->q.outlier_zeros || same_bytes(a->q.outlier_zeros, b->q.outlier_zeros, ng * sb)) &&
           (!a->q.outlier_values || same_bytes(a->q.outlier_values, b->q.outlier_values, n * 2));
}

static float stored(const void *arr, int64_t i, int dtype) {
    if (dtype == ADPQ_F32) return ((const float *)arr)[i];
    const uint16_t h = ((const uint16_t *)arr)[i];
    return dtype == ADPQ_F16 ? adpq_f16_to_f32(h) : bits_f((uint32_t)h << 16);
}
static int64_t count_at(const void *arr, int64_t i, int bytes) {
    return bytes == 1 ? ((const uint8_t *)arr)[i] : bytes == 2 ? ((const uint16_t *)arr)[i] : ((const uint32_t *)arr)[i];
}
/* the weight the core quantizes: the input as float32, times the column factor if any */
static float weight(const adpq_matrix *m, int64_t r, int64_t j) {
    const int64_t i = r * m->row_stride + j;
    float v = m->dtype == ADPQ_F32 ? ((const float *)m->data)[i]
              : m->dtype == ADPQ_F16 ? adpq_f16_to_f32(((const uint16_t *)m->data)[i])
                                     : bits_f((uint32_t)((const uint16_t *)m->data)[i] << 16);
    return m->col_mul ? v * m->col_mul[j] : v;
}

/* w' at its nearest level of the quantizer (s, z), clamped to the end levels; how far the levels
 * may fall short of the range they cover, in units of |s| (symmetric: one level; rounded scales) */
static void check_level(float wv, float what, float s, float z, int qmax, double cover, int64_t r, int64_t col,
                        const char *kind) {
    const float l0 = (0.0f - z) * s, l1 = ((float)qmax - z) * s;
    const double lo = l0 < l1 ? l0 : l1, hi = l0 < l1 ? l1 : l0, as = fabs((double)s);
    const double d = wv < lo ? lo - wv : wv > hi ? wv - hi : 0.0, e = fabs((double)wv - (double)what);
    const double slack = 1e-6 * (fabs((double)wv) + as * (fabs((double)z) + qmax));
    CHECK(e <= (as / 2 > d ? as / 2 : d) + slack, "%s (%lld, %lld): w %.9g w_hat %.9g, s %.9g z %.9g: not the nearest level",
          kind, (long long)r, (long long)col, wv, what, s, z);
    CHECK(d <= cover * as + slack, "%s (%lld, %lld): w %.9g is %.3g scales outside the levels [%.9g, %.9g]", kind,
          (long long)r, (long long)col, wv, d / as, lo, hi);
}

/* The stored arrays of r against m and cfg, read with the format's rules (adpq.h), not the
 * core's: w_hat (adpq_dequantize, no column factors) is the format's value of each weight, each
 * weight is at its nearest level, outliers are the largest weights, in the count asked for,
 * and exactly the mask of adpq_outlier_mask. */
static void check_quantized(const adpq_matrix *m, const adpq_config *cfg, const qres *res, const float *w_hat,
                            const uint8_t *mask) {
    const adpq_layout *L = &res->lay;
    const adpq_qmatrix *q = &res->q;
    const int64_t rows = m->rows, cols = m->cols, g = L->group_size, G = L->groups_per_row;
    const int bits = cfg->bits, qmax = (1 << bits) - 1, sd = cfg->scale_dtype;
    const int qmode = cfg->symmetric ? 1 : cfg->integer_zero ? 2 : 0;
    const double cover = sd != ADPQ_F32 ? 1.5 : qmode == 1 ? 1.0 : qmode == 2 ? 0.5 : 0.0;
    const float half = (float)(1 << (bits - 1));
    int64_t o = 0, og = 0, expect_total = 0;
    uint32_t max_in = 0, min_out = UINT32_MAX; /* magnitude keys, tensor scope */
    uint8_t isout[MAXLEN];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < G; j++) {
            const int64_t off = j * g, len = cols - off < g ? cols - off : g, gi = r * G + j;
            const float s = stored(q->scales, gi, sd), z = cfg->symmetric ? half : stored(q->zeros, gi, sd);
            const int64_t cnt = q->num_outliers ? count_at(q->outlier_counts, gi, L->count_bytes) : 0;
            float so = 0, zo = 0;
            if (cnt && cfg->outlier_format == ADPQ_OUTLIERS_GROUP) {
                so = stored(q->outlier_scales, og, sd);
                zo = cfg->symmetric ? half : stored(q->outlier_zeros, og, sd);
            }
            memset(isout, 0, (size_t)len);
            int64_t prev = -1;
            for (int64_t i = 0; i < cnt; i++) {
                const int64_t p = ref_get(q->outlier_indices, (uint64_t)(o + i) * (uint64_t)L->index_bits, L->index_bits);
                CHECK(p > prev && p < len, "group (%lld, %lld): outlier index %lld out of order or range", (long long)r,
                      (long long)j, (long long)p);
                if (p <= prev || p >= len) return;
                isout[p] = 1;
                prev = p;
            }
            uint32_t gmax_in = 0, gmin_out = UINT32_MAX;
            for (int64_t p = 0, k = 0; p < len; p++) {
                const int64_t col = off + p;
                const float wv = weight(m, r, col), got = w_hat[r * cols + col];
                const uint32_t code = ref_get(q->codes, (uint64_t)(r * cols + col) * (uint64_t)bits, bits);
                const uint32_t key = adpq_abs_key(wv);
                float want;
                if (!isout[p]) {
                    want = ((float)code - z) * s;
                    check_level(wv, want, s, z, qmax, cover, r, col, "inlier");
                    gmax_in = key > gmax_in ? key : gmax_in;
                } else if (cfg->outlier_format == ADPQ_OUTLIERS_GROUP) {
                    want = ((float)code - zo) * so;
                    check_level(wv, want, so, zo, qmax, cover, r, col, "outlier");
                    gmin_out = key < gmin_out ? key : gmin_out;
                    k++;
                } else {
                    const uint16_t h = q->outlier_values[o + k++];
                    CHECK(h == adpq_f32_to_f16(wv), "outlier (%lld, %lld): float16 %04x of %.9g", (long long)r,
                          (long long)col, h, wv);
                    want = adpq_f16_to_f32(h);
                    gmin_out = key < gmin_out ? key : gmin_out;
                }
                CHECK(f_bits(got) == f_bits(want), "w_hat (%lld, %lld) = %.9g, the format gives %.9g", (long long)r,
                      (long long)col, got, want);
                if (mask) CHECK(mask[r * cols + col] == isout[p], "mask (%lld, %lld)", (long long)r, (long long)col);
            }
            CHECK(gmin_out > 0, "group (%lld, %lld): a zero weight is an outlier", (long long)r, (long long)j);
            if (cfg->scope == ADPQ_SCOPE_GROUP) {
                CHECK(gmin_out >= gmax_in || !cnt, "group (%lld, %lld): an inlier is larger than an outlier", (long long)r,
                      (long long)j);
                if (!cfg->use_lam)
                    CHECK(cnt == adpq_outlier_count(cfg->outlier_ratio, len), "group (%lld, %lld): %lld outliers",
                          (long long)r, (long long)j, (long long)cnt);
            }
            max_in = gmax_in > max_in ? gmax_in : max_in;
            min_out = gmin_out < min_out ? gmin_out : min_out;
            o += cnt;
            og += cnt > 0;
            expect_total += cnt;
        }
    CHECK(o == q->num_outliers && og == q->num_outlier_groups, "outlier totals %lld in %lld groups, stored %lld in %lld",
          (long long)o, (long long)og, (long long)q->num_outliers, (long long)q->num_outlier_groups);
    if (cfg->scope == ADPQ_SCOPE_TENSOR) {
        CHECK(min_out >= max_in || !o, "tensor scope: an inlier is larger than an outlier");
        if (!cfg->use_lam)
            CHECK(o == adpq_outlier_count(cfg->outlier_ratio, rows * cols), "tensor scope: %lld outliers, want %lld",
                  (long long)o, (long long)adpq_outlier_count(cfg->outlier_ratio, rows * cols));
    }
}

/* a heavy-tailed matrix with a few loud columns, no zeros; as float32 or converted to dtype */
static void *make_matrix(int64_t rows, int64_t cols, int dtype, int ties, adpq_matrix *m) {
    float *w = malloc(sizeof(float) * (size_t)(rows * cols));
    for (int64_t i = 0; i < rows * cols; i++) {
        float x = normal() * 0.02f;
        if (unif() < 0.01) x *= 10.0f;
        if (i % cols == 3 || i % cols == cols / 2) x *= 8.0f;
        if (ties) x = (float)(below(41) - 20) * 0.001f; /* few magnitudes: ties at the threshold */
        if (x == 0.0f) x = 0.0005f;
        w[i] = x;
    }
    void *data = w;
    if (dtype != ADPQ_F32) {
        uint16_t *h = malloc(sizeof(uint16_t) * (size_t)(rows * cols));
        for (int64_t i = 0; i < rows * cols; i++) h[i] = dtype == ADPQ_F16 ? adpq_f32_to_f16(w[i]) : adpq_f32_to_bf16(w[i]);
        free(w);
        data = h;
    }
    memset(m, 0, sizeof(*m));
    m->data = data;
    m->dtype = dtype;
    m->rows = rows;
    m->cols = cols;
    m->row_stride = cols;
    return data;
}

static adpq_config config(int bits, int64_t g, int scope, double ratio, int qmode, int fmt, int sd) {
    adpq_config c;
    memset(&c, 0, sizeof(c));
    c.bits = bits;
    c.group_size = g;
    c.scope = scope;
    c.outlier_ratio = ratio;
    c.gamma = 1.0;
    c.symmetric = qmode == 1;
    c.integer_zero = qmode == 2;
    c.outlier_format = fmt;
    c.scale_dtype = sd;
    c.threads = 2;
    c.route = ADPQ_ROUTE_AUTO;
    return c;
}

static float *dequantize_with(const char *kernels, const qres *r, const adpq_config *cfg, const float *col_mul) {
    float *out = malloc(sizeof(float) * (size_t)(r->q.rows * r->q.cols));
    char err[ADPQ_ERRLEN] = {0};
    adpq_set_kernels(kernels);
    const adpq_status st = adpq_dequantize(&r->q, cfg, col_mul, out, err);
    CHECK(st == ADPQ_OK, "dequantize (%s): %s", kernels, err);
    return out;
}

/* quantizes m under cfg with both kernel sets, compares, dequantizes with both, checks the format */
static void quantize_case(const adpq_matrix *m, const adpq_config *cfg, int have_v, const char *label) {
    qres a, b;
    quantize_with("scalar", m, cfg, &a);
    CHECK(a.rc == ADPQ_OK, "%s: quantize (scalar): %d %s", label, a.rc, a.err);
    if (a.rc) {
        qres_free(&a);
        return;
    }
    if (have_v) {
        quantize_with("avx2", m, cfg, &b);
        CHECK(same_q(&a, &b, cfg), "%s: the scalar and AVX2 kernel sets store different arrays", label);
        qres_free(&b);
    }
    float *h1 = dequantize_with("scalar", &a, cfg, NULL);
    if (have_v) {
        float *h2 = dequantize_with("avx2", &a, cfg, NULL);
        CHECK(!memcmp(h1, h2, sizeof(float) * (size_t)(m->rows * m->cols)), "%s: dequantized values differ", label);
        free(h2);
    }
    uint8_t *mask = malloc((size_t)(m->rows * m->cols));
    char err[ADPQ_ERRLEN] = {0};
    adpq_set_kernels(have_v ? "avx2" : "scalar");
    CHECK(adpq_outlier_mask(m, cfg, mask, err) == ADPQ_OK, "%s: outlier_mask: %s", label, err);
    const int64_t fails = grp_failed;
    check_quantized(m, cfg, &a, h1, mask);
    if (grp_failed > fails) printf("    (in %s)\n", label);
    if (m->col_mul) { /* the column scales (1 / col_mul) applied by dequantize: w_hat * c in float32 */
        float *c = malloc(sizeof(float) * (size_t)m->cols);
        for (int64_t j = 0; j < m->cols; j++) c[j] = 1.0f / m->col_mul[j];
        float *hc = dequantize_with(have_v ? "avx2" : "scalar", &a, cfg, c);
        int bad = 0;
        for (int64_t i = 0; i < m->rows * m->cols; i++) bad += f_bits(hc[i]) != f_bits(h1[i] * c[i % m->cols]);
        CHECK(!bad, "%s: dequantize with column scales: %d values differ", label, bad);
        free(hc);
        free(c);
    }
    free(mask);
    free(h1);
    qres_free(&a);
}

static const char *QMODES[] = {"asym", "sym", "asym-int"}, *FMTS[] = {"group", "fp16"}, *SDS[] = {"f32", "f16", "bf16"};

static void test_quantize_grid(int have_v) {
    begin("quantize: bits x kind x format x scope x dtype x g");
    static const int64_t SHAPES[2][2] = {{12, 300}, {9, 256}};
    static const int64_t GS[] = {8, 32, 128, -1};
    for (int si = 0; si < 2; si++) {
        adpq_matrix m;
        void *data = make_matrix(SHAPES[si][0], SHAPES[si][1], ADPQ_F32, 0, &m);
        for (int bits = 2; bits <= 8; bits = bits == 4 ? 8 : bits + 1)
            for (int qmode = 0; qmode < 3; qmode++)
                for (int fmt = 0; fmt < 2; fmt++)
                    for (int scope = 0; scope < 2; scope++)
                        for (int sd = 0; sd < 3; sd++)
                            for (int gi = 0; gi < 4; gi++) {
                                const adpq_config cfg = config(bits, GS[gi], scope, 0.02, qmode, fmt, sd);
                                char label[160];
                                snprintf(label, sizeof(label), "%lldx%lld b%d %s %s %s %s g%lld", (long long)m.rows,
                                         (long long)m.cols, bits, QMODES[qmode], FMTS[fmt], scope ? "group" : "tensor",
                                         SDS[sd], (long long)GS[gi]);
                                quantize_case(&m, &cfg, have_v, label);
                            }
        free(data);
    }
    end();

    begin("quantize: 16-bit inputs, column factors, lambda, threads");
    for (int variant = 0; variant < 5; variant++) {
        adpq_matrix m;
        const int dtype = variant == 0 ? ADPQ_F16 : variant == 1 ? ADPQ_BF16 : ADPQ_F32;
        void *data = make_matrix(10, 200, dtype, variant == 4, &m);
        float *mul = NULL;
        if (variant >= 2) { /* column factors, as column scaling makes */
            mul = malloc(sizeof(float) * 200);
            for (int j = 0; j < 200; j++) mul[j] = 0.25f + 3.75f * (float)unif();
            m.col_mul = mul;
        }
        for (int bits = 2; bits <= 4; bits++)
            for (int qmode = 0; qmode < 3; qmode++)
                for (int fmt = 0; fmt < 2; fmt++)
                    for (int scope = 0; scope < 2; scope++)
                        for (int lam = 0; lam < 2; lam++) {
                            adpq_config cfg = config(bits, lam ? -1 : 32, scope, 0.05, qmode, fmt, ADPQ_F16);
                            cfg.use_lam = lam;
                            cfg.lam = 4.0;
                            cfg.threads = 1 + (bits + qmode) % 3;
                            char label[160];
                            snprintf(label, sizeof(label), "variant %d b%d %s %s %s%s", variant, bits, QMODES[qmode],
                                     FMTS[fmt], scope ? "group" : "tensor", lam ? " lam" : "");
                            quantize_case(&m, &cfg, have_v, label);
                            /* the thread count never changes the output */
                            qres a, b;
                            quantize_with("scalar", &m, &cfg, &a);
                            cfg.threads = 4;
                            quantize_with("scalar", &m, &cfg, &b);
                            CHECK(same_q(&a, &b, &cfg), "%s: threads change the output", label);
                            qres_free(&a);
                            qres_free(&b);
                        }
        free(mul);
        free(data);
    }
    end();
}

/* ------------------------------------------------------------------ rejected inputs */

static void test_rejects(int have_v) {
    begin("quantize: NaN/Inf rejected (ADPQ_ERR_NONFINITE)");
    for (int dtype = 0; dtype < 3; dtype++)
        for (int bad = 0; bad < 2; bad++)
            for (int scope = 0; scope < 2; scope++)
                for (int kv = 0; kv < 1 + have_v; kv++) {
                    adpq_matrix m;
                    void *data = make_matrix(20, 64, dtype, 0, &m);
                    const int64_t at = 7 * 64 + 13;
                    if (dtype == ADPQ_F32) ((float *)data)[at] = bad ? INFINITY : NAN;
                    else ((uint16_t *)data)[at] = dtype == ADPQ_F16 ? (bad ? 0x7c00 : 0x7e00) : (bad ? 0xff80 : 0x7fc0);
                    for (int ratio = 0; ratio < 2; ratio++) {
                        const adpq_config cfg = config(3, 32, scope, ratio ? 0.02 : 0.0, 1, 0, ADPQ_F16);
                        qres r;
                        quantize_with(kv ? "avx2" : "scalar", &m, &cfg, &r);
                        CHECK(r.rc == ADPQ_ERR_NONFINITE && strstr(r.err, "row 7, column 13"),
                              "dtype %d %s scope %d ratio %d: status %d, '%s'", dtype, bad ? "Inf" : "NaN", scope, ratio,
                              r.rc, r.err);
                        CHECK(!r.q.outlier_counts && !r.q.outlier_indices && !r.q.outlier_scales && !r.q.outlier_values,
                              "outlier arrays left allocated after an error");
                        qres_free(&r);
                    }
                    free(data);
                }
    { /* the one-pass route meets it too */
        adpq_matrix m;
        float *data = make_matrix(128, 300, ADPQ_F32, 0, &m);
        data[100 * 300 + 7] = NAN;
        adpq_config cfg = config(3, 128, ADPQ_SCOPE_TENSOR, 0.01, 1, 0, ADPQ_F16);
        cfg.route = ADPQ_ROUTE_ONE_PASS;
        qres r;
        quantize_with("scalar", &m, &cfg, &r);
        CHECK(r.rc == ADPQ_ERR_NONFINITE && strstr(r.err, "row 100, column 7"), "one pass: %d '%s'", r.rc, r.err);
        qres_free(&r);
        free(data);
    }
    end();

    begin("quantize: bad arguments rejected (ADPQ_ERR_ARG)");
    {
        adpq_matrix m;
        void *data = make_matrix(4, 64, ADPQ_F32, 0, &m);
        const adpq_config good = config(3, ADPQ_MIN_GROUP_SIZE, ADPQ_SCOPE_TENSOR, 0.01, 0, 0, ADPQ_F16);
        qres r;
        quantize_with("scalar", &m, &good, &r);
        CHECK(r.rc == ADPQ_OK, "group_size %d must be accepted: %s", ADPQ_MIN_GROUP_SIZE, r.err);
        qres_free(&r);
        for (int k = 0; k < 15; k++) {
            adpq_config c = good;
            adpq_matrix mm = m;
            switch (k) {
            case 0: c.group_size = ADPQ_MIN_GROUP_SIZE - 1; break;
            case 1: c.group_size = 2; break;
            case 2: c.group_size = 0; break;
            case 3: c.group_size = -2; break;
            case 4: c.bits = 5; break;
            case 5: c.bits = 1; break;
            case 6: mm.rows = 0; break;
            case 7: mm.cols = 0; break;
            case 8: c.route = 3; break;
            case 9: c.threads = 0; break;
            case 10: c.outlier_ratio = 0.6; break;
            case 11: c.gamma = 0.0; break;
            case 12: c.scale_dtype = 7; break;
            case 13: mm.row_stride = mm.cols - 1; break;
            case 14: mm.data = NULL; break;
            }
            adpq_qmatrix q;
            memset(&q, 0, sizeof(q));
            uint8_t codes[4096];
            uint16_t sc[4096], zp[4096];
            q.codes = codes;
            q.scales = sc;
            q.zeros = zp;
            char err[ADPQ_ERRLEN] = {0};
            const adpq_status st = adpq_quantize(&mm, &c, &q, err);
            CHECK(st == ADPQ_ERR_ARG && err[0], "bad argument %d: status %d, '%s'", k, st, err);
            adpq_free_outliers(&q);
            adpq_layout lay;
            if (k <= 12) CHECK(adpq_layout_of(mm.rows, mm.cols, &c, &lay, err) == ADPQ_ERR_ARG, "layout_of accepts %d", k);
        }
        /* a stored matrix whose counts do not fit its groups */
        adpq_config c = config(3, 32, ADPQ_SCOPE_TENSOR, 0.05, 0, 0, ADPQ_F16);
        quantize_with("scalar", &m, &c, &r);
        CHECK(r.rc == ADPQ_OK && r.q.num_outliers > 0, "quantize: %s", r.err);
        if (r.rc == ADPQ_OK && r.q.num_outliers > 0) {
            ((uint8_t *)r.q.outlier_counts)[0] = 33;
            float *out = malloc(sizeof(float) * 4 * 64);
            char err[ADPQ_ERRLEN] = {0};
            CHECK(adpq_dequantize(&r.q, &c, NULL, out, err) == ADPQ_ERR_ARG && err[0], "a bad count is accepted");
            free(out);
        }
        qres_free(&r);
        free(data);
    }
    end();
}

/* ------------------------------------------------------------------ routes */

static void test_routes(int have_v) {
    begin("routes: one pass == two passes (256 x 1000)");
    int64_t fixed = 0;
    for (int variant = 0; variant < 4; variant++) {
        adpq_matrix m;
        const int dtype = variant == 2 ? ADPQ_BF16 : ADPQ_F32;
        void *data = make_matrix(256, 1000, dtype, variant == 1, &m);
        float mul[1000];
        for (int j = 0; j < 1000; j++) mul[j] = 0.25f + 3.75f * (float)unif();
        m.col_mul = variant == 3 ? NULL : mul; /* (the one pass without column scaling, too) */
        for (int k = 0; k < 6; k++) {
            const int bits = 2 + k % 3, fmt = k % 2, qmode = (k / 2) % 3;
            const double ratio = k < 2 ? 0.003 : k < 4 ? 0.01 : 0.1;
            adpq_config cfg = config(bits, k % 3 ? 128 : 32, ADPQ_SCOPE_TENSOR, ratio, qmode, fmt, ADPQ_F16);
            qres r[4];
            for (int i = 0; i < 4; i++) {
                cfg.route = i % 2 ? ADPQ_ROUTE_TWO_PASS : ADPQ_ROUTE_ONE_PASS;
                if (i >= 2 && !have_v) r[i] = r[i - 2];
                else quantize_with(i < 2 ? "scalar" : "avx2", &m, &cfg, &r[i]);
            }
            CHECK(r[0].rc == ADPQ_OK && r[1].rc == ADPQ_OK, "variant %d case %d: %s %s", variant, k, r[0].err, r[1].err);
            CHECK(r[0].q.passes == 1 && r[1].q.passes == 2, "variant %d case %d: passes %d and %d", variant, k,
                  r[0].q.passes, r[1].q.passes);
            CHECK(same_q(&r[0], &r[1], &cfg), "variant %d case %d: one pass and two passes differ", variant, k);
            CHECK(same_q(&r[0], &r[2], &cfg) && same_q(&r[1], &r[3], &cfg), "variant %d case %d: kernel sets differ",
                  variant, k);
            fixed += r[0].q.fixed_groups;
            for (int i = 0; i < 4; i++)
                if (i < 2 || have_v) qres_free(&r[i]);
        }
        free(data);
    }
    CHECK(fixed > 0, "no group was ever fixed: the fix-up is not exercised");
    end();
}

/* ------------------------------------------------------------------ metrics, columns, selection */

static void test_metrics_columns(int have_v) {
    begin("metrics and columns: both kernel sets");
    adpq_matrix m;
    void *data = make_matrix(40, 333, ADPQ_F32, 0, &m);
    float mul[333];
    for (int j = 0; j < 333; j++) mul[j] = 0.5f + (float)unif();
    m.col_mul = mul;
    const adpq_config cfg = config(3, 64, ADPQ_SCOPE_TENSOR, 0.02, 1, 0, ADPQ_F16);
    qres r;
    quantize_with("scalar", &m, &cfg, &r);
    m.col_mul = NULL;
    adpq_error_stats st[2][2];
    int64_t hw[2][2][50], hh[2][2][50];
    uint16_t cs[2][333];
    float cm[2][333];
    for (int kv = 0; kv < 1 + have_v; kv++) {
        char err[ADPQ_ERRLEN] = {0};
        float *h = dequantize_with(kv ? "avx2" : "scalar", &r, &cfg, NULL);
        adpq_set_kernels(kv ? "avx2" : "scalar");
        CHECK(adpq_error_stats_of(&m, h, 50, 2, &st[kv][0], hw[kv][0], hh[kv][0], err) == ADPQ_OK, "%s", err);
        CHECK(adpq_error_stats_q(&m, &r.q, &cfg, NULL, 50, 2, &st[kv][1], hw[kv][1], hh[kv][1], err) == ADPQ_OK, "%s",
              err);
        /* w_hat stored or dequantized row by row: the same sums, bit for bit (at the same thread count:
         * the sums are chunked by it) */
        CHECK(!memcmp(&st[kv][0], &st[kv][1], sizeof(adpq_error_stats)) && !memcmp(hw[kv][0], hw[kv][1], sizeof(hw[0][0])) &&
                  !memcmp(hh[kv][0], hh[kv][1], sizeof(hh[0][0])),
              "error_stats_of and error_stats_q differ (kernels %d)", kv);
        CHECK(adpq_column_scales(&m, 3, cs[kv], cm[kv], err) == ADPQ_OK, "%s", err);
        free(h);
    }
    if (have_v) {
        const adpq_error_stats *a = &st[0][0], *b = &st[1][0];
        CHECK(fabs(a->sum_sq_err - b->sum_sq_err) <= 1e-12 * a->sum_sq_err &&
                  fabs(a->sum_sq_ref - b->sum_sq_ref) <= 1e-12 * a->sum_sq_ref && a->max_abs_err == b->max_abs_err &&
                  a->min == b->min && a->max == b->max,
              "error sums differ between kernel sets beyond rounding");
        CHECK(!memcmp(hw[0][0], hw[1][0], sizeof(hw[0][0])) && !memcmp(hh[0][0], hh[1][0], sizeof(hh[0][0])),
              "histograms differ between kernel sets");
        CHECK(!memcmp(cs[0], cs[1], sizeof(cs[0])) && !memcmp(cm[0], cm[1], sizeof(cm[0])),
              "column scales differ between kernel sets");
    }
    qres_free(&r);
    free(data);
    end();
}

/* ------------------------------------------------------------------ GPTQ */

/* gemm_sub and gemm_sub_f64: both sets against the formula (a sum from 0 in t order by fused
 * multiply-adds, then one subtraction), bit for bit, over shapes around the AVX2 tiles (4 rows x 3
 * vectors) and odd strides; gptq_update likewise (q errors per element, fnmadd in t order, around the
 * AVX2 paths: 16 rows with q = 4, 8 rows, single rows) */
static void test_kernels_gemm(const adpq_kernels *S, const adpq_kernels *V) {
    static const int64_t MS[] = {0, 1, 3, 4, 5, 8, 9}, NS[] = {0, 1, 3, 4, 7, 8, 11, 12, 13, 16, 23, 24, 25, 36, 37, 50},
                         KS[] = {1, 2, 7, 64, 129};
    begin("kernels: gemm_sub, gemm_sub_f64, gptq_update (GPTQ)");
    for (int mi = 0; mi < 7; mi++)
        for (int ni = 0; ni < 16; ni++)
            for (int ki = 0; ki < 5; ki++)
                for (int kind = 0; kind < 2; kind++) {
                    const int64_t m = MS[mi], n = NS[ni], k = KS[ki];
                    const int64_t as = k + below(3), bs = n + below(5), cs = n + below(5);
                    const size_t na = (size_t)(m * as + 1), nb = (size_t)(k * bs + 1), nc = (size_t)(m * cs + 1);
                    float *a = malloc(4 * na), *b = malloc(4 * nb), *c0 = malloc(4 * nc), *c1 = malloc(4 * nc),
                          *c2 = malloc(4 * nc);
                    double *ad = malloc(8 * na), *bd = malloc(8 * nb), *d0 = malloc(8 * nc), *d1 = malloc(8 * nc),
                           *d2 = malloc(8 * nc);
                    for (size_t i = 0; i < na; i++) {
                        a[i] = kind ? (unif() < 0.3 ? 0.0f : unif() < 0.2 ? -0.0f : normal() * 1e3f) : normal();
                        ad[i] = (double)a[i] * (1.0 + 1e-9 * normal());
                    }
                    for (size_t i = 0; i < nb; i++) {
                        b[i] = kind ? (unif() < 0.3 ? -0.0f : normal() * 1e-3f) : normal();
                        bd[i] = (double)b[i] * (1.0 + 1e-9 * normal());
                    }
                    for (size_t i = 0; i < nc; i++) {
                        c0[i] = c1[i] = c2[i] = kind && unif() < 0.3 ? -0.0f : normal();
                        d0[i] = d1[i] = d2[i] = (double)c0[i];
                    }
                    for (int64_t i = 0; i < m; i++)
                        for (int64_t j = 0; j < n; j++) {
                            float acc = 0.0f;
                            double accd = 0.0;
                            for (int64_t t = 0; t < k; t++) {
                                acc = fmaf(a[i * as + t], b[t * bs + j], acc);
                                accd = fma(ad[i * as + t], bd[t * bs + j], accd);
                            }
                            c0[i * cs + j] -= acc;
                            d0[i * cs + j] -= accd;
                        }
                    S->gemm_sub(c1, cs, a, as, b, bs, m, n, k);
                    V->gemm_sub(c2, cs, a, as, b, bs, m, n, k);
                    S->gemm_sub_f64(d1, cs, ad, as, bd, bs, m, n, k);
                    V->gemm_sub_f64(d2, cs, ad, as, bd, bs, m, n, k);
                    int bad = 0;
                    for (size_t i = 0; i < nc; i++)
                        bad += f_bits(c0[i]) != f_bits(c1[i]) || f_bits(c0[i]) != f_bits(c2[i]) ||
                               memcmp(&d0[i], &d1[i], 8) != 0 || memcmp(&d0[i], &d2[i], 8) != 0;
                    CHECK(bad == 0, "m=%lld n=%lld k=%lld kind=%d: %d elements differ", (long long)m, (long long)n,
                          (long long)k, kind, bad);
                    free(a), free(b), free(c0), free(c1), free(c2), free(ad), free(bd), free(d0), free(d1), free(d2);
                }
    static const int64_t NRS[] = {0, 1, 5, 7, 8, 9, 15, 16, 17, 24, 31, 33, 40};
    for (int ri = 0; ri < 13; ri++) /* gptq_update: x[j][r] = fma(-e[t][r], u[j][t], x[j][r]), t = 0..q-1 */
        for (int q = 1; q <= 5; q++)
            for (int ni = 0; ni < 8; ni++) {
                const int64_t nr = NRS[ri], n = NS[ni * 2] + ni, xs = nr + below(4), es = nr + below(3),
                              us = q + below(5);
                float *x0 = malloc(4 * (size_t)(n * xs + 1)), *x1 = malloc(4 * (size_t)(n * xs + 1)),
                      *x2 = malloc(4 * (size_t)(n * xs + 1)), *e = malloc(4 * (size_t)(q * es + 1)),
                      *u = malloc(4 * (size_t)(n * us + 1));
                for (int64_t i = 0; i < q * es + 1; i++) e[i] = unif() < 0.1 ? -0.0f : normal() * 10.0f;
                for (int64_t i = 0; i < n * us + 1; i++) u[i] = unif() < 0.1 ? 0.0f : normal();
                for (int64_t i = 0; i < n * xs + 1; i++) x0[i] = x1[i] = x2[i] = normal();
                for (int64_t j = 0; j < n; j++)
                    for (int64_t r = 0; r < nr; r++)
                        for (int t = 0; t < q; t++)
                            x0[j * xs + r] = fmaf(-e[t * es + r], u[j * us + t], x0[j * xs + r]);
                S->gptq_update(x1, xs, n, e, es, q, u, us, nr);
                V->gptq_update(x2, xs, n, e, es, q, u, us, nr);
                int bad = 0;
                for (int64_t i = 0; i < n * xs + 1; i++)
                    bad += f_bits(x0[i]) != f_bits(x1[i]) || f_bits(x0[i]) != f_bits(x2[i]);
                CHECK(bad == 0, "gptq_update nr=%lld q=%d n=%lld: %d differ", (long long)nr, q, (long long)n, bad);
                free(x0), free(x1), free(x2), free(e), free(u);
            }
    end();
}

/* gptq_round: both sets against the formula (adpq_code_of on the row's grid, the level (code - z) * s; an
 * outlier float16-rounded or on its own grid; e = q - w), bit for bit, with ties at .5, values past the
 * grid, float16 overflow and NaN/Inf (the flags; those rows' outputs are unspecified) */
static void test_kernels_gptq_round(const adpq_kernels *S, const adpq_kernels *V) {
    enum { N = 45 };
    begin("kernels: gptq_round (GPTQ)");
    for (int it = 0; it < 400; it++) {
        const int fp16 = it & 1, qmax = (1 << (2 + it % 3 * (it % 7 == 0 ? 2 : 1))) - 1, special = it % 5 == 0;
        const int64_t nr = it % 46;
        float x0[N], w[N], s[N], inv[N], z[N], so[N], invo[N], zo[N];
        uint8_t mask[N];
        for (int r = 0; r < N; r++) {
            s[r] = 0.01f + (float)unif();
            inv[r] = 1.0f / s[r];
            z[r] = (float)below(qmax + 1) + (unif() < 0.3 ? 0.5f : 0.0f);
            so[r] = 0.5f + 4.0f * (float)unif();
            invo[r] = 1.0f / so[r];
            zo[r] = (float)below(qmax + 1);
            mask[r] = unif() < 0.3 ? (uint8_t)(1 + below(255)) : 0;
            /* ties: x * inv + z on a half-integer; past the grid; -0 */
            const double k = unif();
            x0[r] = k < 0.2 ? ((float)below(qmax + 3) - 1.0f + 0.5f - z[r]) * s[r]
                    : k < 0.3 ? -0.0f : normal() * s[r] * (float)qmax;
            if (special && unif() < 0.1) x0[r] = unif() < 0.5 ? NAN : unif() < 0.5 ? INFINITY : 70000.0f;
            w[r] = x0[r] + normal() * s[r];
            if (special && unif() < 0.05) w[r] = -3e38f;
        }
        float x1[N], x2[N], e1[N], e2[N];
        uint8_t c1[N], c2[N];
        memcpy(x1, x0, sizeof(x0));
        memcpy(x2, x0, sizeof(x0));
        adpq_gptq_col a = {x1, w, mask, s, inv, z, fp16 ? NULL : so, fp16 ? NULL : invo, fp16 ? NULL : zo,
                           (float)qmax, c1, e1};
        adpq_gptq_col b = a;
        b.x = x2, b.codes = c2, b.e = e2;
        const int f1 = S->gptq_round(&a, nr), f2 = V->gptq_round(&b, nr);
        int want = 0, bad = 0;
        for (int64_t r = 0; r < nr; r++) {
            const float x = x0[r];
            if (!isfinite(x)) {
                want |= ADPQ_GPTQ_NONFINITE;
                continue;
            }
            uint8_t code = adpq_code_of(x, inv[r], z[r], (float)qmax);
            float q = ((float)code - z[r]) * s[r];
            if (mask[r] && fp16) {
                const uint16_t h = adpq_f32_to_f16(x);
                if ((h & 0x7c00u) == 0x7c00u) want |= ADPQ_GPTQ_F16;
                q = adpq_f16_to_f32(h);
            } else if (mask[r]) {
                code = adpq_code_of(x, invo[r], zo[r], (float)qmax);
                q = ((float)code - zo[r]) * so[r];
            }
            const float e = q - w[r];
            if (!isfinite(e)) want |= ADPQ_GPTQ_NONFINITE;
            bad += c1[r] != code || c2[r] != code || f_bits(x1[r]) != f_bits(q) || f_bits(x2[r]) != f_bits(q) ||
                   !same_f(e1[r], e) || !same_f(e2[r], e);
        }
        CHECK(f1 == want && f2 == want, "gptq_round it=%d: flags %d %d, want %d", it, f1, f2, want);
        CHECK(bad == 0, "gptq_round it=%d nr=%lld fp16=%d: %d rows differ", it, (long long)nr, fp16, bad);
    }
    end();
}

/* transpose / transpose_u8: both sets against the formula, around the 8 x 8 blocks, odd strides */
static void test_kernels_transpose(const adpq_kernels *S, const adpq_kernels *V) {
    static const int64_t DS[] = {0, 1, 7, 8, 9, 16, 17, 30};
    begin("kernels: transpose, transpose_u8 (GPTQ)");
    for (int ri = 0; ri < 8; ri++)
        for (int ci = 0; ci < 8; ci++) {
            const int64_t rows = DS[ri], cols = DS[ci], ss = cols + below(5), ds = rows + below(5);
            float *src = malloc(4 * (size_t)(rows * ss + 1)), *d1 = malloc(4 * (size_t)(cols * ds + 1)),
                  *d2 = malloc(4 * (size_t)(cols * ds + 1));
            uint8_t *bsrc = malloc((size_t)(rows * ss + 1)), *b1 = malloc((size_t)(cols * ds + 1)),
                    *b2 = malloc((size_t)(cols * ds + 1));
            for (int64_t i = 0; i < rows * ss + 1; i++) {
                src[i] = normal();
                bsrc[i] = (uint8_t)below(256);
            }
            for (int64_t i = 0; i < cols * ds + 1; i++) {
                d1[i] = d2[i] = -1.0f;
                b1[i] = b2[i] = 7;
            }
            S->transpose(d1, ds, src, ss, rows, cols);
            V->transpose(d2, ds, src, ss, rows, cols);
            S->transpose_u8(b1, ds, bsrc, ss, rows, cols);
            V->transpose_u8(b2, ds, bsrc, ss, rows, cols);
            int bad = 0;
            for (int64_t j = 0; j < cols; j++)
                for (int64_t i = 0; i < ds; i++) {
                    const float wf = i < rows ? src[i * ss + j] : -1.0f;
                    const uint8_t wb = i < rows ? bsrc[i * ss + j] : 7;
                    bad += f_bits(d1[j * ds + i]) != f_bits(wf) || f_bits(d2[j * ds + i]) != f_bits(wf) ||
                           b1[j * ds + i] != wb || b2[j * ds + i] != wb;
                }
            bad += d1[cols * ds] != -1.0f || d2[cols * ds] != -1.0f || b1[cols * ds] != 7 || b2[cols * ds] != 7;
            CHECK(bad == 0, "transpose %lld x %lld: %d differ", (long long)rows, (long long)cols, bad);
            free(src), free(d1), free(d2), free(bsrc), free(b1), free(b2);
        }
    end();
}

/* adpq_gptq_inverse / adpq_gptq through the API: U^T U = the damped, permuted H^-1, the outputs the
 * same on both kernel sets and any thread count, each value its code on its grid, and the errors */
static void test_gptq(int have_v) {
    enum { R = 37, C = 53, G = 16, GPR = 4 };
    begin("gptq: inverse factor, solver on both kernel sets, errors");
    double *x = malloc(sizeof(double) * 3 * C * C), *h = calloc(C * C, sizeof(double));
    for (int i = 0; i < 3 * C * C; i++) x[i] = normal() * ((i % C) % 9 == 0 ? 10.0 : 1.0);
    for (int i = 0; i < 3 * C; i++)
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++) h[a * C + b] += x[i * C + a] * x[i * C + b] / (3.0 * C);
    for (int j = 0; j < C; j++) h[5 * C + j] = h[j * C + 5] = 0.0; /* a dead input */
    float *u = malloc(sizeof(float) * C * C), *u2 = malloc(sizeof(float) * C * C);
    int64_t perm[C], perm2[C];
    char err[ADPQ_ERRLEN] = {0};
    for (int act = 0; act < 2; act++) {
        CHECK(adpq_gptq_inverse(h, C, 0.01, act, 1, u, perm, err) == ADPQ_OK, "inverse: %s", err);
        double mean = 0;
        for (int j = 0; j < C; j++) mean += h[j * C + j] == 0 ? 1.0 : h[j * C + j];
        mean /= C;
        double worst = 0;
        for (int i = 0; i < C; i++) {
            CHECK(act || perm[i] == i, "natural order");
            if (act && i) {
                const double d0 = h[perm[i - 1] * C + perm[i - 1]], d1 = h[perm[i] * C + perm[i]];
                CHECK(d0 > d1 || (d0 == d1 && perm[i - 1] < perm[i]), "act-order: descending, stable");
            }
            for (int j = 0; j < C; j++) { /* (U^T U Hp)[i][j] = delta_ij */
                double v = 0;
                for (int t = 0; t < C; t++) {
                    double ut = 0;
                    for (int s = 0; s <= t && s <= i; s++) ut += (double)u[s * C + i] * u[s * C + t];
                    const int64_t pt = perm[t], pj = perm[j];
                    double hv = h[pt * C + pj];
                    if (pt == pj) hv = (hv == 0 ? 1.0 : hv) + 0.01 * mean;
                    v += ut * hv;
                }
                worst = fmax(worst, fabs(v - (i == j)));
                if (j < i) CHECK(u[i * C + j] == 0.0f, "upper triangular");
            }
        }
        CHECK(worst < 1e-4, "U^T U Hp = I within %g (act %d)", worst, act);
        for (int k = 0; k < 1 + have_v; k++) {
            adpq_set_kernels(k ? "avx2" : "scalar");
            CHECK(adpq_gptq_inverse(h, C, 0.01, act, 3, u2, perm2, err) == ADPQ_OK, "%s", err);
            CHECK(!memcmp(u, u2, sizeof(float) * C * C) && !memcmp(perm, perm2, sizeof(perm)), "the same U");
        }
        adpq_set_kernels("auto");
    }

    float w[R * C], s0[R * GPR], z0[R * GPR], so0[R * GPR], zo0[R * GPR];
    uint8_t mask[R * C];
    for (int i = 0; i < R * C; i++) {
        w[i] = normal();
        mask[i] = unif() < 0.03;
    }
    for (int i = 0; i < R * GPR; i++) {
        s0[i] = 0.25f + 0.1f * (float)unif();
        z0[i] = (float)below(16);
        so0[i] = 1.0f;
        zo0[i] = 7.5f;
    }
    for (int c = 0; c < 8; c++) {
        const int fp16 = c & 1;
        adpq_gptq_config cfg = {4, G, 0, (c >> 1) & 1, ADPQ_F16, 0.01, 1 + 7 * (c >> 2), (c >> 1) & 1, c >> 2, 1};
        uint8_t codes[2][(R * C * 4 + 7) / 8];
        float vals[2][R * C], s[2][R * GPR], z[2][R * GPR], so[2][R * GPR], zo[2][R * GPR];
        for (int v = 0; v < 2; v++) {
            memcpy(s[v], s0, sizeof(s0)), memcpy(z[v], z0, sizeof(z0));
            memcpy(so[v], so0, sizeof(so0)), memcpy(zo[v], zo0, sizeof(zo0));
            adpq_set_kernels(v && have_v ? "avx2" : "scalar");
            cfg.threads = v ? 3 : 1;
            const adpq_status st = adpq_gptq(w, R, C, h, mask, &cfg, s[v], z[v], fp16 ? NULL : so[v],
                                             fp16 ? NULL : zo[v], codes[v], vals[v], err);
            CHECK(st == ADPQ_OK, "gptq case %d: %s", c, err);
        }
        adpq_set_kernels("auto");
        CHECK(!memcmp(codes[0], codes[1], sizeof(codes[0])) && !memcmp(vals[0], vals[1], sizeof(vals[0])) &&
                  !memcmp(s[0], s[1], sizeof(s[0])) && !memcmp(z[0], z[1], sizeof(z[0])),
              "case %d: the same output on both sets, 1 and 3 threads", c);
        uint8_t q[R * C];
        adpq_unpack_codes(codes[0], 0, R * C, 4, q);
        int bad = 0;
        for (int i = 0; i < R * C; i++) {
            const int gi = (i / C) * GPR + (i % C) / G, out = mask[i] && !fp16;
            const float sv = out ? so[0][gi] : s[0][gi], zv = out ? zo[0][gi] : z[0][gi];
            if (mask[i] && fp16)
                bad += vals[0][i] != adpq_f16_to_f32(adpq_f32_to_f16(vals[0][i]));
            else
                bad += vals[0][i] != ((float)q[i] - zv) * sv;
        }
        CHECK(bad == 0, "case %d: %d values off their code's level", c, bad);
    }

    adpq_gptq_config cfg = {4, G, 0, 0, ADPQ_F16, 0.01, 8, 0, 0, 1};
    uint8_t codes[(R * C * 4 + 7) / 8];
    float vals[R * C], s[R * GPR], z[R * GPR];
    memcpy(s, s0, sizeof(s0)), memcpy(z, z0, sizeof(z0));
    double *bad_h = calloc(C * C, sizeof(double));
    for (int j = 0; j < C; j++) bad_h[j * C + j] = j == 7 ? -3.0 : 1.0;
    CHECK(adpq_gptq_inverse(bad_h, C, 0.01, 0, 1, u, perm, err) == ADPQ_ERR_NOTPD && strstr(err, "positive definite"),
          "not positive definite: %s", err);
    CHECK(adpq_gptq(w, R, C, bad_h, mask, &cfg, s, z, NULL, NULL, codes, vals, err) == ADPQ_ERR_NOTPD, "%s", err);
    bad_h[7 * C + 7] = NAN;
    CHECK(adpq_gptq_inverse(bad_h, C, 0.01, 0, 1, u, perm, err) == ADPQ_ERR_NONFINITE, "NaN in H");
    CHECK(adpq_gptq_inverse(h, 0, 0.01, 0, 1, u, perm, err) == ADPQ_ERR_ARG, "n = 0");
    CHECK(adpq_gptq_inverse(h, C, -1.0, 0, 1, u, perm, err) == ADPQ_ERR_ARG, "damp < 0");
    CHECK(adpq_gptq_inverse(h, (int64_t)1 << 40, 0.01, 0, 1, u, perm, err) == ADPQ_ERR_ARG, "n too large");
    cfg.block_size = 0;
    CHECK(adpq_gptq(w, R, C, h, mask, &cfg, s, z, NULL, NULL, codes, vals, err) == ADPQ_ERR_ARG, "block_size 0");
    cfg.block_size = 8;
    cfg.bits = 5;
    CHECK(adpq_gptq(w, R, C, h, mask, &cfg, s, z, NULL, NULL, codes, vals, err) == ADPQ_ERR_ARG, "bits 5");
    cfg.bits = 4;
    cfg.group_size = 0; /* (any size >= 1 is valid: the solver reads the grids it is given) */
    CHECK(adpq_gptq(w, R, C, h, mask, &cfg, s, z, NULL, NULL, codes, vals, err) == ADPQ_ERR_ARG, "group_size 0");
    cfg.group_size = -2;
    CHECK(adpq_gptq(w, R, C, h, mask, &cfg, s, z, NULL, NULL, codes, vals, err) == ADPQ_ERR_ARG, "group_size -2");
    cfg.group_size = G;
    CHECK(adpq_gptq(w, R, C, h, mask, &cfg, s, z, s, NULL, codes, vals, err) == ADPQ_ERR_ARG, "one outlier grid");
    CHECK(adpq_gptq(w, INT64_MAX / 4, C, h, mask, &cfg, s, z, NULL, NULL, codes, vals, err) == ADPQ_ERR_ARG,
          "rows * cols overflows");
    s[3] = 0.0f;
    CHECK(adpq_gptq(w, R, C, h, mask, &cfg, s, z, NULL, NULL, codes, vals, err) == ADPQ_ERR_ARG, "a zero scale");
    s[3] = s0[3];
    float big[R * C];
    memcpy(big, w, sizeof(big));
    for (int i = 0; i < R * C; i++)
        if (mask[i]) big[i] = 70000.0f;
    CHECK(adpq_gptq(big, R, C, h, mask, &cfg, s, z, NULL, NULL, codes, vals, err) == ADPQ_ERR_RANGE &&
              strstr(err, "float16"),
          "a float16 outlier overflows: %s", err);
    big[0] = INFINITY;
    CHECK(adpq_gptq(big, R, C, h, mask, &cfg, s, z, NULL, NULL, codes, vals, err) == ADPQ_ERR_NONFINITE, "Inf in w");
    free(x), free(h), free(u), free(u2), free(bad_h);
    end();
}

static int cmp_desc(const void *a, const void *b) {
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void test_select(void) {
    begin("outliers: k-th largest key");
    static const int64_t NS[] = {1, 2, 7, 100, 4095, 4096, 20000, 65535, 65536, 200000};
    for (int ni = 0; ni < 10; ni++)
        for (int ties = 0; ties < 2; ties++) {
            const int64_t n = NS[ni];
            uint32_t *keys = malloc(sizeof(uint32_t) * (size_t)n), *sorted = malloc(sizeof(uint32_t) * (size_t)n),
                     *work = malloc(sizeof(uint32_t) * (size_t)n);
            for (int64_t i = 0; i < n; i++) keys[i] = ties ? adpq_abs_key((float)below(50) * 0.01f) : adpq_abs_key(normal());
            memcpy(sorted, keys, sizeof(uint32_t) * (size_t)n);
            qsort(sorted, (size_t)n, sizeof(uint32_t), cmp_desc);
            const int64_t ks[4] = {1, n, (n + 1) / 2, 1 + below(n)};
            for (int i = 0; i < 4; i++) {
                memcpy(work, keys, sizeof(uint32_t) * (size_t)n);
                const uint32_t got = adpq_select_kth_largest(work, n, ks[i]);
                CHECK(got == sorted[ks[i] - 1], "n=%lld k=%lld ties=%d", (long long)n, (long long)ks[i], ties);
            }
            free(keys);
            free(sorted);
            free(work);
        }
    end();
}

static void test_api_basics(int have_v) {
    begin("api: version, constants, kernel selection");
    CHECK(!strcmp(adpq_version(), ADPQ_VERSION) && strcmp(ADPQ_VERSION, "unknown"), "version '%s' (built with '%s')",
          adpq_version(), ADPQ_VERSION);
    CHECK(ADPQ_MIN_GROUP_SIZE == 8, "ADPQ_MIN_GROUP_SIZE %d", ADPQ_MIN_GROUP_SIZE);
    CHECK(adpq_set_kernels("scalar") == 0 && !strcmp(adpq_kernels_name(), "scalar"), "set scalar");
    CHECK(adpq_set_kernels("nonsense") == -1 && !strcmp(adpq_kernels_name(), "scalar"), "an unknown name changes the set");
    CHECK((adpq_set_kernels("avx2") == 0) == have_v, "avx2 availability");
    CHECK(adpq_set_kernels("auto") == 0 && !strcmp(adpq_kernels_name(), have_v ? "avx2" : "scalar"), "auto");
    end();
}

int main(void) {
    const adpq_kernels *S = &adpq_kernels_scalar, *V = adpq_kernels_by_name("avx2");
    printf("test_core: adpq %s, AVX2 kernels %s\n", adpq_version(),
           V ? "available: every check compares both sets" : "NOT available on this CPU: scalar only");
    test_api_basics(V != NULL);
    test_conversions();
    if (V) {
        test_kernels_elementwise(S, V);
        test_kernels_groups(S, V);
    }
    test_kernels_gemm(S, V ? V : S);
    test_kernels_gptq_round(S, V ? V : S);
    test_kernels_transpose(S, V ? V : S);
    test_pack(S, V ? V : S);
    test_select();
    test_quantize_grid(V != NULL);
    test_rejects(V != NULL);
    test_routes(V != NULL);
    test_metrics_columns(V != NULL);
    test_matmul(V != NULL);
    test_gptq(V != NULL);
    adpq_set_kernels("auto");
    if (n_failed)
        printf("test_core: %lld of %lld checks FAILED in %d of %d groups\n", n_failed, n_checks, n_groups_failed, n_groups);
    else
        printf("test_core: all %lld checks passed in %d groups\n", n_checks, n_groups);
    return n_failed ? 1 : 0;
}
