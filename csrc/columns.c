/* columns.c - column scaling (python/adpq/reference/columns.py): the mean |w| of each column, and
 * from it the stored scales and the factors the quantized matrix is multiplied by. Rows are summed in
 * float32 in blocks of ADPQ_COLUMN_BLOCK rows (in row order from 0), each block sum added to a
 * double total in block order; the NumPy reference does the same, so both give the same bits.
 * Threads own column stripes: the order per column is kept. */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

#define ADPQ_COLUMN_BLOCK 64

typedef struct {
    const adpq_kernels *K;
    const adpq_matrix *m;
    double *sums;
    float **block;  /* per worker: one stripe of float32 block sums */
    int64_t stripe;
} cctx;

static int stripe_task(void *ctx, int64_t t, int worker) {
    cctx *c = (cctx *)ctx;
    const adpq_matrix *m = c->m;
    const adpq_kernels *K = c->K;
    const int64_t j0 = t * c->stripe, n = (m->cols - j0) < c->stripe ? (m->cols - j0) : c->stripe;
    float *blk = c->block[worker];
    double *sums = c->sums + j0;
    memset(blk, 0, sizeof(float) * (size_t)n);
    for (int64_t r = 0; r < m->rows; r++) {
        const size_t isz = m->dtype == ADPQ_F32 ? 4 : 2;
        K->abs_accumulate((const char *)m->data + (size_t)(r * m->row_stride + j0) * isz, m->dtype, n, blk);
        if ((r + 1) % ADPQ_COLUMN_BLOCK == 0 || r + 1 == m->rows) {
            for (int64_t j = 0; j < n; j++) sums[j] += (double)blk[j];
            memset(blk, 0, sizeof(float) * (size_t)n);
        }
    }
    return 0;
}

adpq_status adpq_column_mean_abs_k(const adpq_kernels *K, const adpq_matrix *m, int threads, float *mean, char *err) {
    if (!m || !m->data || !mean || m->rows < 1 || m->cols < 1 || threads < 1) {
        adpq_set_err(err, "bad arguments to column_mean_abs");
        return ADPQ_ERR_ARG;
    }
    cctx c;
    memset(&c, 0, sizeof(c));
    c.K = K;
    c.m = m;
    /* one stripe per thread (whole rows on one thread: a plain stream), of >= 256 columns */
    int64_t stripe = (m->cols + threads - 1) / threads;
    c.stripe = stripe < 256 ? 256 : stripe;
    const int64_t ntasks = (m->cols + c.stripe - 1) / c.stripe;
    c.sums = (double *)calloc((size_t)m->cols, sizeof(double));
    c.block = (float **)calloc((size_t)threads, sizeof(float *));
    int rc = ADPQ_OK;
    if (!c.sums || !c.block) goto nomem;
    for (int i = 0; i < threads; i++)
        if (!(c.block[i] = (float *)malloc(sizeof(float) * (size_t)c.stripe))) goto nomem;
    adpq_parallel_for(threads, ntasks, stripe_task, &c);
    for (int64_t j = 0; j < m->cols; j++) mean[j] = (float)(c.sums[j] / (double)m->rows);
    goto done;
nomem:
    adpq_set_err(err, "out of memory");
    rc = ADPQ_ERR_NOMEM;
done:
    for (int i = 0; c.block && i < threads; i++) free(c.block[i]);
    free(c.block);
    free(c.sums);
    return (adpq_status)rc;
}

adpq_status adpq_column_scales_k(const adpq_kernels *K, const adpq_matrix *m, int threads, uint16_t *scales, float *mul,
                                 char *err) {
    if (!scales || !mul) {
        adpq_set_err(err, "bad arguments to column_scales");
        return ADPQ_ERR_ARG;
    }
    adpq_status st = adpq_column_mean_abs_k(K, m, threads, mul, err); /* the means, in mul's place */
    if (st) return st;
    const float tiny = 0x1p-126f, one = 1.0f;
    for (int64_t j = 0; j < m->cols; j++) {
        const float mean = mul[j];
        uint16_t c = adpq_f32_to_bf16(isfinite(mean) && mean >= tiny ? mean : one);
        if (!isfinite(adpq_bf16_to_f32(c))) c = adpq_f32_to_bf16(one); /* rounded up past bfloat16's range */
        scales[j] = c;
        mul[j] = one / adpq_bf16_to_f32(c);
    }
    return ADPQ_OK;
}
