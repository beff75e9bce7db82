/* gptq.c - GPTQ (python/adpq/reference/gptq.py is the specification): the damped Hessian's factor and
 * the solver that rounds a matrix column by column on given grids, spreading each column's rounding
 * error over the columns not yet rounded.
 *
 * The factor, in float64: with J the reversal, J Hp J = M M^T (M lower, Cholesky) gives Hp = R R^T with
 * R = J M J upper. The reference's U (upper, U^T U = Hp^-1) is R^-1 = J M^-1 J: adpq_gptq_inverse returns
 * it (one Cholesky and one triangular inverse, ~n^3/3 multiply-adds). The solver needs only R (one
 * Cholesky, ~n^3/6): GPTQ's recurrence x_j = w_j - sum_{i<j} e_i U_ij, e_i = (x_i - q_i) / U_ii is, with
 * e = (w - q) R, x_j = w_j - sum_{i<j} d_i L_ji where d = q - w and L_ji = R_ij / R_jj (L = the solver's
 * float32 factor, unit lower). Both are blocked so that nearly all the work is the kernel set's
 * gemm_sub_f64 (row-major, contiguous inner loops), threaded over rows or columns of each product. The
 * work matrices have padded row strides (padded_stride): with rows a multiple of 4 KiB apart (n = 512,
 * 1024, 1536, ...) the strips of the products' right operands would all fall into one L1 set and the
 * products run at half speed.
 *
 * The solver: rows are independent given L, so each task takes a chunk of rows through every block of
 * columns with its own tiles: the chunk transposed (a column's rows contiguous, in the rounding order),
 * so that a column is rounded for 8 rows at once (gptq_round) and spread over the later columns by
 * vector updates (gptq_update). Per block, RW rows at a time (their part of the block stays in L1): in
 * quads of Q columns, each column rounded and spread over the rest of its quad, then the quad over the
 * block's later columns; after the block the chunk's later columns -= L[later, block] @ E (gemm_sub: the
 * lazy batch update). The same final values as the reference's U form in another summation order, so
 * codes on a rounding boundary may differ from it. Refit grids read the values the reference has
 * mid-block (partly spread; refit_rows rebuilds them by a forward substitution with L).
 * A row's arithmetic never depends on the chunking: the output is the same for any thread count.
 * Codes go to the packed stream per chunk (chunks of 8k rows start at whole bytes). */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise */
#endif
#include <math.h>
#include <stdlib.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "internal.h"
#include "quant.h"

static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* n x n float64 values (and their float32 factor) addressable */
static int square_ok(int64_t n) {
    return n >= 1 && n <= ((int64_t)1 << 30) && (uint64_t)n * (uint64_t)n <= (uint64_t)(SIZE_MAX / sizeof(double) / 2);
}

/* ------------------------------------------------------------------ column order */

typedef struct {
    double key;
    int64_t idx;
} ord_item;

static int ord_cmp(const void *pa, const void *pb) {
    const ord_item *a = (const ord_item *)pa, *b = (const ord_item *)pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1; /* descending diag */
    return (a->idx > b->idx) - (a->idx < b->idx);          /* stable */
}

static int column_order(const double *h, int64_t n, int act_order, int64_t *perm) {
    if (!act_order) {
        for (int64_t j = 0; j < n; j++) perm[j] = j;
        return 0;
    }
    ord_item *it = (ord_item *)malloc(sizeof(ord_item) * (size_t)n);
    if (!it) return -1;
    for (int64_t j = 0; j < n; j++) {
        it[j].key = h[j * n + j];
        it[j].idx = j;
    }
    qsort(it, (size_t)n, sizeof(ord_item), ord_cmp);
    for (int64_t j = 0; j < n; j++) perm[j] = it[j].idx;
    free(it);
    return 0;
}

/* ------------------------------------------------------------------ the factorization */

#define NB 64  /* the inverse's row block, and the Cholesky's panel width below n = 1024 (128 from there: a
                * deeper trailing update, half the passes over the matrix; smaller n prefer 64) */
#define NBMAX 128
#define SB 12  /* their sub-blocks: the substitutions within one are vector loops, the rest products */
#define RB 32  /* rows per task of the Cholesky's panel and trailing update */
#define CB 72  /* columns per task of the inverse's off-diagonal product (6 tiles of 12) */
#define KC 128 /* depth of one product call there (its strip of X stays in L1) */

/* A row stride >= n (elements of `size` bytes) of an odd number of 64-byte lines: the rows of a
 * product's operand then fall in different L1 sets (rows 4096 bytes apart all share one set: a
 * strip of b would not stay in cache). */
static int64_t padded_stride(int64_t n, int64_t size) {
    const int64_t per = 64 / size;
    int64_t lines = (n + per - 1) / per;
    if (lines % 2 == 0) lines++;
    return lines * per;
}

/* 64-byte aligned (rows at whole lines); free() releases it. From 4 MiB on: 2 MiB aligned and, on Linux,
 * in transparent huge pages where the system offers them on request (madvise mode): a fresh n x n factor
 * is otherwise one page fault and one zeroed page per 4 KiB (~10% of the factor's time at n = 2048). */
static void *alloc64(size_t bytes) {
    const size_t big = (size_t)4 << 20, huge = (size_t)2 << 20;
    if (bytes < big) return aligned_alloc(64, (bytes + 63) / 64 * 64);
    const size_t len = (bytes + huge - 1) / huge * huge;
    void *p = aligned_alloc(huge, len);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p) (void)madvise(p, len, MADV_HUGEPAGE); /* (a hint: failure changes nothing) */
#endif
    return p;
}

