/* matmul.c - y = x @ w_hat.T on the stored arrays of a quantized matrix (adpq_matmul, adpq.h).
 *
 * The plan, prepared once per matrix: the arrays validated as dequantize validates them, and the
 * outliers as a sparse correction (SpQR): the dense pass reads every code as an inlier of its
 * group, and each row's CSR list of (column, delta = w_outlier - w_dense) adds delta * x'[column].
 * So the hot loops never look at outliers, and the codes are read where they are stored.
 *
 * A call: x' = x * col_mul (the column scales, applied to the activations once instead of to every
 * weight), then the weight rows are shared among threads. Two routes:
 *  - few activation rows (n < MM_PANEL_N): each weight row is decoded in the kernel once per 4
 *    activation rows, from the bit stream itself when rows start at byte boundaries (mm_packed),
 *    else from the row unpacked to bytes (mm_bytes);
 *  - more: panels of MM_PANEL weight rows are dequantized to float32, MM_KBLOCK columns at a time
 *    (that block of the panel stays in L1/L2), and a register-tiled float product (mm_tile) runs
 *    over blocks of MM_XBLOCK activation rows: the decode is paid once per panel and block, and the
 *    product runs at float GEMM speed. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>

#include "internal.h"
#include "quant.h"

enum {
    MM_PANEL_N = 16,   /* activation rows from which the panel route is taken (measured crossover) */
    MM_XBLOCK = 256,   /* activation rows per block of the panel route */
    MM_PANEL = 12,     /* weight rows per panel: 4 tiles of 3 */
    MM_KBLOCK = 512,   /* columns of a panel dequantized at a time */
    MM_ROW_TASKS = 8,  /* row route: tasks per thread (balance) */
};
/* multiply-adds below which one thread does it all (waking the pool costs more) */
#define MM_MIN_PARALLEL ((int64_t)1 << 19)

/* ------------------------------------------------------------------ the plan */

/* (s, z) of group gi: the inlier quantizer */
static inline void group_sz(const adpq_matmul_plan *p, int64_t gi, float *s, float *z) {
    const int sb = p->lay.scale_bytes, sd = p->cfg.scale_dtype;
    *s = adpq_stored_to_float(adpq_get_stored(p->q.scales, gi, sb), sd);
    *z = p->cfg.symmetric ? (float)(1 << (p->cfg.bits - 1)) : adpq_stored_to_float(adpq_get_stored(p->q.zeros, gi, sb), sd);
}

void adpq_matmul_release(adpq_matmul_plan *plan) {
    if (!plan) return;
    free(plan->row_ptr);
    free(plan->corr_col);
    free(plan->corr_delta);
    memset(plan, 0, sizeof(*plan));
}

/* The correction of each outlier, in the dequantizer's order (dequant.c, adpq_dq_row). */
static void build_correction(adpq_matmul_plan *p, const adpq_dq *d) {
    const adpq_qmatrix *q = &p->q;
    const int64_t rows = q->rows, cols = q->cols, g = p->lay.group_size, G = p->lay.groups_per_row;
    const int bits = p->cfg.bits, sb = p->lay.scale_bytes, sd = p->cfg.scale_dtype;
    int64_t o = 0, og = 0;
    for (int64_t r = 0; r < rows; r++) {
        p->row_ptr[r] = o;
        for (int64_t j = 0; j < G; j++) {
            const int64_t gi = r * G + j, cnt = adpq_get_count(q->outlier_counts, gi, p->lay.count_bytes);
            if (!cnt) continue;
            float s, z, so = 0.0f, zo = 0.0f;
            group_sz(p, gi, &s, &z);
            if (p->cfg.outlier_format == ADPQ_OUTLIERS_GROUP) {
                so = adpq_stored_to_float(adpq_get_stored(q->outlier_scales, og, sb), sd);
                zo = p->cfg.symmetric ? z : adpq_stored_to_float(adpq_get_stored(q->outlier_zeros, og, sb), sd);
            }
            for (int64_t i = 0; i < cnt; i++, o++) {
                const int64_t col = j * g + d->pos[o];
                uint8_t code;
                adpq_unpack_codes(q->codes, r * cols + col, 1, bits, &code);
                const float dense = ((float)code - z) * s;
                const float w = p->cfg.outlier_format == ADPQ_OUTLIERS_GROUP ? ((float)code - zo) * so
                                                                             : adpq_f16_to_f32(q->outlier_values[o]);
                p->corr_col[o] = (int32_t)col;
                p->corr_delta[o] = w - dense;
            }
            og++;
        }
    }
    p->row_ptr[rows] = o;
}

