/* api.c - the public entry points that need a kernel set. Each reads the process default
 * (adpq_set_kernels) once and passes it down, so that one call never mixes kernel sets. Quantize
 * and outlier_mask: the context and rows (rows.c), the tensor-scope threshold (threshold.c) and
 * the assembly of the outlier arrays. */
#include <stdlib.h>

#include "quant.h"
#include "rows.h"
#include "threshold.h"

/* Threads beyond the work available (or beyond ADPQ_THREADS_CAP) would only cost per-thread scratch
 * memory: each entry point caps cfg->threads / threads first. (The results do not depend on it.) */
#define ADPQ_THREADS_CAP 1024

static int useful_threads(int threads, int64_t units) {
    if (units < 1) units = 1;
    if (threads > units) threads = (int)units;
    return threads > ADPQ_THREADS_CAP ? ADPQ_THREADS_CAP : threads;
}

/* cfg, or a copy in *tmp with its threads capped at `units` tasks (NULL stays NULL) */
static const adpq_config *capped_config(const adpq_config *cfg, int64_t units, adpq_config *tmp) {
    if (!cfg) return NULL;
    *tmp = *cfg;
    tmp->threads = useful_threads(cfg->threads, units);
    return tmp;
}

/* quantize and outlier_mask work in chunks of at least 8 rows (rows.c) */
static int64_t row_chunks(const adpq_matrix *m) { return m ? (m->rows + 7) / 8 : 1; }

void adpq_free_outliers(adpq_qmatrix *q) {
    free(q->outlier_counts);
    free(q->outlier_scales);
    free(q->outlier_zeros);
    free(q->outlier_indices);
    free(q->outlier_values);
    q->outlier_counts = q->outlier_scales = q->outlier_zeros = NULL;
    q->outlier_indices = NULL;
    q->outlier_values = NULL;
}

/* Moves the chunks' outlier records into the final arrays, in row order. */
static int assemble_outliers(qctx *c, adpq_qmatrix *q) {
    const adpq_config *cfg = c->cfg;
    int64_t n = 0, ng = 0;
    for (int64_t t = 0; t < c->nchunks; t++) n += c->chunks[t].n_out;
    for (int64_t i = 0; i < c->lay.num_groups; i++) ng += adpq_get_count(q->outlier_counts, i, c->lay.count_bytes) > 0;
    q->num_outliers = n;
    q->num_outlier_groups = ng;
    if (n == 0) {
        free(q->outlier_counts);
        q->outlier_counts = NULL;
        return ADPQ_OK;
    }
    int sb = c->lay.scale_bytes, ib = c->lay.index_bits;
    q->outlier_indices = (uint8_t *)calloc((size_t)((n * ib + 7) / 8), 1);
    if (!q->outlier_indices) return ADPQ_ERR_NOMEM;
    if (cfg->outlier_format == ADPQ_OUTLIERS_GROUP) {
        q->outlier_scales = malloc((size_t)ng * (size_t)sb);
        if (!q->outlier_scales) return ADPQ_ERR_NOMEM;
        if (!cfg->symmetric) {
            q->outlier_zeros = malloc((size_t)ng * (size_t)sb);
            if (!q->outlier_zeros) return ADPQ_ERR_NOMEM;
        }
    } else {
        q->outlier_values = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)n);
        if (!q->outlier_values) return ADPQ_ERR_NOMEM;
    }
    int64_t o = 0, og = 0;
    for (int64_t t = 0; t < c->nchunks; t++) {
        chunk_out *co = &c->chunks[t];
        adpq_pack_u32(q->outlier_indices, o, co->pos, co->n_out, ib);
        if (q->outlier_values && co->n_out)
            memcpy(q->outlier_values + o, co->vals, sizeof(uint16_t) * (size_t)co->n_out);
        for (int64_t i = 0; i < co->n_grp; i++) {
            adpq_put_stored(q->outlier_scales, og + i, co->osc[i], sb);
            if (q->outlier_zeros) adpq_put_stored(q->outlier_zeros, og + i, co->ozp[i], sb);
        }
        o += co->n_out;
        og += co->n_grp;
    }
    return ADPQ_OK;
}