typedef struct {
    const adpq_kernels *K;
    double *a;         /* n x n, row stride ld */
    int64_t n, ld;
    int64_t k0, k1;    /* the panel (Cholesky) or the row block (inverse) */
    const double *lt;  /* the panel's diagonal block transposed: lt[j * nb + t] = L[k0+t][k0+j] */
    double *p;         /* the panel transposed, nb x (n - k1), row stride ldp */
    int64_t ldp;
    double *t;         /* the inverse's products, nb x n, row stride ld */
} fact_ctx;

/* Cholesky panel, rows [r0, r1) of [k1, n): L[i][k0:k1] = A[i][k0:k1] L11^-T, by sub-blocks of SB
 * columns (the earlier sub-blocks' part as a product, then a forward substitution), and p = its
 * transpose */
static int chol_panel_task(void *vctx, int64_t task, int worker) {
    (void)worker;
    const fact_ctx *c = (const fact_ctx *)vctx;
    const int64_t n = c->n, ld = c->ld, k0 = c->k0, nb = c->k1 - k0, r0 = c->k1 + task * RB, r1 = imin(r0 + RB, n);
    const double *lt = c->lt;
    double *a = c->a;
    for (int64_t s0 = 0; s0 < nb; s0 += SB) {
        const int64_t s1 = imin(s0 + SB, nb);
        if (s0 > 0) c->K->gemm_sub_f64(a + r0 * ld + k0 + s0, ld, a + r0 * ld + k0, ld, lt + s0, nb, r1 - r0, s1 - s0, s0);
        for (int64_t j = s0; j < s1; j++) { /* (the rows side by side: their chains overlap) */
            const double rd = 1.0 / lt[j * nb + j];
            for (int64_t i = r0; i < r1; i++) {
                double *x = a + i * ld + k0;
                const double xj = x[j] * rd;
                x[j] = xj;
                for (int64_t t = j + 1; t < s1; t++) x[t] -= xj * lt[j * nb + t];
            }
        }
    }
    for (int64_t j = 0; j < nb; j++) {
        double *pj = c->p + j * c->ldp - c->k1;
        for (int64_t i = r0; i < r1; i++) pj[i] = a[i * ld + k0 + j];
    }
    return 0;
}

/* Cholesky trailing update, rows [r0, r1) of [k1, n): A[i][j] -= sum_t L[i][k0+t] L[j][k0+t], k1 <= j < r1
 * (the columns past the diagonal are junk in the upper triangle, never read) */
static int chol_update_task(void *vctx, int64_t task, int worker) {
    (void)worker;
    const fact_ctx *c = (const fact_ctx *)vctx;
    const int64_t ld = c->ld, r0 = c->k1 + task * RB, r1 = imin(r0 + RB, c->n);
    c->K->gemm_sub_f64(c->a + r0 * ld + c->k1, ld, c->a + r0 * ld + c->k0, ld, c->p, c->ldp, r1 - r0, r1 - c->k1,
                       c->k1 - c->k0);
    return 0;
}

/* Lower Cholesky in place (reads and writes the lower triangle, leaves junk above it), right-looking
 * by panels of pw columns. scratch: NBMAX * ld + NBMAX * NBMAX. Returns 0, or 1 + the column of a non-positive
 * pivot. */
static int64_t cholesky(const adpq_kernels *K, double *a, int64_t n, int64_t ld, int threads, double *scratch) {
    const int64_t pw = n >= 1024 ? NBMAX : NB;
    double *lt = scratch + NBMAX * ld;
    for (int64_t k0 = 0; k0 < n; k0 += pw) {
        const int64_t k1 = imin(k0 + pw, n), nb = k1 - k0;
        /* the diagonal block (the earlier panels' updates done), right-looking */
        for (int64_t j = k0; j < k1; j++) {
            const double d = a[j * ld + j];
            if (!(d > 0.0) || !isfinite(d)) return j + 1;
            const double l = sqrt(d);
            a[j * ld + j] = l;
            for (int64_t i = j + 1; i < k1; i++) a[i * ld + j] /= l;
            for (int64_t i = j + 1; i < k1; i++) {
                const double x = a[i * ld + j];
                double *ai = a + i * ld;
                const double *lj = a + j; /* column j */
                for (int64_t t = j + 1; t <= i; t++) ai[t] -= x * lj[t * ld];
            }
        }
        if (k1 == n) break;
        for (int64_t j = 0; j < nb; j++)
            for (int64_t t = j; t < nb; t++) lt[j * nb + t] = a[(k0 + t) * ld + k0 + j];
        fact_ctx c = {K, a, n, ld, k0, k1, lt, scratch, padded_stride(n - k1, 8), NULL};
        const int64_t tasks = (n - k1 + RB - 1) / RB;
        adpq_parallel_for(threads, tasks, chol_panel_task, &c);
        adpq_parallel_for(threads, tasks, chol_update_task, &c);
    }
    return 0;
}

/* the inverse's product for the columns [j0, j1) of its row block B = [k0, k1):
 * T[:, j0:j1] = -L[B, j0:k0] @ X[j0:k0, j0:j1] (X lower: the rows before j0 are 0 there), in depths of KC */
static int inv_product_task(void *vctx, int64_t task, int worker) {
    (void)worker;
    const fact_ctx *c = (const fact_ctx *)vctx;
    const int64_t ld = c->ld, k0 = c->k0, j0 = task * CB, j1 = imin(j0 + CB, k0);
    for (int64_t t0 = j0; t0 < k0; t0 += KC)
        c->K->gemm_sub_f64(c->t + j0, ld, c->a + k0 * ld + t0, ld, c->a + t0 * ld + j0, ld, c->k1 - k0, j1 - j0,
                           imin(t0 + KC, k0) - t0);
    return 0;
}

/* X = L^-1 in place of L (lower, from cholesky; the upper triangle becomes 0), by row blocks B:
 * X[r][c] = (delta_rc - sum_{s<r} L[r][s] X[s][c]) / L[r][r]: the sum over s < k0 as one product T
 * for the block, over the block's earlier sub-blocks as a product, within the sub-block a vector loop.
 * t: NB * ld scratch. */
