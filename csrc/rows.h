/* rows.h - the quantize driver's context and row machinery (rows.c), used by the tensor-scope
 * threshold (threshold.c) and the entry points (api.c). Not the API. */
#ifndef ADPQ_ROWS_H
#define ADPQ_ROWS_H

#include "internal.h"

enum { MODE_NONE, MODE_TENSOR, MODE_GROUP_SOLVE, MODE_GROUP_LAM };
enum { FAIL_NONE, FAIL_SCALE, FAIL_VALUE };

typedef struct {
    float *rowf;     /* the row as float32 (16-bit inputs, column scaling) */
    float *tmp;      /* one group with its outliers replaced by one of its inliers */
    uint8_t *mask;   /* group scope: one group's outlier flags */
    uint8_t *codes;  /* cols codes, one per byte */
    uint32_t *keys;  /* group_size keys for per-group selection */
    uint32_t *rpos;  /* the row's outlier columns, increasing */
    uint8_t *fix;    /* fix-up: groups of the row whose outliers changed */
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
    int64_t *fixed; /* fix-up: per fixed group, increasing: its index, its first outlier count, and
                     * where its first records start (record, record group) */
    int64_t n_fixed, cap_fixed;
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
    float gather_thr;        /* threshold pass: collect |w| > gather_thr */
    uint32_t guess_key;      /* one pass: the sample's estimate of the threshold key */
    uint32_t *col_group;     /* column -> its group's index in the row */
    int64_t *row_cnt;        /* threshold pass: candidates per row */
    int64_t *row_rec;        /* one pass: per row, its chunk's record and record-group counts
                                before it (2 per row) */
    float *nc_mn, *nc_mx;    /* threshold pass: per group, the range of the non-candidates */
    adpq_qmatrix *q;
    uint8_t *mask_out;
    int64_t rows_per_chunk, nchunks;
    chunk_out *chunks;
    chunk_out *redo; /* one pass: the records of the fixed groups, per chunk */
    scratch *scr;
} qctx;

/* Sets up c for quantizing (or masking) m under cfg with the kernel set K: validates the
 * arguments, allocates per-worker scratch and chunks, picks the outlier mode. On error c can
 * still be passed to adpq_qctx_free. */
int adpq_qctx_init(qctx *c, const adpq_matrix *m, const adpq_config *cfg, const adpq_kernels *K, char *err);
void adpq_qctx_free(qctx *c);
/* *p grown (doubling) to hold at least `need` elements of `elem` bytes; -1 when out of memory */
int adpq_grow(void **p, int64_t *cap, int64_t need, size_t elem);
/* weights [off, off+len) of row r as float32, times the column factors when there are some */
const float *adpq_load_span(qctx *c, int64_t r, int64_t off, int64_t len, float *buf);
/* runs fn over the chunks of rows on cfg->threads workers; err describes a failure */
int adpq_run_pass(qctx *c, adpq_task_fn fn, char *err);
/* quantizes row r (w: the row as float32 if the caller has it, else NULL); its outliers are in
 * the candidates vals/cols_of[0..n) (tensor scope) */
int adpq_process_row(qctx *c, int64_t r, scratch *s, chunk_out *co, const uint32_t *vals, const uint32_t *cols_of,
                     int64_t n, const float *w);
int64_t adpq_row_outliers(qctx *c, int64_t r, const float *w, scratch *s, const uint32_t *vals,
                          const uint32_t *cols_of, int64_t n);
/* group j of row r (its outliers in s, from adpq_row_outliers): codes of its outliers (format
 * GROUP) and their records into co; wg[p - off] and codes[p - off] are the weight and code of
 * column p, off the group's first column */
int adpq_group_outliers(qctx *c, chunk_out *co, int64_t r, int64_t j, const scratch *s, const float *wg,
                        uint8_t *codes);
/* the quantize (or mask) pass over chunk t, after the threshold is known */
int adpq_quant_task(void *ctx, int64_t t, int worker);

#endif