adpq_status adpq_quantize(const adpq_matrix *m, const adpq_config *cfg_in, adpq_qmatrix *q, char *err) {
    qctx c;
    int64_t *quota = NULL;
    adpq_config capped;
    if (!q || !cfg_in || !q->codes || !q->scales || (!cfg_in->symmetric && !q->zeros)) {
        adpq_set_err(err, "output arrays missing");
        return ADPQ_ERR_ARG;
    }
    const adpq_config *cfg = capped_config(cfg_in, row_chunks(m), &capped);
    q->outlier_counts = q->outlier_scales = q->outlier_zeros = NULL;
    q->outlier_indices = NULL;
    q->outlier_values = NULL;
    q->num_outliers = q->num_outlier_groups = 0;
    int rc = adpq_qctx_init(&c, m, cfg, adpq_active_kernels(), err);
    if (rc) goto done;
    q->rows = m->rows;
    q->cols = m->cols;
    c.q = q;
    /* rows share bytes of the code stream only when cols % 8 != 0; those bytes are OR-ed */
    if (m->cols % 8) memset(q->codes, 0, (size_t)c.lay.code_bytes);
    q->outlier_counts = calloc((size_t)c.lay.num_groups, (size_t)c.lay.count_bytes);
    if (!q->outlier_counts) {
        rc = ADPQ_ERR_NOMEM;
        adpq_set_err(err, "out of memory");
        goto done;
    }
    q->passes = 1;
    q->fixed_groups = 0;
    if (c.mode == MODE_TENSOR) {
        rc = adpq_tensor_one_pass(&c, &quota, err);
        if (rc == ADPQ_ERR_AGAIN) {
            q->passes = 2;
            rc = adpq_tensor_threshold(&c, &quota, err);
            if (!rc) rc = adpq_run_pass(&c, adpq_quant_task, err);
        }
        for (int64_t t = 0; t < c.nchunks; t++) q->fixed_groups += c.chunks[t].n_fixed;
    } else {
        rc = adpq_run_pass(&c, adpq_quant_task, err);
    }
    if (rc) goto done;
    rc = assemble_outliers(&c, q);
    if (rc) adpq_set_err(err, "out of memory");
done:
    if (rc) adpq_free_outliers(q);
    free(quota);
    adpq_qctx_free(&c);
    return (adpq_status)rc;
}

adpq_status adpq_outlier_mask(const adpq_matrix *m, const adpq_config *cfg_in, uint8_t *mask, char *err) {
    qctx c;
    int64_t *quota = NULL;
    adpq_config capped;
    if (!mask) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    int rc = adpq_qctx_init(&c, m, capped_config(cfg_in, row_chunks(m), &capped), adpq_active_kernels(), err);
    if (rc == ADPQ_OK && c.mode == MODE_TENSOR) rc = adpq_tensor_threshold(&c, &quota, err);
    if (rc == ADPQ_OK) { /* (MODE_NONE too: the pass refuses NaN/Inf as quantize does, and finds no outlier) */
        c.mask_out = mask;
        rc = adpq_run_pass(&c, adpq_quant_task, err);
    }
    free(quota);
    adpq_qctx_free(&c);
    return (adpq_status)rc;
}

/* ------------------------------------------------------------ dequantize, metrics, columns */

adpq_status adpq_dequantize(const adpq_qmatrix *q, const adpq_config *cfg, const float *col_mul, float *out,
                            char *err) {
    adpq_config capped;
    return adpq_dequantize_k(adpq_active_kernels(), q, capped_config(cfg, q ? q->rows : 1, &capped), col_mul, out,
                             err);
}

