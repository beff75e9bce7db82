/*
 * adpq.h - the public C API of the adpq core.
 *
 * AdpQ (Ghaffari et al., arXiv 2405.13358): outliers are separated from the rest of a weight
 * matrix by an Adaptive-LASSO soft threshold, and inliers and outliers of each group get their
 * own low-bit quantizer. This header is plain C99/C11: no Python in it. Every function reports
 * errors with an adpq_status code and, where it takes one, a message in `err` (ADPQ_ERRLEN bytes).
 *
 * Conventions (documented for readers of the format, see docs/FORMAT.md):
 *  - A matrix has `rows` x `cols` weights; a group is `group_size` consecutive weights of one row.
 *    A row whose length is not a multiple of group_size ends in a shorter group.
 *  - Codes are one b-bit unsigned integer per weight, row-major, in one little-endian bit stream:
 *    weight i occupies bits [i*b, i*b+b) (for b=3: 8 codes in 3 bytes).
 *  - w_hat = (q - z) * s with float32 arithmetic, (s, z) the inlier or outlier quantizer of the
 *    weight's group; symmetric quantizers store no z: z = 2^(b-1).
 *  - Rounding: round-half-to-even (rint in the default FP environment), then clamp to [0, 2^b-1].
 */
#ifndef ADPQ_H
#define ADPQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ADPQ_ERRLEN 256

/* The smallest group_size other than -1 (the Python layer checks the same value, _core.MIN_GROUP_SIZE). */
#define ADPQ_MIN_GROUP_SIZE 8

/* The package version, which setup.py and tests/c/Makefile pass as -DADPQ_VERSION="..." from
 * python/adpq/_version.py; adpq_version() returns it. */
#ifndef ADPQ_VERSION
#define ADPQ_VERSION "unknown"
#endif

typedef enum {
    ADPQ_OK = 0,
    ADPQ_ERR_ARG = 1,       /* a bad argument (size, option, inconsistent arrays) */
    ADPQ_ERR_NOMEM = 2,     /* an allocation failed */
    ADPQ_ERR_NONFINITE = 3, /* NaN or Inf in the input */
    ADPQ_ERR_RANGE = 4,     /* a value does not fit the storage dtype (e.g. a float16 scale) */
    ADPQ_ERR_NOTPD = 5      /* a matrix that must be positive definite is not (GPTQ's damped Hessian) */
} adpq_status;

typedef enum { ADPQ_F32 = 0, ADPQ_F16 = 1, ADPQ_BF16 = 2 } adpq_dtype;
typedef enum { ADPQ_SCOPE_TENSOR = 0, ADPQ_SCOPE_GROUP = 1 } adpq_scope;
typedef enum { ADPQ_OUTLIERS_GROUP = 0, ADPQ_OUTLIERS_FP16 = 1 } adpq_outlier_format;
/* How adpq_quantize finds a tensor-scope threshold with a solved lambda. The output is the same
 * bit for bit on every route; only the speed differs (threshold.c):
 *  - AUTO: one pass for column-scaled matrices of at least 24 MiB of input, else two;
 *  - ONE_PASS: one pass whenever the matrix is large enough to be sampled (more than 8192
 *    weights), quantizing with the sample's threshold and then fixing the groups it got wrong;
 *  - TWO_PASS: a candidate pass, the exact threshold, then the quantize pass.
 * Ignored by the other functions and configurations (group scope, explicit lambda, no outliers). */
typedef enum { ADPQ_ROUTE_AUTO = 0, ADPQ_ROUTE_ONE_PASS = 1, ADPQ_ROUTE_TWO_PASS = 2 } adpq_route;

typedef struct {
    int bits;               /* 2, 3, 4 or 8 */
    int64_t group_size;     /* >= ADPQ_MIN_GROUP_SIZE, or -1 for one group per row (per-channel); a
                               group longer than the row is the row */
    int scope;              /* adpq_scope: one lambda per matrix or one per group */
    int use_lam;            /* 0: solve lambda so that |O| = round(outlier_ratio * n) per scope;
                               1: explicit lambda `lam` on weights normalised by the scope's scale */
    double outlier_ratio;   /* in [0, 0.5]; 0 with use_lam == 0 is plain RTN */
    double lam;             /* >= 0, the LASSO penalty lambda (lambda' = lam / 2) */
    double gamma;           /* > 0, the adaptive weight exponent */
    int symmetric;          /* 0: scale + zero-point; 1: scale only, z = 2^(bits-1) */
    int outlier_format;     /* adpq_outlier_format */
    int scale_dtype;        /* adpq_dtype of scales and zero-points */
    int threads;            /* >= 1 */
    int integer_zero;       /* asymmetric only: 1 rounds zero-points to integers, so that 0 is exact */
    int route;              /* adpq_route: ADPQ_ROUTE_AUTO = 0 (one pass for column-scaled matrices
                               >= 24 MiB), ADPQ_ROUTE_ONE_PASS = 1 (one pass whenever a sample is
                               possible), ADPQ_ROUTE_TWO_PASS = 2; a speed route, same output */
} adpq_config;

