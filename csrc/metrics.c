/* metrics.c - the sums behind adpq.metrics (DESIGN.md 2.5), in one parallel pass plus a
 * histogram pass, so that error reports cost about as much as reading the two matrices.
 * Partial sums are per chunk of rows and added in chunk order: results do not depend on threads. */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

typedef struct {
    const adpq_matrix *w;
    const float *w_hat;      /* rows x cols, row-major */
    int64_t rows_per_task;
    adpq_error_stats *part;  /* one per task */
    int64_t *hist_w, *hist_hat; /* one histogram of `bins` per task (pass 2) */
    double lo, scale;
    int bins;
    float **buf;             /* per worker: one row as float32 */
} mctx;

static const float *row_f32(const mctx *c, int64_t r, float *buf) {
    return adpq_row_f32(adpq_active_kernels(), c->w, r, 0, c->w->cols, buf);
}

static int sums_task(void *ctx, int64_t t, int worker) {
    mctx *c = (mctx *)ctx;
    adpq_error_stats *p = &c->part[t];
    const int64_t cols = c->w->cols;
    int64_t r0 = t * c->rows_per_task, r1 = r0 + c->rows_per_task;
    if (r1 > c->w->rows) r1 = c->w->rows;
    const adpq_kernels *K = adpq_active_kernels();
    double acc[3] = {0, 0, 0};
    float mm[4] = {INFINITY, -INFINITY, INFINITY, -INFINITY};
    for (int64_t r = r0; r < r1; r++)
        K->error_sums(row_f32(c, r, c->buf[worker]), c->w_hat + r * cols, cols, acc, mm);
    double se = acc[0], sw = acc[1], maxe = acc[2];
    float mn = mm[0], mx = mm[1], hmn = mm[2], hmx = mm[3];
    p->sum_sq_err = se;
    p->sum_sq_ref = sw;
    p->max_abs_err = maxe;
    p->min = mn < hmn ? mn : hmn;
    p->max = mx > hmx ? mx : hmx;
    return 0;
}

static int hist_task(void *ctx, int64_t t, int worker) {
    mctx *c = (mctx *)ctx;
    const int64_t cols = c->w->cols;
    int64_t *hw = c->hist_w + t * c->bins, *hh = c->hist_hat + t * c->bins;
    int64_t r0 = t * c->rows_per_task, r1 = r0 + c->rows_per_task;
    if (r1 > c->w->rows) r1 = c->w->rows;
    const adpq_kernels *K = adpq_active_kernels();
    for (int64_t r = r0; r < r1; r++) {
        K->histogram(row_f32(c, r, c->buf[worker]), cols, c->lo, c->scale, c->bins, hw);
        K->histogram(c->w_hat + r * cols, cols, c->lo, c->scale, c->bins, hh);
    }
    return 0;
}

adpq_status adpq_error_stats_of(const adpq_matrix *w, const float *w_hat, int bins, int threads,
                                adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat, char *err) {
    if (!w || !w_hat || !out || bins < 1 || threads < 1 || w->rows < 1 || w->cols < 1) {
        adpq_set_err(err, "bad arguments to error_stats");
        return ADPQ_ERR_ARG;
    }
    const int64_t rows = w->rows;
    int64_t ntasks = (int64_t)threads * 4;
    if (ntasks > rows) ntasks = rows;
    mctx c;
    memset(&c, 0, sizeof(c));
    c.w = w;
    c.w_hat = w_hat;
    c.bins = bins;
    c.rows_per_task = (rows + ntasks - 1) / ntasks;
    ntasks = (rows + c.rows_per_task - 1) / c.rows_per_task;
    c.part = (adpq_error_stats *)calloc((size_t)ntasks, sizeof(adpq_error_stats));
    c.hist_w = (int64_t *)calloc((size_t)(ntasks * bins), sizeof(int64_t));
    c.hist_hat = (int64_t *)calloc((size_t)(ntasks * bins), sizeof(int64_t));
    c.buf = (float **)calloc((size_t)threads, sizeof(float *));
    int rc = ADPQ_OK;
    if (!c.part || !c.hist_w || !c.hist_hat || !c.buf) goto nomem;
    for (int i = 0; i < threads; i++)
        if (!(c.buf[i] = (float *)malloc(sizeof(float) * (size_t)w->cols))) goto nomem;
    adpq_parallel_for(threads, ntasks, sums_task, &c);
    memset(out, 0, sizeof(*out));
    out->min = INFINITY;
    out->max = -INFINITY;
    for (int64_t t = 0; t < ntasks; t++) {
        out->sum_sq_err += c.part[t].sum_sq_err;
        out->sum_sq_ref += c.part[t].sum_sq_ref;
        out->max_abs_err = c.part[t].max_abs_err > out->max_abs_err ? c.part[t].max_abs_err : out->max_abs_err;
        out->min = c.part[t].min < out->min ? c.part[t].min : out->min;
        out->max = c.part[t].max > out->max ? c.part[t].max : out->max;
    }
    if (!isfinite(out->min) || !isfinite(out->max) || !isfinite(out->sum_sq_err)) {
        adpq_set_err(err, "w or w_hat contains NaN or Inf");
        rc = ADPQ_ERR_NONFINITE;
        goto done;
    }
    memset(hist_w, 0, sizeof(int64_t) * (size_t)bins);
    memset(hist_hat, 0, sizeof(int64_t) * (size_t)bins);
    if (out->max > out->min) {
        c.lo = out->min;
        c.scale = bins / (out->max - out->min);
        adpq_parallel_for(threads, ntasks, hist_task, &c);
        for (int64_t t = 0; t < ntasks; t++)
            for (int b = 0; b < bins; b++) {
                hist_w[b] += c.hist_w[t * bins + b];
                hist_hat[b] += c.hist_hat[t * bins + b];
            }
    }
    goto done;
nomem:
    adpq_set_err(err, "out of memory");
    rc = ADPQ_ERR_NOMEM;
done:
    if (c.buf)
        for (int i = 0; i < threads; i++) free(c.buf[i]);
    free(c.buf);
    free(c.part);
    free(c.hist_w);
    free(c.hist_hat);
    return (adpq_status)rc;
}
