/* test_matmul.c - adpq_matmul (csrc/matmul.c) on both kernel sets against a double-precision product
 * of adpq_dequantize's matrix: every output row within 1e-5 relative (norm) of it, over bits x group
 * size (ragged last groups, cols not a multiple of 8) x quantizer kind x outlier format x scale
 * dtype x column factors, for 1, 3 and 70 activation rows, strided x and y, 1 and 3 threads; NaN
 * propagated; bad arguments rejected. The int8 mode against a double product of the same int8
 * arithmetic (and loosely the exact one), n = 1..15 (1: passes of several weight rows), the same
 * bits for 1 and 3 threads; bfloat16 in and out against float32 then rounding. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adpq.h"
#include "check.h"

typedef struct {
    adpq_config cfg;
    adpq_layout lay;
    adpq_qmatrix q;
    float *col_mul; /* NULL or cols factors */
    double *w_hat;  /* rows x cols, col_mul applied */
} mcase;

static int make_case(mcase *c, int64_t rows, int64_t cols, int bits, int64_t g, int qmode, int fmt, int sd, int cm) {
    memset(c, 0, sizeof(*c));
    adpq_config *k = &c->cfg;
    k->bits = bits;
    k->group_size = g;
    k->scope = ADPQ_SCOPE_TENSOR;
    k->outlier_ratio = 0.02;
    k->gamma = 1.0;
    k->symmetric = qmode == 1;
    k->integer_zero = qmode == 2;
    k->outlier_format = fmt;
    k->scale_dtype = sd;
    k->threads = 2;
    char err[ADPQ_ERRLEN] = {0};
    if (adpq_layout_of(rows, cols, k, &c->lay, err)) return -1;
    float *w = malloc(sizeof(float) * (size_t)(rows * cols));
    for (int64_t i = 0; i < rows * cols; i++) w[i] = normal() * 0.02f * (i % cols == 3 ? 8.0f : 1.0f);
    adpq_matrix m = {w, ADPQ_F32, rows, cols, cols, NULL};
    c->q.codes = malloc((size_t)c->lay.code_bytes);
    c->q.scales = malloc((size_t)(c->lay.num_groups * c->lay.scale_bytes));
    c->q.zeros = k->symmetric ? NULL : malloc((size_t)(c->lay.num_groups * c->lay.scale_bytes));
    int rc = adpq_quantize(&m, k, &c->q, err);
    free(w);
    CHECK(rc == ADPQ_OK, "quantize: %s", err);
    if (rc) return -1;
    if (cm) {
        c->col_mul = malloc(sizeof(float) * (size_t)cols);
        for (int64_t j = 0; j < cols; j++) c->col_mul[j] = (float)(0.5 + 1.5 * unif());
    }
    float *h = malloc(sizeof(float) * (size_t)(rows * cols));
    rc = adpq_dequantize(&c->q, k, c->col_mul, h, err);
    CHECK(rc == ADPQ_OK, "dequantize: %s", err);
    c->w_hat = malloc(sizeof(double) * (size_t)(rows * cols));
    for (int64_t i = 0; i < rows * cols; i++) c->w_hat[i] = h[i];
    free(h);
    return rc ? -1 : 0;
}

static void free_case(mcase *c) {
    adpq_free_outliers(&c->q);
    free(c->q.codes);
    free(c->q.scales);
    free(c->q.zeros);
    free(c->col_mul);
    free(c->w_hat);
}

/* the largest relative error of an output row of y against x @ w_hat.T in double */
static double max_row_err(const mcase *c, const float *x, int64_t n, int64_t xs, const float *y, int64_t ys) {
    const int64_t rows = c->q.rows, cols = c->q.cols;
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double num = 0.0, den = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            double ref = 0.0;
            for (int64_t j = 0; j < cols; j++) ref += (double)x[i * xs + j] * c->w_hat[r * cols + j];
            const double d = (double)y[i * ys + r] - ref;
            num += d * d;
            den += ref * ref;
        }
        const double e = den > 0 ? sqrt(num / den) : sqrt(num);
        worst = e > worst || isnan(e) ? e : worst;
    }
    return worst;
}