static void lower_inverse(const adpq_kernels *K, double *a, int64_t n, int64_t ld, int threads, double *t) {
    for (int64_t k0 = 0; k0 < n; k0 += NB) {
        const int64_t k1 = imin(k0 + NB, n), nb = k1 - k0;
        memset(t, 0, sizeof(double) * (size_t)(nb * ld));
        if (k0 > 0) {
            fact_ctx c = {K, a, n, ld, k0, k1, NULL, NULL, 0, t};
            adpq_parallel_for(threads, (k0 + CB - 1) / CB, inv_product_task, &c);
        }
        for (int64_t s0 = k0; s0 < k1; s0 += SB) {
            const int64_t s1 = imin(s0 + SB, k1);
            if (s0 > k0)
                K->gemm_sub_f64(t + (s0 - k0) * ld, ld, a + s0 * ld + k0, ld, a + k0 * ld, ld, s1 - s0, s0, s0 - k0);
            for (int64_t r = s0; r < s1; r++) {
                double *x = t + (r - k0) * ld;
                const double *lr = a + r * ld;
                x[r] = 1.0;
                for (int64_t s = s0; s < r; s++) {
                    const double l = lr[s], *xs = a + s * ld; /* row s < r: already X */
                    for (int64_t j = 0; j <= s; j++) x[j] -= l * xs[j];
                }
                const double rd = 1.0 / lr[r];
                for (int64_t j = 0; j <= r; j++) x[j] *= rd;
                memcpy(a + r * ld, x, sizeof(double) * (size_t)(r + 1));
                memset(a + r * ld + r + 1, 0, sizeof(double) * (size_t)(n - r - 1));
            }
        }
    }
}

/* 1 if no x[i] is NaN or Inf: x - x is 0 or NaN, summed in 8 or 16 lanes (a loop that vectorizes; no early
 * exit) */
static int all_finite_f64(const double *x, int64_t n) {
    double acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += x[i + k] - x[i + k];
    for (; i < n; i++) acc[0] += x[i] - x[i];
    double s = 0.0;
    for (int k = 0; k < 8; k++) s += acc[k];
    return s == 0.0;
}

static int all_finite_f32(const float *x, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) acc[k] += x[i + k] - x[i + k];
    for (; i < n; i++) acc[0] += x[i] - x[i];
    float s = 0.0f;
    for (int k = 0; k < 16; k++) s += acc[k];
    return s == 0.0f;
}

/* The checks shared by both entry points, the column order, and M, the lower Cholesky factor of
 * A = J Hp J (Hp the damped, permuted H; J the reversal), in place in *pa (n x n, row stride *pld, the
 * upper triangle junk; the caller frees it; *pscratch: NBMAX * ld + NBMAX * NBMAX doubles, also the caller's). */
static adpq_status reversed_factor(const adpq_kernels *K, const double *h, int64_t n, double damp, int act_order,
                                   int threads, int64_t *perm, double **pa, int64_t *pld, double **pscratch,
                                   char *err) {
    *pa = *pscratch = NULL;
    if (!square_ok(n)) {
        adpq_set_err(err, "the Hessian must be n x n with 1 <= n and n * n * 8 bytes addressable (got n = %lld)",
                     (long long)n);
        return ADPQ_ERR_ARG;
    }
    if (!(damp >= 0.0) || !isfinite(damp)) {
        adpq_set_err(err, "damp must be finite and >= 0 (got %g)", damp);
        return ADPQ_ERR_ARG;
    }
    if (!all_finite_f64(h, n * n)) {
        int64_t i = 0;
        while (isfinite(h[i])) i++;
        adpq_set_err(err, "the Hessian has a NaN or Inf (row %lld, column %lld)", (long long)(i / n),
                     (long long)(i % n));
        return ADPQ_ERR_NONFINITE;
    }
    const int64_t ld = padded_stride(n, 8);
    double *a = (double *)alloc64(sizeof(double) * (size_t)(n * ld));
    double *scratch = (double *)alloc64(sizeof(double) * (size_t)(NBMAX * ld + NBMAX * NBMAX));
    double *d = (double *)malloc(sizeof(double) * (size_t)n);
    adpq_status st = ADPQ_OK;
    if (!a || !scratch || !d || column_order(h, n, act_order, perm)) {
        adpq_set_err(err, "out of memory (the Hessian's factor, %lld x %lld)", (long long)n, (long long)n);
        st = ADPQ_ERR_NOMEM;
        goto done;
    }
    /* the damped diagonal */
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++) {
        d[j] = h[j * n + j] == 0.0 ? 1.0 : h[j * n + j];
        mean += d[j];
    }
    mean /= (double)n;
    for (int64_t j = 0; j < n; j++) d[j] += damp * mean;
    /* A = J Hp J, its lower triangle: A[i][j] = Hp[n-1-j][n-1-i] (i >= j), Hp's lower triangle,
     * Hp = H[perm][:, perm]; in tiles, so that both sides stay in cache */
    for (int64_t i0 = 0; i0 < n; i0 += 32)
        for (int64_t j0 = 0; j0 <= i0; j0 += 32)
            for (int64_t j = j0; j < imin(j0 + 32, n); j++) {
                const double *hr = h + perm[n - 1 - j] * n;
                for (int64_t i = i0 > j ? i0 : j; i < imin(i0 + 32, n); i++) a[i * ld + j] = hr[perm[n - 1 - i]];
            }
    for (int64_t i = 0; i < n; i++) a[i * ld + i] = d[perm[n - 1 - i]];
    const int64_t bad = cholesky(K, a, n, ld, threads, scratch);
    if (bad) {
        adpq_set_err(err, "the Hessian is not positive definite after damping (raise gptq damp; column %lld of "
                     "the rounding order)", (long long)(n - bad));
        st = ADPQ_ERR_NOTPD;
    }
