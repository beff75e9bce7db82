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
    uint8_t *mask;   /* cols outlier flags */
    uint8_t *codes;  /* cols codes, one per byte */
    uint32_t *keys;  /* group_size keys for per-group selection */
} scratch;

typedef struct { /* what one chunk of rows produced, in row order */
    uint32_t *pos;   /* outlier positions within their group */
    uint16_t *vals;  /* float16 outlier values (format FP16) */
    int64_t n_out, cap_out;
    int64_t cap_vals;
    uint32_t *osc, *ozp; /* stored outlier scales / zero-points (format GROUP) */
    int64_t n_grp, cap_osc, cap_ozp;
    uint32_t *gkeys; /* candidate keys of the threshold pass */
    int64_t n_keys, cap_keys;
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
    float thr;               /* tensor scope: outliers are |w| > thr ... */
    uint32_t thr_key;        /* ... plus tie_quota[r] weights of row r with key == thr_key */
    const int64_t *tie_quota;
    int64_t k_full, k_tail;  /* group scope, solved: outliers per full / last group */
    double lam_c;            /* explicit lam: threshold in units of the scope's scale */
    float gather_thr;        /* threshold pass: collect keys of |w| > gather_thr */
    int finite_checked;      /* the threshold pass has checked every weight */
    int64_t *row_cnt;        /* threshold pass: candidates per row */
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

static const float *load_span(qctx *c, int64_t r, int64_t off, int64_t len, float *buf) {
    const adpq_matrix *m = c->m;
    if (m->dtype == ADPQ_F32) return (const float *)m->data + r * m->row_stride + off;
    const uint16_t *src = (const uint16_t *)m->data + r * m->row_stride + off;
    if (m->dtype == ADPQ_F16)
        c->K->f16_to_f32(src, len, buf);
    else
        c->K->bf16_to_f32(src, len, buf);
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

static int process_row(qctx *c, int64_t r, scratch *s, chunk_out *co) {
    const adpq_kernels *K = c->K;
    const adpq_config *cfg = c->cfg;
    const int64_t cols = c->m->cols, g = c->lay.group_size, G = c->lay.groups_per_row;
    const float *w = load_span(c, r, 0, cols, s->rowf);
    if (!c->finite_checked && !K->all_finite(w, cols)) return ADPQ_ERR_NONFINITE;

    int64_t row_cnt = 0;
    if (c->mode == MODE_TENSOR) {
        row_cnt = K->mask_gt(w, cols, c->thr, s->mask);
        if (c->tie_quota && c->tie_quota[r] > 0) {
            int64_t need = c->tie_quota[r];
            for (int64_t i = 0; i < cols && need > 0; i++)
                if (adpq_abs_key(w[i]) == c->thr_key) {
                    s->mask[i] = 1;
                    need--;
                    row_cnt++;
                }
        }
    }
    for (int64_t j = 0; j < G; j++) {
        const int64_t off = j * g, len = (cols - off) < g ? (cols - off) : g, gi = r * G + j;
        const float *wg = w + off;
        uint8_t *mg = s->mask + off;
        int64_t cnt = 0;
        if (c->mode == MODE_TENSOR)
            cnt = row_cnt ? K->count_mask(mg, len) : 0;
        else if (c->mode == MODE_GROUP_SOLVE || c->mode == MODE_GROUP_LAM)
            cnt = group_mask(c, wg, len, mg, s->keys);
        if (c->mask_out) {
            uint8_t *dst = c->mask_out + r * cols + off;
            if (cnt)
                memcpy(dst, mg, (size_t)len);
            else
                memset(dst, 0, (size_t)len);
            continue;
        }
        adpq_qparams pin, pout;
        float imn, imx, omn, omx;
        uint8_t *codes = s->codes + off;
        if (cnt == 0) {
            K->minmax(wg, len, &imn, &imx);
            imn += 0.0f; /* canonical +0: SIMD and scalar min/max may differ in the sign of 0 */
            imx += 0.0f;
            if (adpq_group_params(K, imn, imx, cfg->bits, adpq_qmode(cfg), cfg->scale_dtype, &pin)) goto fail_scale;
            K->codes(wg, len, pin.inv, pin.z, (int)c->qmax, codes);
        } else {
            K->minmax_split(wg, mg, len, &imn, &imx, &omn, &omx);
            imn += 0.0f;
            imx += 0.0f;
            omn += 0.0f;
            omx += 0.0f;
            if (adpq_group_params(K, imn, imx, cfg->bits, adpq_qmode(cfg), cfg->scale_dtype, &pin)) goto fail_scale;
            if (cfg->outlier_format == ADPQ_OUTLIERS_GROUP) {
                if (adpq_group_params(K, omn, omx, cfg->bits, adpq_qmode(cfg), cfg->scale_dtype, &pout)) goto fail_scale;
                K->codes_split(wg, mg, len, pin.inv, pin.z, pout.inv, pout.z, (int)c->qmax, codes);
                if (grow((void **)&co->osc, &co->cap_osc, co->n_grp + 1, 4) ||
                    grow((void **)&co->ozp, &co->cap_ozp, co->n_grp + 1, 4))
                    return ADPQ_ERR_NOMEM;
                co->osc[co->n_grp] = pout.s_stored;
                co->ozp[co->n_grp] = pout.z_stored;
                co->n_grp++;
            } else {
                /* outliers are stored exactly as float16; their codes are the inlier codes, clamped */
                K->codes(wg, len, pin.inv, pin.z, (int)c->qmax, codes);
            }
            if (grow((void **)&co->pos, &co->cap_out, co->n_out + cnt, 4)) return ADPQ_ERR_NOMEM;
            if (cfg->outlier_format == ADPQ_OUTLIERS_FP16 &&
                grow((void **)&co->vals, &co->cap_vals, co->n_out + cnt, 2))
                return ADPQ_ERR_NOMEM;
            uint32_t *pos = co->pos + co->n_out;
            K->mask_positions(mg, len, pos);
            if (cfg->outlier_format == ADPQ_OUTLIERS_FP16) {
                for (int64_t i = 0; i < cnt; i++) {
                    uint16_t h = adpq_f32_to_f16(wg[pos[i]]);
                    if ((h & 0x7c00u) == 0x7c00u) {
                        co->fail = FAIL_VALUE;
                        co->fail_row = r;
                        return ADPQ_ERR_RANGE;
                    }
                    co->vals[co->n_out + i] = h;
                }
            }
            co->n_out += cnt;
        }
        adpq_put_stored(c->q->scales, gi, pin.s_stored, c->lay.scale_bytes);
        if (!cfg->symmetric) adpq_put_stored(c->q->zeros, gi, pin.z_stored, c->lay.scale_bytes);
        adpq_put_count(c->q->outlier_counts, gi, cnt, c->lay.count_bytes);
    }
    if (!c->mask_out) adpq_pack_codes(c->q->codes, r * cols, s->codes, cols, cfg->bits);
    return ADPQ_OK;
fail_scale:
    co->fail = FAIL_SCALE;
    co->fail_row = r;
    return ADPQ_ERR_RANGE;
}

static int quant_task(void *ctx, int64_t t, int worker) {
    qctx *c = (qctx *)ctx;
    int64_t r0 = t * c->rows_per_chunk, r1 = r0 + c->rows_per_chunk;
    if (r1 > c->m->rows) r1 = c->m->rows;
    for (int64_t r = r0; r < r1; r++) {
        int rc = process_row(c, r, &c->scr[worker], &c->chunks[t]);
        if (rc) return rc;
    }
    return 0;
}

/* threshold pass: candidate keys |w| > gather_thr, per row counts */
static int gather_task(void *ctx, int64_t t, int worker) {
    qctx *c = (qctx *)ctx;
    chunk_out *co = &c->chunks[t];
    const int64_t cols = c->m->cols;
    int64_t r0 = t * c->rows_per_chunk, r1 = r0 + c->rows_per_chunk;
    if (r1 > c->m->rows) r1 = c->m->rows;
    for (int64_t r = r0; r < r1; r++) {
        const float *w = load_span(c, r, 0, cols, c->scr[worker].rowf);
        if (grow((void **)&co->gkeys, &co->cap_keys, co->n_keys + cols, 4)) return ADPQ_ERR_NOMEM;
        int64_t n = c->K->gather_gt(w, cols, c->gather_thr, co->gkeys + co->n_keys);
        if (n < 0) return ADPQ_ERR_NONFINITE;
        c->row_cnt[r] = n;
        co->n_keys += n;
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
            free(c->chunks[t].gkeys);
        }
    free(c->chunks);
    c->chunks = NULL;
    if (c->scr)
        for (int i = 0; i < c->cfg->threads; i++) {
            free(c->scr[i].rowf);
            free(c->scr[i].mask);
            free(c->scr[i].codes);
            free(c->scr[i].keys);
        }
    free(c->scr);
    c->scr = NULL;
}

static void release_gather(qctx *c) {
    for (int64_t t = 0; t < c->nchunks; t++) {
        free(c->chunks[t].gkeys);
        c->chunks[t].gkeys = NULL;
        c->chunks[t].n_keys = c->chunks[t].cap_keys = 0;
    }
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

/* Concatenates the candidate keys of all chunks (row order). */
static uint32_t *collect_candidates(qctx *c, int64_t *total) {
    int64_t n = 0;
    for (int64_t t = 0; t < c->nchunks; t++) n += c->chunks[t].n_keys;
    uint32_t *all = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(n > 0 ? n : 1));
    if (!all) return NULL;
    int64_t o = 0;
    for (int64_t t = 0; t < c->nchunks; t++) {
        if (c->chunks[t].n_keys) memcpy(all + o, c->chunks[t].gkeys, sizeof(uint32_t) * (size_t)c->chunks[t].n_keys);
        o += c->chunks[t].n_keys;
    }
    *total = n;
    return all;
}

/* Tensor scope: sets c->thr / thr_key / tie_quota (allocated into *quota_out). */
static int tensor_threshold(qctx *c, int64_t **quota_out, char *err) {
    const adpq_config *cfg = c->cfg;
    const int64_t rows = c->m->rows, cols = c->m->cols, n = rows * cols;
    int rc;
    c->row_cnt = (int64_t *)calloc((size_t)rows, sizeof(int64_t));
    if (!c->row_cnt) goto nomem;

    if (cfg->use_lam) {
        /* lower median of the nonzero |w| of the whole matrix: collect them all */
        c->gather_thr = 0.0f;
        if ((rc = run_pass(c, gather_task, err))) return rc;
        int64_t nnz;
        uint32_t *all = collect_candidates(c, &nnz);
        release_gather(c);
        if (!all) goto nomem;
        if (nnz == 0) {
            c->mode = MODE_NONE;
        } else {
            uint32_t med = adpq_select_kth_largest(all, nnz, nnz - (nnz - 1) / 2);
            c->thr = adpq_float_floor((double)adpq_key_to_float(med) * c->lam_c);
        }
        free(all);
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
    for (;;) {
        c->gather_thr = gthr;
        for (int64_t t = 0; t < c->nchunks; t++) c->chunks[t].n_keys = 0;
        if ((rc = run_pass(c, gather_task, err))) return rc;
        int64_t total = 0;
        for (int64_t t = 0; t < c->nchunks; t++) total += c->chunks[t].n_keys;
        if (total >= k || gthr == 0.0f) break;
        gthr = 0.0f;
    }
    c->finite_checked = 1;
    /* 3. exact selection among the candidates */
    int64_t total;
    uint32_t *cand = collect_candidates(c, &total);
    release_gather(c);
    if (!cand) goto nomem;
    if (total < k) { /* (gthr == 0) fewer nonzero weights than k: every nonzero weight is an outlier */
        c->thr = 0.0f;
        free(cand);
        return ADPQ_OK;
    }
    uint32_t *sel = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)total);
    if (!sel) {
        free(cand);
        goto nomem;
    }
    memcpy(sel, cand, sizeof(uint32_t) * (size_t)total);
    uint32_t T = adpq_select_kth_largest(sel, total, k);
    free(sel);
    int64_t n_gt = 0, n_eq = 0;
    for (int64_t i = 0; i < total; i++) {
        n_gt += cand[i] > T;
        n_eq += cand[i] == T;
    }
    if (n_gt + n_eq == k) {
        c->thr = adpq_key_to_float(T - 1); /* |w| > thr  <=>  key >= T */
    } else {
        /* partial ties: the first k - n_gt weights equal to T, in row-major order */
        int64_t *quota = (int64_t *)calloc((size_t)rows, sizeof(int64_t));
        if (!quota) {
            free(cand);
            goto nomem;
        }
        int64_t remaining = k - n_gt, o = 0;
        for (int64_t r = 0; r < rows; r++) {
            int64_t e = 0;
            for (int64_t i = 0; i < c->row_cnt[r]; i++) e += cand[o + i] == T;
            o += c->row_cnt[r];
            quota[r] = e < remaining ? e : remaining;
            remaining -= quota[r];
        }
        c->thr = adpq_key_to_float(T);
        c->thr_key = T;
        c->tie_quota = quota;
        *quota_out = quota;
    }
    free(cand);
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
        s->mask = (uint8_t *)malloc((size_t)cols + 8);
        s->codes = (uint8_t *)malloc((size_t)cols + 8);
        s->keys = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)g);
        if (!s->rowf || !s->mask || !s->codes || !s->keys) goto nomem;
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