static void run_case(const mcase *c, const adpq_matmul_plan *plan, int have_v, const char *label) {
    const int64_t rows = c->q.rows, cols = c->q.cols;
    static const int64_t NS[] = {1, 3, 70};
    for (int ni = 0; ni < 3; ni++) {
        const int64_t n = NS[ni], xs = cols + 5, ys = rows + 3;
        float *x = malloc(sizeof(float) * (size_t)(n * xs));
        float *y = malloc(sizeof(float) * (size_t)(n * ys));
        for (int64_t i = 0; i < n * xs; i++) x[i] = normal();
        for (int ks = 0; ks < 1 + have_v; ks++)
            for (int threads = 1; threads <= 3; threads += 2) {
                adpq_set_kernels(ks ? "avx2" : "scalar");
                char err[ADPQ_ERRLEN] = {0};
                for (int64_t i = 0; i < n * ys; i++) y[i] = -1e30f; /* the gaps must stay untouched */
                const int rc = adpq_matmul(plan, x, n, xs, y, ys, ADPQ_MATMUL_FLOAT, threads, err);
                CHECK(rc == ADPQ_OK, "%s: matmul: %s", label, err);
                const double e = max_row_err(c, x, n, xs, y, ys);
                CHECK(e <= 1e-5, "%s n=%lld %s threads=%d: relative error %.3g", label, (long long)n,
                      ks ? "avx2" : "scalar", threads, e);
                int gaps = 1;
                for (int64_t i = 0; i < n; i++)
                    for (int64_t r = rows; r < ys; r++) gaps &= y[i * ys + r] == -1e30f;
                CHECK(gaps, "%s: matmul wrote between y's rows", label);
            }
        free(x);
        free(y);
    }
}

static void test_matmul_grid(int have_v) {
    begin("matmul: both kernel sets vs double, layouts");
    static const int BITS[] = {2, 3, 4, 8};
    static const int64_t GS[] = {8, 24, 32, 128, -1};
    int t = 0;
    for (int bi = 0; bi < 4; bi++)
        for (int gi = 0; gi < 5; gi++)
            for (int qmode = 0; qmode < 3; qmode++)
                for (int fmt = 0; fmt < 2; fmt++, t++) {
                    const int64_t cols = t % 2 ? 203 : 200, rows = 37;
                    const int sd = t % 3;
                    mcase c;
                    char label[128];
                    snprintf(label, sizeof(label), "bits=%d g=%lld qmode=%d fmt=%d sd=%d cols=%lld colmul=%d",
                             BITS[bi], (long long)GS[gi], qmode, fmt, sd, (long long)cols, (t / 2) % 2);
                    if (make_case(&c, rows, cols, BITS[bi], GS[gi], qmode, fmt, sd, (t / 2) % 2) == 0) {
                        adpq_matmul_plan plan;
                        char err[ADPQ_ERRLEN] = {0};
                        const int rc = adpq_matmul_prepare(&c.q, &c.cfg, c.col_mul, &plan, err);
                        CHECK(rc == ADPQ_OK, "%s: prepare: %s", label, err);
                        CHECK(c.q.num_outliers > 0, "%s: no outliers to correct", label);
                        if (rc == ADPQ_OK) run_case(&c, &plan, have_v, label);
                        adpq_matmul_release(&plan);
                    }
                    free_case(&c);
                }
    adpq_set_kernels("auto");
    end();
}

