/* threshold.c - tensor scope: the outliers are the k weights of largest |w| in the whole matrix
 * (ties in row-major order), so no group is final before every weight has been seen.
 *
 * Both ways start from a sample, which gives a threshold gthr a little below the k-th largest |w|.
 * The candidate pass keeps every weight with |w| > gthr (value and column) and, per group, the range
 * of the others; the exact threshold is then a selection among the candidates.
 * - Two passes: the candidate pass over the matrix, the selection, then the quantize pass, which
 *   needs nothing of the row but its codes (rows.c).
 * - One pass (solved lambda; route AUTO: column-scaled matrices larger than a cache): each row is quantized
 *   right after its candidate pass, while it is in cache, with the sample's estimate of the
 *   threshold (guess_key); after the selection, only the groups holding a candidate on the wrong
 *   side of the estimate are quantized again and their records replaced. The result is the same,
 *   bit for bit; the matrix is read (and scaled) once, plus the few fixed groups.
 */
#include <math.h>
#include <stdlib.h>

#include "quant.h"
#include "rows.h"
#include "threshold.h"

static int alloc_pass_arrays(qctx *c) {
    if (c->row_cnt) return ADPQ_OK;
    c->row_cnt = (int64_t *)calloc((size_t)c->m->rows, sizeof(int64_t));
    c->nc_mn = (float *)malloc(sizeof(float) * 2 * (size_t)c->lay.num_groups);
    if (!c->row_cnt || !c->nc_mn) return ADPQ_ERR_NOMEM;
    c->nc_mx = c->nc_mn + c->lay.num_groups;
    return ADPQ_OK;
}

/* room for about 4% of the chunk's weights up front, so that the candidate lists rarely move */
static int reserve_candidates(qctx *c, chunk_out *co, int64_t rows) {
    const int64_t first = rows * c->m->cols / 25 + c->m->cols;
    if (adpq_grow((void **)&co->gvals, &co->cap_gvals, first, 4) || adpq_grow((void **)&co->gcols, &co->cap_gcols, first, 4))
        return ADPQ_ERR_NOMEM;
    return ADPQ_OK;
}

/* The candidate pass over row r: appends its candidates to co, sets row_cnt[r] and the ranges of
 * the non-candidates. With w_row, the row as float32 there (the input, the scaled row, or the
 * 16-bit row converted by the pass into the worker's buffer). */
static int gather_row(qctx *c, chunk_out *co, int64_t r, int worker, const float **w_row) {
    const int64_t cols = c->m->cols, G = c->lay.groups_per_row;
    if (adpq_grow((void **)&co->gvals, &co->cap_gvals, co->n_cand + cols, 4) ||
        adpq_grow((void **)&co->gcols, &co->cap_gcols, co->n_cand + cols, 4))
        return ADPQ_ERR_NOMEM;
    const size_t isz = c->m->dtype == ADPQ_F32 ? 4 : 2;
    const void *w = (const char *)c->m->data + (size_t)(r * c->m->row_stride) * isz;
    int dtype = c->m->dtype;
    if (c->m->col_mul) { /* the scaled row */
        w = adpq_load_span(c, r, 0, cols, c->scr[worker].rowf);
        dtype = ADPQ_F32;
    }
    /* a 16-bit row comes out as float32 too, for the quantize step */
    float *row_f32 = dtype == ADPQ_F32 || !w_row ? NULL : c->scr[worker].rowf;
    if (w_row) *w_row = dtype == ADPQ_F32 ? (const float *)w : row_f32;
    int64_t n = c->K->gather_groups(w, dtype, cols, c->lay.group_size, c->gather_thr, co->gvals + co->n_cand,
                                    co->gcols + co->n_cand, c->nc_mn + r * G, c->nc_mx + r * G, row_f32);
    if (n < 0) return ADPQ_ERR_NONFINITE;
    c->row_cnt[r] = n;
    co->n_cand += n;
    return ADPQ_OK;
}

/* The candidate pass over chunk t; with `quantize` (one pass), each row is then quantized with
 * thr_key = guess_key while it is in cache. */
static int candidate_rows(qctx *c, int64_t t, int worker, int quantize) {
    chunk_out *co = &c->chunks[t];
    int64_t r0 = t * c->rows_per_chunk, r1 = r0 + c->rows_per_chunk;
    if (r1 > c->m->rows) r1 = c->m->rows;
    int rc = reserve_candidates(c, co, r1 - r0);
    for (int64_t r = r0; r < r1 && !rc; r++) {
        const int64_t o = co->n_cand;
        const float *w_row = NULL;
        rc = gather_row(c, co, r, worker, quantize ? &w_row : NULL);
        if (!rc && quantize)
            rc = adpq_process_row(c, r, &c->scr[worker], co, co->gvals + o, co->gcols + o, c->row_cnt[r], w_row);
    }
    return rc;
}