typedef struct {
    const void *data;       /* first weight */
    int dtype;              /* adpq_dtype */
    int64_t rows, cols;     /* >= 1 */
    int64_t row_stride;     /* distance between rows, in elements (>= cols); columns contiguous */
    const float *col_mul;   /* NULL, or cols finite factors: the matrix quantized is then
                               w[r][j] * col_mul[j] in float32 (column scaling) */
} adpq_matrix;

/* Sizes derived from (rows, cols, config): the layout every array follows. */
typedef struct {
    int64_t group_size;       /* effective: cols when config.group_size == -1 */
    int64_t groups_per_row;   /* ceil(cols / group_size) */
    int64_t num_groups;       /* rows * groups_per_row */
    int64_t code_bytes;       /* ceil(rows * cols * bits / 8) */
    int count_bytes;          /* bytes of one outlier count: 1, 2 or 4 (holds group_size) */
    int index_bits;           /* ceil(log2(group_size)) bits per outlier position */
    int scale_bytes;          /* 2 or 4 */
} adpq_layout;

/*
 * A quantized matrix. For adpq_quantize the caller provides `codes`, `scales` and `zeros`
 * (zeros NULL when symmetric) sized by adpq_layout; the core allocates the outlier arrays with
 * malloc (NULL when there are no outliers) and the caller frees them with adpq_free_outliers.
 * For adpq_dequantize every array is the caller's.
 */
typedef struct {
    int64_t rows, cols;
    uint8_t *codes;            /* code_bytes */
    void *scales;              /* num_groups scale_dtype values: the inlier scale of each group */
    void *zeros;               /* num_groups: inlier zero-points (NULL when symmetric) */
    int64_t num_outliers;
    int64_t num_outlier_groups;/* groups with at least one outlier */
    void *outlier_counts;      /* num_groups counts of count_bytes each, or NULL if no outliers */
    void *outlier_scales;      /* num_outlier_groups scales (format GROUP), in group order */
    void *outlier_zeros;       /* num_outlier_groups zero-points (format GROUP, asymmetric) */
    uint8_t *outlier_indices;  /* ceil(num_outliers * index_bits / 8) bytes: position in group,
                                  ascending within a group, groups in order */
    uint16_t *outlier_values;  /* num_outliers float16 values (format FP16) */
    /* what adpq_quantize did (diagnostics; tensor scope): reads of the matrix (1: one pass with
     * a sampled threshold, 2: candidate pass + quantize pass) and groups quantized a second time
     * because the sampled threshold put one of their weights on the wrong side */
    int passes;
    int64_t fixed_groups;
} adpq_qmatrix;

/* ADPQ_VERSION as this library was built */
const char *adpq_version(void);

/* Fills *layout; ADPQ_ERR_ARG for sizes or options out of range. */
adpq_status adpq_layout_of(int64_t rows, int64_t cols, const adpq_config *cfg, adpq_layout *layout,
                           char *err);

/* Quantizes m into q (see adpq_qmatrix for who allocates what). */
adpq_status adpq_quantize(const adpq_matrix *m, const adpq_config *cfg, adpq_qmatrix *q, char *err);

/* Frees the outlier arrays that adpq_quantize allocated and sets them to NULL. */
void adpq_free_outliers(adpq_qmatrix *q);

/* Writes the outlier mask (1 = outlier) of m under cfg, rows x cols bytes, row-major.
 * It is exactly the set adpq_quantize uses. */
adpq_status adpq_outlier_mask(const adpq_matrix *m, const adpq_config *cfg, uint8_t *mask, char *err);

/* mean[j] = (float)(S_j / rows): the statistic of column scaling (m->col_mul is ignored). S_j adds,
 * in double and in order, the float32 sums of |w[r][j]| over blocks of 64 rows (each summed in row
 * order from 0). */
adpq_status adpq_column_mean_abs(const adpq_matrix *m, int threads, float *mean, char *err);
/* Column scaling from those means (python/adpq/reference/columns.py): scales[j] = bfloat16 bits of
 * c_j, the mean rounded to nearest even, or 1 where the mean is not finite, below float32's normal
 * range or rounds past bfloat16's; mul[j] = 1 / c_j in float32. */
