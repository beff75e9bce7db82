/* metrics.c - the sums behind adpq.metrics (docs/DESIGN.md 2.5), so that error reports cost about as
 * much as reading the two matrices. Partial sums are per chunk of rows (4 chunks per thread) and added
 * in chunk order: the same thread count gives the same bits; another count may change the last bits
 * of the double sums (the histograms, and so the KL, do not change).
 *
 * The histogram bins span [min, max] of w and w_hat together, which is known only after a pass
 * over both. Rather than a second pass (converting w and dequantizing w_hat again), a cheap
 * pre-pass finds min/max of w and the rows holding them; the range guessed from those values and
 * from w_hat on those two rows is almost always the exact one (w_hat rarely leaves w's range
 * elsewhere: the extremes of w are outliers, stored nearly exactly), so the sums pass fills the
 * histograms with it. If the exact range turns out different, the histograms are redone in a
 * second pass with it: the results are the same either way. */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

typedef struct {
    float min, max;          /* of w over a task's rows */
    int64_t row_min, row_max; /* the rows where they first occur */
} wrange;

typedef struct {
    const adpq_kernels *K;
    const adpq_matrix *w;
    const float *w_hat;      /* rows x cols, row-major; or NULL and dq: */
    const adpq_dq *dq;       /* w_hat dequantized row by row, never stored whole */
    int64_t rows_per_task;
    adpq_error_stats *part;  /* one per task */
    int64_t *hist_w, *hist_hat; /* one histogram of `bins` per task */
    double lo, scale;
    int bins;
    int fill_hist;           /* the sums pass also fills the histograms with lo/scale */
    wrange *pre;             /* pre-pass, per task */
    float **buf;             /* per worker: one row as float32 (w), then one of w_hat (dq) */
    uint8_t **codes;         /* per worker: one row of codes (dq) */
} mctx;

static const float *row_f32(const mctx *c, int64_t r, float *buf) {
    return adpq_row_f32(c->K, c->w, r, 0, c->w->cols, buf);
}

static const float *hat_row(const mctx *c, int64_t r, int worker) {
    const int64_t cols = c->w->cols;
    if (c->w_hat) return c->w_hat + r * cols;
    float *h = c->buf[worker] + cols;
    adpq_dq_row(c->dq, r, c->codes[worker], h);
    return h;
}

static int sums_task(void *ctx, int64_t t, int worker) {
    mctx *c = (mctx *)ctx;
    adpq_error_stats *p = &c->part[t];
    const int64_t cols = c->w->cols;
    int64_t r0 = t * c->rows_per_task, r1 = r0 + c->rows_per_task;
    if (r1 > c->w->rows) r1 = c->w->rows;
    const adpq_kernels *K = c->K;
    double acc[3] = {0, 0, 0};
    float mm[4] = {INFINITY, -INFINITY, INFINITY, -INFINITY};
    int64_t *hw = c->hist_w + t * c->bins, *hh = c->hist_hat + t * c->bins;
    for (int64_t r = r0; r < r1; r++) {
        const float *wr = row_f32(c, r, c->buf[worker]), *hr = hat_row(c, r, worker);
        K->error_sums(wr, hr, cols, acc, mm);
        if (c->fill_hist) {
            K->histogram(wr, cols, c->lo, c->scale, c->bins, hw);
            K->histogram(hr, cols, c->lo, c->scale, c->bins, hh);
        }
    }
    double se = acc[0], sw = acc[1], maxe = acc[2];
    float mn = mm[0], mx = mm[1], hmn = mm[2], hmx = mm[3];
    p->sum_sq_err = se;
    p->sum_sq_ref = sw;
    p->max_abs_err = maxe;
    p->min = mn < hmn ? mn : hmn;
    p->max = mx > hmx ? mx : hmx;
    return 0;
}

/* min/max of w over the task's rows, and the rows where they first occur */
static int pre_task(void *ctx, int64_t t, int worker) {
    mctx *c = (mctx *)ctx;
    const int64_t cols = c->w->cols;
    int64_t r0 = t * c->rows_per_task, r1 = r0 + c->rows_per_task;
    if (r1 > c->w->rows) r1 = c->w->rows;
    const adpq_kernels *K = c->K;
    float mn = INFINITY, mx = -INFINITY;
    int64_t rmn = r0, rmx = r0;
    for (int64_t r = r0; r < r1; r++) {
        float a, b;
        K->minmax(row_f32(c, r, c->buf[worker]), cols, 0, &a, &b);
        if (a < mn) mn = a, rmn = r;
        if (b > mx) mx = b, rmx = r;
    }
    c->pre[t] = (wrange){mn, mx, rmn, rmx};
    return 0;
}

static void set_range(mctx *c, double mn, double mx) {
    c->lo = mn;
    c->scale = c->bins / (mx - mn);
}

static int hist_task(void *ctx, int64_t t, int worker) {
    mctx *c = (mctx *)ctx;
    const int64_t cols = c->w->cols;
    int64_t *hw = c->hist_w + t * c->bins, *hh = c->hist_hat + t * c->bins;
    int64_t r0 = t * c->rows_per_task, r1 = r0 + c->rows_per_task;
    if (r1 > c->w->rows) r1 = c->w->rows;
    const adpq_kernels *K = c->K;
    for (int64_t r = r0; r < r1; r++) {
        K->histogram(row_f32(c, r, c->buf[worker]), cols, c->lo, c->scale, c->bins, hw);
        K->histogram(hat_row(c, r, worker), cols, c->lo, c->scale, c->bins, hh);
    }
    return 0;
}

