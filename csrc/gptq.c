/* gptq.c - GPTQ (python/adpq/reference/gptq.py is the specification): the damped inverse factor of
 * the Hessian and the solver that rounds a matrix column by column on given grids, spreading each
 * column's rounding error over the columns not yet rounded.
 *
 * The inverse factor, in float64: with J the reversal, J Hp J = M M^T (M lower, Cholesky) gives
 * Hp = R R^T with R = J M J upper, so U = R^-1 = J M^-1 J is the upper factor with U^T U = Hp^-1:
 * one Cholesky and one triangular inverse (~n^3/3 multiply-adds), in place, blocked so that nearly all
 * the work is the kernel set's gemm_sub_f64 (row-major, contiguous inner loops), threaded over rows or
 * columns of each product. The work matrices have padded row strides (padded_stride): with rows a
 * multiple of 4 KiB apart (n = 512, 1024, 1536, ...) the strips of the products' right operands would
 * all fall into one L1 set and the products run at half speed.
 *
 * The solver: rows are independent given U, so each task takes a chunk of rows through every block
 * of columns with its own scratch (the chunk's permuted rows, the block's errors E, its codes). Per
 * row and block column: refit (natural order, a group's first column), round, e = (w - q) / U_ii,
 * the block's later columns -= e * U_i (axpy_rows; as the reference, bit for bit); after the block the
 * chunk's later columns -= E @ U[block, later] (gemm_sub: the reference's matmul in another summation
 * order, so codes on a rounding boundary may differ from it).
 * A row's arithmetic never depends on the chunking: the output is the same for any thread count.
 * Codes go to the packed stream per chunk (chunks of 8k rows start at whole bytes). */
#include <math.h>
#include <stdlib.h>

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

#define NB 64  /* the Cholesky's panel width and the inverse's row block */
#define SB 12  /* their sub-blocks: the substitutions within one are vector loops, the rest products */
#define RB 32  /* rows per task of the Cholesky's panel and trailing update */
#define CB 72  /* columns per task of the inverse's off-diagonal product (6 tiles of 12) */
#define KC 128 /* depth of one product call there (its strip of X stays in L1) */
#define RG 8   /* rows the solver rounds side by side */

/* A row stride >= n (elements of `size` bytes) of an odd number of 64-byte lines: the rows of a
 * product's operand then fall in different L1 sets (rows 4096 bytes apart all share one set: a
 * strip of b would not stay in cache). */
static int64_t padded_stride(int64_t n, int64_t size) {
    const int64_t per = 64 / size;
    int64_t lines = (n + per - 1) / per;
    if (lines % 2 == 0) lines++;
    return lines * per;
}