static int gather_task(void *ctx, int64_t t, int worker) { return candidate_rows((qctx *)ctx, t, worker, 0); }

static int one_pass_task(void *ctx, int64_t t, int worker) { return candidate_rows((qctx *)ctx, t, worker, 1); }

/* Sample keys: from each row, a window of sw weights at a row-dependent offset, so that the
 * sample covers every row and, across rows, every column (outlier channels are column-wise). */
static int64_t sample_keys(qctx *c, int64_t sw, uint32_t *keys, float *buf) {
    const int64_t rows = c->m->rows, cols = c->m->cols;
    int64_t m = 0;
    const size_t isz = c->m->dtype == ADPQ_F32 ? 4 : 2;
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = (int64_t)(((uint64_t)r * 2654435761u) % (uint64_t)(cols - sw + 1));
        if (r + 8 < rows) { /* the windows are short and scattered: ask for row r + 8's early */
            const int64_t off8 = (int64_t)(((uint64_t)(r + 8) * 2654435761u) % (uint64_t)(cols - sw + 1));
            const char *p = (const char *)c->m->data + (size_t)((r + 8) * c->m->row_stride + off8) * isz;
            for (size_t b = 0; b < (size_t)sw * isz; b += 64) __builtin_prefetch(p + b);
        }
        const float *w = adpq_load_span(c, r, off, sw, buf);
        for (int64_t i = 0; i < sw; i++)
            if (isfinite(w[i])) keys[m++] = adpq_abs_key(w[i]);
    }
    return m;
}

/* From a sample of about n/64 weights: *gthr, a threshold a little below the k-th largest |w|
 * (0 when the sample says nothing), and (guess not NULL) *guess, the sample's estimate of the k-th
 * largest key. Returns 0 when the matrix is too small to sample or the sample gives no estimate,
 * 1 otherwise, or a negative error. */
static int sample_threshold(qctx *c, int64_t k, float *gthr, uint32_t *guess) {
    const int64_t rows = c->m->rows, cols = c->m->cols, n = rows * cols;
    const int64_t target = n / 64 > 4096 ? n / 64 : 4096;
    *gthr = 0.0f;
    if (guess) *guess = 0;
    if (2 * target >= n) return 0;
    int64_t sw = (target + rows - 1) / rows;
    if (sw < 8) sw = 8;
    if (sw > cols) sw = cols;
    uint32_t *skeys = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(sw * rows));
    float *buf = (float *)malloc(sizeof(float) * (size_t)sw);
    if (!skeys || !buf) {
        free(skeys);
        free(buf);
        return -ADPQ_ERR_NOMEM;
    }
    const int64_t m = sample_keys(c, sw, skeys, buf);
    const double expect = (double)k * (double)m / (double)n;
    const int64_t ks = (int64_t)(1.25 * expect + 4.0 * sqrt(expect) + 16.0);
    int64_t kg = (int64_t)(expect + 0.5), above = m;
    if (kg < 1) kg = 1;
    if (ks < m) {
        uint32_t lo = adpq_select_kth_largest(skeys, m, ks);
        *gthr = adpq_key_to_float(lo);
        above = 0; /* the guess is among the sample's keys above gthr: move them to the front */
        for (int64_t i = 0; guess && i < m; i++)
            if (skeys[i] > lo) skeys[above++] = skeys[i];
    }
    if (guess && kg <= above) *guess = adpq_select_kth_largest(skeys, above, kg);
    free(skeys);
    free(buf);
    return !guess || *guess ? 1 : 0;
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

/* Runs the candidate pass at gather_thr (every chunk's candidate list restarts). */
static int gather(qctx *c, float gather_thr, int64_t *total, char *err) {
    c->gather_thr = gather_thr;
    for (int64_t t = 0; t < c->nchunks; t++) c->chunks[t].n_cand = 0;
    int rc = adpq_run_pass(c, gather_task, err);
    *total = 0;
    for (int64_t t = 0; t < c->nchunks; t++) *total += c->chunks[t].n_cand;
    return rc;
}

/* The exact threshold among the candidates (at least k of them): thr_key, and the tie quotas
 * when only some of the weights equal to it are outliers. */