done:
    free(d);
    if (st) {
        free(a);
        free(scratch);
        return st;
    }
    *pa = a;
    *pld = ld;
    *pscratch = scratch;
    return ADPQ_OK;
}

adpq_status adpq_gptq_inverse_k(const adpq_kernels *K, const double *h, int64_t n, double damp, int act_order,
                                int threads, float *u, int64_t ldu, int64_t *perm, char *err) {
    if (!h || !u || !perm) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    if (ldu < n) {
        adpq_set_err(err, "the factor's row stride %lld is shorter than its rows (%lld)", (long long)ldu, (long long)n);
        return ADPQ_ERR_ARG;
    }
    if (threads < 1) threads = 1;
    double *a, *scratch;
    int64_t ld;
    adpq_status st = reversed_factor(K, h, n, damp, act_order, threads, perm, &a, &ld, &scratch, err);
    if (st) return st;
    lower_inverse(K, a, n, ld, threads, scratch);
    /* U[i][j] = X[n-1-i][n-1-j] */
    for (int64_t i = 0; i < n; i++) {
        const double *xr = a + (n - 1 - i) * ld + (n - 1);
        float *ur = u + i * ldu;
        for (int64_t j = 0; j < i; j++) ur[j] = 0.0f;
        for (int64_t j = i; j < n; j++) {
            const float v = (float)xr[-j];
            if (!isfinite(v) || (j == i && !(v > 0.0f))) {
                adpq_set_err(err, "the inverse factor of the Hessian does not fit float32 (rescale the Hessian)");
                st = ADPQ_ERR_RANGE;
                goto done;
            }
            ur[j] = v;
        }
    }
done:
    free(a);
    free(scratch);
    return st;
}

/* The solver's factor: Hp = R R^T with R = J M J upper, and L[j][i] = R[i][j] / R[j][j] (i < j; float32,
 * row stride ldl): the unit-diagonal transpose of R's columns scaled, read in tiles of M. The diagonal is
 * 1 and the upper triangle is left unwritten (the solver reads i < j only). */
static adpq_status solver_factor(const adpq_kernels *K, const double *h, int64_t n, double damp, int act_order,
                                 int threads, int64_t *perm, float *l, int64_t ldl, char *err) {
    double *a, *scratch;
    int64_t ld;
    adpq_status st = reversed_factor(K, h, n, damp, act_order, threads, perm, &a, &ld, &scratch, err);
    if (st) return st;
    double *rinv = scratch; /* 1 / M[b][b] */
    for (int64_t b = 0; b < n; b++) rinv[b] = 1.0 / a[b * ld + b];
    int bad = 0;
    /* L[j][i] = M[n-1-i][n-1-j] / M[n-1-j][n-1-j], i < j: rows a = n-1-i of M, columns b = n-1-j */
    for (int64_t j0 = 0; j0 < n; j0 += 32)
        for (int64_t i0 = 0; i0 <= j0; i0 += 32)
            for (int64_t i = i0; i < imin(i0 + 32, n); i++) {
                const double *mr = a + (n - 1 - i) * ld + (n - 1);
                for (int64_t j = i0 == j0 ? i + 1 : j0; j < imin(j0 + 32, n); j++) {
                    const float v = (float)(mr[-j] * rinv[n - 1 - j]);
                    bad |= !(v - v == 0.0f);
                    l[j * ldl + i] = v;
                }
            }
    for (int64_t j = 0; j < n; j++) l[j * ldl + j] = 1.0f;
    if (bad) {
        adpq_set_err(err, "the factor of the Hessian does not fit float32 (rescale the Hessian)");
        st = ADPQ_ERR_RANGE;
    }
    free(a);
    free(scratch);
    return st;
}

/* ------------------------------------------------------------------ the solver */

enum { SOLVE_OK = 0, SOLVE_NONFINITE, SOLVE_F16, SOLVE_REFIT }; /* a task's failure (adpq_gptq_k words it) */

#define RW 64 /* rows a worker takes through a block side by side (their columns of the block stay in L1) */
#define Q 4   /* columns rounded between two updates of the block's later columns (gptq_update's q) */

/* a worker's tiles: the chunk's columns transposed (column i's rows at i * mp, in the rounding order) */
typedef struct {
    float *x, *w, *e;         /* current values (the rounded ones once a column is done), original values
                               * (cols x mp), the block's errors q - w (bs x mp) */
    uint8_t *m, *ct, *c8;     /* outlier mask and codes (cols x mp); codes row-major, natural order (m x cols) */
    float *gs, *gi, *gz;      /* the chunk's grids transposed (gpr x mp): s, 1 / s, z */
    float *gso, *gio, *gzo;   /* the outlier grids (NULL for float16 outliers) */
    float *zt, *x0;           /* refit: (bs + gs) x RW, bs x RW */
} solve_ws;

typedef struct {
    const adpq_kernels *K;
    const float *w, *l;
    const uint8_t *mask;
    const int64_t *perm, *grp; /* grp[i] = perm[i] / group_size */
    int64_t rows, cols, gs, gpr, bs, chunk;
    int64_t ldl, mp; /* row strides of L and of the tiles */
    int bits, qmode, scale_dtype, refit, fp16, natural; /* natural: no act-order (perm[i] = i) */
    float qmax;
    float *s, *z, *so, *zo;
    uint8_t *codes;
    float *values;
    solve_ws *ws; /* per worker */
} solve_ctx;

/* z_t -= sum_{u<t} z_u L[c0+t][c0+u] for t < len, rows r < nr (z: len x RW): the columns [c0, c0+len) of
 * GPTQ's update from a state z, in quads (gptq_update) */
