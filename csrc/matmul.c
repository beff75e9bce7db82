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
    MM_Q8_ROWS = 4,    /* int8 route, one activation row: weight rows per pass of mm_q8_rows */
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
    float *s, *nzs;  /* the groups of a row (int8 route, one activation row: MM_Q8_ROWS rows): scale and
                        -z * s (int8 route: -z * s + bias * s) */
    uint8_t *q;      /* unpacked codes: a row (row route) or a column block (panel route), + 8; int8
                        route: copies (MM_Q8_ROWS of cols + 40) of rows whose blocks' reads would leave the stream */
    float *panel;    /* MM_PANEL x MM_KBLOCK dequantized weights */
    float *acc;      /* MM_XBLOCK x MM_PANEL sums */
} mm_scratch;

typedef struct {
    const adpq_kernels *K;
    const adpq_matmul_plan *p;
    const float *x; /* x' rows of this block */
    int64_t xs, n;
    void *y;        /* float32, or bfloat16 bits when ybf16 */
    int64_t ys, rows_per_task;
    int packed; /* every row starts at a byte boundary and groups hold whole blocks of 8 */
    int ybf16;
    mm_scratch *ws;
    /* the int8 route (q8): x' quantized (kernels' q8_quantize), xbs blocks per row; xzs[i * G + k] =
     * sum over the blocks of group k of d_b * xsum_b, the activations' side of the zero-point terms */
    int q8;
    int64_t xbs, bpg;
    const int8_t *xq;
    const float *xd, *xzs;
} mm_ctx;

static inline void put_y(const mm_ctx *c, int64_t i, int64_t r, float v) {
    if (c->ybf16)
        ((uint16_t *)c->y)[i * c->ys + r] = adpq_f32_to_bf16(v);
    else
        ((float *)c->y)[i * c->ys + r] = v;
}

/* sum of a[k] * b[k], k < n, in 4 chains held in registers (the zero-point terms of a row) */
static inline float dot4(const float *a, const float *b, int64_t n) {
    float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        c0 += a[k] * b[k];
        c1 += a[k + 1] * b[k + 1];
        c2 += a[k + 2] * b[k + 2];
        c3 += a[k + 3] * b[k + 3];
    }
    for (; k < n; k++) c0 += a[k] * b[k];
    return (c0 + c1) + (c2 + c3);
}

/* sum of delta * x' over row r's outliers */
static inline float correction(const mm_ctx *c, int64_t r, const float *xrow) {
    const adpq_matmul_plan *p = c->p;
    if (!p->row_ptr) return 0.0f;
    const int64_t o = p->row_ptr[r];
    return c->K->mm_corr(p->corr_col + o, p->corr_delta + o, p->row_ptr[r + 1] - o, xrow);
}

/* 4-byte reads at each block of row r stay in the stream (all rows but perhaps the last one) */
static inline int row_packed(const mm_ctx *c, int64_t r) {
    const adpq_matmul_plan *p = c->p;
    const int64_t cols = p->q.cols, bits = p->cfg.bits;
    return c->packed && r * cols / 8 * bits + (cols / 8 - 1) * bits + 4 <= p->lay.code_bytes;
}

/* s[k] and nzs[k] = -(z * s) (+ bias * s when bias != 0) of the groups of rows r..r+nr-1 (k < nr * G):
 * group_sz's values, converted nr rows at a time by the kernel set (the scale dtype's conversions
 * are exact) */
static void row_params(const mm_ctx *c, int64_t r, int64_t nr, float *s, float *nzs, float bias) {
    const adpq_matmul_plan *p = c->p;
    const int64_t g0 = r * p->lay.groups_per_row, G = p->lay.groups_per_row * nr; /* first group, count */
    const int sb = p->lay.scale_bytes, sd = p->cfg.scale_dtype, sym = p->cfg.symmetric;
    const char *sc = (const char *)p->q.scales + g0 * sb, *zc = sym ? NULL : (const char *)p->q.zeros + g0 * sb;
    if ((uintptr_t)sc % (uintptr_t)sb || (zc && (uintptr_t)zc % (uintptr_t)sb)) { /* unaligned arrays */
        for (int64_t k = 0; k < G; k++) {
            float z;
            group_sz(p, g0 + k, s + k, &z);
            nzs[k] = -(z * s[k]);
            if (bias != 0.0f) nzs[k] += bias * s[k];
        }
        return;
    }
    for (int i = 0; i < 2 - sym; i++) {
        const char *src = i ? zc : sc;
        float *dst = i ? nzs : s;
        if (sd == ADPQ_F32)
            memcpy(dst, src, sizeof(float) * (size_t)G);
        else if (sd == ADPQ_F16)
            c->K->f16_to_f32((const uint16_t *)src, G, dst);
        else
            c->K->bf16_to_f32((const uint16_t *)src, G, dst);
    }
    const float zs = (float)(1 << (p->cfg.bits - 1));
    for (int64_t k = 0; k < G; k++) nzs[k] = -((sym ? zs : nzs[k]) * s[k]);
    if (bias != 0.0f)
        for (int64_t k = 0; k < G; k++) nzs[k] += bias * s[k];
}