static int select_threshold(qctx *c, int64_t k, int64_t **quota_out) {
    const int64_t rows = c->m->rows;
    int64_t total;
    uint32_t *cand = collect_candidates(c, &total);
    if (!cand) return ADPQ_ERR_NOMEM;
    uint32_t T = adpq_select_kth_largest(cand, total, k);
    int64_t n_gt = 0, n_eq = 0;
    for (int64_t i = 0; i < total; i++) {
        n_gt += cand[i] > T;
        n_eq += cand[i] == T;
    }
    free(cand);
    c->thr_key = T;
    c->tie_quota = NULL;
    if (n_gt + n_eq > k) {
        /* partial ties: the first k - n_gt weights equal to T, in row-major order */
        int64_t *quota = (int64_t *)calloc((size_t)rows, sizeof(int64_t));
        if (!quota) return ADPQ_ERR_NOMEM;
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
}

int adpq_tensor_threshold(qctx *c, int64_t **quota_out, char *err) {
    const adpq_config *cfg = c->cfg;
    const int64_t n = c->m->rows * c->m->cols;
    int64_t total;
    int rc;
    if (alloc_pass_arrays(c)) goto nomem;

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

    const int64_t k = adpq_outlier_count(cfg->outlier_ratio, n);
    float gthr;
    if (sample_threshold(c, k, &gthr, NULL) < 0) goto nomem;
    /* collect every |w| above gthr; if the sample was unlucky, every nonzero |w| */
    if ((rc = gather(c, gthr, &total, err))) return rc;
    if (total < k && gthr != 0.0f && (rc = gather(c, 0.0f, &total, err))) return rc;
    if (total < k) { /* fewer nonzero weights than k: every nonzero weight is an outlier */
        c->thr_key = 1;
        return ADPQ_OK;
    }
    if (select_threshold(c, k, quota_out)) goto nomem;
    return ADPQ_OK;
nomem:
    adpq_set_err(err, "out of memory");
    return ADPQ_ERR_NOMEM;
}

/* ------------------------------------------------------------------ one pass: the fix-up */

/* Clears codes [first, first + n) of the stream and packs new ones there. */
static void repack_codes(const adpq_kernels *K, uint8_t *dst, int64_t first, const uint8_t *codes, int64_t n, int bits) {
    const uint64_t b0 = (uint64_t)first * (uint64_t)bits, b1 = (uint64_t)(first + n) * (uint64_t)bits;
    const uint64_t B0 = b0 >> 3, B1 = b1 >> 3;
    if (B0 == B1) {
        dst[B0] &= (uint8_t)~(((1u << (b1 - b0)) - 1u) << (b0 & 7));
    } else {
        dst[B0] &= (uint8_t)((1u << (b0 & 7)) - 1u);
        memset(dst + B0 + 1, 0, (size_t)(B1 - B0 - 1));
        if (b1 & 7) dst[B1] &= (uint8_t)~((1u << (b1 & 7)) - 1u);
    }
    adpq_pack_codes(K, dst, first, codes, n, bits);
}

/* Group j of row r again, with the exact threshold (s: adpq_row_outliers of the row done):
 * count, parameters, codes, and its records into rd; co->fixed remembers its first count and
 * where its first records are in co (rec, rec_grp). */
static int fix_group(qctx *c, chunk_out *co, chunk_out *rd, int64_t r, int64_t j, scratch *s, int64_t rec,
                     int64_t rec_grp) {
    const adpq_config *cfg = c->cfg;
    const int64_t cols = c->m->cols, g = c->lay.group_size, gi = r * c->lay.groups_per_row + j, off = j * g;
    const int64_t len = (cols - off) < g ? (cols - off) : g;
    const int cb = c->lay.count_bytes, sb = c->lay.scale_bytes;
    if (adpq_grow((void **)&co->fixed, &co->cap_fixed, 4 * (co->n_fixed + 1), sizeof(int64_t))) return ADPQ_ERR_NOMEM;
    int64_t *fx = co->fixed + 4 * co->n_fixed++;
    fx[0] = gi;
    fx[1] = adpq_get_count(c->q->outlier_counts, gi, cb);
    fx[2] = rec;
    fx[3] = rec_grp;
    adpq_put_count(c->q->outlier_counts, gi, s->gcnt[j], cb);
    if (c->K->params(s->gmn + j, s->gmx + j, 1, cfg->bits, adpq_qmode(cfg), cfg->scale_dtype, s->ginv + j, s->gz + j,
                     s->gs + j, s->gzs + j)) {
        rd->fail = FAIL_SCALE;
        rd->fail_row = r;
        return ADPQ_ERR_RANGE;
    }
    adpq_put_stored(c->q->scales, gi, s->gs[j], sb);
    if (!cfg->symmetric) adpq_put_stored(c->q->zeros, gi, s->gzs[j], sb);
    const float *wg = adpq_load_span(c, r, off, len, s->rowf);
    c->K->codes_groups(wg, len, g, s->ginv + j, s->gz + j, (int)c->qmax, s->codes);
    int rc = adpq_group_outliers(c, rd, r, j, s, wg, s->codes);
    if (rc) return rc;
    repack_codes(c->K, c->q->codes, r * cols + off, s->codes, len, cfg->bits);
    return ADPQ_OK;
}

/* Appends records [from, from + n) of src (and, format GROUP, record groups [gfrom, gfrom + ng)). */
static void copy_records(chunk_out *out, const chunk_out *src, int64_t from, int64_t n, int64_t gfrom, int64_t ng,
                         int grp) {
    if (n > 0) { /* (src's arrays are NULL when it has no records) */
        memcpy(out->pos + out->n_out, src->pos + from, sizeof(uint32_t) * (size_t)n);
        if (!grp) memcpy(out->vals + out->n_out, src->vals + from, sizeof(uint16_t) * (size_t)n);
        out->n_out += n;
    }
    if (!grp || ng == 0) return;
    memcpy(out->osc + out->n_grp, src->osc + gfrom, sizeof(uint32_t) * (size_t)ng);
    memcpy(out->ozp + out->n_grp, src->ozp + gfrom, sizeof(uint32_t) * (size_t)ng);
    out->n_grp += ng;
}

/* Chunk co's records, with the fixed groups' first records replaced by rd's, in group order. */
static int merge_records(qctx *c, chunk_out *co, chunk_out *rd) {
    const int grp = c->cfg->outlier_format == ADPQ_OUTLIERS_GROUP, cb = c->lay.count_bytes;
    chunk_out out;
    memset(&out, 0, sizeof(out));
    const int64_t cap = co->n_out + rd->n_out + 1, capg = co->n_grp + rd->n_grp + 1;
    if (adpq_grow((void **)&out.pos, &out.cap_out, cap, 4) ||
        (!grp && adpq_grow((void **)&out.vals, &out.cap_vals, cap, 2)) ||
        (grp && (adpq_grow((void **)&out.osc, &out.cap_osc, capg, 4) || adpq_grow((void **)&out.ozp, &out.cap_ozp, capg, 4)))) {
        free(out.pos);
        free(out.vals);
        free(out.osc);
        free(out.ozp);
        return ADPQ_ERR_NOMEM;
    }
    int64_t pm = 0, pg = 0, rm = 0, rg = 0;
    for (int64_t f = 0; f < co->n_fixed; f++) {
        const int64_t *fx = co->fixed + 4 * f, cnt = adpq_get_count(c->q->outlier_counts, fx[0], cb);
        copy_records(&out, co, pm, fx[2] - pm, pg, fx[3] - pg, grp); /* the run before it */
        pm = fx[2] + fx[1];
        pg = fx[3] + (fx[1] > 0);
        copy_records(&out, rd, rm, cnt, rg, cnt > 0, grp);
        rm += cnt;
        rg += cnt > 0;
    }
    copy_records(&out, co, pm, co->n_out - pm, pg, co->n_grp - pg, grp);
    free(co->pos);
    free(co->vals);
    free(co->osc);
    free(co->ozp);
    co->pos = out.pos;
    co->vals = out.vals;
    co->osc = out.osc;
    co->ozp = out.ozp;
    co->n_out = out.n_out;
    co->cap_out = out.cap_out;
    co->cap_vals = out.cap_vals;
    co->n_grp = out.n_grp;
    co->cap_osc = out.cap_osc;
    co->cap_ozp = out.cap_ozp;
    return ADPQ_OK;
}

/* The rows of chunk t whose candidates fall on the other side of the exact threshold than of
 * the estimate: their groups again (outliers are key >= guess_key in the pass). */
static int fix_task(void *ctx, int64_t t, int worker) {
    qctx *c = (qctx *)ctx;
    chunk_out *co = &c->chunks[t], *rd = &c->redo[t];
    scratch *s = &c->scr[worker];
    const int64_t G = c->lay.groups_per_row, g = c->lay.group_size;
    const uint32_t T = c->thr_key, guess = c->guess_key;
    int64_t r0 = t * c->rows_per_chunk, r1 = r0 + c->rows_per_chunk, o = 0;
    if (r1 > c->m->rows) r1 = c->m->rows;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t n = c->row_cnt[r];
        const uint32_t *vals = co->gvals + o, *cols_of = co->gcols + o;
        o += n;
        int64_t quota = c->tie_quota ? c->tie_quota[r] : INT64_MAX, taken = 0;
        int any = 0;
        for (int64_t i = 0; i < n; i++) {
            const uint32_t key = vals[i] & 0x7fffffffu;
            const int out = key > T || (key == T && taken < quota);
            taken += out && key == T;
            if (out == (key >= guess)) continue;
            if (!any) memset(s->fix, 0, (size_t)G);
            any = 1;
            s->fix[cols_of[i] / (uint32_t)g] = 1;
        }
        if (!any) continue;
        adpq_row_outliers(c, r, NULL, s, vals, cols_of, n);
        int64_t rec = c->row_rec[2 * r], rec_grp = c->row_rec[2 * r + 1]; /* group j's first records */
        for (int64_t j = 0; j < G; j++) {
            const int64_t first = adpq_get_count(c->q->outlier_counts, r * G + j, c->lay.count_bytes);
            if (s->fix[j]) {
                int rc = fix_group(c, co, rd, r, j, s, rec, rec_grp);
                if (rc) {
                    co->fail = rd->fail;
                    co->fail_row = rd->fail_row;
                    return rc;
                }
            }
            rec += first;
            rec_grp += first > 0;
        }
    }
    return co->n_fixed ? merge_records(c, co, rd) : ADPQ_OK;
}

