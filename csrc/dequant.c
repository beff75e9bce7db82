/* dequant.c - w_hat = (q - z) * s with the inlier or outlier quantizer of each weight's group.
 * The arrays are validated first (counts within their groups, indices ascending and in range),
 * so that arrays rebuilt from a file can never make it read or write out of bounds. */
#include <stdlib.h>

#include "internal.h"
#include "quant.h"

typedef struct {
    const adpq_qmatrix *q;
    const adpq_config *cfg;
    adpq_layout lay;
    const adpq_kernels *K;
    const int64_t *row_out;  /* first outlier of each row */
    const int64_t *row_ogrp; /* first outlier group of each row */
    const uint32_t *pos;     /* unpacked outlier positions */
    const float *col_mul;    /* NULL or per-column factors */
    float *out;
    int64_t rows_per_task;
    uint8_t **codes;         /* per worker: one row of codes */
} dctx;

static int dequant_task(void *ctx, int64_t t, int worker) {
    dctx *c = (dctx *)ctx;
    const adpq_qmatrix *q = c->q;
    const int64_t cols = q->cols, g = c->lay.group_size, G = c->lay.groups_per_row;
    const int sb = c->lay.scale_bytes, sd = c->cfg->scale_dtype;
    uint8_t *codes = c->codes[worker];
    int64_t r0 = t * c->rows_per_task, r1 = r0 + c->rows_per_task;
    if (r1 > q->rows) r1 = q->rows;
    for (int64_t r = r0; r < r1; r++) {
        float *out = c->out + r * cols;
        adpq_unpack_codes(q->codes, r * cols, cols, c->cfg->bits, codes);
        int64_t o = q->num_outliers ? c->row_out[r] : 0, og = q->num_outliers ? c->row_ogrp[r] : 0;
        for (int64_t j = 0; j < G; j++) {
            const int64_t off = j * g, len = (cols - off) < g ? (cols - off) : g, gi = r * G + j;
            float s = adpq_stored_to_float(adpq_get_stored(q->scales, gi, sb), sd);
            float z = c->cfg->symmetric ? (float)(1 << (c->cfg->bits - 1))
                                        : adpq_stored_to_float(adpq_get_stored(q->zeros, gi, sb), sd);
            c->K->dequant(codes + off, len, s, z, out + off);
            int64_t cnt = q->num_outliers ? adpq_get_count(q->outlier_counts, gi, c->lay.count_bytes) : 0;
            if (!cnt) continue;
            if (c->cfg->outlier_format == ADPQ_OUTLIERS_GROUP) {
                float so = adpq_stored_to_float(adpq_get_stored(q->outlier_scales, og, sb), sd);
                float zo = c->cfg->symmetric ? (float)(1 << (c->cfg->bits - 1))
                                             : adpq_stored_to_float(adpq_get_stored(q->outlier_zeros, og, sb), sd);
                for (int64_t i = 0; i < cnt; i++) {
                    int64_t p = off + c->pos[o + i];
                    out[p] = ((float)codes[p] - zo) * so;
                }
            } else {
                for (int64_t i = 0; i < cnt; i++) out[off + c->pos[o + i]] = adpq_f16_to_f32(q->outlier_values[o + i]);
            }
            o += cnt;
            og++;
        }
        if (c->col_mul) c->K->mul_row(out, ADPQ_F32, c->col_mul, cols, out); /* while the row is in cache */
    }
    return 0;
}

adpq_status adpq_dequantize(const adpq_qmatrix *q, const adpq_config *cfg, const float *col_mul, float *out,
                            char *err) {
    adpq_layout lay;
    if (!q || !cfg || !out) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    int rc = adpq_layout_of(q->rows, q->cols, cfg, &lay, err);
    if (rc) return rc;
    if (!q->codes || !q->scales || (!cfg->symmetric && !q->zeros)) {
        adpq_set_err(err, "codes, scales%s are required", cfg->symmetric ? "" : " and zeros");
        return ADPQ_ERR_ARG;
    }
    if (q->num_outliers < 0 || q->num_outlier_groups < 0) {
        adpq_set_err(err, "negative outlier count");
        return ADPQ_ERR_ARG;
    }
    const int64_t rows = q->rows, cols = q->cols, g = lay.group_size, G = lay.groups_per_row;
    int64_t *row_out = NULL, *row_ogrp = NULL;
    uint32_t *pos = NULL;
    uint8_t **codes = NULL;
    int threads = cfg->threads;
    if (rows * cols < (1 << 16)) threads = 1;
    if (q->num_outliers > 0) {
        int fmt_group = cfg->outlier_format == ADPQ_OUTLIERS_GROUP;
        if (!q->outlier_counts || !q->outlier_indices || (fmt_group && !q->outlier_scales) ||
            (fmt_group && !cfg->symmetric && !q->outlier_zeros) || (!fmt_group && !q->outlier_values)) {
            adpq_set_err(err, "outlier arrays missing for %lld outliers", (long long)q->num_outliers);
            return ADPQ_ERR_ARG;
        }
        row_out = (int64_t *)malloc(sizeof(int64_t) * (size_t)rows);
        row_ogrp = (int64_t *)malloc(sizeof(int64_t) * (size_t)rows);
        pos = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)q->num_outliers);
        if (!row_out || !row_ogrp || !pos) goto nomem;
        adpq_unpack_u32(q->outlier_indices, 0, q->num_outliers, lay.index_bits, pos);
        int64_t o = 0, og = 0;
        for (int64_t r = 0; r < rows; r++) {
            row_out[r] = o;
            row_ogrp[r] = og;
            for (int64_t j = 0; j < G; j++) {
                int64_t len = (cols - j * g) < g ? (cols - j * g) : g;
                int64_t cnt = adpq_get_count(q->outlier_counts, r * G + j, lay.count_bytes);
                if (cnt > len || o + cnt > q->num_outliers) {
                    adpq_set_err(err, "outlier counts do not match: group (%lld, %lld) has %lld outliers", (long long)r,
                                 (long long)j, (long long)cnt);
                    rc = ADPQ_ERR_ARG;
                    goto done;
                }
                for (int64_t i = 0; i < cnt; i++) {
                    if (pos[o + i] >= (uint32_t)len || (i > 0 && pos[o + i] <= pos[o + i - 1])) {
                        adpq_set_err(err, "outlier indices of group (%lld, %lld) are out of range or not ascending",
                                     (long long)r, (long long)j);
                        rc = ADPQ_ERR_ARG;
                        goto done;
                    }
                }
                o += cnt;
                og += cnt > 0;
            }
        }
        if (o != q->num_outliers || og != q->num_outlier_groups) {
            adpq_set_err(err, "outlier counts sum to %lld in %lld groups, expected %lld in %lld", (long long)o,
                         (long long)og, (long long)q->num_outliers, (long long)q->num_outlier_groups);
            rc = ADPQ_ERR_ARG;
            goto done;
        }
    }
    codes = (uint8_t **)calloc((size_t)threads, sizeof(uint8_t *));
    if (!codes) goto nomem;
    for (int i = 0; i < threads; i++)
        if (!(codes[i] = (uint8_t *)malloc((size_t)cols + 8))) goto nomem;
    dctx c = {q, cfg, lay, adpq_active_kernels(), row_out, row_ogrp, pos, col_mul, out, 0, codes};
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
    free(row_out);
    free(row_ogrp);
    free(pos);
    return (adpq_status)rc;
}
