/* rows.c - the row machinery of the quantize driver: a context (qctx) set up once per call, the
 * parallel pass over chunks of rows, and per row its outliers, group parameters, codes and the
 * records of the outlier side-channel. The tensor-scope threshold that picks the outliers is
 * threshold.c's (above this file); the arithmetic is the kernel set's (kernels_*.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "quant.h"
#include "rows.h"

int adpq_grow(void **p, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return 0;
    int64_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *np = realloc(*p, (size_t)c * elem);
    if (!np) return -1;
    *p = np;
    *cap = c;
    return 0;
}

/* weights [off, off+len) of row r as float32, times the column factors when there are some */
const float *adpq_load_span(qctx *c, int64_t r, int64_t off, int64_t len, float *buf) {
    const adpq_matrix *m = c->m;
    if (!m->col_mul) return adpq_row_f32(c->K, m, r, off, len, buf);
    const size_t isz = m->dtype == ADPQ_F32 ? 4 : 2;
    c->K->mul_row((const char *)m->data + (size_t)(r * m->row_stride + off) * isz, m->dtype, m->col_mul + off, len, buf);
    return buf;
}

/* mask = |w| > key T, plus weights with key == T in order until k are marked (never zeros) */
static int64_t mask_top_k(const adpq_kernels *K, const float *w, int64_t n, uint32_t T, int64_t k, uint8_t *mask) {
    int64_t cnt = K->mask_gt(w, n, adpq_key_to_float(T), mask);
    if (T == 0) return cnt;
    for (int64_t i = 0; i < n && cnt < k; i++)
        if (!mask[i] && adpq_abs_key(w[i]) == T) {
            mask[i] = 1;
            cnt++;
        }
    return cnt;
}

static int64_t group_mask(qctx *c, const float *w, int64_t len, uint8_t *mask, uint32_t *keys) {
    if (c->mode == MODE_GROUP_SOLVE) {
        int64_t k = len == c->lay.group_size ? c->k_full : c->k_tail;
        if (k <= 0) {
            memset(mask, 0, (size_t)len);
            return 0;
        }
        for (int64_t i = 0; i < len; i++) keys[i] = adpq_abs_key(w[i]);
        uint32_t T = adpq_select_kth_largest(keys, len, k);
        return mask_top_k(c->K, w, len, T, k, mask);
    }
    /* explicit lam: threshold = lower median of the group's nonzero |w| times lam_c */
    int64_t nnz = 0;
    for (int64_t i = 0; i < len; i++) {
        uint32_t key = adpq_abs_key(w[i]);
        if (key) keys[nnz++] = key;
    }
    if (nnz == 0) {
        memset(mask, 0, (size_t)len);
        return 0;
    }
    uint32_t med = adpq_select_kth_largest(keys, nnz, nnz - (nnz - 1) / 2);
    float thr = adpq_float_floor((double)adpq_key_to_float(med) * c->lam_c);
    return c->K->mask_gt(w, len, thr, mask);
}

