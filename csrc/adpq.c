/* adpq.c - the quantize driver: outlier threshold, parallel pass over rows,
 * assembly of the outlier side-channel. The arithmetic lives in quant.c / quant_avx2.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"
#include "quant.h"

/* ---------------------------------------------------------------- quantize */

enum { MODE_NONE, MODE_TENSOR, MODE_GROUP_SOLVE, MODE_GROUP_LAM };
enum { FAIL_NONE, FAIL_SCALE, FAIL_VALUE };

typedef struct {
    float *rowf;     /* the row as float32 (16-bit inputs) */
    float *tmp;      /* one group with its outliers replaced by one of its inliers */
    uint8_t *mask;   /* group scope: one group's outlier flags */
    uint8_t *codes;  /* cols codes, one per byte */
    uint32_t *keys;  /* group_size keys for per-group selection */
    uint32_t *rpos;  /* the row's outlier columns, increasing */
    /* per group of the row: first outlier (index into rpos) and count; inlier and outlier
     * min/max; parameters (1/s, z, stored scale and zero-point) */
    int64_t *gfirst, *gcnt;
    float *gmn, *gmx, *omn, *omx, *ginv, *gz;
    uint32_t *gs, *gzs;
} scratch;

typedef struct { /* what one chunk of rows produced, in row order */
    uint32_t *pos;   /* outlier positions within their group */
    uint16_t *vals;  /* float16 outlier values (format FP16) */
    int64_t n_out, cap_out;
    int64_t cap_vals;
    uint32_t *osc, *ozp; /* stored outlier scales / zero-points (format GROUP) */
    int64_t n_grp, cap_osc, cap_ozp;
    uint32_t *gvals, *gcols; /* threshold pass: candidate values (float32 bits) and their columns, row order */
    int64_t n_cand, cap_gvals, cap_gcols;
    int fail;
    int64_t fail_row;
} chunk_out;

typedef struct {
    const adpq_matrix *m;
    const adpq_config *cfg;
    adpq_layout lay;
    const adpq_kernels *K;
    float qmax;
    int mode;
    /* tensor scope: the outliers are the candidates with key > thr_key, and those with key ==
     * thr_key: all of them, or (tie_quota set) the first tie_quota[r] of row r */
    uint32_t thr_key;
    const int64_t *tie_quota;
    int64_t k_full, k_tail;  /* group scope, solved: outliers per full / last group */
    double lam_c;            /* explicit lam: threshold in units of the scope's scale */
    float gather_thr;        /* threshold pass: collect keys of |w| > gather_thr */
    int64_t *row_cnt;        /* threshold pass: candidates per row */
    float *nc_mn, *nc_mx;    /* threshold pass: per group, the range of the non-candidates */
    adpq_qmatrix *q;
    uint8_t *mask_out;
    int64_t rows_per_chunk, nchunks;
    chunk_out *chunks;
    scratch *scr;
} qctx;