static void test_matmul_large_and_nan(int have_v) {
    begin("matmul: K = 4096, NaN in x, bad arguments");
    mcase c;
    if (make_case(&c, 20, 4096, 3, 128, 0, ADPQ_OUTLIERS_FP16, ADPQ_F16, 1) == 0) {
        adpq_matmul_plan plan;
        char err[ADPQ_ERRLEN] = {0};
        CHECK(adpq_matmul_prepare(&c.q, &c.cfg, c.col_mul, &plan, err) == ADPQ_OK, "prepare: %s", err);
        const int64_t n = 20, cols = 4096; /* 1 and 20: the row route and the panel route */
        float *x = malloc(sizeof(float) * (size_t)(n * cols)), *y = malloc(sizeof(float) * (size_t)(n * 20));
        for (int64_t i = 0; i < n * cols; i++) x[i] = normal();
        for (int ks = 0; ks < 1 + have_v; ks++)
            for (int64_t nn = 1; nn <= n; nn += n - 1) {
                adpq_set_kernels(ks ? "avx2" : "scalar");
                CHECK(adpq_matmul(&plan, x, nn, cols, y, 20, 0, 2, err) == ADPQ_OK, "matmul: %s", err);
                const double e = max_row_err(&c, x, nn, cols, y, 20);
                CHECK(e <= 1e-5, "K=4096 n=%lld: relative error %.3g", (long long)nn, e);
            }
        x[3 * cols + 17] = NAN;
        for (int64_t nn = 4; nn <= n; nn += n - 4) {
            CHECK(adpq_matmul(&plan, x, nn, cols, y, 20, 0, 1, err) == ADPQ_OK, "matmul with NaN: %s", err);
            int nan_row = 1, finite_rest = 1;
            for (int64_t r = 0; r < 20; r++) nan_row &= isnan(y[3 * 20 + r]);
            for (int64_t i = 0; i < nn; i++)
                for (int64_t r = 0; r < 20 && i != 3; r++) finite_rest &= isfinite(y[i * 20 + r]) != 0;
            CHECK(nan_row && finite_rest, "NaN in x row 3 (n=%lld): propagated %d, other rows finite %d", (long long)nn,
                  nan_row, finite_rest);
        }
        /* bad arguments */
        CHECK(adpq_matmul(&plan, x, -1, cols, y, 20, 0, 1, err) == ADPQ_ERR_ARG, "n < 0");
        CHECK(adpq_matmul(&plan, x, 2, cols - 1, y, 20, 0, 1, err) == ADPQ_ERR_ARG, "x_stride < cols");
        CHECK(adpq_matmul(&plan, x, 2, cols, y, 19, 0, 1, err) == ADPQ_ERR_ARG, "y_stride < rows");
        CHECK(adpq_matmul(&plan, x, 2, cols, y, 20, 7, 1, err) == ADPQ_ERR_ARG, "mode 7");
        CHECK(adpq_matmul(&plan, x, 2, cols, y, 20, 0, 0, err) == ADPQ_ERR_ARG, "threads 0");
        CHECK(adpq_matmul(&plan, NULL, 2, cols, y, 20, 0, 1, err) == ADPQ_ERR_ARG, "x NULL");
        CHECK(adpq_matmul(&plan, x, INT64_MAX / 2, cols, y, 20, 0, 1, err) == ADPQ_ERR_ARG, "n overflows");
        CHECK(adpq_matmul(&plan, NULL, 0, cols, NULL, 20, 0, 1, err) == ADPQ_OK, "n = 0");
        adpq_matmul_release(&plan);
        CHECK(adpq_matmul(&plan, x, 1, cols, y, 20, 0, 1, err) == ADPQ_ERR_ARG, "a released plan");
        /* prepare validates as dequantize does */
        adpq_qmatrix bad = c.q;
        bad.num_outlier_groups += 1; /* (the arrays' sizes are the caller's: only the counts can be off) */
        CHECK(adpq_matmul_prepare(&bad, &c.cfg, NULL, &plan, err) == ADPQ_ERR_ARG, "outlier groups off by one");
        adpq_matmul_release(&plan);
        float *cm = malloc(sizeof(float) * (size_t)cols);
        for (int64_t j = 0; j < cols; j++) cm[j] = j == 5 ? INFINITY : 1.0f;
        CHECK(adpq_matmul_prepare(&c.q, &c.cfg, cm, &plan, err) == ADPQ_ERR_ARG, "col_mul with Inf");
        adpq_matmul_release(&plan);
        free(cm);
        free(x);
        free(y);
    }
    free_case(&c);
    adpq_set_kernels("auto");
    end();
}

/* ------------------------------------------------------------------ int8 activations
 * The reference: x' = x * col_mul in float32, quantized per block of 32 as the core does (d = amax /
 * 127, q = rint(x' * (1 / d)) clamped), then in double sum_j dense_j * d_b * q_j + sum_j delta_j * x'_j:
 * dense = adpq_dequantize with the outliers removed (every code an inlier of its group), delta =
 * w_hat - dense in float32 (0 at inliers), as the plan's correction. */