/* Back to the state before the one pass (its records and code bits dropped). */
static void undo_one_pass(qctx *c) {
    for (int64_t t = 0; t < c->nchunks; t++) {
        c->chunks[t].n_out = c->chunks[t].n_grp = c->chunks[t].n_fixed = 0;
        c->chunks[t].fail = FAIL_NONE;
    }
    if (c->m->cols % 8) memset(c->q->codes, 0, (size_t)c->lay.code_bytes);
    c->tie_quota = NULL;
}

/* When the one pass is taken (route AUTO): matrices of at least this many input bytes, with column
 * scaling. Measured on a Zen 1 with 8 MiB of L3 (benchmarks/RESULTS.md): below ~16 MiB the second
 * read of two passes comes from cache and two passes are faster; on 64-180 MB matrices with column
 * scaling the one pass (one read and one multiply per weight instead of two) is as fast to 6% faster
 * (RESULTS.md, "One pass against two"); without column scaling the fix-ups cost more than the second
 * read saves (two passes up to 14% faster). Routes ONE_PASS and TWO_PASS force the choice (tests, benchmarks). */
#define ADPQ_ONE_PASS_MIN_BYTES (24 << 20)

static int want_one_pass(const qctx *c) {
    if (c->cfg->route == ADPQ_ROUTE_ONE_PASS) return 1;
    if (c->cfg->route == ADPQ_ROUTE_TWO_PASS) return 0;
    const int64_t isz = c->m->dtype == ADPQ_F32 ? 4 : 2;
    return c->m->col_mul && c->m->rows * c->m->cols * isz >= ADPQ_ONE_PASS_MIN_BYTES;
}