static void forward(const solve_ctx *c, float *z, int64_t len, int64_t c0, int64_t nr) {
    const float *l = c->l;
    const int64_t ldl = c->ldl;
    for (int64_t t = 0; t < len; t += Q) {
        const int64_t te = imin(t + Q, len);
        for (int64_t v = t; v + 1 < te; v++)
            c->K->gptq_update(z + (v + 1) * RW, RW, te - v - 1, z + v * RW, RW, 1, l + (c0 + v + 1) * ldl + c0 + v,
                              ldl, nr);
        if (te < len)
            c->K->gptq_update(z + te * RW, RW, len - te, z + t * RW, RW, (int)(te - t), l + (c0 + te) * ldl + c0 + t,
                              ldl, nr);
    }
}

/* min/max of the values w + z of columns [j0, j0 + len) (z: len x RW), split by the mask, into r[4][RW]
 * (branch-free: the loop over the rows vectorizes) */
static void ranges_add(const solve_ws *ws, int64_t mp, int64_t g0, const float *z, int64_t j0, int64_t len,
                       int64_t nr, float r[4][RW]) {
    float *restrict a = r[0], *restrict b = r[1], *restrict oa = r[2], *restrict ob = r[3];
    for (int64_t t = 0; t < len; t++) {
        const float *restrict w = ws->w + (j0 + t) * mp + g0, *restrict zt = z + t * RW;
        const uint8_t *restrict m = ws->m + (j0 + t) * mp + g0;
        for (int64_t k = 0; k < nr; k++) {
            const float v = w[k] + zt[k];
            const float lo = m[k] ? INFINITY : v, hi = m[k] ? -INFINITY : v;
            const float olo = m[k] ? v : INFINITY, ohi = m[k] ? v : -INFINITY;
            a[k] = lo < a[k] ? lo : a[k];
            b[k] = hi > b[k] ? hi : b[k];
            oa[k] = olo < oa[k] ? olo : oa[k];
            ob[k] = ohi > ob[k] ? ohi : ob[k];
        }
    }
}

/* z[t * RW + k] = x[t * xs + k] - w[t * wst + k] for t < len, k < nr (the state A of the R form) */
static void diff_rows(float *restrict z, const float *restrict x, int64_t xs, const float *restrict w, int64_t wst,
                      int64_t len, int64_t nr) {
    for (int64_t t = 0; t < len; t++)
        for (int64_t k = 0; k < nr; k++) z[t * RW + k] = x[t * xs + k] - w[t * wst + k];
}

/* The grids of group g (natural order: it starts at column p = g * gs) for the rows [g0, g0 + nr) of the
 * chunk at r0, from their values as the reference has them there: the block [i1, i2)'s columns before p
 * spread over the group's columns in the block, the earlier blocks' over all of them. In the R form the
 * tiles hold w + A, A_j = -sum_k d_k L[j][k] over the columns k spread so far (d = q - w); the
 * reference's value is w + z, z_j = A_j - sum_{p<=l<j} z_l L[j][l], the forward substitution of A over
 * the columns from p (from i1, with A as it was at i1, for the columns past i2). 0 or SOLVE_REFIT. */
static int refit_rows(const solve_ctx *c, const solve_ws *ws, int64_t r0, int64_t g0, int64_t nr, int64_t p,
                      int64_t i1, int64_t i2) {
    const int64_t mp = c->mp, g = p / c->gs, ge = imin(p + c->gs, c->cols), e1 = imin(ge, i2);
    float r[4][RW];
    for (int64_t k = 0; k < nr; k++) {
        r[0][k] = r[2][k] = INFINITY;
        r[1][k] = r[3][k] = -INFINITY;
    }
    float *z = ws->zt;
    diff_rows(z, ws->x + p * mp + g0, mp, ws->w + p * mp + g0, mp, e1 - p, nr);
    forward(c, z, e1 - p, p, nr);
    ranges_add(ws, mp, g0, z, p, e1 - p, nr, r);
    if (ge > i2) { /* the group goes on past the block */
        const int64_t len = ge - i1, nb = i2 - i1;
        if (i1 == 0) { /* nothing spread yet: the values are w */
            for (int64_t t = 0; t < ge - i2; t++)
                for (int64_t k = 0; k < nr; k++) z[t * RW + k] = 0.0f;
            ranges_add(ws, mp, g0, z, i2, ge - i2, nr, r);
        } else {
            diff_rows(z, ws->x0, RW, ws->w + i1 * mp + g0, mp, nb, nr);
            diff_rows(z + nb * RW, ws->x + i2 * mp + g0, mp, ws->w + i2 * mp + g0, mp, len - nb, nr);
            forward(c, z, len, i1, nr);
            ranges_add(ws, mp, g0, z + nb * RW, i2, ge - i2, nr, r);
        }
    }
    for (int64_t k = 0; k < nr; k++) {
        const int64_t gi = (r0 + g0 + k) * c->gpr + g, ti = g * mp + g0 + k;
        adpq_qparams q;
        if (adpq_group_params(c->K, r[0][k] + 0.0f, r[1][k] + 0.0f, c->bits, c->qmode, c->scale_dtype, &q))
            return SOLVE_REFIT;
        c->s[gi] = ws->gs[ti] = q.s;
        ws->gi[ti] = 1.0f / q.s;
        c->z[gi] = ws->gz[ti] = q.z;
        if (!c->fp16 && r[2][k] <= r[3][k]) { /* outliers in the group: their grid too */
            if (adpq_group_params(c->K, r[2][k] + 0.0f, r[3][k] + 0.0f, c->bits, c->qmode, c->scale_dtype, &q))
                return SOLVE_REFIT;
            c->so[gi] = ws->gso[ti] = q.s;
            ws->gio[ti] = 1.0f / q.s;
            c->zo[gi] = ws->gzo[ti] = q.z;
        }
    }
    return 0;
}

#define SW 64 /* columns per strip of the tiles' transposes (the strip's part of the tiles stays in cache) */

/* the chunk's rows [r0, r0 + m) into the tiles: values (twice: x and w) and mask transposed (the kernels'
 * transpose; in act-order the columns gathered first), and the grids */