static void q8_ref(const mcase *c, const float *dense, const float *delta, const float *x, int64_t n, int64_t xs,
                   double *ref, double *exact) {
    const int64_t rows = c->q.rows, cols = c->q.cols;
    float *xp = malloc(sizeof(float) * (size_t)cols);
    double *xh = malloc(sizeof(double) * (size_t)cols);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < cols; j++) xp[j] = c->col_mul ? x[i * xs + j] * c->col_mul[j] : x[i * xs + j];
        for (int64_t b = 0; b < cols; b += 32) {
            const int64_t e = cols - b < 32 ? cols : b + 32;
            float amax = 0.0f;
            for (int64_t j = b; j < e; j++) amax = fabsf(xp[j]) > amax ? fabsf(xp[j]) : amax;
            const float d = amax / 127.0f, id = d == 0.0f ? 0.0f : 1.0f / d;
            for (int64_t j = b; j < e; j++) {
                float q = rintf(xp[j] * id);
                q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
                xh[j] = (double)d * q;
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            double a = 0.0, f = 0.0;
            for (int64_t j = 0; j < cols; j++) {
                a += (double)dense[r * cols + j] * xh[j] + (double)delta[r * cols + j] * xp[j];
                f += c->w_hat[r * cols + j] * x[i * xs + j];
            }
            ref[i * rows + r] = a;
            exact[i * rows + r] = f;
        }
    }
    free(xp);
    free(xh);
}

static double row_err_vs(const double *ref, const float *y, int64_t n, int64_t rows, int64_t ys) {
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double num = 0.0, den = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            const double d = (double)y[i * ys + r] - ref[i * rows + r];
            num += d * d;
            den += ref[i * rows + r] * ref[i * rows + r];
        }
        const double e = den > 0 ? sqrt(num / den) : sqrt(num);
        worst = e > worst || isnan(e) ? e : worst;
    }
    return worst;
}

static void test_matmul_int8(int have_v) {
    begin("matmul int8: both kernel sets vs double of the same int8 arithmetic");
    static const int BITS[] = {2, 3, 4, 8};
    static const int64_t GS[] = {32, 64, 128, -1, 24};
    int t = 0;
    for (int bi = 0; bi < 4; bi++)
        for (int gi = 0; gi < 5; gi++)
            for (int qmode = 0; qmode < 2; qmode++)
                for (int fmt = 0; fmt < 2; fmt++, t++) {
                    /* 200: a ragged last block; 29 and 30 rows: passes of 4 weight rows and a partial one */
                    const int64_t cols = t % 2 ? 200 : 256, rows = (t / 4) % 2 ? 29 : 30;
                    mcase c;
                    char label[128];
                    snprintf(label, sizeof(label), "int8 bits=%d g=%lld sym=%d fmt=%d cols=%lld colmul=%d", BITS[bi],
                             (long long)GS[gi], qmode, fmt, (long long)cols, (t / 2) % 2);
                    if (make_case(&c, rows, cols, BITS[bi], GS[gi], qmode, fmt, t % 3, (t / 2) % 2)) {
                        free_case(&c);
                        continue;
                    }
                    char err[ADPQ_ERRLEN] = {0};
                    adpq_matmul_plan plan;
                    CHECK(adpq_matmul_prepare(&c.q, &c.cfg, c.col_mul, &plan, err) == ADPQ_OK, "%s: %s", label, err);
                    /* dense: the same arrays without outliers */
                    adpq_qmatrix dq = c.q;
                    dq.num_outliers = dq.num_outlier_groups = 0;
                    dq.outlier_counts = calloc((size_t)c.lay.num_groups, (size_t)c.lay.count_bytes);
                    dq.outlier_scales = dq.outlier_zeros = NULL;
                    dq.outlier_indices = NULL;
                    dq.outlier_values = NULL;
                    float *dense = malloc(sizeof(float) * (size_t)(rows * cols));
                    float *delta = malloc(sizeof(float) * (size_t)(rows * cols));
                    CHECK(adpq_dequantize(&dq, &c.cfg, NULL, dense, err) == ADPQ_OK, "%s: dense: %s", label, err);
                    CHECK(adpq_dequantize(&c.q, &c.cfg, NULL, delta, err) == ADPQ_OK, "%s: %s", label, err);
                    for (int64_t k = 0; k < rows * cols; k++) delta[k] -= dense[k];
                    const int applies = adpq_matmul_mode_used(&plan, 1, ADPQ_MATMUL_INT8) == ADPQ_MATMUL_INT8;
                    CHECK(applies == (GS[gi] != 24), "%s: int8 route applies %d", label, applies);
                    for (int64_t n = 1; n <= 15; n++) { /* 1: the multi-row kernel (29 rows: 7 passes of 4, 1) */
                        const int64_t xs = cols + 3, ys = rows + 2;
                        float *x = malloc(sizeof(float) * (size_t)(n * xs)), *y = malloc(sizeof(float) * (size_t)(n * ys));
                        float *y1 = malloc(sizeof(float) * (size_t)(n * ys));
                        double *ref = malloc(sizeof(double) * (size_t)(n * rows)), *ex = malloc(sizeof(double) * (size_t)(n * rows));
                        for (int64_t k = 0; k < n * xs; k++) x[k] = normal();
                        if (n > 1) memset(x + xs, 0, sizeof(float) * 40); /* all-zero blocks */
                        q8_ref(&c, dense, delta, x, n, xs, ref, ex);
                        for (int ks = 0; ks < 1 + have_v; ks++)
                            for (int threads = 1; threads <= 3; threads += 2) {
                                adpq_set_kernels(ks ? "avx2" : "scalar");
                                CHECK(adpq_matmul(&plan, x, n, xs, y, ys, ADPQ_MATMUL_INT8, threads, err) == ADPQ_OK,
                                      "%s: %s", label, err);
                                if (applies) {
                                    const double e = row_err_vs(ref, y, n, rows, ys);
                                    CHECK(e <= 1e-5, "%s n=%lld %s threads=%d: error %.3g vs the int8 reference", label,
                                          (long long)n, ks ? "avx2" : "scalar", threads, e);
                                }
                                if (threads == 1)
                                    memcpy(y1, y, sizeof(float) * (size_t)(n * ys));
                                else
                                    for (int64_t i = 0; i < n; i++)
                                        CHECK(!memcmp(y1 + i * ys, y + i * ys, sizeof(float) * (size_t)rows),
                                              "%s n=%lld %s: threads 3 != threads 1 (row %lld)", label, (long long)n,
                                              ks ? "avx2" : "scalar", (long long)i);
                                const double e2 = row_err_vs(ex, y, n, rows, ys);
                                CHECK(e2 <= (applies ? 0.03 : 1e-5), "%s n=%lld: error %.3g vs the exact product", label,
                                      (long long)n, e2);
                            }
                        free(x);
                        free(y);
                        free(y1);
                        free(ref);
                        free(ex);
                    }
                    free(dense);
                    free(delta);
                    free(dq.outlier_counts);
                    adpq_matmul_release(&plan);
                    free_case(&c);
                }
    adpq_set_kernels("auto");
    end();
}