static int rows_task(void *vc, int64_t t, int worker) {
    const mm_ctx *c = (const mm_ctx *)vc;
    const adpq_matmul_plan *p = c->p;
    const mm_scratch *w = &c->ws[worker];
    const int64_t rows = p->q.rows, cols = p->q.cols, g = p->lay.group_size;
    const int bits = p->cfg.bits;
    const int64_t r0 = t * c->rows_per_task, r1 = rows - r0 < c->rows_per_task ? rows : r0 + c->rows_per_task;
    for (int64_t r = r0; r < r1; r++) {
        row_params(c, r, 1, w->s, w->nzs, 0.0f);
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
            for (int i = 0; i < nx; i++) put_y(c, i0 + i, r, out[i] + correction(c, r, x + i * c->xs));
        }
    }
    return 0;
}

/* the int8 route: rows_task with mm_q8 and the zero-point terms in float */
static int q8_task(void *vc, int64_t t, int worker) {
    const mm_ctx *c = (const mm_ctx *)vc;
    const adpq_matmul_plan *p = c->p;
    const mm_scratch *w = &c->ws[worker];
    const int64_t rows = p->q.rows, cols = p->q.cols, G = p->lay.groups_per_row, nb = c->xbs;
    const int bits = p->cfg.bits;
    const float bias = bits == 8 ? 128.0f : 0.0f;
    const int64_t r0 = t * c->rows_per_task, r1 = rows - r0 < c->rows_per_task ? rows : r0 + c->rows_per_task;
    const int64_t row_bytes = cols / 8 * bits, reach = nb * 4 * bits + 4; /* the kernel's reads */
    if (c->n == 1) { /* MM_Q8_ROWS weight rows per pass */
        const float *xz = c->xzs;
        for (int64_t r = r0; r < r1; r += MM_Q8_ROWS) {
            const int nr = r1 - r < MM_Q8_ROWS ? (int)(r1 - r) : MM_Q8_ROWS;
            row_params(c, r, nr, w->s, w->nzs, bias);
            const uint8_t *cp[MM_Q8_ROWS];
            for (int j = 0; j < nr; j++) {
                cp[j] = p->q.codes + (r + j) * row_bytes;
                if ((r + j) * row_bytes + reach > p->lay.code_bytes) { /* the last rows: padded copies */
                    uint8_t *dst = w->q + (size_t)j * (size_t)(cols + 40);
                    memcpy(dst, cp[j], (size_t)row_bytes);
                    memset(dst + row_bytes, 0, (size_t)(reach - row_bytes));
                    cp[j] = dst;
                }
            }
            float out[MM_Q8_ROWS];
            /* the next pass's rows (MM_Q8_ROWS * row_bytes <= nb * pfs bytes): prefetched block by block */
            const int64_t pfs = MM_Q8_ROWS * 4 * bits;
            const int ahead = (r + nr) * row_bytes + nb * pfs <= p->lay.code_bytes;
            const uint8_t *pf = ahead ? p->q.codes + (r + nr) * row_bytes : cp[0];
            c->K->mm_q8_rows(cp, nr, bits, cols, c->bpg, w->s, G, c->xq, c->xd, pf, ahead ? pfs : 0, out);
            for (int j = 0; j < nr; j++) {
                put_y(c, 0, r + j, out[j] + dot4(w->nzs + j * G, xz, G) + correction(c, r + j, c->x));
            }
        }
        return 0;
    }
    for (int64_t r = r0; r < r1; r++) {
        row_params(c, r, 1, w->s, w->nzs, bias);
        const uint8_t *codes = p->q.codes + r * row_bytes;
        if (r * row_bytes + reach > p->lay.code_bytes) { /* the last rows: a padded copy */
            memcpy(w->q, codes, (size_t)row_bytes);
            memset(w->q + row_bytes, 0, (size_t)(reach - row_bytes));
            codes = w->q;
        }
        for (int64_t i0 = 0; i0 < c->n; i0 += 4) {
            const int nx = c->n - i0 < 4 ? (int)(c->n - i0) : 4;
            float out[4];
            c->K->mm_q8(codes, bits, cols, c->bpg, w->s, c->xq + i0 * nb * 32, c->xd + i0 * nb, nb, nx, out);
            for (int i = 0; i < nx; i++) {
                const float zt = dot4(w->nzs, c->xzs + (i0 + i) * G, G);
                put_y(c, i0 + i, r, out[i] + zt + correction(c, r, c->x + (i0 + i) * c->xs));
            }
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
            put_y(c, i, r0 + j, w->acc[i * MM_PANEL + j] + correction(c, r0 + j, c->x + i * c->xs));
    return 0;
}

/* One allocation per call for the call's buffers and every worker's scratch, each part 64-byte
 * aligned. mm_lay runs twice: without a base it sums the sizes (0 when they overflow size_t), with
 * one it hands out the parts. */
typedef struct {
    mm_scratch *ws;
    float *xbuf;
    int8_t *xq;
    float *xd;
    int32_t *xsum;
} mm_bufs;

static void *mm_part(char *base, size_t *off, size_t bytes, int *ok) {
    const size_t a = bytes > SIZE_MAX - 63 ? SIZE_MAX : (bytes + 63) & ~(size_t)63;
    if (!*ok || a == SIZE_MAX || *off > SIZE_MAX - 64 - a) {
        *ok = 0;
        return NULL;
    }
    void *r = base ? base + *off : NULL;
    *off += a;
    return r;
}

static size_t mm_lay(char *base, mm_bufs *b, int nw, const adpq_matmul_plan *p, int panel, int q8, int convert,
                     int64_t nb, int64_t xbs) {
    const size_t G = (size_t)p->lay.groups_per_row, cols = (size_t)p->q.cols, n = (size_t)nb;
    size_t off = 0;
    int ok = 1;
    b->ws = (mm_scratch *)mm_part(base, &off, sizeof(mm_scratch) * (size_t)nw, &ok);
    b->xbuf = convert ? (float *)mm_part(base, &off, sizeof(float) * n * cols, &ok) : NULL;
    b->xq = q8 ? (int8_t *)mm_part(base, &off, n * (size_t)xbs * 32, &ok) : NULL;
    b->xd = q8 ? (float *)mm_part(base, &off, sizeof(float) * n * ((size_t)xbs + G), &ok) : NULL;
    b->xsum = q8 ? (int32_t *)mm_part(base, &off, sizeof(int32_t) * (size_t)xbs, &ok) : NULL;
    for (int i = 0; i < nw; i++) {
        mm_scratch w;
        memset(&w, 0, sizeof(w));
        if (panel) {
            w.q = (uint8_t *)mm_part(base, &off, MM_KBLOCK + 8, &ok);
            w.panel = (float *)mm_part(base, &off, sizeof(float) * MM_PANEL * MM_KBLOCK, &ok);
            w.acc = (float *)mm_part(base, &off, sizeof(float) * MM_PANEL * n, &ok);
        } else {
            w.s = (float *)mm_part(base, &off, sizeof(float) * G * MM_Q8_ROWS, &ok);
            w.nzs = (float *)mm_part(base, &off, sizeof(float) * G * MM_Q8_ROWS, &ok);
            w.q = (uint8_t *)mm_part(base, &off, (cols + 40) * MM_Q8_ROWS, &ok);
        }
        if (base && ok) b->ws[i] = w;
    }
    return ok ? off : 0;
}

/* rows of `width` elements `stride` apart: the last element's index fits (as bytes too) */
static int rows_fit(int64_t n, int64_t stride, int64_t width) {
    return n <= 1 || (n - 1) <= (INT64_MAX / 8 - width) / stride;
}

/* the int8 route applies: few activation rows, rows at byte boundaries, whole blocks of 32 in groups */
int adpq_matmul_int8_applies(const adpq_matmul_plan *plan, int64_t n) {
    const int64_t cols = plan->q.cols, g = plan->lay.group_size;
    return n < MM_PANEL_N && cols % 8 == 0 && (g % 32 == 0 || g >= cols);
}

adpq_status adpq_matmul_k(const adpq_kernels *K, const adpq_matmul_plan *plan, const void *x, int x_dtype, int64_t n,
                          int64_t x_stride, void *y, int y_dtype, int64_t y_stride, int mode, int threads, char *err) {
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
    if (mode != ADPQ_MATMUL_FLOAT && mode != ADPQ_MATMUL_INT8) {
        adpq_set_err(err, "unknown matmul mode %d", mode);
        return ADPQ_ERR_ARG;
    }
    if ((x_dtype != ADPQ_F32 && x_dtype != ADPQ_F16 && x_dtype != ADPQ_BF16) ||
        (y_dtype != ADPQ_F32 && y_dtype != ADPQ_BF16)) {
        adpq_set_err(err, "bad dtypes: x %d (float32, float16 or bfloat16), y %d (float32 or bfloat16)", x_dtype,
                     y_dtype);
        return ADPQ_ERR_ARG;
    }
    if (n == 0) return ADPQ_OK;
    if (!x || !y) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    const int q8 = mode == ADPQ_MATMUL_INT8 && adpq_matmul_int8_applies(plan, n);
    const int panel = !q8 && n >= MM_PANEL_N;
    const int64_t nb = panel && n > MM_XBLOCK ? MM_XBLOCK : n;
    const int64_t G = plan->lay.groups_per_row, xbs = (cols + 31) / 32;
    mm_ctx c;
    memset(&c, 0, sizeof(c));
    c.K = K;
    c.p = plan;
    c.ys = y_stride;
    c.ybf16 = y_dtype == ADPQ_BF16;
    c.packed = cols % 8 == 0 && plan->lay.group_size % 8 == 0;
    c.q8 = q8;
    c.xbs = xbs;
    c.bpg = plan->lay.group_size >= cols ? xbs : plan->lay.group_size / 32;
    int64_t ntasks;
    if (panel) {
        ntasks = (rows + MM_PANEL - 1) / MM_PANEL;
    } else {
        c.rows_per_task = (rows + (int64_t)threads * MM_ROW_TASKS - 1) / ((int64_t)threads * MM_ROW_TASKS);
        c.rows_per_task = (c.rows_per_task + 3) / 4 * 4; /* whole passes of MM_Q8_ROWS */
        ntasks = (rows + c.rows_per_task - 1) / c.rows_per_task;
    }
    /* (rows * cols fits: adpq_layout_of checked the code bytes) */
    /* (the int8 route does its multiply-adds about 4 times as fast: 4 times as many pay a wake-up) */
    if (rows * cols < (q8 ? 4 * MM_MIN_PARALLEL : MM_MIN_PARALLEL) / nb) threads = 1;
    if (threads > ntasks) threads = (int)ntasks;
    /* x' = x * col_mul in float32 (and x converted to float32) when either applies; the int8 route's
     * buffers (n < MM_PANEL_N rows: the sizes fit) */
    const int convert = plan->col_mul || x_dtype != ADPQ_F32;
    mm_bufs bufs;
    const size_t total = mm_lay(NULL, &bufs, threads, plan, panel, q8, convert, nb, xbs);
    char *mem = total ? (char *)malloc(total + 64) : NULL;
    if (!mem) {
        adpq_set_err(err, "out of memory");
        return ADPQ_ERR_NOMEM;
    }
    mm_lay(mem + (64 - (uintptr_t)mem % 64) % 64, &bufs, threads, plan, panel, q8, convert, nb, xbs);
    float *const xbuf = bufs.xbuf, *const xd = bufs.xd;
    int8_t *const xq = bufs.xq;
    int32_t *const xsum = bufs.xsum;
    c.ws = bufs.ws;
    const size_t xes = x_dtype == ADPQ_F32 ? 4 : 2, yes = y_dtype == ADPQ_F32 ? 4 : 2;
    for (int64_t i0 = 0; i0 < n; i0 += nb) {
        c.n = n - i0 < nb ? n - i0 : nb;
        c.x = (const float *)((const char *)x + (size_t)(i0 * x_stride) * xes);
        c.xs = x_stride;
        c.y = (char *)y + (size_t)(i0 * y_stride) * yes;
        if (xbuf) { /* x' = x * c: the column scales, once per activation row */
            for (int64_t i = 0; i < c.n; i++) {
                const void *xr = (const char *)x + (size_t)((i0 + i) * x_stride) * xes;
                float *dst = xbuf + i * cols;
                if (plan->col_mul)
                    K->mul_row(xr, x_dtype, plan->col_mul, cols, dst);
                else if (x_dtype == ADPQ_F16)
                    K->f16_to_f32((const uint16_t *)xr, cols, dst);
                else
                    K->bf16_to_f32((const uint16_t *)xr, cols, dst);
            }
            c.x = xbuf;
            c.xs = cols;
        }
        if (q8) { /* x' to int8 per block, and the zero-point sums per group */
            float *xzs = xd + c.n * xbs;
            for (int64_t i = 0; i < c.n; i++) {
                float *di = xd + i * xbs;
                K->q8_quantize(c.x + i * c.xs, cols, plan->cfg.bits, xq + i * xbs * 32, di, xsum);
                for (int64_t k = 0, b = 0; k < G; k++) {
                    const int64_t b1 = xbs - b < c.bpg ? xbs : b + c.bpg;
                    float acc = 0.0f;
                    for (; b < b1; b++) acc += di[b] * (float)xsum[b];
                    xzs[i * G + k] = acc;
                }
            }
            c.xq = xq;
            c.xd = xd;
            c.xzs = xzs;
        }
        adpq_parallel_for(threads, ntasks, q8 ? q8_task : panel ? panel_task : rows_task, &c);
    }
    free(mem);
    return ADPQ_OK;
}