/* 64-byte aligned (rows at whole lines); free() releases it */
static void *alloc64(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

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
 * by panels of NB columns. scratch: NB * ld + NB * NB. Returns 0, or 1 + the column of a non-positive
 * pivot. */
static int64_t cholesky(const adpq_kernels *K, double *a, int64_t n, int64_t ld, int threads, double *scratch) {
    double *lt = scratch + NB * ld;
    for (int64_t k0 = 0; k0 < n; k0 += NB) {
        const int64_t k1 = imin(k0 + NB, n), nb = k1 - k0;
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

adpq_status adpq_gptq_inverse_k(const adpq_kernels *K, const double *h, int64_t n, double damp, int act_order,
                                int threads, float *u, int64_t ldu, int64_t *perm, char *err) {
    if (!h || !u || !perm) {
        adpq_set_err(err, "null argument");
        return ADPQ_ERR_ARG;
    }
    if (!square_ok(n) || ldu < n) {
        adpq_set_err(err, "the Hessian must be n x n with 1 <= n and n * n * 8 bytes addressable (got n = %lld)",
                     (long long)n);
        return ADPQ_ERR_ARG;
    }
    if (!(damp >= 0.0) || !isfinite(damp)) {
        adpq_set_err(err, "damp must be finite and >= 0 (got %g)", damp);
        return ADPQ_ERR_ARG;
    }
    if (threads < 1) threads = 1;
    int bad_h = 0;
    for (int64_t i = 0; i < n * n; i++) bad_h |= !(h[i] - h[i] == 0.0); /* (NaN for NaN and Inf; no early exit) */
    if (bad_h) {
        int64_t i = 0;
        while (isfinite(h[i])) i++;
        adpq_set_err(err, "the Hessian has a NaN or Inf (row %lld, column %lld)", (long long)(i / n),
                     (long long)(i % n));
        return ADPQ_ERR_NONFINITE;
    }
    const int64_t ld = padded_stride(n, 8);
    double *a = (double *)alloc64(sizeof(double) * (size_t)(n * ld));
    double *scratch = (double *)alloc64(sizeof(double) * (size_t)(NB * ld + NB * NB));
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
        goto done;
    }
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
    free(d);
    return st;
}

/* ------------------------------------------------------------------ the solver */

enum { SOLVE_OK = 0, SOLVE_NONFINITE, SOLVE_F16, SOLVE_REFIT }; /* a task's failure (adpq_gptq_k words it) */

typedef struct {
    const adpq_kernels *K;
    const float *w, *u;
    const uint8_t *mask;
    const int64_t *perm, *grp; /* grp[i] = perm[i] / group_size */
    int64_t rows, cols, gs, gpr, bs, chunk;
    int64_t ldu, ldw; /* row strides of u and of the chunks' rows (padded_stride) */
    int bits, qmode, scale_dtype, refit, fp16;
    float qmax;
    float *s, *z, *so, *zo;
    uint8_t *codes;
    float *values;
    /* per worker: the chunk's rows (permuted), the block's errors, the chunk's codes */
    float **wt, **e;
    uint8_t **c8;
} solve_ctx;

/* min/max of a row's group [j0, j1) split by the mask (canonical +0; +inf/-inf when empty) */
static void group_ranges(const float *x, const uint8_t *m, int64_t j0, int64_t j1, float r[4]) {
    float a = INFINITY, b = -INFINITY, oa = INFINITY, ob = -INFINITY;
    for (int64_t j = j0; j < j1; j++) {
        const float v = x[j];
        if (m[j]) {
            oa = v < oa ? v : oa;
            ob = v > ob ? v : ob;
        } else {
            a = v < a ? v : a;
            b = v > b ? v : b;
        }
    }
    r[0] = a + 0.0f;
    r[1] = b + 0.0f;
    r[2] = oa + 0.0f;
    r[3] = ob + 0.0f;
}

/* the grids of row `row`'s group g from its current values x (natural order); 0 or SOLVE_REFIT */
static int refit_group(const solve_ctx *c, int64_t row, int64_t g, const float *x) {
    const int64_t j0 = g * c->gs, j1 = imin(j0 + c->gs, c->cols), gi = row * c->gpr + g;
    float r[4];
    adpq_qparams p;
    group_ranges(x, c->mask + row * c->cols, j0, j1, r);
    if (adpq_group_params(c->K, r[0], r[1], c->bits, c->qmode, c->scale_dtype, &p)) return SOLVE_REFIT;
    c->s[gi] = p.s;
    c->z[gi] = p.z;
    if (!c->fp16 && r[2] <= r[3]) { /* outliers in the group: their grid too */
        if (adpq_group_params(c->K, r[2], r[3], c->bits, c->qmode, c->scale_dtype, &p)) return SOLVE_REFIT;
        c->so[gi] = p.s;
        c->zo[gi] = p.z;
    }
    return 0;
}

static int solve_task(void *vctx, int64_t task, int worker) {
    const solve_ctx *c = (const solve_ctx *)vctx;
    const int64_t cols = c->cols, r0 = task * c->chunk, r1 = imin(r0 + c->chunk, c->rows), m = r1 - r0;
    const int64_t *perm = c->perm;
    const float *u = c->u;
    const int64_t ldu = c->ldu, ldw = c->ldw;
    float *W = c->wt[worker], *E = c->e[worker];
    uint8_t *C8 = c->c8[worker];
    for (int64_t r = 0; r < m; r++) {
        const float *src = c->w + (r0 + r) * cols;
        float *dst = W + r * ldw;
        for (int64_t i = 0; i < cols; i++) dst[i] = src[perm[i]];
    }
    for (int64_t i1 = 0; i1 < cols; i1 += c->bs) {
        const int64_t i2 = imin(i1 + c->bs, cols);
        /* the block's columns for RG rows side by side: each row is a chain of dependent operations
         * (a column's update feeds the next column's rounding); RG of them overlap, and the update
         * within the block reads each U_i once for them */
        for (int64_t g0 = 0; g0 < m; g0 += RG) {
            const int64_t g1 = imin(g0 + RG, m);
            float eg[RG];
            for (int64_t i = i1; i < i2; i++) {
                const int64_t col = perm[i], g = c->grp[i];
                const float *ui = u + i * ldu, uii = ui[i];
                for (int64_t r = g0; r < g1; r++) {
                    const int64_t row = r0 + r, gi = row * c->gpr + g;
                    float *x = W + r * ldw;
                    if (c->refit && col % c->gs == 0) {
                        const int rc = refit_group(c, row, g, x); /* (natural order: x is in column order) */
                        if (rc) return rc;
                    }
                    const float xi = x[i];
                    if (!isfinite(xi)) return SOLVE_NONFINITE;
                    const float s = c->s[gi], z = c->z[gi];
                    uint8_t code = adpq_code_of(xi, 1.0f / s, z, c->qmax);
                    float q = ((float)code - z) * s;
                    if (c->mask[row * cols + col]) {
                        if (c->fp16) {
                            const uint16_t hb = adpq_f32_to_f16(xi);
                            if ((hb & 0x7c00u) == 0x7c00u) return SOLVE_F16;
                            q = adpq_f16_to_f32(hb);
                        } else {
                            const float so = c->so[gi], zo = c->zo[gi];
                            code = adpq_code_of(xi, 1.0f / so, zo, c->qmax);
                            q = ((float)code - zo) * so;
                        }
                    }
                    C8[r * cols + col] = code;
                    c->values[row * cols + col] = q;
                    const float ei = (xi - q) / uii;
                    if (!isfinite(ei)) return SOLVE_NONFINITE;
                    E[r * c->bs + (i - i1)] = ei;
                    eg[r - g0] = ei;
                }
                if (i + 1 < i2) c->K->axpy_rows(W + g0 * ldw + i + 1, ldw, (int)(g1 - g0), eg, ui + i + 1, i2 - i - 1);
            }
        }
        if (i2 < cols) c->K->gemm_sub(W + i2, ldw, E, c->bs, u + i1 * ldu + i2, ldu, m, cols - i2, i2 - i1);
    }
    adpq_pack_codes(c->K, c->codes, r0 * cols, C8, m * cols, c->bits);
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
    if (cfg->group_size != -1 && cfg->group_size < ADPQ_MIN_GROUP_SIZE && cfg->group_size < cols) {
        adpq_set_err(err, "group_size must be -1 (one group per row), >= %d or >= cols (got %lld)",
                     ADPQ_MIN_GROUP_SIZE, (long long)cfg->group_size);
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
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(w[i])) {
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
    c.fp16 = outlier_scales == NULL;
    c.s = scales;
    c.z = zeros;
    c.so = outlier_scales;
    c.zo = outlier_zeros;
    c.codes = codes;
    c.values = values;
    if (!grids_valid(&c, err)) return ADPQ_ERR_ARG;

    const int threads = cfg->threads < 1 ? 1 : cfg->threads;
    /* chunks of a multiple of 8 rows (whole bytes of the code stream), at most 256 (the errors of a
     * block stay in cache), about two per thread */
    int64_t chunk = (rows + 2 * (int64_t)threads - 1) / (2 * (int64_t)threads);
    chunk = (chunk + 7) / 8 * 8;
    chunk = chunk > 256 ? 256 : chunk < 8 ? 8 : chunk;
    c.chunk = chunk;
    const int64_t ntasks = (rows + chunk - 1) / chunk;
    const int nw = (int64_t)threads < ntasks ? threads : (int)ntasks;
    const int64_t mrows = imin(chunk, rows);

    adpq_status st = ADPQ_OK;
    c.ldu = c.ldw = padded_stride(cols, 4);
    float *u = (float *)alloc64(sizeof(float) * (size_t)(cols * c.ldu));
    int64_t *perm = (int64_t *)malloc(sizeof(int64_t) * (size_t)cols);
    int64_t *grp = (int64_t *)malloc(sizeof(int64_t) * (size_t)cols);
    c.wt = (float **)calloc((size_t)nw, sizeof(float *));
    c.e = (float **)calloc((size_t)nw, sizeof(float *));
    c.c8 = (uint8_t **)calloc((size_t)nw, sizeof(uint8_t *));
    int ok = u && perm && grp && c.wt && c.e && c.c8;
    for (int i = 0; ok && i < nw; i++) {
        c.wt[i] = (float *)alloc64(sizeof(float) * (size_t)(mrows * c.ldw));
        c.e[i] = (float *)malloc(sizeof(float) * (size_t)(mrows * c.bs));
        c.c8[i] = (uint8_t *)malloc((size_t)(mrows * cols));
        ok = c.wt[i] && c.e[i] && c.c8[i];
    }
    if (!ok) {
        adpq_set_err(err, "out of memory (GPTQ on %lld x %lld)", (long long)rows, (long long)cols);
        st = ADPQ_ERR_NOMEM;
        goto done;
    }
    st = adpq_gptq_inverse_k(K, h, cols, cfg->damp, cfg->act_order, threads, u, c.ldu, perm, err);
    if (st) goto done;
    for (int64_t i = 0; i < cols; i++) grp[i] = perm[i] / c.gs;
    c.u = u;
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
    for (int i = 0; i < nw; i++) {
        if (c.wt) free(c.wt[i]);
        if (c.e) free(c.e[i]);
        if (c.c8) free(c.c8[i]);
    }
    free(c.wt);
    free(c.e);
    free(c.c8);
    free(u);
    free(perm);
    free(grp);
    return st;
}