/* the int8 route on matrices large enough for several threads (2051 rows: tasks of whole passes of 4
 * rows and a last partial pass): the same bits for 1 and 3 threads, the kernel sets within float
 * rounding of each other, loosely the exact product */
static void test_matmul_int8_threads(int have_v) {
    begin("matmul int8: threads 1 and 3 the same, kernel sets agree (2051 rows)");
    static const int BITS[] = {2, 3, 4, 8};
    for (int bi = 0; bi < 4; bi++) {
        /* 2051 x 1032 > 2^21 weights: threads run; 1032 = 16 * 64 + 8: a ragged last block and group */
        const int64_t rows = 2051, cols = 1032;
        mcase c;
        char label[96];
        snprintf(label, sizeof(label), "int8 threads bits=%d fmt=%d", BITS[bi], bi % 2);
        if (make_case(&c, rows, cols, BITS[bi], 64, bi == 2, bi % 2, bi % 3, bi != 1)) {
            free_case(&c);
            continue;
        }
        char err[ADPQ_ERRLEN] = {0};
        adpq_matmul_plan plan;
        CHECK(adpq_matmul_prepare(&c.q, &c.cfg, c.col_mul, &plan, err) == ADPQ_OK, "%s: %s", label, err);
        for (int64_t n = 1; n <= 5; n += 4) {
            float *x = malloc(sizeof(float) * (size_t)(n * cols));
            float *y[4];
            for (int k = 0; k < 4; k++) y[k] = malloc(sizeof(float) * (size_t)(n * rows));
            for (int64_t k = 0; k < n * cols; k++) x[k] = normal();
            for (int ks = 0; ks < 1 + have_v; ks++)
                for (int th = 0; th < 2; th++) {
                    adpq_set_kernels(ks ? "avx2" : "scalar");
                    CHECK(adpq_matmul(&plan, x, n, cols, y[2 * ks + th], rows, ADPQ_MATMUL_INT8, th ? 3 : 1, err) ==
                              ADPQ_OK,
                          "%s: %s", label, err);
                }
            for (int ks = 0; ks < 1 + have_v; ks++)
                CHECK(!memcmp(y[2 * ks], y[2 * ks + 1], sizeof(float) * (size_t)(n * rows)),
                      "%s n=%lld %s: threads 3 != threads 1", label, (long long)n, ks ? "avx2" : "scalar");
            if (have_v) {
                double *ref = malloc(sizeof(double) * (size_t)(n * rows));
                for (int64_t k = 0; k < n * rows; k++) ref[k] = y[0][k];
                const double e = row_err_vs(ref, y[2], n, rows, rows);
                CHECK(e <= 1e-6, "%s n=%lld: avx2 vs scalar %.3g", label, (long long)n, e);
                free(ref);
            }
            const double e2 = max_row_err(&c, x, n, cols, y[0], rows);
            CHECK(e2 <= 0.03, "%s n=%lld: error %.3g vs the exact product", label, (long long)n, e2);
            free(x);
            for (int k = 0; k < 4; k++) free(y[k]);
        }
        adpq_matmul_release(&plan);
        free_case(&c);
    }
    adpq_set_kernels("auto");
    end();
}