int adpq_tensor_one_pass(qctx *c, int64_t **quota_out, char *err) {
    const adpq_config *cfg = c->cfg;
    if (c->mask_out || cfg->use_lam || !want_one_pass(c)) return ADPQ_ERR_AGAIN;
    const int64_t k = adpq_outlier_count(cfg->outlier_ratio, c->m->rows * c->m->cols);
    float gthr;
    uint32_t guess;
    if (alloc_pass_arrays(c)) goto nomem;
    int rc = sample_threshold(c, k, &gthr, &guess);
    if (rc < 0) goto nomem;
    if (rc == 0) return ADPQ_ERR_AGAIN; /* too small to sample */
    c->row_rec = (int64_t *)malloc(sizeof(int64_t) * 2 * (size_t)c->m->rows);
    if (!c->row_rec) goto nomem;
    c->gather_thr = gthr;
    c->guess_key = guess;
    c->thr_key = guess;
    c->tie_quota = NULL;
    rc = adpq_run_pass(c, one_pass_task, err);
    int64_t total = 0;
    for (int64_t t = 0; t < c->nchunks; t++) total += c->chunks[t].n_cand;
    if (rc == ADPQ_ERR_RANGE || (!rc && total < k)) {
        /* a scale that overflows with the estimate only, or too few candidates: two passes
         * (which give the definitive error, if any) */
        undo_one_pass(c);
        return ADPQ_ERR_AGAIN;
    }
    if (rc) return rc;
    if (select_threshold(c, k, quota_out)) goto nomem;
    c->redo = (chunk_out *)calloc((size_t)c->nchunks, sizeof(chunk_out));
    if (!c->redo) goto nomem;
    return adpq_run_pass(c, fix_task, err);
nomem:
    adpq_set_err(err, "out of memory");
    return ADPQ_ERR_NOMEM;
}