static void load_chunk(const solve_ctx *c, const solve_ws *ws, int64_t r0, int64_t m) {
    const adpq_kernels *K = c->K;
    const int64_t cols = c->cols, mp = c->mp, gpr = c->gpr;
    float tw[8 * SW];
    uint8_t tm[8 * SW];
    /* a chunk without outliers (a plain RTN start) needs no mask transposed */
    uint64_t any = 0;
    for (int64_t i = 0; i < m * cols; i++) any |= c->mask[r0 * cols + i];
    const int outliers = any != 0;
    if (!outliers)
        for (int64_t i = 0; i < cols; i++) memset(ws->m + i * mp, 0, (size_t)m);
    for (int64_t i0 = 0; i0 < cols; i0 += SW) {
        const int64_t ni = imin(SW, cols - i0);
        for (int64_t k0 = 0; k0 < m; k0 += 8) {
            const int64_t nk = imin(8, m - k0);
            const float *src = c->w + (r0 + k0) * cols + i0;
            const uint8_t *msrc = c->mask + (r0 + k0) * cols + i0;
            int64_t ss = cols;
            if (!c->natural) {
                for (int64_t k = 0; k < nk; k++)
                    for (int64_t j = 0; j < ni; j++) {
                        tw[k * SW + j] = c->w[(r0 + k0 + k) * cols + c->perm[i0 + j]];
                        if (outliers) tm[k * SW + j] = c->mask[(r0 + k0 + k) * cols + c->perm[i0 + j]];
                    }
                src = tw;
                msrc = tm;
                ss = SW;
            }
            K->transpose(ws->x + i0 * mp + k0, mp, src, ss, nk, ni);
            if (outliers) K->transpose_u8(ws->m + i0 * mp + k0, mp, msrc, ss, nk, ni);
        }
        for (int64_t i = i0; i < i0 + ni; i++) memcpy(ws->w + i * mp, ws->x + i * mp, sizeof(float) * (size_t)m);
    }
    for (int64_t g = 0; g < gpr; g++)
        for (int64_t k = 0; k < m; k++) {
            const int64_t gi = (r0 + k) * gpr + g, ti = g * mp + k;
            ws->gs[ti] = c->s[gi];
            ws->gi[ti] = 1.0f / c->s[gi];
            ws->gz[ti] = c->z[gi];
            if (!c->fp16) {
                ws->gso[ti] = c->so[gi];
                ws->gio[ti] = 1.0f / c->so[gi];
                ws->gzo[ti] = c->zo[gi];
            }
        }
}

/* the rounded values and the codes back in natural order (as load_chunk): values into the output, codes
 * row-major into ws->c8 (for adpq_pack_codes) */
static void store_chunk(const solve_ctx *c, const solve_ws *ws, int64_t r0, int64_t m) {
    const adpq_kernels *K = c->K;
    const int64_t cols = c->cols, mp = c->mp;
    float tv[8 * SW];
    uint8_t tc[8 * SW];
    for (int64_t i0 = 0; i0 < cols; i0 += SW) {
        const int64_t ni = imin(SW, cols - i0);
        for (int64_t k0 = 0; k0 < m; k0 += 8) {
            const int64_t nk = imin(8, m - k0);
            float *dst = c->values + (r0 + k0) * cols;
            uint8_t *cdst = ws->c8 + k0 * cols;
            if (c->natural) {
                K->transpose(dst + i0, cols, ws->x + i0 * mp + k0, mp, ni, nk);
                K->transpose_u8(cdst + i0, cols, ws->ct + i0 * mp + k0, mp, ni, nk);
                continue;
            }
            K->transpose(tv, SW, ws->x + i0 * mp + k0, mp, ni, nk);
            K->transpose_u8(tc, SW, ws->ct + i0 * mp + k0, mp, ni, nk);
            for (int64_t k = 0; k < nk; k++)
                for (int64_t j = 0; j < ni; j++) {
                    dst[k * cols + c->perm[i0 + j]] = tv[k * SW + j];
                    cdst[k * cols + c->perm[i0 + j]] = tc[k * SW + j];
                }
        }
    }
}

static int solve_task(void *vctx, int64_t task, int worker) {
    const solve_ctx *c = (const solve_ctx *)vctx;
    const adpq_kernels *K = c->K;
    const int64_t cols = c->cols, r0 = task * c->chunk, m = imin(c->chunk, c->rows - r0), mp = c->mp;
    const int64_t ldl = c->ldl, gs = c->gs;
    const float *l = c->l;
    const solve_ws *ws = c->ws + worker;
    float *x = ws->x, *e = ws->e;
    load_chunk(c, ws, r0, m);
    for (int64_t i1 = 0; i1 < cols; i1 += c->bs) {
        const int64_t i2 = imin(i1 + c->bs, cols), last = (i2 - 1) / gs * gs;
        /* refit: a group that starts in the block and goes on past it reads the state at i1 */
        const int keep = c->refit && i1 > 0 && last >= i1 && imin(last + gs, cols) > i2;
        for (int64_t g0 = 0; g0 < m; g0 += RW) {
            const int64_t nr = imin(RW, m - g0);
            if (keep)
                for (int64_t t = 0; t < i2 - i1; t++)
                    memcpy(ws->x0 + t * RW, x + (i1 + t) * mp + g0, sizeof(float) * (size_t)nr);
            for (int64_t i = i1; i < i2;) {
                int64_t ie = imin(i + Q, i2);
                if (c->refit) { /* (natural order) */
                    if (i % gs == 0) {
                        const int rc = refit_rows(c, ws, r0, g0, nr, i, i1, i2);
                        if (rc) return rc;
                    }
                    ie = imin(ie, (i / gs + 1) * gs); /* a quad ends at the next group */
                }
                for (int64_t t = i; t < ie; t++) {
                    const int64_t go = c->grp[t] * mp + g0, to = t * mp + g0;
                    const adpq_gptq_col col = {x + to, ws->w + to, ws->m + to, ws->gs + go, ws->gi + go, ws->gz + go,
                                               c->fp16 ? NULL : ws->gso + go, c->fp16 ? NULL : ws->gio + go,
                                               c->fp16 ? NULL : ws->gzo + go, c->qmax, ws->ct + to,
                                               e + (t - i1) * mp + g0};
                    const int flags = K->gptq_round(&col, nr);
                    if (flags) return flags & ADPQ_GPTQ_F16 ? SOLVE_F16 : SOLVE_NONFINITE;
                    if (t + 1 < ie)
                        K->gptq_update(x + (t + 1) * mp + g0, mp, ie - t - 1, e + (t - i1) * mp + g0, mp, 1,
                                       l + (t + 1) * ldl + t, ldl, nr);
                }
                if (ie < i2)
                    K->gptq_update(x + ie * mp + g0, mp, i2 - ie, e + (i - i1) * mp + g0, mp, (int)(ie - i),
                                   l + ie * ldl + i, ldl, nr);
                i = ie;
            }
        }
        /* the lazy batch update: x[j] -= sum_t L[j][i1+t] e[t] for every later column j */
        if (i2 < cols) K->gemm_sub(x + i2 * mp, mp, l + i2 * ldl + i1, ldl, e, mp, cols - i2, m, i2 - i1);
    }
    store_chunk(c, ws, r0, m);
    adpq_pack_codes(K, c->codes, r0 * cols, ws->c8, m * cols, c->bits);
    return 0;
}