adpq_status adpq_error_stats_of(const adpq_matrix *w, const float *w_hat, int bins, int threads,
                                adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat, char *err) {
    return adpq_error_stats_of_k(adpq_active_kernels(), w, w_hat, bins, useful_threads(threads, w ? w->rows : 1), out,
                                 hist_w, hist_hat, err);
}

adpq_status adpq_error_stats_q(const adpq_matrix *w, const adpq_qmatrix *q, const adpq_config *cfg, const float *col_mul,
                               int bins, int threads, adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat,
                               char *err) {
    adpq_config capped;
    const int64_t rows = w ? w->rows : 1;
    return adpq_error_stats_q_k(adpq_active_kernels(), w, q, capped_config(cfg, rows, &capped), col_mul, bins,
                                useful_threads(threads, rows), out, hist_w, hist_hat, err);
}

adpq_status adpq_column_mean_abs(const adpq_matrix *m, int threads, float *mean, char *err) {
    return adpq_column_mean_abs_k(adpq_active_kernels(), m, useful_threads(threads, m ? m->cols : 1), mean, err);
}

adpq_status adpq_column_scales(const adpq_matrix *m, int threads, uint16_t *scales, float *mul, char *err) {
    return adpq_column_scales_k(adpq_active_kernels(), m, useful_threads(threads, m ? m->cols : 1), scales, mul, err);
}

/* ------------------------------------------------------------ matmul */

adpq_status adpq_matmul_prepare(const adpq_qmatrix *q, const adpq_config *cfg, const float *col_mul,
                                adpq_matmul_plan *plan, char *err) {
    return adpq_matmul_prepare_k(adpq_active_kernels(), q, cfg, col_mul, plan, err);
}

adpq_status adpq_matmul(const adpq_matmul_plan *plan, const float *x, int64_t n, int64_t x_stride, float *y,
                        int64_t y_stride, int mode, int threads, char *err) {
    return adpq_matmul_k(adpq_active_kernels(), plan, x, ADPQ_F32, n, x_stride, y, ADPQ_F32, y_stride, mode, threads,
                         err);
}

adpq_status adpq_matmul_typed(const adpq_matmul_plan *plan, const void *x, int x_dtype, int64_t n, int64_t x_stride,
                              void *y, int y_dtype, int64_t y_stride, int mode, int threads, char *err) {
    return adpq_matmul_k(adpq_active_kernels(), plan, x, x_dtype, n, x_stride, y, y_dtype, y_stride, mode, threads, err);
}

int adpq_matmul_mode_used(const adpq_matmul_plan *plan, int64_t n, int mode) {
    return mode == ADPQ_MATMUL_INT8 && plan && plan->q.codes && adpq_matmul_int8_applies(plan, n) ? ADPQ_MATMUL_INT8
                                                                                                  : ADPQ_MATMUL_FLOAT;
}

/* ------------------------------------------------------------ GPTQ */

adpq_status adpq_gptq_inverse(const double *h, int64_t n, double damp, int act_order, int threads, float *u,
                              int64_t *perm, char *err) {
    return adpq_gptq_inverse_k(adpq_active_kernels(), h, n, damp, act_order, useful_threads(threads, n), u, n, perm,
                               err);
}

adpq_status adpq_gptq(const float *w, int64_t rows, int64_t cols, const double *h, const uint8_t *mask,
                      const adpq_gptq_config *cfg, float *scales, float *zeros, float *outlier_scales,
                      float *outlier_zeros, uint8_t *codes, float *values, char *err) {
    adpq_gptq_config capped;
    if (cfg) {
        capped = *cfg;
        capped.threads = useful_threads(cfg->threads, rows > cols ? rows : cols);
        cfg = &capped;
    }
    return adpq_gptq_k(adpq_active_kernels(), w, rows, cols, h, mask, cfg, scales, zeros, outlier_scales,
                       outlier_zeros, codes, values, err);
}