adpq_status adpq_matmul_prepare_k(const adpq_kernels *K, const adpq_qmatrix *q, const adpq_config *cfg,
                                  const float *col_mul, adpq_matmul_plan *plan, char *err) {
    if (!plan) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    memset(plan, 0, sizeof(*plan));
    adpq_dq d;
    int rc = adpq_dq_init(&d, K, q, cfg, col_mul, err);
    if (rc) return (adpq_status)rc;
    if (q->cols > INT32_MAX) { /* the correction's columns are int32 */
        adpq_set_err(err, "matmul supports at most %d columns, got %lld", INT32_MAX, (long long)q->cols);
        rc = ADPQ_ERR_ARG;
        goto done;
    }
    if (col_mul)
        for (int64_t j = 0; j < q->cols; j++)
            if (!isfinite(col_mul[j])) {
                adpq_set_err(err, "col_mul must be finite");
                rc = ADPQ_ERR_ARG;
                goto done;
            }
    plan->q = *q;
    plan->cfg = *cfg;
    plan->lay = d.lay;
    plan->col_mul = col_mul;
    if (q->num_outliers) {
        plan->row_ptr = (int64_t *)malloc(sizeof(int64_t) * (size_t)(q->rows + 1));
        plan->corr_col = (int32_t *)malloc(sizeof(int32_t) * (size_t)q->num_outliers);
        plan->corr_delta = (float *)malloc(sizeof(float) * (size_t)q->num_outliers);
        if (!plan->row_ptr || !plan->corr_col || !plan->corr_delta) {
            adpq_set_err(err, "out of memory");
            rc = ADPQ_ERR_NOMEM;
            goto done;
        }
        build_correction(plan, &d);
    }
done:
    if (rc) adpq_matmul_release(plan);
    adpq_dq_free(&d);
    return (adpq_status)rc;
}

/* ------------------------------------------------------------------ a call */

typedef struct {
    float *s, *nzs;  /* the row's groups: scale and -z * s */
    uint8_t *q;      /* unpacked codes: a row (row route) or a column block (panel route), + 8 */
    float *panel;    /* MM_PANEL x MM_KBLOCK dequantized weights */
    float *acc;      /* MM_XBLOCK x MM_PANEL sums */
} mm_scratch;

typedef struct {
    const adpq_kernels *K;
    const adpq_matmul_plan *p;
    const float *x; /* x' rows of this block */
    int64_t xs, n;
    float *y;
    int64_t ys, rows_per_task;
    int packed; /* every row starts at a byte boundary and groups hold whole blocks of 8 */
    mm_scratch *ws;
} mm_ctx;

/* sum of delta * x' over row r's outliers */
static inline float correction(const adpq_matmul_plan *p, int64_t r, const float *xrow) {
    float c = 0.0f;
    if (p->row_ptr)
        for (int64_t o = p->row_ptr[r]; o < p->row_ptr[r + 1]; o++) c += p->corr_delta[o] * xrow[p->corr_col[o]];
    return c;
}

/* 4-byte reads at each block of row r stay in the stream (all rows but perhaps the last one) */
static inline int row_packed(const mm_ctx *c, int64_t r) {
    const adpq_matmul_plan *p = c->p;
    const int64_t cols = p->q.cols, bits = p->cfg.bits;
    return c->packed && r * cols / 8 * bits + (cols / 8 - 1) * bits + 4 <= p->lay.code_bytes;
}

static int rows_task(void *vc, int64_t t, int worker) {
    const mm_ctx *c = (const mm_ctx *)vc;
    const adpq_matmul_plan *p = c->p;
    const mm_scratch *w = &c->ws[worker];
    const int64_t rows = p->q.rows, cols = p->q.cols, g = p->lay.group_size, G = p->lay.groups_per_row;
    const int bits = p->cfg.bits;
    const int64_t r0 = t * c->rows_per_task, r1 = rows - r0 < c->rows_per_task ? rows : r0 + c->rows_per_task;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t k = 0; k < G; k++) {
            float s, z;
            group_sz(p, r * G + k, &s, &z);
            w->s[k] = s;
            w->nzs[k] = -(z * s);
        }
        const int64_t off = r * cols / 8 * bits;
        const int packed = row_packed(c, r);
        if (!packed) adpq_unpack_codes(p->q.codes, r * cols, cols, bits, w->q);
        for (int64_t i0 = 0; i0 < c->n; i0 += 4) {
            const int nx = c->n - i0 < 4 ? (int)(c->n - i0) : 4;
            const float *x = c->x + i0 * c->xs;
            float out[4];
            if (packed)
                c->K->mm_packed(p->q.codes + off, bits, cols, g, w->s, w->nzs, x, c->xs, nx, out);
            else
                c->K->mm_bytes(w->q, cols, g, w->s, w->nzs, x, c->xs, nx, out);
            for (int i = 0; i < nx; i++) c->y[(i0 + i) * c->ys + r] = out[i] + correction(p, r, x + i * c->xs);
        }
    }
    return 0;
}