/* bfloat16 x and y (adpq_matmul_typed): x converted exactly, y rounded as adpq_f32_to_bf16 */
static void test_matmul_bf16(void) {
    begin("matmul: bfloat16 in and out");
    mcase c;
    if (make_case(&c, 33, 128, 4, 32, 0, 0, 1, 1) == 0) {
        adpq_matmul_plan plan;
        char err[ADPQ_ERRLEN] = {0};
        CHECK(adpq_matmul_prepare(&c.q, &c.cfg, c.col_mul, &plan, err) == ADPQ_OK, "prepare: %s", err);
        for (int mode = 0; mode < 2; mode++)
            for (int64_t n = 1; n <= 20; n += 19) {
                uint16_t *xb = malloc(2 * (size_t)(n * 128)), *yb = malloc(2 * (size_t)(n * 33));
                float *xf = malloc(4 * (size_t)(n * 128)), *yf = malloc(4 * (size_t)(n * 33)), *y2 = malloc(4 * (size_t)(n * 33));
                for (int64_t k = 0; k < n * 128; k++) {
                    xb[k] = adpq_f32_to_bf16(normal());
                    xf[k] = adpq_bf16_to_f32(xb[k]);
                }
                CHECK(adpq_matmul(&plan, xf, n, 128, yf, 33, mode, 2, err) == ADPQ_OK, "f32: %s", err);
                CHECK(adpq_matmul_typed(&plan, xb, ADPQ_BF16, n, 128, y2, ADPQ_F32, 33, mode, 2, err) == ADPQ_OK, "%s", err);
                CHECK(adpq_matmul_typed(&plan, xb, ADPQ_BF16, n, 128, yb, ADPQ_BF16, 33, mode, 2, err) == ADPQ_OK, "%s", err);
                int same = 1;
                for (int64_t k = 0; k < n * 33; k++) same &= y2[k] == yf[k] && yb[k] == adpq_f32_to_bf16(yf[k]);
                CHECK(same, "mode %d n=%lld: bf16 in/out differ from float32 then rounding", mode, (long long)n);
                free(xb);
                free(yb);
                free(xf);
                free(yf);
                free(y2);
            }
        CHECK(adpq_matmul_typed(&plan, NULL, 5, 1, 128, NULL, 0, 33, 0, 1, err) == ADPQ_ERR_ARG, "bad x dtype");
        CHECK(adpq_matmul_typed(&plan, NULL, 0, 1, 128, NULL, ADPQ_F16, 33, 0, 1, err) == ADPQ_ERR_ARG, "f16 y");
        adpq_matmul_release(&plan);
    }
    free_case(&c);
    end();
}

void test_matmul(int have_v) {
    test_matmul_grid(have_v);
    test_matmul_large_and_nan(have_v);
    test_matmul_int8(have_v);
    test_matmul_int8_threads(have_v);
    test_matmul_bf16();
}