/* every grid value of the rows' groups finite, scales with a finite inverse; outlier grids only
 * where the mask has an outlier (other groups' outlier grids are never read) */
static int grids_valid(const solve_ctx *c, char *err) {
    const int64_t ng = c->rows * c->gpr;
    for (int64_t i = 0; i < ng; i++)
        if (!isfinite(c->s[i]) || c->s[i] == 0.0f || !isfinite(1.0f / c->s[i]) || !isfinite(c->z[i])) {
            adpq_set_err(err, "scales must be finite with a finite inverse and zeros finite (group %lld of row %lld)",
                         (long long)(i % c->gpr), (long long)(i / c->gpr));
            return 0;
        }
    if (c->fp16) return 1;
    for (int64_t r = 0; r < c->rows; r++)
        for (int64_t j = 0; j < c->cols; j++) {
            if (!c->mask[r * c->cols + j]) continue;
            const int64_t gi = r * c->gpr + j / c->gs;
            const float s = c->so[gi], z = c->zo[gi];
            if (!isfinite(s) || s == 0.0f || !isfinite(1.0f / s) || !isfinite(z)) {
                adpq_set_err(err, "outlier_scales must be finite with a finite inverse and outlier_zeros finite where "
                             "a group has outliers (group %lld of row %lld)", (long long)(j / c->gs), (long long)r);
                return 0;
            }
            j = (j / c->gs + 1) * c->gs - 1; /* the next group */
        }
    return 1;
}

static void free_ws(solve_ws *w) {
    free(w->x);
    free(w->w);
    free(w->e);
    free(w->m);
    free(w->ct);
    free(w->c8);
    free(w->gs);
    free(w->gi);
    free(w->gz);
    free(w->gso);
    free(w->gio);
    free(w->gzo);
    free(w->zt);
    free(w->x0);
}

static int alloc_ws(solve_ws *w, const solve_ctx *c, int64_t mrows) {
    const size_t tile = (size_t)(c->cols * c->mp), grid = (size_t)(c->gpr * c->mp);
    w->x = (float *)alloc64(sizeof(float) * tile);
    w->w = (float *)alloc64(sizeof(float) * tile);
    w->e = (float *)alloc64(sizeof(float) * (size_t)(c->bs * c->mp));
    w->m = (uint8_t *)alloc64(tile);
    w->ct = (uint8_t *)alloc64(tile);
    w->c8 = (uint8_t *)malloc((size_t)(mrows * c->cols));
    w->gs = (float *)malloc(sizeof(float) * grid);
    w->gi = (float *)malloc(sizeof(float) * grid);
    w->gz = (float *)malloc(sizeof(float) * grid);
    int ok = w->x && w->w && w->e && w->m && w->ct && w->c8 && w->gs && w->gi && w->gz;
    if (!c->fp16) {
        w->gso = (float *)malloc(sizeof(float) * grid);
        w->gio = (float *)malloc(sizeof(float) * grid);
        w->gzo = (float *)malloc(sizeof(float) * grid);
        ok = ok && w->gso && w->gio && w->gzo;
    }
    if (c->refit) {
        w->zt = (float *)alloc64(sizeof(float) * (size_t)((c->bs + c->gs) * RW));
        w->x0 = (float *)alloc64(sizeof(float) * (size_t)(c->bs * RW));
        ok = ok && w->zt && w->x0;
    }
    return ok;
}