/* weights [k0, k0 + kl) of row r, dequantized (before col_mul): from the stream when the row is
 * packed (k0 and every group boundary are then multiples of 8), else unpacked to bytes first */
static void dequant_block(const mm_ctx *c, int64_t r, int64_t k0, int64_t kl, uint8_t *q, float *out) {
    const adpq_matmul_plan *p = c->p;
    const int64_t cols = p->q.cols, g = p->lay.group_size;
    const int bits = p->cfg.bits, packed = row_packed(c, r);
    if (!packed) adpq_unpack_codes(p->q.codes, r * cols + k0, kl, bits, q);
    for (int64_t j = k0; j < k0 + kl;) {
        const int64_t k = j / g, end = (k + 1) * g < k0 + kl ? (k + 1) * g : k0 + kl;
        float s, z;
        group_sz(p, r * p->lay.groups_per_row + k, &s, &z);
        if (packed)
            c->K->mm_decode(p->q.codes + (r * cols + j) / 8 * bits, bits, end - j, s, -(z * s), out + (j - k0));
        else
            c->K->dequant(q + (j - k0), end - j, s, z, NULL, out + (j - k0));
        j = end;
    }
}

static int panel_task(void *vc, int64_t t, int worker) {
    const mm_ctx *c = (const mm_ctx *)vc;
    const adpq_matmul_plan *p = c->p;
    const mm_scratch *w = &c->ws[worker];
    const int64_t cols = p->q.cols, r0 = t * MM_PANEL, n = c->n;
    const int np = p->q.rows - r0 < MM_PANEL ? (int)(p->q.rows - r0) : MM_PANEL;
    memset(w->acc, 0, sizeof(float) * (size_t)(n * MM_PANEL));
    for (int64_t k0 = 0; k0 < cols; k0 += MM_KBLOCK) {
        const int64_t kl = cols - k0 < MM_KBLOCK ? cols - k0 : MM_KBLOCK;
        for (int j = 0; j < np; j++) dequant_block(c, r0 + j, k0, kl, w->q, w->panel + j * MM_KBLOCK);
        for (int64_t i0 = 0; i0 < n; i0 += 4) {
            const int nx = n - i0 < 4 ? (int)(n - i0) : 4;
            for (int j0 = 0; j0 < np; j0 += 3)
                c->K->mm_tile(c->x + i0 * c->xs + k0, c->xs, w->panel + j0 * MM_KBLOCK, MM_KBLOCK, kl, nx,
                              np - j0 < 3 ? np - j0 : 3, w->acc + i0 * MM_PANEL + j0, MM_PANEL);
        }
    }
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < np; j++)
            c->y[i * c->ys + r0 + j] = w->acc[i * MM_PANEL + j] + correction(p, r0 + j, c->x + i * c->xs);
    return 0;
}

static void free_scratch(mm_scratch *ws, int nw) {
    if (!ws) return;
    for (int i = 0; i < nw; i++) {
        free(ws[i].s);
        free(ws[i].nzs);
        free(ws[i].q);
        free(ws[i].panel);
        free(ws[i].acc);
    }
    free(ws);
}

/* per worker: what its route needs; NULL when out of memory */
static mm_scratch *alloc_scratch(int nw, const adpq_matmul_plan *p, int panel, int64_t nb) {
    mm_scratch *ws = (mm_scratch *)calloc((size_t)nw, sizeof(mm_scratch));
    if (!ws) return NULL;
    const size_t G = (size_t)p->lay.groups_per_row;
    for (int i = 0; i < nw; i++) {
        mm_scratch *w = &ws[i];
        int ok;
        if (panel) {
            w->q = (uint8_t *)malloc(MM_KBLOCK + 8);
            w->panel = (float *)malloc(sizeof(float) * MM_PANEL * MM_KBLOCK);
            w->acc = (float *)malloc(sizeof(float) * MM_PANEL * (size_t)nb);
            ok = w->q && w->panel && w->acc;
        } else {
            w->s = (float *)malloc(sizeof(float) * G);
            w->nzs = (float *)malloc(sizeof(float) * G);
            w->q = (uint8_t *)malloc((size_t)p->q.cols + 8);
            ok = w->s && w->nzs && w->q;
        }
        if (!ok) {
            free_scratch(ws, nw);
            return NULL;
        }
    }
    return ws;
}