static int grow(void **p, int64_t *cap, int64_t need, size_t elem) {
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
static const float *load_span(qctx *c, int64_t r, int64_t off, int64_t len, float *buf) {
    const adpq_matrix *m = c->m;
    const float *w = adpq_row_f32(c->K, m, r, off, len, buf);
    if (!m->col_mul) return w;
    c->K->mul_row(w, m->col_mul + off, len, buf);
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

/* Group j's outliers are s->rpos[*f, m), with range [*omn, *omx]; the next group's start there. */
static inline void close_group(scratch *s, int64_t j, int64_t *f, int64_t m, float *omn, float *omx) {
    s->gfirst[j] = *f;
    s->gcnt[j] = m - *f;
    s->omn[j] = *omn;
    s->omx[j] = *omx;
    *omn = INFINITY;
    *omx = -INFINITY;
    *f = m;
}

/* The outlier columns of row r, increasing, into s->rpos; each group's run of them (s->gfirst,
 * s->gcnt); returns their number.
 * Tensor scope: the row's candidates (vals, cols: n of them, from the threshold pass) that pass the
 * threshold; the others are inliers, whose values widen their group's range (s->gmn/gmx, which
 * start as the threshold pass's range of the non-candidates, canonical: a candidate is never 0),
 * so the row itself is not read. The outliers' ranges go to s->omn/omx.
 * Group scope: each group's selection. */
static int64_t row_outliers(qctx *c, int64_t r, const float *w, scratch *s, const uint32_t *vals,
                            const uint32_t *cols_of, int64_t n) {
    const int64_t G = c->lay.groups_per_row, g = c->lay.group_size, cols = c->m->cols;
    int64_t m = 0;
    if (c->mode == MODE_TENSOR) {
        const uint32_t T = c->thr_key;
        int64_t quota = c->tie_quota ? c->tie_quota[r] : INT64_MAX, taken = 0, j = 0, f = 0;
        uint32_t end = (uint32_t)g; /* of group j */
        float omn = INFINITY, omx = -INFINITY;
        memcpy(s->gmn, c->nc_mn + r * G, sizeof(float) * (size_t)G);
        memcpy(s->gmx, c->nc_mx + r * G, sizeof(float) * (size_t)G);
        for (int64_t i = 0; i < n; i++) {
            for (; cols_of[i] >= end; j++, end += (uint32_t)g) close_group(s, j, &f, m, &omn, &omx);
            const uint32_t key = vals[i] & 0x7fffffffu;
            float v;
            memcpy(&v, &vals[i], 4);
            if (key > T || (key == T && taken < quota)) {
                taken += key == T;
                s->rpos[m++] = cols_of[i];
                omn = v < omn ? v : omn;
                omx = v > omx ? v : omx;
                continue;
            }
            s->gmn[j] = v < s->gmn[j] ? v : s->gmn[j];
            s->gmx[j] = v > s->gmx[j] ? v : s->gmx[j];
        }
        for (; j < G; j++) close_group(s, j, &f, m, &omn, &omx);
        return m;
    }
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
    if (grow((void **)&co->pos, &co->cap_out, co->n_out + cnt, 4)) return ADPQ_ERR_NOMEM;
    if (fp16 && grow((void **)&co->vals, &co->cap_vals, co->n_out + cnt, 2)) return ADPQ_ERR_NOMEM;
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
static int process_row(qctx *c, int64_t r, scratch *s, chunk_out *co, const uint32_t *vals, const uint32_t *cols_of,
                       int64_t n) {
    const adpq_kernels *K = c->K;
    const adpq_config *cfg = c->cfg;
    const int64_t cols = c->m->cols, g = c->lay.group_size, G = c->lay.groups_per_row;
    const int qmode = adpq_qmode(cfg), fp16 = cfg->outlier_format == ADPQ_OUTLIERS_FP16;
    const int check = c->mode != MODE_TENSOR; /* (tensor scope: the threshold pass has checked) */
    const float *w = load_span(c, r, 0, cols, s->rowf);
    const int64_t n_row = row_outliers(c, r, w, s, vals, cols_of, n);
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
    for (int64_t j = 0; n_row && j < G; j++) {
        const int64_t cnt = s->gcnt[j], off = j * g;
        if (!cnt) continue;
        const float *wg = w + off;
        const uint32_t *gp = s->rpos + s->gfirst[j];
        if (!fp16) {
            /* the outliers' own quantizer; with fp16 they keep the inlier codes, clamped */
            adpq_qparams pout;
            if (adpq_group_params(K, s->omn[j], s->omx[j], cfg->bits, qmode, cfg->scale_dtype, &pout))
                goto fail_scale;
            for (int64_t i = 0; i < cnt; i++) s->codes[gp[i]] = adpq_code_of(w[gp[i]], pout.inv, pout.z, c->qmax);
            if (grow((void **)&co->osc, &co->cap_osc, co->n_grp + 1, 4) ||
                grow((void **)&co->ozp, &co->cap_ozp, co->n_grp + 1, 4))
                return ADPQ_ERR_NOMEM;
            co->osc[co->n_grp] = pout.s_stored;
            co->ozp[co->n_grp] = pout.z_stored;
            co->n_grp++;
        }
        int rc = record_outliers(wg, gp, cnt, off, fp16, co, r, K->to_f16);
        if (rc) return rc;
    }
    store_group_arrays(c, r, s);
    adpq_pack_codes(c->q->codes, r * cols, s->codes, cols, cfg->bits);
    return ADPQ_OK;
fail_scale:
    co->fail = FAIL_SCALE;
    co->fail_row = r;
    return ADPQ_ERR_RANGE;
}

static int quant_task(void *ctx, int64_t t, int worker) {
    qctx *c = (qctx *)ctx;
    chunk_out *co = &c->chunks[t];
    int64_t r0 = t * c->rows_per_chunk, r1 = r0 + c->rows_per_chunk, o = 0;
    if (r1 > c->m->rows) r1 = c->m->rows;
    for (int64_t r = r0; r < r1; r++) {
        int64_t n = c->mode == MODE_TENSOR ? c->row_cnt[r] : 0;
        int rc = process_row(c, r, &c->scr[worker], co, co->gvals + o, co->gcols + o, n);
        if (rc) return rc;
        o += n;
    }
    return 0;
}

/* threshold pass: candidates |w| > gather_thr (values and columns), per row counts */
static int gather_task(void *ctx, int64_t t, int worker) {
    qctx *c = (qctx *)ctx;
    chunk_out *co = &c->chunks[t];
    const int64_t cols = c->m->cols;
    int64_t r0 = t * c->rows_per_chunk, r1 = r0 + c->rows_per_chunk;
    if (r1 > c->m->rows) r1 = c->m->rows;
    const int64_t G = c->lay.groups_per_row;
    /* room for about 4% of the chunk's weights up front, so that the lists rarely move */
    const int64_t first = (r1 - r0) * cols / 25 + cols;
    if (grow((void **)&co->gvals, &co->cap_gvals, first, 4) || grow((void **)&co->gcols, &co->cap_gcols, first, 4))
        return ADPQ_ERR_NOMEM;
    for (int64_t r = r0; r < r1; r++) {
        if (grow((void **)&co->gvals, &co->cap_gvals, co->n_cand + cols, 4) ||
            grow((void **)&co->gcols, &co->cap_gcols, co->n_cand + cols, 4))
            return ADPQ_ERR_NOMEM;
        const size_t isz = c->m->dtype == ADPQ_F32 ? 4 : 2;
        const void *w = (const char *)c->m->data + (size_t)(r * c->m->row_stride) * isz;
        int dtype = c->m->dtype;
        if (c->m->col_mul) { /* the scaled row */
            w = load_span(c, r, 0, cols, c->scr[worker].rowf);
            dtype = ADPQ_F32;
        }
        int64_t n = c->K->gather_groups(w, dtype, cols, c->lay.group_size, c->gather_thr, co->gvals + co->n_cand,
                                        co->gcols + co->n_cand, c->nc_mn + r * G, c->nc_mx + r * G);
        if (n < 0) return ADPQ_ERR_NONFINITE;
        c->row_cnt[r] = n;
        co->n_cand += n;
    }
    return 0;
}

static void free_chunks(qctx *c) {
    if (c->chunks)
        for (int64_t t = 0; t < c->nchunks; t++) {
            free(c->chunks[t].pos);
            free(c->chunks[t].vals);
            free(c->chunks[t].osc);
            free(c->chunks[t].ozp);
            free(c->chunks[t].gvals);
            free(c->chunks[t].gcols);
        }
    free(c->chunks);
    c->chunks = NULL;
    if (c->scr)
        for (int i = 0; i < c->cfg->threads; i++) {
            free(c->scr[i].rowf);
            free(c->scr[i].tmp);
            free(c->scr[i].gfirst);
            free(c->scr[i].rpos);
            free(c->scr[i].mask);
            free(c->scr[i].codes);
            free(c->scr[i].keys);
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
        const float *w = load_span(c, r, 0, cols, buf);
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

static int run_pass(qctx *c, adpq_task_fn fn, char *err) {
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

/* Sample keys: from each row, a window of sw weights at a row-dependent offset, so that the
 * sample covers every row and, across rows, every column (outlier channels are column-wise). */
static int64_t sample_keys(qctx *c, int64_t sw, uint32_t *keys, float *buf) {
    const int64_t rows = c->m->rows, cols = c->m->cols;
    int64_t m = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = (int64_t)(((uint64_t)r * 2654435761u) % (uint64_t)(cols - sw + 1));
        const float *w = load_span(c, r, off, sw, buf);
        for (int64_t i = 0; i < sw; i++)
            if (isfinite(w[i])) keys[m++] = adpq_abs_key(w[i]);
    }
    return m;
}

/* The keys (magnitudes) of the candidates of all chunks. */
static uint32_t *collect_candidates(qctx *c, int64_t *total) {
    int64_t n = 0;
    for (int64_t t = 0; t < c->nchunks; t++) n += c->chunks[t].n_cand;
    uint32_t *all = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(n > 0 ? n : 1));
    if (!all) return NULL;
    int64_t o = 0;
    for (int64_t t = 0; t < c->nchunks; t++) {
        const uint32_t *v = c->chunks[t].gvals;
        for (int64_t i = 0; i < c->chunks[t].n_cand; i++) all[o + i] = v[i] & 0x7fffffffu;
        o += c->chunks[t].n_cand;
    }
    *total = n;
    return all;
}

/* Runs the threshold pass at gather_thr (every chunk's candidate list restarts). */
static int gather(qctx *c, float gather_thr, int64_t *total, char *err) {
    c->gather_thr = gather_thr;
    for (int64_t t = 0; t < c->nchunks; t++) c->chunks[t].n_cand = 0;
    int rc = run_pass(c, gather_task, err);
    *total = 0;
    for (int64_t t = 0; t < c->nchunks; t++) *total += c->chunks[t].n_cand;
    return rc;
}

/* Tensor scope: runs the threshold pass, whose candidates (kept in the chunks for the quantize
 * pass) include every outlier, and sets thr_key / tie_quota (allocated into *quota_out). */
static int tensor_threshold(qctx *c, int64_t **quota_out, char *err) {
    const adpq_config *cfg = c->cfg;
    const int64_t rows = c->m->rows, cols = c->m->cols, n = rows * cols;
    int64_t total;
    int rc;
    c->row_cnt = (int64_t *)calloc((size_t)rows, sizeof(int64_t));
    c->nc_mn = (float *)malloc(sizeof(float) * 2 * (size_t)c->lay.num_groups);
    if (!c->row_cnt || !c->nc_mn) goto nomem;
    c->nc_mx = c->nc_mn + c->lay.num_groups;

    if (cfg->use_lam) {
        /* lower median of the nonzero |w| of the whole matrix: collect them all */
        if ((rc = gather(c, 0.0f, &total, err))) return rc;
        uint32_t *all = collect_candidates(c, &total);
        if (!all) goto nomem;
        float thr = 0.0f;
        if (total > 0) {
            uint32_t med = adpq_select_kth_largest(all, total, total - (total - 1) / 2);
            thr = adpq_float_floor((double)adpq_key_to_float(med) * c->lam_c);
        }
        free(all);
        if (total == 0) {
            c->mode = MODE_NONE;
            return ADPQ_OK;
        }
        /* the outliers are |w| > thr: exactly the candidates of a pass at thr */
        if ((rc = gather(c, thr, &total, err))) return rc;
        c->thr_key = adpq_abs_key(thr) + 1;
        return ADPQ_OK;
    }

    int64_t k = adpq_outlier_count(cfg->outlier_ratio, n);
    /* 1. a sample gives a threshold a little below the k-th largest |w| */
    int64_t target = n / 64 > 4096 ? n / 64 : 4096;
    float gthr = 0.0f;
    if (2 * target < n) {
        int64_t sw = (target + rows - 1) / rows;
        if (sw < 8) sw = 8;
        if (sw > cols) sw = cols;
        uint32_t *skeys = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(sw * rows));
        float *buf = (float *)malloc(sizeof(float) * (size_t)sw);
        if (!skeys || !buf) {
            free(skeys);
            free(buf);
            goto nomem;
        }
        int64_t m = sample_keys(c, sw, skeys, buf);
        double expect = (double)k * (double)m / (double)n;
        int64_t ks = (int64_t)(1.25 * expect + 4.0 * sqrt(expect) + 16.0);
        if (ks < m) gthr = adpq_key_to_float(adpq_select_kth_largest(skeys, m, ks));
        free(skeys);
        free(buf);
    }
    /* 2. collect every |w| above it; if the sample was unlucky, collect every nonzero |w| */
    if ((rc = gather(c, gthr, &total, err))) return rc;
    if (total < k && gthr != 0.0f && (rc = gather(c, 0.0f, &total, err))) return rc;
    if (total < k) { /* fewer nonzero weights than k: every nonzero weight is an outlier */
        c->thr_key = 1;
        return ADPQ_OK;
    }
    /* 3. exact selection among the candidates */
    uint32_t *cand = collect_candidates(c, &total);
    if (!cand) goto nomem;
    uint32_t T = adpq_select_kth_largest(cand, total, k);
    int64_t n_gt = 0, n_eq = 0;
    for (int64_t i = 0; i < total; i++) {
        n_gt += cand[i] > T;
        n_eq += cand[i] == T;
    }
    free(cand);
    c->thr_key = T;
    if (n_gt + n_eq > k) {
        /* partial ties: the first k - n_gt weights equal to T, in row-major order */
        int64_t *quota = (int64_t *)calloc((size_t)rows, sizeof(int64_t));
        if (!quota) goto nomem;
        int64_t remaining = k - n_gt, r = 0;
        for (int64_t t = 0; t < c->nchunks; t++) {
            const uint32_t *vals = c->chunks[t].gvals;
            int64_t o = 0, r1 = (t + 1) * c->rows_per_chunk;
            for (; r < rows && r < r1; r++) {
                int64_t e = 0;
                for (int64_t i = 0; i < c->row_cnt[r]; i++) e += (vals[o + i] & 0x7fffffffu) == T;
                o += c->row_cnt[r];
                quota[r] = e < remaining ? e : remaining;
                remaining -= quota[r];
            }
        }
        c->tie_quota = quota;
        *quota_out = quota;
    }
    return ADPQ_OK;
nomem:
    adpq_set_err(err, "out of memory");
    return ADPQ_ERR_NOMEM;
}

/* Shared setup of quantize and outlier_mask. */
static int setup(qctx *c, const adpq_matrix *m, const adpq_config *cfg, int64_t **quota, char *err) {
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
    c->K = adpq_active_kernels();
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
        if (!s->rowf || !s->tmp || !s->rpos || !s->mask || !s->codes || !s->keys || !s->gfirst) goto nomem;
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
    c->mode = MODE_TENSOR;
    return tensor_threshold(c, quota, err);
nomem:
    adpq_set_err(err, "out of memory");
    return ADPQ_ERR_NOMEM;
}

static void teardown(qctx *c, int64_t *quota) {
    free(quota);
    free(c->row_cnt);
    free(c->nc_mn);
    free_chunks(c);
}

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

adpq_status adpq_quantize(const adpq_matrix *m, const adpq_config *cfg, adpq_qmatrix *q, char *err) {
    qctx c;
    int64_t *quota = NULL;
    if (!q || !q->codes || !q->scales || (!cfg->symmetric && !q->zeros)) {
        adpq_set_err(err, "output arrays missing");
        return ADPQ_ERR_ARG;
    }
    q->outlier_counts = q->outlier_scales = q->outlier_zeros = NULL;
    q->outlier_indices = NULL;
    q->outlier_values = NULL;
    q->num_outliers = q->num_outlier_groups = 0;
    int rc = setup(&c, m, cfg, &quota, err);
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
    rc = run_pass(&c, quant_task, err);
    if (rc) goto done;
    rc = assemble_outliers(&c, q);
    if (rc) adpq_set_err(err, "out of memory");
done:
    if (rc) adpq_free_outliers(q);
    teardown(&c, quota);
    return (adpq_status)rc;
}

adpq_status adpq_outlier_mask(const adpq_matrix *m, const adpq_config *cfg, uint8_t *mask, char *err) {
    qctx c;
    int64_t *quota = NULL;
    int rc = setup(&c, m, cfg, &quota, err);
    if (rc == ADPQ_OK) {
        if (c.mode == MODE_NONE) {
            memset(mask, 0, (size_t)(m->rows * m->cols));
        } else {
            c.mask_out = mask;
            rc = run_pass(&c, quant_task, err);
        }
    }
    teardown(&c, quota);
    return (adpq_status)rc;
}
