/* dequant.c - w_hat = (q - z) * s with the inlier or outlier quantizer of each weight's group.
 * The arrays are validated first (counts within their groups, indices ascending and in range),
 * so that arrays rebuilt from a file can never make it read or write out of bounds. */
#include <stdlib.h>

#include "internal.h"
#include "quant.h"

/* Row r of w_hat into out (codes: cols + 8 bytes of scratch). */
void adpq_dq_row(const adpq_dq *d, int64_t r, uint8_t *codes, float *out) {
    const adpq_qmatrix *q = d->q;
    const int64_t cols = q->cols, g = d->lay.group_size, G = d->lay.groups_per_row;
    const int sb = d->lay.scale_bytes, sd = d->cfg->scale_dtype;
    adpq_unpack_codes(q->codes, r * cols, cols, d->cfg->bits, codes);
    int64_t o = q->num_outliers ? d->row_out[r] : 0, og = q->num_outliers ? d->row_ogrp[r] : 0;
    for (int64_t j = 0; j < G; j++) {
        const int64_t off = j * g, len = (cols - off) < g ? (cols - off) : g, gi = r * G + j;
        float s = adpq_stored_to_float(adpq_get_stored(q->scales, gi, sb), sd);
        float z = d->cfg->symmetric ? (float)(1 << (d->cfg->bits - 1))
                                    : adpq_stored_to_float(adpq_get_stored(q->zeros, gi, sb), sd);
        const float *mul = d->col_mul ? d->col_mul + off : NULL; /* column scales, while in registers */
        d->K->dequant(codes + off, len, s, z, mul, out + off);
        int64_t cnt = q->num_outliers ? adpq_get_count(q->outlier_counts, gi, d->lay.count_bytes) : 0;
        if (!cnt) continue;
        if (d->cfg->outlier_format == ADPQ_OUTLIERS_GROUP) {
            float so = adpq_stored_to_float(adpq_get_stored(q->outlier_scales, og, sb), sd);
            float zo = d->cfg->symmetric ? (float)(1 << (d->cfg->bits - 1))
                                         : adpq_stored_to_float(adpq_get_stored(q->outlier_zeros, og, sb), sd);
            for (int64_t i = 0; i < cnt; i++) {
                int64_t p = off + d->pos[o + i];
                float v = ((float)codes[p] - zo) * so;
                out[p] = mul ? v * mul[p - off] : v;
            }
        } else {
            for (int64_t i = 0; i < cnt; i++) {
                float v = adpq_f16_to_f32(q->outlier_values[o + i]);
                out[off + d->pos[o + i]] = mul ? v * mul[d->pos[o + i]] : v;
            }
        }
        o += cnt;
        og++;
    }
}

void adpq_dq_free(adpq_dq *d) {
    free(d->row_out);
    free(d->row_ogrp);
    free(d->pos);
    d->row_out = d->row_ogrp = NULL;
    d->pos = NULL;
}