adpq_status adpq_gptq_k(const adpq_kernels *K, const float *w, int64_t rows, int64_t cols, const double *h,
                        const uint8_t *mask, const adpq_gptq_config *cfg, float *scales, float *zeros,
                        float *outlier_scales, float *outlier_zeros, uint8_t *codes, float *values, char *err) {
    if (!w || !h || !mask || !cfg || !scales || !zeros || !codes || !values) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    if (!outlier_scales != !outlier_zeros) {
        adpq_set_err(err, "outlier_scales and outlier_zeros must be given together (outlier grids) or both absent "
                     "(float16 outliers)");
        return ADPQ_ERR_ARG;
    }
    if (rows < 1 || cols < 1 || rows > INT64_MAX / 8 / cols || (uint64_t)(rows * cols) > SIZE_MAX / 8 ||
        !square_ok(cols)) {
        adpq_set_err(err, "matrix must have at least one row and one column and fit in memory, with a cols x cols "
                     "Hessian (got %lld x %lld)", (long long)rows, (long long)cols);
        return ADPQ_ERR_ARG;
    }
    if (cfg->bits != 2 && cfg->bits != 3 && cfg->bits != 4 && cfg->bits != 8) {
        adpq_set_err(err, "bits must be 2, 3, 4 or 8 (got %d)", cfg->bits);
        return ADPQ_ERR_ARG;
    }
    /* (any group size: the solver only reads the grids; a transposed problem has one per weight) */
    if (cfg->group_size != -1 && cfg->group_size < 1) {
        adpq_set_err(err, "group_size must be -1 (one group per row) or >= 1 (got %lld)", (long long)cfg->group_size);
        return ADPQ_ERR_ARG;
    }
    if (cfg->scale_dtype != ADPQ_F32 && cfg->scale_dtype != ADPQ_F16 && cfg->scale_dtype != ADPQ_BF16) {
        adpq_set_err(err, "unknown scale dtype %d", cfg->scale_dtype);
        return ADPQ_ERR_ARG;
    }
    if (cfg->block_size < 1) {
        adpq_set_err(err, "block_size must be >= 1 (got %lld)", (long long)cfg->block_size);
        return ADPQ_ERR_ARG;
    }
    if (!all_finite_f32(w, rows * cols)) {
        int64_t i = 0;
        while (isfinite(w[i])) i++;
        adpq_set_err(err, "w has a NaN or Inf (row %lld, column %lld)", (long long)(i / cols), (long long)(i % cols));
        return ADPQ_ERR_NONFINITE;
    }
    solve_ctx c;
    memset(&c, 0, sizeof(c));
    c.K = K;
    c.w = w;
    c.mask = mask;
    c.rows = rows;
    c.cols = cols;
    c.gs = cfg->group_size == -1 || cfg->group_size > cols ? cols : cfg->group_size;
    c.gpr = (cols + c.gs - 1) / c.gs;
    c.bs = cfg->block_size < cols ? cfg->block_size : cols;
    c.bits = cfg->bits;
    c.qmax = (float)((1 << cfg->bits) - 1);
    c.qmode = cfg->symmetric ? ADPQ_Q_SYM : cfg->integer_zero ? ADPQ_Q_ASYM_INT_ZERO : ADPQ_Q_ASYM;
    c.scale_dtype = cfg->scale_dtype;
    c.refit = cfg->refit && !cfg->act_order;
    c.natural = !cfg->act_order;
    c.fp16 = outlier_scales == NULL;
    c.s = scales;
    c.z = zeros;
    c.so = outlier_scales;
    c.zo = outlier_zeros;
    c.codes = codes;
    c.values = values;
    if (!grids_valid(&c, err)) return ADPQ_ERR_ARG;

    const int threads = cfg->threads < 1 ? 1 : cfg->threads;
    /* chunks of a multiple of 8 rows (whole bytes of the code stream), at most 256 (the block's errors
     * stay in cache), about two per thread */
    int64_t chunk = (rows + 2 * (int64_t)threads - 1) / (2 * (int64_t)threads);
    chunk = (chunk + 7) / 8 * 8;
    chunk = chunk > 256 ? 256 : chunk < 8 ? 8 : chunk;
    c.chunk = chunk;
    const int64_t ntasks = (rows + chunk - 1) / chunk;
    const int nw = (int64_t)threads < ntasks ? threads : (int)ntasks;
    const int64_t mrows = imin(chunk, rows);
    c.mp = padded_stride(mrows, 4);
    c.ldl = padded_stride(cols, 4);

    adpq_status st = ADPQ_OK;
    float *l = (float *)alloc64(sizeof(float) * (size_t)(cols * c.ldl));
    int64_t *perm = (int64_t *)malloc(sizeof(int64_t) * (size_t)cols);
    int64_t *grp = (int64_t *)malloc(sizeof(int64_t) * (size_t)cols);
    c.ws = (solve_ws *)calloc((size_t)nw, sizeof(solve_ws));
    int ok = l && perm && grp && c.ws;
    for (int i = 0; ok && i < nw; i++) ok = alloc_ws(&c.ws[i], &c, mrows);
    if (!ok) {
        adpq_set_err(err, "out of memory (GPTQ on %lld x %lld)", (long long)rows, (long long)cols);
        st = ADPQ_ERR_NOMEM;
        goto done;
    }
    st = solver_factor(K, h, cols, cfg->damp, cfg->act_order, threads, perm, l, c.ldl, err);
    if (st) goto done;
    for (int64_t i = 0; i < cols; i++) grp[i] = perm[i] / c.gs;
    c.l = l;
    c.perm = perm;
    c.grp = grp;
    memset(codes, 0, (size_t)((rows * cols * cfg->bits + 7) / 8));
    switch (adpq_parallel_for(nw, ntasks, solve_task, &c)) {
    case SOLVE_OK: break;
    case SOLVE_F16:
        adpq_set_err(err, "an outlier exceeds the float16 range (|w| > 65504) after error compensation; use "
                     "outlier_format='group'");
        st = ADPQ_ERR_RANGE;
        break;
    case SOLVE_REFIT:
        adpq_set_err(err, "a refit scale or zero-point does not fit in %s (weights too large)",
                     adpq_dtype_name(cfg->scale_dtype));
        st = ADPQ_ERR_RANGE;
        break;
    default:
        adpq_set_err(err, "the error compensation diverged (a NaN or Inf in the updated weights; raise gptq damp)");
        st = ADPQ_ERR_NONFINITE;
        break;
    }
done:
    if (c.ws)
        for (int i = 0; i < nw; i++) free_ws(&c.ws[i]);
    free(c.ws);
    free(l);
    free(perm);
    free(grp);
    return st;
}