adpq_status adpq_column_scales(const adpq_matrix *m, int threads, uint16_t *scales, float *mul, char *err);

/* Dequantizes q to float32 (rows x cols, row-major). Validates counts and indices. col_mul: NULL,
 * or cols factors applied to each row afterwards in float32, w_hat[r][j] * col_mul[j] (the column
 * scales, which undo column scaling). */
adpq_status adpq_dequantize(const adpq_qmatrix *q, const adpq_config *cfg, const float *col_mul, float *out,
                            char *err);

/* Sums behind the error metrics: in double, sum (w - w_hat)^2, sum w^2, max |w - w_hat|, the joint
 * min/max of w and w_hat, and histograms of both in `bins` equal bins over [min, max]
 * (bin = floor((x - min) * bins / (max - min)), clipped to the last bin). */
typedef struct {
    double sum_sq_err, sum_sq_ref, max_abs_err, min, max;
} adpq_error_stats;
adpq_status adpq_error_stats_of(const adpq_matrix *w, const float *w_hat, int bins, int threads,
                                adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat, char *err);
/* The same with w_hat = the dequantization of q (cfg, col_mul as adpq_dequantize), computed row by
 * row and never stored whole. */
adpq_status adpq_error_stats_q(const adpq_matrix *w, const adpq_qmatrix *q, const adpq_config *cfg, const float *col_mul,
                               int bins, int threads, adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat,
                               char *err);
/* KL(P || Q) in nats of two histograms of `bins` counts: each normalised by its total (at least 1),
 * eps added to every bin, renormalised; sum of p log(p / q) in double, in bin order. */
double adpq_kl_from_histograms(const int64_t *p, const int64_t *q, int bins, double eps);

/* ------------------------------------------------------------ matmul on the stored arrays
 * y = x @ w_hat.T for a quantized matrix w_hat (rows x cols) read from its stored arrays: the codes
 * are decoded in the kernel, never repacked, and w_hat is never materialised. The plan points into
 * q's arrays and col_mul (not copied: they must outlive it) and owns the outlier correction: w_hat =
 * (dense w + a sparse delta at the outlier positions) * col_mul. */
typedef enum { ADPQ_MATMUL_FLOAT = 0, ADPQ_MATMUL_INT8 = 1 } adpq_matmul_mode;

typedef struct {
    adpq_qmatrix q;          /* the arrays, by pointer */
    adpq_config cfg;
    adpq_layout lay;
    const float *col_mul;    /* NULL or cols factors (the column scales), by pointer */
    /* the outliers as a CSR correction: row r's entries are [row_ptr[r], row_ptr[r+1]), each at
     * column corr_col[k] with corr_delta[k] = w_outlier - w_dense (float32, before col_mul);
     * all NULL when there are no outliers */
    int64_t *row_ptr;
    int32_t *corr_col;
    float *corr_delta;
} adpq_matmul_plan;

/* Validates q's arrays as adpq_dequantize does and builds plan (release it with
 * adpq_matmul_release, also after a failure). col_mul: NULL or cols finite factors. */
adpq_status adpq_matmul_prepare(const adpq_qmatrix *q, const adpq_config *cfg, const float *col_mul,
                                adpq_matmul_plan *plan, char *err);
void adpq_matmul_release(adpq_matmul_plan *plan);
/* y[i*y_stride + r] = sum_j x[i*x_stride + j] * w_hat[r][j] for i < n, r < rows: x rows of cols
 * floats x_stride apart (>= cols), y rows of `rows` floats y_stride apart (>= rows); n >= 0.
 * mode: an adpq_matmul_mode. ADPQ_MATMUL_FLOAT: float32 arithmetic (relative error ~1e-7 per
 * output row). ADPQ_MATMUL_INT8 (ggml's q8_0 trick): x' = x * col_mul is quantized per block of 32
 * columns to int8, q = rint(x' / d) with d = max |x'| / 127 (a ragged last block zero padded), and
 * y[r] = sum_groups s_g * sum_blocks d_b * (dot_b - z_g * xsum_b) + the outlier correction on the
 * float x' (dot_b = sum q_code * q_x and xsum_b = sum q_x in int32; relative error ~0.5% per output
 * row on gaussian data). It applies when adpq_matmul_mode_used says so (n < 16, cols % 8 == 0,
 * group_size % 32 == 0 or per-row groups); otherwise the call runs in float mode.
 * NaN/Inf in x are propagated to y (as NaN in int8 mode). threads >= 1 (fewer are used when there
 * is less work). */