static adpq_status error_stats(const adpq_kernels *K, const adpq_matrix *w, const float *w_hat, const adpq_dq *dq, int bins, int threads,
                               adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat, char *err) {
    if (!w || (!w_hat && !dq) || !out || bins < 1 || threads < 1 || w->rows < 1 || w->cols < 1) {
        adpq_set_err(err, "bad arguments to error_stats");
        return ADPQ_ERR_ARG;
    }
    const int64_t rows = w->rows;
    int64_t ntasks = (int64_t)threads * 4;
    if (ntasks > rows) ntasks = rows;
    mctx c;
    memset(&c, 0, sizeof(c));
    c.K = K;
    c.w = w;
    c.w_hat = w_hat;
    c.dq = dq;
    c.bins = bins;
    c.rows_per_task = (rows + ntasks - 1) / ntasks;
    ntasks = (rows + c.rows_per_task - 1) / c.rows_per_task;
    c.part = (adpq_error_stats *)calloc((size_t)ntasks, sizeof(adpq_error_stats));
    c.hist_w = (int64_t *)calloc((size_t)(ntasks * bins), sizeof(int64_t));
    c.hist_hat = (int64_t *)calloc((size_t)(ntasks * bins), sizeof(int64_t));
    c.buf = (float **)calloc((size_t)threads, sizeof(float *));
    c.codes = (uint8_t **)calloc((size_t)threads, sizeof(uint8_t *));
    c.pre = (wrange *)malloc(sizeof(wrange) * (size_t)ntasks);
    int rc = ADPQ_OK;
    if (!c.part || !c.hist_w || !c.hist_hat || !c.buf || !c.codes || !c.pre) goto nomem;
    for (int i = 0; i < threads; i++) {
        if (!(c.buf[i] = (float *)malloc(sizeof(float) * (size_t)w->cols * (dq ? 2 : 1)))) goto nomem;
        if (dq && !(c.codes[i] = (uint8_t *)malloc((size_t)w->cols + 8))) goto nomem;
    }
    /* the guessed range: w's, widened by w_hat on the rows holding w's min and max */
    adpq_parallel_for(threads, ntasks, pre_task, &c);
    float guess_min = INFINITY, guess_max = -INFINITY;
    int64_t row_min = 0, row_max = 0;
    for (int64_t t = 0; t < ntasks; t++) {
        if (c.pre[t].min < guess_min) guess_min = c.pre[t].min, row_min = c.pre[t].row_min;
        if (c.pre[t].max > guess_max) guess_max = c.pre[t].max, row_max = c.pre[t].row_max;
    }
    for (int i = 0; i < 2; i++) {
        float a, b;
        K->minmax(hat_row(&c, i ? row_max : row_min, 0), w->cols, 0, &a, &b);
        guess_min = a < guess_min ? a : guess_min;
        guess_max = b > guess_max ? b : guess_max;
    }
    if (isfinite(guess_min) && isfinite(guess_max) && guess_max > guess_min) {
        c.fill_hist = 1;
        set_range(&c, guess_min, guess_max);
    }
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
        /* (+0 and -0 give the same bins: comparing values is enough) */
        if (!c.fill_hist || out->min != guess_min || out->max != guess_max) { /* the guess missed */
            memset(c.hist_w, 0, sizeof(int64_t) * (size_t)(ntasks * bins));
            memset(c.hist_hat, 0, sizeof(int64_t) * (size_t)(ntasks * bins));
            set_range(&c, out->min, out->max);
            adpq_parallel_for(threads, ntasks, hist_task, &c);
        }
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
    if (c.codes)
        for (int i = 0; i < threads; i++) free(c.codes[i]);
    free(c.buf);
    free(c.codes);
    free(c.part);
    free(c.hist_w);
    free(c.hist_hat);
    free(c.pre);
    return (adpq_status)rc;
}

adpq_status adpq_error_stats_of_k(const adpq_kernels *K, const adpq_matrix *w, const float *w_hat, int bins, int threads,
                                  adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat, char *err) {
    if (!w_hat) {
        adpq_set_err(err, "bad arguments to error_stats");
        return ADPQ_ERR_ARG;
    }
    return error_stats(K, w, w_hat, NULL, bins, threads, out, hist_w, hist_hat, err);
}

adpq_status adpq_error_stats_q_k(const adpq_kernels *K, const adpq_matrix *w, const adpq_qmatrix *q,
                                 const adpq_config *cfg, const float *col_mul, int bins, int threads,
                                 adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat, char *err) {
    if (!w || !q || q->rows != w->rows || q->cols != w->cols) {
        adpq_set_err(err, "w and the quantized matrix differ in shape");
        return ADPQ_ERR_ARG;
    }
    adpq_dq d;
    adpq_status st = (adpq_status)adpq_dq_init(&d, K, q, cfg, col_mul, err);
    if (st) return st;
    st = error_stats(K, w, NULL, &d, bins, threads, out, hist_w, hist_hat, err);
    adpq_dq_free(&d);
    return st;
}

double adpq_kl_from_histograms(const int64_t *p, const int64_t *q, int bins, double eps) {
    double np_ = 0, nq = 0;
    for (int b = 0; b < bins; b++) {
        np_ += (double)p[b];
        nq += (double)q[b];
    }
    np_ = np_ > 1 ? np_ : 1;
    nq = nq > 1 ? nq : 1;
    double sp = 0, sq = 0; /* the totals after eps, to renormalise */
    for (int b = 0; b < bins; b++) {
        sp += (double)p[b] / np_ + eps;
        sq += (double)q[b] / nq + eps;
    }
    double kl = 0;
    for (int b = 0; b < bins; b++) {
        const double pb = ((double)p[b] / np_ + eps) / sp, qb = ((double)q[b] / nq + eps) / sq;
        kl += pb * log(pb / qb);
    }
    return kl;
}