/* rows of `width` elements `stride` apart: the last element's index fits (as bytes too) */
static int rows_fit(int64_t n, int64_t stride, int64_t width) {
    return n <= 1 || (n - 1) <= (INT64_MAX / 8 - width) / stride;
}

adpq_status adpq_matmul_k(const adpq_kernels *K, const adpq_matmul_plan *plan, const float *x, int64_t n,
                          int64_t x_stride, float *y, int64_t y_stride, int mode, int threads, char *err) {
    if (!plan || !plan->q.codes || plan->lay.group_size < 1) {
        adpq_set_err(err, "the matmul plan is not prepared");
        return ADPQ_ERR_ARG;
    }
    const int64_t rows = plan->q.rows, cols = plan->q.cols;
    if (n < 0 || x_stride < cols || y_stride < rows || threads < 1) {
        adpq_set_err(err, "bad sizes: n=%lld (>= 0), x_stride=%lld (>= %lld), y_stride=%lld (>= %lld), threads=%d (>= 1)",
                     (long long)n, (long long)x_stride, (long long)cols, (long long)y_stride, (long long)rows, threads);
        return ADPQ_ERR_ARG;
    }
    if (!rows_fit(n, x_stride, cols) || !rows_fit(n, y_stride, rows)) {
        adpq_set_err(err, "x or y is too large (%lld rows)", (long long)n);
        return ADPQ_ERR_ARG;
    }
    if (mode != ADPQ_MATMUL_FLOAT) {
        adpq_set_err(err, "unknown matmul mode %d", mode);
        return ADPQ_ERR_ARG;
    }
    if (n == 0) return ADPQ_OK;
    if (!x || !y) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    const int panel = n >= MM_PANEL_N;
    const int64_t nb = panel && n > MM_XBLOCK ? MM_XBLOCK : n;
    mm_ctx c = {K, plan, NULL, 0, 0, y, y_stride, 0, 0, NULL};
    c.packed = cols % 8 == 0 && plan->lay.group_size % 8 == 0;
    int64_t ntasks;
    if (panel) {
        ntasks = (rows + MM_PANEL - 1) / MM_PANEL;
    } else {
        c.rows_per_task = (rows + (int64_t)threads * MM_ROW_TASKS - 1) / ((int64_t)threads * MM_ROW_TASKS);
        if (c.rows_per_task < 4) c.rows_per_task = 4;
        ntasks = (rows + c.rows_per_task - 1) / c.rows_per_task;
    }
    /* (rows * cols fits: adpq_layout_of checked the code bytes) */
    if (rows * cols < MM_MIN_PARALLEL / nb) threads = 1;
    if (threads > ntasks) threads = (int)ntasks;
    float *xbuf = plan->col_mul ? (float *)malloc(sizeof(float) * (size_t)(nb * cols)) : NULL;
    mm_scratch *ws = alloc_scratch(threads, plan, panel, nb);
    if ((plan->col_mul && !xbuf) || !ws) {
        free(xbuf);
        free_scratch(ws, threads);
        adpq_set_err(err, "out of memory");
        return ADPQ_ERR_NOMEM;
    }
    c.ws = ws;
    for (int64_t i0 = 0; i0 < n; i0 += nb) {
        c.n = n - i0 < nb ? n - i0 : nb;
        c.x = x + i0 * x_stride;
        c.xs = x_stride;
        c.y = y + i0 * y_stride;
        if (xbuf) { /* x' = x * c: the column scales, once per activation row */
            for (int64_t i = 0; i < c.n; i++) K->mul_row(c.x + i * x_stride, ADPQ_F32, plan->col_mul, cols, xbuf + i * cols);
            c.x = xbuf;
            c.xs = cols;
        }
        adpq_parallel_for(threads, ntasks, panel ? panel_task : rows_task, &c);
    }
    free(xbuf);
    free_scratch(ws, threads);
    return ADPQ_OK;
}