adpq_status adpq_matmul(const adpq_matmul_plan *plan, const float *x, int64_t n, int64_t x_stride, float *y,
                        int64_t y_stride, int mode, int threads, char *err);
/* The same with x of x_dtype (ADPQ_F32, ADPQ_F16 or ADPQ_BF16: converted to float32 exactly) and y of
 * y_dtype (ADPQ_F32, or ADPQ_BF16: each output rounded to nearest even as adpq_f32_to_bf16); strides
 * in elements. */
adpq_status adpq_matmul_typed(const adpq_matmul_plan *plan, const void *x, int x_dtype, int64_t n, int64_t x_stride,
                              void *y, int y_dtype, int64_t y_stride, int mode, int threads, char *err);
/* The mode a call of n activation rows with `mode` runs in (ADPQ_MATMUL_INT8 falls back to FLOAT). */
int adpq_matmul_mode_used(const adpq_matmul_plan *plan, int64_t n, int mode);

/* ------------------------------------------------------------ GPTQ
 * Second-order error compensation (python/adpq/reference/gptq.py is the specification): the columns
 * of a matrix are rounded one by one on given grids, each column's error spread over the columns not
 * yet rounded through the inverse Hessian of the layer's inputs. */
typedef struct {
    int bits;               /* 2, 3, 4 or 8 */
    int64_t group_size;     /* >= 1 (the quantizer's minimum does not apply: grids are given), or -1
                               for one group per row (at least the row's length: the row) */
    int symmetric;          /* the quantizer kind of refit grids (adpq_config's fields) */
    int integer_zero;
    int scale_dtype;        /* adpq_dtype: refit scales and zero-points are rounded to it */
    double damp;            /* >= 0: H_jj += damp * mean(diag H) */
    int64_t block_size;     /* >= 1: columns per lazy batch update */
    int act_order;          /* 1: round the columns by descending diag(H) (stable), else in order */
    int refit;              /* 1 (natural order only): a group's grids are recomputed from its current
                               values when its first column is rounded */
    int threads;            /* >= 1 */
} adpq_gptq_config;

/* The damped inverse factor: dead columns (H_jj = 0) get H_jj = 1, then H_jj += damp * mean(diag H);
 * perm[0..n) = the rounding order (act_order: descending diag(H), ties by index; else 0..n-1); u
 * (n x n float32, row-major) = the upper triangular U with U^T U = (H[perm][:, perm])^-1 and a positive
 * diagonal, computed in float64 (below the diagonal: 0). h: n x n float64, row-major, finite and
 * symmetric (of the permuted matrix, the lower triangle is read, as numpy's cholesky reads it).
 * ADPQ_ERR_NOTPD when the damped matrix is not positive definite. */
adpq_status adpq_gptq_inverse(const double *h, int64_t n, double damp, int act_order, int threads, float *u,
                              int64_t *perm, char *err);
/* GPTQ on w (rows x cols float32, row-major, finite) with the Hessian h (cols x cols, as above) and
 * the outlier mask (rows x cols bytes, nonzero = outlier). Grids: rows x groups_per_row float32
 * values, read and, with refit, updated in place: scales and zeros of the inliers (zeros =
 * 2^(bits-1) for symmetric grids), and outlier_scales/outlier_zeros of the outliers, or both NULL
 * for float16 outliers (each outlier then rounds to its float16 value; ADPQ_ERR_RANGE past 65504).
 * Outputs: codes (ceil(rows * cols * bits / 8) bytes, the packed stream: an outlier's code on its
 * own grid, or, float16, on the inlier grid) and values (rows x cols: the rounded matrix, outliers
 * included), both in the original column order. */
adpq_status adpq_gptq(const float *w, int64_t rows, int64_t cols, const double *h, const uint8_t *mask,
                      const adpq_gptq_config *cfg, float *scales, float *zeros, float *outlier_scales,
                      float *outlier_zeros, uint8_t *codes, float *values, char *err);

/* Kernel selection: "scalar" (the reference), "avx2" (x86-64 with AVX2+F16C+FMA), or "auto".
 * Returns 0 on success, -1 if that kernel set is not available on this CPU. */
int adpq_set_kernels(const char *name);
const char *adpq_kernels_name(void);

/* Scalar conversions, round-to-nearest-even; exposed for tests. */
uint16_t adpq_f32_to_f16(float f);
float adpq_f16_to_f32(uint16_t h);
uint16_t adpq_f32_to_bf16(float f);
float adpq_bf16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif
#endif /* ADPQ_H */