/* Validates q's arrays against cfg and prepares per-row outlier offsets. */
int adpq_dq_init(adpq_dq *d, const adpq_kernels *K, const adpq_qmatrix *q, const adpq_config *cfg, const float *col_mul,
                 char *err) {
    memset(d, 0, sizeof(*d));
    if (!q || !cfg) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    int rc = adpq_layout_of(q->rows, q->cols, cfg, &d->lay, err);
    if (rc) return rc;
    d->q = q;
    d->cfg = cfg;
    d->K = K;
    d->col_mul = col_mul;
    if (!q->codes || !q->scales || (!cfg->symmetric && !q->zeros)) {
        adpq_set_err(err, "codes, scales%s are required", cfg->symmetric ? "" : " and zeros");
        return ADPQ_ERR_ARG;
    }
    if (q->num_outliers < 0 || q->num_outlier_groups < 0) {
        adpq_set_err(err, "negative outlier count");
        return ADPQ_ERR_ARG;
    }
    if (q->num_outliers == 0) return ADPQ_OK;
    const int64_t rows = q->rows, cols = q->cols, g = d->lay.group_size, G = d->lay.groups_per_row;
    int fmt_group = cfg->outlier_format == ADPQ_OUTLIERS_GROUP;
    if (!q->outlier_counts || !q->outlier_indices || (fmt_group && !q->outlier_scales) ||
        (fmt_group && !cfg->symmetric && !q->outlier_zeros) || (!fmt_group && !q->outlier_values)) {
        adpq_set_err(err, "outlier arrays missing for %lld outliers", (long long)q->num_outliers);
        return ADPQ_ERR_ARG;
    }
    d->row_out = (int64_t *)malloc(sizeof(int64_t) * (size_t)rows);
    d->row_ogrp = (int64_t *)malloc(sizeof(int64_t) * (size_t)rows);
    d->pos = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)q->num_outliers);
    if (!d->row_out || !d->row_ogrp || !d->pos) {
        adpq_dq_free(d);
        adpq_set_err(err, "out of memory");
        return ADPQ_ERR_NOMEM;
    }
    adpq_unpack_u32(q->outlier_indices, 0, q->num_outliers, d->lay.index_bits, d->pos);
    int64_t o = 0, og = 0;
    for (int64_t r = 0; r < rows; r++) {
        d->row_out[r] = o;
        d->row_ogrp[r] = og;
        for (int64_t j = 0; j < G; j++) {
            int64_t len = (cols - j * g) < g ? (cols - j * g) : g;
            int64_t cnt = adpq_get_count(q->outlier_counts, r * G + j, d->lay.count_bytes);
            if (cnt > len || o + cnt > q->num_outliers) {
                adpq_set_err(err, "outlier counts do not match: group (%lld, %lld) has %lld outliers", (long long)r,
                             (long long)j, (long long)cnt);
                adpq_dq_free(d);
                return ADPQ_ERR_ARG;
            }
            for (int64_t i = 0; i < cnt; i++) {
                if (d->pos[o + i] >= (uint32_t)len || (i > 0 && d->pos[o + i] <= d->pos[o + i - 1])) {
                    adpq_set_err(err, "outlier indices of group (%lld, %lld) are out of range or not ascending",
                                 (long long)r, (long long)j);
                    adpq_dq_free(d);
                    return ADPQ_ERR_ARG;
                }
            }
            o += cnt;
            og += cnt > 0;
        }
    }
    if (o != q->num_outliers || og != q->num_outlier_groups) {
        adpq_set_err(err, "outlier counts sum to %lld in %lld groups, expected %lld in %lld", (long long)o,
                     (long long)og, (long long)q->num_outliers, (long long)q->num_outlier_groups);
        adpq_dq_free(d);
        return ADPQ_ERR_ARG;
    }
    return ADPQ_OK;
}

typedef struct {
    const adpq_dq *dq;
    float *out;
    int64_t rows_per_task;
    uint8_t **codes; /* per worker: one row of codes */
} dctx;

static int dequant_task(void *ctx, int64_t t, int worker) {
    dctx *c = (dctx *)ctx;
    const int64_t rows = c->dq->q->rows, cols = c->dq->q->cols;
    int64_t r0 = t * c->rows_per_task, r1 = r0 + c->rows_per_task;
    if (r1 > rows) r1 = rows;
    for (int64_t r = r0; r < r1; r++) adpq_dq_row(c->dq, r, c->codes[worker], c->out + r * cols);
    return 0;
}

adpq_status adpq_dequantize_k(const adpq_kernels *K, const adpq_qmatrix *q, const adpq_config *cfg,
                              const float *col_mul, float *out, char *err) {
    if (!out) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    adpq_dq d;
    int rc = adpq_dq_init(&d, K, q, cfg, col_mul, err);
    if (rc) return (adpq_status)rc;
    const int64_t rows = q->rows;
    int threads = cfg->threads;
    if (rows * q->cols < (1 << 16)) threads = 1;
    uint8_t **codes = (uint8_t **)calloc((size_t)threads, sizeof(uint8_t *));
    if (!codes) goto nomem;
    for (int i = 0; i < threads; i++)
        if (!(codes[i] = (uint8_t *)malloc((size_t)q->cols + 8))) goto nomem;
    dctx c = {&d, out, 0, codes};
    c.rows_per_task = (rows + (int64_t)threads * 4 - 1) / ((int64_t)threads * 4);
    if (c.rows_per_task < 1) c.rows_per_task = 1;
    rc = adpq_parallel_for(threads, (rows + c.rows_per_task - 1) / c.rows_per_task, dequant_task, &c);
    goto done;
nomem:
    adpq_set_err(err, "out of memory");
    rc = ADPQ_ERR_NOMEM;
done:
    if (codes)
        for (int i = 0; i < threads; i++) free(codes[i]);
    free(codes);
    adpq_dq_free(&d);
    return (adpq_status)rc;
}