static inline float bits_float(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* Tensor scope (adpq_row_outliers), without branches on the data: whether a candidate is an
 * outlier is a coin toss near the threshold, and a mispredicted branch costs more than the
 * selects. `outlier_range`: also the outliers' range of each group (format GROUP needs it). */
static inline __attribute__((always_inline)) int64_t tensor_row_outliers(qctx *c, int64_t r, scratch *s,
                                                                        const uint32_t *vals, const uint32_t *cols_of,
                                                                        int64_t n, const int outlier_range) {
    const int64_t G = c->lay.groups_per_row;
    const uint32_t T = c->thr_key, *col_group = c->col_group;
    const int64_t quota = c->tie_quota ? c->tie_quota[r] : INT64_MAX;
    int64_t taken = 0, m = 0;
    memcpy(s->gmn, c->nc_mn + r * G, sizeof(float) * (size_t)G);
    memcpy(s->gmx, c->nc_mx + r * G, sizeof(float) * (size_t)G);
    for (int64_t j = 0; j < G; j++) {
        s->gcnt[j] = 0;
        s->omn[j] = INFINITY;
        s->omx[j] = -INFINITY;
    }
    for (int64_t i = 0; i < n; i++) {
        const uint32_t key = vals[i] & 0x7fffffffu, col = cols_of[i], j = col_group[col];
        const int tie = key == T, out = (key > T) | (tie & (taken < quota));
        taken += out & tie;
        s->rpos[m] = col;
        m += out;
        s->gcnt[j] += out;
        /* v widens the inlier range or the outlier range: the other gets an infinity */
        const uint32_t om = 0u - (uint32_t)out, vb = vals[i];
        const float in_lo = bits_float((vb & ~om) | (0x7f800000u & om)), in_hi = bits_float((vb & ~om) | (0xff800000u & om));
        s->gmn[j] = in_lo < s->gmn[j] ? in_lo : s->gmn[j];
        s->gmx[j] = in_hi > s->gmx[j] ? in_hi : s->gmx[j];
        if (outlier_range) {
            const float out_lo = bits_float((vb & om) | (0x7f800000u & ~om)), out_hi = bits_float((vb & om) | (0xff800000u & ~om));
            s->omn[j] = out_lo < s->omn[j] ? out_lo : s->omn[j];
            s->omx[j] = out_hi > s->omx[j] ? out_hi : s->omx[j];
        }
    }
    for (int64_t j = 0, f = 0; j < G; j++) {
        s->gfirst[j] = f;
        f += s->gcnt[j];
    }
    return m;
}

/* The outlier columns of row r, increasing, into s->rpos; each group's run of them (s->gfirst,
 * s->gcnt); returns their number.
 * Tensor scope: the row's candidates (vals, cols: n of them, from the threshold pass) that pass the
 * threshold; the others are inliers, whose values widen their group's range (s->gmn/gmx, which
 * start as the threshold pass's range of the non-candidates, canonical: a candidate is never 0),
 * so the row itself is not read. The outliers' ranges go to s->omn/omx (format GROUP).
 * Group scope: each group's selection. */
int64_t adpq_row_outliers(qctx *c, int64_t r, const float *w, scratch *s, const uint32_t *vals,
                          const uint32_t *cols_of, int64_t n) {
    const int64_t G = c->lay.groups_per_row, g = c->lay.group_size, cols = c->m->cols;
    int64_t m = 0;
    if (c->mode == MODE_TENSOR)
        return c->cfg->outlier_format == ADPQ_OUTLIERS_GROUP ? tensor_row_outliers(c, r, s, vals, cols_of, n, 1)
                                                              : tensor_row_outliers(c, r, s, vals, cols_of, n, 0);
    if (c->mode == MODE_GROUP_SOLVE || c->mode == MODE_GROUP_LAM) {
        for (int64_t off = 0; off < cols; off += g) {
            int64_t len = (cols - off) < g ? (cols - off) : g;
            if (group_mask(c, w + off, len, s->mask, s->keys) == 0) continue;
            int64_t k = c->K->mask_positions(s->mask, len, s->rpos + m);
            for (int64_t i = 0; i < k; i++) s->rpos[m + i] += (uint32_t)off;
            m += k;
        }
    }
    for (int64_t j = 0, f = 0; j < G; j++) { /* (a walk: no division per outlier) */
        const uint32_t end = (uint32_t)((j + 1) * g < cols ? (j + 1) * g : cols);
        int64_t e = f;
        while (e < m && s->rpos[e] < end) e++;
        s->gfirst[j] = f;
        s->gcnt[j] = e - f;
        f = e;
    }
    return m;
}

/* Records a group's outliers (positions within the group, float16 values). */
static int record_outliers(const float *wg, const uint32_t *gp, int64_t cnt, int64_t off, int fp16, chunk_out *co,
                           int64_t r, uint16_t (*to_f16)(float)) {
    if (adpq_grow((void **)&co->pos, &co->cap_out, co->n_out + cnt, 4)) return ADPQ_ERR_NOMEM;
    if (fp16 && adpq_grow((void **)&co->vals, &co->cap_vals, co->n_out + cnt, 2)) return ADPQ_ERR_NOMEM;
    for (int64_t i = 0; i < cnt; i++) {
        co->pos[co->n_out + i] = gp[i] - (uint32_t)off;
        if (fp16) {
            uint16_t h = to_f16(wg[gp[i] - off]);
            if ((h & 0x7c00u) == 0x7c00u) {
                co->fail = FAIL_VALUE;
                co->fail_row = r;
                return ADPQ_ERR_RANGE;
            }
            co->vals[co->n_out + i] = h;
        }
    }
    co->n_out += cnt;
    return ADPQ_OK;
}

int adpq_group_outliers(qctx *c, chunk_out *co, int64_t r, int64_t j, const scratch *s, const float *wg,
                        uint8_t *codes) {
    const adpq_config *cfg = c->cfg;
    const int64_t cnt = s->gcnt[j], off = j * c->lay.group_size;
    const int fp16 = cfg->outlier_format == ADPQ_OUTLIERS_FP16;
    if (!cnt) return ADPQ_OK;
    const uint32_t *gp = s->rpos + s->gfirst[j];
    if (!fp16) {
        /* the outliers' own quantizer; with fp16 they keep the inlier codes, clamped */
        adpq_qparams pout;
        if (adpq_group_params(c->K, s->omn[j], s->omx[j], cfg->bits, adpq_qmode(cfg), cfg->scale_dtype, &pout)) {
            co->fail = FAIL_SCALE;
            co->fail_row = r;
            return ADPQ_ERR_RANGE;
        }
        for (int64_t i = 0; i < cnt; i++) codes[gp[i] - off] = adpq_code_of(wg[gp[i] - off], pout.inv, pout.z, c->qmax);
        if (adpq_grow((void **)&co->osc, &co->cap_osc, co->n_grp + 1, 4) ||
            adpq_grow((void **)&co->ozp, &co->cap_ozp, co->n_grp + 1, 4))
            return ADPQ_ERR_NOMEM;
        co->osc[co->n_grp] = pout.s_stored;
        co->ozp[co->n_grp] = pout.z_stored;
        co->n_grp++;
    }
    return record_outliers(wg, gp, cnt, off, fp16, co, r, c->K->to_f16);
}

/* Format FP16: the records of row r's outliers (s->rpos, in group order) at once. */
static int record_row_fp16(qctx *c, chunk_out *co, int64_t r, const scratch *s, const float *w, int64_t n_row) {
    if (adpq_grow((void **)&co->pos, &co->cap_out, co->n_out + n_row, 4) ||
        adpq_grow((void **)&co->vals, &co->cap_vals, co->n_out + n_row, 2))
        return ADPQ_ERR_NOMEM;
    const uint32_t g = (uint32_t)c->lay.group_size;
    uint32_t *pos = co->pos + co->n_out;
    uint16_t *vals = co->vals + co->n_out;
    uint16_t bad = 0;
    for (int64_t i = 0; i < n_row; i++) {
        const uint32_t col = s->rpos[i];
        pos[i] = col - c->col_group[col] * g;
        vals[i] = c->K->to_f16(w[col]);
        bad |= (uint16_t)((vals[i] & 0x7c00u) == 0x7c00u);
    }
    if (bad) {
        co->fail = FAIL_VALUE;
        co->fail_row = r;
        return ADPQ_ERR_RANGE;
    }
    co->n_out += n_row;
    return ADPQ_OK;
}

/* Row r's stored scales, zero-points and outlier counts. */
static void store_group_arrays(qctx *c, int64_t r, const scratch *s) {
    const int64_t G = c->lay.groups_per_row, g0 = r * G;
    const int sb = c->lay.scale_bytes, cb = c->lay.count_bytes;
    if (sb == 2) {
        uint16_t *sc = (uint16_t *)c->q->scales + g0, *zp = c->cfg->symmetric ? NULL : (uint16_t *)c->q->zeros + g0;
        for (int64_t j = 0; j < G; j++) sc[j] = (uint16_t)s->gs[j];
        for (int64_t j = 0; zp && j < G; j++) zp[j] = (uint16_t)s->gzs[j];
    } else {
        memcpy((uint32_t *)c->q->scales + g0, s->gs, sizeof(uint32_t) * (size_t)G);
        if (!c->cfg->symmetric) memcpy((uint32_t *)c->q->zeros + g0, s->gzs, sizeof(uint32_t) * (size_t)G);
    }
    for (int64_t j = 0; j < G; j++) adpq_put_count(c->q->outlier_counts, g0 + j, s->gcnt[j], cb);
}

/* Quantizes row r. vals/cols_of/n: the row's threshold-pass candidates (tensor scope).
 * 1. per group: its outliers (a run of s->rpos) and the min/max of its inliers and outliers;
 * 2. every group's parameters at once; 3. per group: codes, the outliers' records; 4. pack. */
int adpq_process_row(qctx *c, int64_t r, scratch *s, chunk_out *co, const uint32_t *vals, const uint32_t *cols_of,
                     int64_t n, const float *w_row) {
    const adpq_kernels *K = c->K;
    const adpq_config *cfg = c->cfg;
    const int64_t cols = c->m->cols, g = c->lay.group_size, G = c->lay.groups_per_row;
    const int qmode = adpq_qmode(cfg);
    const int check = c->mode != MODE_TENSOR; /* (tensor scope: the threshold pass has checked) */
    const float *w = w_row ? w_row : adpq_load_span(c, r, 0, cols, s->rowf);
    /* outlier_mask: NaN/Inf refused as quantize refuses them (tensor scope: the threshold pass has) */
    if (c->mask_out && check && !K->minmax_groups(w, cols, g, 1, NULL, s->gmn, s->gmx)) return ADPQ_ERR_NONFINITE;
    const int64_t n_row = adpq_row_outliers(c, r, w, s, vals, cols_of, n);
    if (c->mask_out) {
        uint8_t *dst = c->mask_out + r * cols;
        memset(dst, 0, (size_t)cols);
        for (int64_t i = 0; i < n_row; i++) dst[s->rpos[i]] = 1;
        return ADPQ_OK;
    }
    /* 1. inlier and outlier ranges (tensor scope: row_outliers has them). Group scope: groups
     * without outliers in one call, then the others */
    if (check && !K->minmax_groups(w, cols, g, 1, n_row ? s->gcnt : NULL, s->gmn, s->gmx)) return ADPQ_ERR_NONFINITE;
    for (int64_t j = 0; check && n_row && j < G; j++) {
        const int64_t cnt = s->gcnt[j];
        if (!cnt) continue;
        const int64_t off = j * g, len = (cols - off) < g ? (cols - off) : g;
        const float *wg = w + off;
        const uint32_t *gp = s->rpos + s->gfirst[j];
        float imn = INFINITY, imx = -INFINITY, omn = INFINITY, omx = -INFINITY;
        int finite = 1;
        /* min/max of the inliers: the group with each outlier replaced by its first inlier */
        int64_t first = 0;
        for (int64_t i = 0; i < cnt && gp[i] - off == (uint32_t)first; i++) first++;
        if (first < len) {
            memcpy(s->tmp, wg, sizeof(float) * (size_t)len);
            for (int64_t i = 0; i < cnt; i++) s->tmp[gp[i] - off] = wg[first];
            finite = K->minmax(s->tmp, len, check, &imn, &imx);
        }
        for (int64_t i = 0; i < cnt; i++) {
            float v = w[gp[i]];
            finite &= isfinite(v) != 0;
            omn = v < omn ? v : omn;
            omx = v > omx ? v : omx;
        }
        if (!finite) return ADPQ_ERR_NONFINITE;
        /* canonical +0: SIMD and scalar min/max may differ in the sign of 0 */
        s->gmn[j] = imn + 0.0f;
        s->gmx[j] = imx + 0.0f;
        s->omn[j] = omn + 0.0f;
        s->omx[j] = omx + 0.0f;
    }

    /* 2. parameters; 3. codes, then the outliers' codes and records */
    if (K->params(s->gmn, s->gmx, G, cfg->bits, qmode, cfg->scale_dtype, s->ginv, s->gz, s->gs, s->gzs))
        goto fail_scale;
    K->codes_groups(w, cols, g, s->ginv, s->gz, (int)c->qmax, s->codes);
    if (c->row_rec) {
        c->row_rec[2 * r] = co->n_out;
        c->row_rec[2 * r + 1] = co->n_grp;
    }
    if (cfg->outlier_format == ADPQ_OUTLIERS_FP16) {
        int rc = n_row ? record_row_fp16(c, co, r, s, w, n_row) : ADPQ_OK;
        if (rc) return rc;
    } else {
        for (int64_t j = 0; n_row && j < G; j++) {
            int rc = adpq_group_outliers(c, co, r, j, s, w + j * g, s->codes + j * g);
            if (rc) return rc;
        }
    }
    store_group_arrays(c, r, s);
    adpq_pack_codes(K, c->q->codes, r * cols, s->codes, cols, cfg->bits);
    return ADPQ_OK;
fail_scale:
    co->fail = FAIL_SCALE;
    co->fail_row = r;
    return ADPQ_ERR_RANGE;
}

int adpq_quant_task(void *ctx, int64_t t, int worker) {
    qctx *c = (qctx *)ctx;
    chunk_out *co = &c->chunks[t];
    int64_t r0 = t * c->rows_per_chunk, r1 = r0 + c->rows_per_chunk, o = 0;
    if (r1 > c->m->rows) r1 = c->m->rows;
    for (int64_t r = r0; r < r1; r++) {
        int64_t n = c->mode == MODE_TENSOR ? c->row_cnt[r] : 0;
        int rc = adpq_process_row(c, r, &c->scr[worker], co, co->gvals + o, co->gcols + o, n, NULL);
        if (rc) return rc;
        o += n;
    }
    return 0;
}

static void free_chunk(chunk_out *co) {
    free(co->pos);
    free(co->vals);
    free(co->osc);
    free(co->ozp);
    free(co->gvals);
    free(co->gcols);
    free(co->fixed);
}

static void free_chunks(qctx *c) {
    for (int64_t t = 0; c->chunks && t < c->nchunks; t++) free_chunk(&c->chunks[t]);
    for (int64_t t = 0; c->redo && t < c->nchunks; t++) free_chunk(&c->redo[t]);
    free(c->chunks);
    free(c->redo);
    c->chunks = c->redo = NULL;
    if (c->scr)
        for (int i = 0; i < c->cfg->threads; i++) {
            free(c->scr[i].rowf);
            free(c->scr[i].tmp);
            free(c->scr[i].gfirst);
            free(c->scr[i].rpos);
            free(c->scr[i].mask);
            free(c->scr[i].codes);
            free(c->scr[i].keys);
            free(c->scr[i].fix);
        }
    free(c->scr);
    c->scr = NULL;
}

/* Message for NaN/Inf: how many, and where the first one is. */
static void describe_nonfinite(qctx *c, char *err) {
    const int64_t rows = c->m->rows, cols = c->m->cols;
    int64_t count = 0, first = -1;
    float *buf = (float *)malloc(sizeof(float) * (size_t)cols);
    if (!buf) {
        adpq_set_err(err, "w contains NaN or Inf values");
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *w = adpq_load_span(c, r, 0, cols, buf);
        for (int64_t i = 0; i < cols; i++)
            if (!isfinite(w[i])) {
                if (first < 0) first = r * cols + i;
                count++;
            }
    }
    free(buf);
    adpq_set_err(err, "w contains %lld non-finite value(s) (NaN or Inf); the first is at row %lld, column %lld",
                 (long long)count, (long long)(first / cols), (long long)(first % cols));
}

int adpq_run_pass(qctx *c, adpq_task_fn fn, char *err) {
    int rc = adpq_parallel_for(c->cfg->threads, c->nchunks, fn, c);
    if (rc == ADPQ_ERR_NONFINITE)
        describe_nonfinite(c, err);
    else if (rc == ADPQ_ERR_NOMEM)
        adpq_set_err(err, "out of memory");
    else if (rc == ADPQ_ERR_RANGE) {
        for (int64_t t = 0; t < c->nchunks; t++) {
            if (c->chunks[t].fail == FAIL_SCALE) {
                adpq_set_err(err,
                             "row %lld: a scale or zero-point does not fit in %s (weights too large); "
                             "use scale_dtype='float32'",
                             (long long)c->chunks[t].fail_row, adpq_dtype_name(c->cfg->scale_dtype));
                break;
            }
            if (c->chunks[t].fail == FAIL_VALUE) {
                adpq_set_err(err,
                             "row %lld: an outlier exceeds the float16 range (|w| > 65504), which "
                             "outlier_format='fp16' cannot store; use outlier_format='group'",
                             (long long)c->chunks[t].fail_row);
                break;
            }
        }
    }
    return rc;
}

int adpq_qctx_init(qctx *c, const adpq_matrix *m, const adpq_config *cfg, const adpq_kernels *K, char *err) {
    memset(c, 0, sizeof(*c));
    if (!m || !cfg || !m->data) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    int rc = adpq_layout_of(m->rows, m->cols, cfg, &c->lay, err);
    if (rc) return rc;
    if (m->dtype != ADPQ_F32 && m->dtype != ADPQ_F16 && m->dtype != ADPQ_BF16) {
        adpq_set_err(err, "unsupported input dtype %d", m->dtype);
        return ADPQ_ERR_ARG;
    }
    if (m->row_stride < m->cols) {
        adpq_set_err(err, "row_stride (%lld) < cols (%lld)", (long long)m->row_stride, (long long)m->cols);
        return ADPQ_ERR_ARG;
    }
    c->m = m;
    c->cfg = cfg;
    c->K = K;
    c->qmax = (float)((1 << cfg->bits) - 1);
    const int64_t rows = m->rows, cols = m->cols, g = c->lay.group_size;
    /* chunks: multiples of 8 rows, so that chunks start on a byte of the code stream */
    int64_t target = (int64_t)cfg->threads * 4;
    int64_t rpc = (rows + target - 1) / target;
    rpc = (rpc + 7) / 8 * 8;
    c->rows_per_chunk = rpc;
    c->nchunks = (rows + rpc - 1) / rpc;
    c->chunks = (chunk_out *)calloc((size_t)c->nchunks, sizeof(chunk_out));
    c->scr = (scratch *)calloc((size_t)cfg->threads, sizeof(scratch));
    if (!c->chunks || !c->scr) goto nomem;
    for (int i = 0; i < cfg->threads; i++) {
        scratch *s = &c->scr[i];
        s->rowf = (float *)malloc(sizeof(float) * (size_t)cols);
        s->tmp = (float *)malloc(sizeof(float) * (size_t)g);
        s->rpos = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)cols);
        s->mask = (uint8_t *)malloc((size_t)g);
        s->codes = (uint8_t *)malloc((size_t)cols + 8);
        s->keys = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)g);
        /* one block for the per-group arrays: 2 int64 + 8 float/uint32 per group */
        const int64_t G = c->lay.groups_per_row;
        s->gfirst = (int64_t *)malloc((size_t)G * (2 * sizeof(int64_t) + 8 * sizeof(float)));
        s->fix = (uint8_t *)malloc((size_t)G);
        if (!s->rowf || !s->tmp || !s->rpos || !s->mask || !s->codes || !s->keys || !s->gfirst || !s->fix) goto nomem;
        s->gcnt = s->gfirst + G;
        s->gmn = (float *)(s->gcnt + G);
        s->gmx = s->gmn + G;
        s->omn = s->gmx + G;
        s->omx = s->omn + G;
        s->ginv = s->omx + G;
        s->gz = s->ginv + G;
        s->gs = (uint32_t *)(s->gz + G);
        s->gzs = s->gs + G;
    }
    c->col_group = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)cols);
    if (!c->col_group) goto nomem;
    for (int64_t i = 0; i < cols; i++) c->col_group[i] = (uint32_t)(i / g);
    if (cfg->use_lam) c->lam_c = adpq_lam_factor(cfg->lam, cfg->gamma);
    if (cfg->scope == ADPQ_SCOPE_GROUP) {
        if (cfg->use_lam) {
            c->mode = MODE_GROUP_LAM;
        } else {
            c->k_full = adpq_outlier_count(cfg->outlier_ratio, g);
            c->k_tail = adpq_outlier_count(cfg->outlier_ratio, cols % g ? cols % g : g);
            c->mode = (c->k_full || c->k_tail) ? MODE_GROUP_SOLVE : MODE_NONE;
        }
        return ADPQ_OK;
    }
    if (!cfg->use_lam && adpq_outlier_count(cfg->outlier_ratio, rows * cols) == 0) {
        c->mode = MODE_NONE;
        return ADPQ_OK;
    }
    c->mode = MODE_TENSOR; /* (the threshold is the caller's: one pass or two) */
    return ADPQ_OK;
nomem:
    adpq_set_err(err, "out of memory");
    return ADPQ_ERR_NOMEM;
}

void adpq_qctx_free(qctx *c) {
    free(c->col_group);
    free(c->row_rec);
    free(c->row_cnt);
    free(c->nc_mn);
    free_chunks(c);
}
