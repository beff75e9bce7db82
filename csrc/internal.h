/* internal.h - declarations shared by the core's translation units (not part of the API).
 *
 * One concept per file, and the files call each other without cycles. Each file calls functions
 * of the files listed before it only (calls through a kernel set's function pointers excepted:
 * those are data, passed down by the entry points):
 *
 *   halfcvt.c         float32 <-> float16 / bfloat16 conversions (scalar)
 *   layout.c          version, error text, dtype names, the array layout of (rows, cols, config)
 *   threads.c         the parallel-for and its thread pool
 *   outliers.c        selection of the k-th largest key, lambda and count arithmetic
 *   pack.c            little-endian bit streams of codes and indices (the scalar pack body)
 *   quant.c           group quantizer parameters                       -> halfcvt
 *   matmul_scalar.c   the scalar reference matmul kernels              -> pack
 *   matmul_avx2.c     the AVX2 matmul kernels (the same sums in another order)
 *   kernels_scalar.c  the scalar reference kernel set                  -> matmul_scalar, quant, pack, halfcvt
 *   kernels_avx2.c    the AVX2 kernel set, bit-identical to it         -> matmul_avx2, quant, pack, halfcvt
 *   kernels.c         chooses a kernel set: the process default, the CPU check
 *                                                                      -> kernels_scalar, kernels_avx2
 *   dequant.c         validation and dequantization of a quantized matrix
 *                                                                      -> layout, pack, quant, halfcvt, threads
 *   matmul.c          y = x @ w_hat.T on the stored arrays: the plan (outliers as a sparse correction),
 *                     activations, blocking, threads                   -> dequant, pack, quant, threads
 *   metrics.c         error sums, histograms, KL                       -> dequant, layout, threads
 *   columns.c         column scaling statistics and scales             -> layout, halfcvt, threads
 *   rows.c            the quantize context and the row machinery (outliers, parameters, codes,
 *                     records of each row)                             -> layout, pack, quant, outliers, threads
 *   threshold.c       the tensor-scope threshold: sample, candidate pass, selection, one-pass
 *                     fix-up                                           -> rows, pack, outliers, layout
 *   gptq.c            GPTQ: the damped inverse factor of the Hessian (float64) and the solver
 *                                                                      -> layout, threads, pack, quant, halfcvt
 *   api.c             the public entry points that need a kernel set: each reads kernels.c's
 *                     default once and passes it down                  -> kernels, gptq, threshold, rows, dequant,
 *                                                                         matmul, metrics, columns, pack, layout
 *   adpqmodule_args.c the Python boundary's argument conversions (config dicts, arrays by name;
 *                     in the extension, not in the C library)          -> layout
 *   adpqmodule_matmul.c the wrapper's matmul: the plan type, matmul's fast arguments (not in the C
 *                     library)                                         -> adpqmodule_args, api
 *   adpqmodule_gptq.c the wrapper's gptq and gptq_inverse (not in the C library)
 *                                                                      -> adpqmodule_args, api
 *   adpqmodule.c      the CPython wrapper (not in the C library)       -> adpqmodule_gptq, adpqmodule_matmul,
 *                                                                         adpqmodule_args, api, kernels,
 *                                                                         metrics, layout, outliers, halfcvt
 *
 * tests/test_c_core.py checks this order on the object files (nm): every file's calls resolve
 * to files before it, and only api.c calls adpq_active_kernels.
 */
#ifndef ADPQ_INTERNAL_H
#define ADPQ_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "adpq.h"

/* Magnitude key of a float: the bits of |x|. For finite x the keys order like |x|. */
static inline uint32_t adpq_abs_key(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u & 0x7fffffffu;
}
static inline float adpq_key_to_float(uint32_t key) {
    float f;
    memcpy(&f, &key, 4);
    return f;
}

void adpq_set_err(char *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/*
 * Kernels: the hot loops, one scalar reference implementation and one AVX2 implementation
 * with identical results (same float32 operations in the same order; a fused multiply-add only
 * where the kernel says so: fmaf/fma in the scalar set, _mm256_fmadd/fnmadd in the AVX2 set).
 */

/* one column of GPTQ's rounding, rows side by side (gptq_round): per row r, from the current
 * value x[r] and the row's grids */
typedef struct {
    float *x;                     /* in: the current values; out: the rounded values q */
    const float *w;               /* the original values: the error is e = q - w */
    const uint8_t *mask;          /* the outliers */
    const float *s, *inv, *z;     /* the inlier grid (inv = 1 / s) */
    const float *so, *invo, *zo;  /* the outlier grid; NULL: outliers are rounded to float16 */
    float qmax;
    uint8_t *codes;
    float *e;
} adpq_gptq_col;
#define ADPQ_GPTQ_NONFINITE 1     /* gptq_round's flags: a value or an error is NaN or Inf */
#define ADPQ_GPTQ_F16 2           /* a float16 outlier overflows */

typedef struct {
    const char *name;
    /* mask[i] = |w[i]| > t; returns the count */
    int64_t (*mask_gt)(const float *w, int64_t n, float t, uint8_t *mask);
    /* min and max of w (n >= 1); with check, returns 0 if a value is NaN or Inf, else 1 */
    int (*minmax)(const float *w, int64_t n, int check, float *mn, float *mx);
    /* the quantizer parameters of n groups with inlier ranges [mn[i], mx[i]], as
     * adpq_group_params: 1/s, z and the stored scale / zero-point bits; ADPQ_ERR_RANGE on overflow */
    int (*params)(const float *mn, const float *mx, int64_t n, int bits, int qmode, int scale_dtype, float *inv,
                  float *z, uint32_t *s_stored, uint32_t *z_stored);
    /* per group of g (the last one shorter) of w[0..n): min/max (canonical +0; groups j with
     * skip && skip[j] are left alone) and codes[i] = clamp(rint(w[i] * inv + z), 0, qmax) with
     * the parameters of its group */
    int (*minmax_groups)(const float *w, int64_t n, int64_t g, int check, const int64_t *skip, float *mn, float *mx);
    void (*codes_groups)(const float *w, int64_t n, int64_t g, const float *inv, const float *z, int qmax,
                         uint8_t *codes);
    /* The threshold pass over one row w[0..n) of `dtype` (ADPQ_F32/F16/BF16): for each i with
     * |w[i]| > t, in order, vals[c] = its float32 bits (the magnitude key is vals[c] & 0x7fffffff;
     * the value is kept so that the quantize pass need not read it again) and pos[c] = i (the
     * candidates); for each
     * group of g (the last one shorter), mn[j]/mx[j] = min/max of its other weights (canonical +0;
     * +inf/-inf when there are none); with row_f32 (16-bit dtypes), the row as float32 there too.
     * Returns c, or -1 if w holds a NaN or Inf. */
    int64_t (*gather_groups)(const void *w, int dtype, int64_t n, int64_t g, float t, uint32_t *vals, uint32_t *pos,
                             float *mn, float *mx, float *row_f32);
    /* acc[i] += |w[i]| in float32 (block sums of the column statistic); w of `dtype` */
    void (*abs_accumulate)(const void *w, int dtype, int64_t n, float *acc);
    /* out[i] = w[i] * mul[i] in float32 (column scaling); w of `dtype` */
    void (*mul_row)(const void *w, int dtype, const float *mul, int64_t n, float *out);
    /* out[i] = ((float)codes[i] - z) * s, then times mul[i] when mul is not NULL (two roundings, as two passes) */
    void (*dequant)(const uint8_t *codes, int64_t n, float s, float z, const float *mul, float *out);
    /* converts n values of a 16-bit float dtype to float32 */
    void (*f16_to_f32)(const uint16_t *src, int64_t n, float *dst);
    void (*bf16_to_f32)(const uint16_t *src, int64_t n, float *dst);
    /* packs n codes (n % 8 == 0) of `bits` in {2,3,4,8} into exactly n*bits/8 bytes */
    void (*pack_body)(const uint8_t *codes, int64_t n, int bits, uint8_t *out);
    /* float32 -> float16 bits, round to nearest even, and back */
    uint16_t (*to_f16)(float v);
    float (*from_f16)(uint16_t h);
    /* positions of the nonzero bytes of a 0/1 mask */
    int64_t (*mask_positions)(const uint8_t *mask, int64_t n, uint32_t *pos);
    /* error sums in double: acc[0] += sum (w-h)^2, acc[1] += sum w^2, acc[2] = max(acc[2], max |w-h|);
     * mm[0..3] = min/max of w, min/max of h, updated */
    void (*error_sums)(const float *w, const float *h, int64_t n, double *acc, float *mm);
    /* hist[floor((x - lo) * scale)]++, clipped to [0, bins) */
    void (*histogram)(const float *x, int64_t n, double lo, double scale, int bins, int64_t *hist);
    /* matmul (matmul_scalar.c, matmul_avx2.c; these agree with each other to float rounding only,
     * they sum in other orders). One weight row against nx (1..4) activation rows x + i*xs:
     * out[i] = sum_j w_j * x[i*xs + j], j < cols, w_j = q_j * s[k] + nzs[k] for column j in group
     * k = j / g (nzs = -z * s). mm_packed reads the codes q_j from the b-bit stream at `codes` (a
     * byte boundary; cols % 8 == 0 and g % 8 == 0), 4 bytes at the start of each block of 8 codes
     * (for bits < 8: up to 2 bytes past the row, which the caller keeps inside the stream); mm_bytes
     * from one byte per code (any cols and g). */
    void (*mm_packed)(const uint8_t *codes, int bits, int64_t cols, int64_t g, const float *s,
                      const float *nzs, const float *x, int64_t xs, int nx, float *out);
    void (*mm_bytes)(const uint8_t *q, int64_t cols, int64_t g, const float *s, const float *nzs, const float *x,
                     int64_t xs, int nx, float *out);
    /* out[j] = q_j * s + nzs for n codes (n % 8 == 0) of the stream at `codes`, read as mm_packed
     * reads them (the panel route's weights) */
    void (*mm_decode)(const uint8_t *codes, int bits, int64_t n, float s, float nzs, float *out);
    /* a tile of a float product: out[i*os + j] += sum_{t<k} x[i*xs + t] * w[j*ws + t], i < nx (1..4),
     * j < nw (1..3) */
    void (*mm_tile)(const float *x, int64_t xs, const float *w, int64_t ws, int64_t k, int nx, int nw, float *out,
                    int64_t os);
    /* int8 activations (ADPQ_MATMUL_INT8): one weight row against nx (1..4) quantized activation rows.
     * The row's cols codes (b-bit stream at `codes`, a byte boundary) form nb = ceil(cols / 32) blocks
     * of 32, groups of bpg blocks (the last one shorter). Activation row i has nb blocks of 32 int8 at
     * xq + (i * xbs + b) * 32, stored in the order adpq_q8_pos gives (position p holds column
     * 32b + adpq_q8_pos(bits, p); zero past cols), and scales xd[i * xbs + b]. out[i] = sum_k s[k] *
     * sum_{b in k} xd[b] * dot_b, dot_b = sum_p (q_{32b + pos(p)} - bias) * xq[p] in int32, bias = 128
     * for 8 bits (0 otherwise; the caller adds the zero-point terms). The AVX2 kernel reads 4 * bits
     * bytes at each block, 16 for 3 bits: past the row's codes in a ragged last block (the caller keeps
     * these reads inside readable memory; the extra codes meet zero activations). */
    void (*mm_q8)(const uint8_t *codes, int bits, int64_t cols, int64_t bpg, const float *s, const int8_t *xq,
                  const float *xd, int64_t xbs, int nx, float *out);
    /* int8 activations, one activation row (xq, xd: its nb blocks) against nr (1..4) weight rows: row r's
     * codes at codes[r] (read as mm_q8 reads them), its group scales at s + r * G. out[r] = sum_k s_k *
     * (sum_{b in k} xd[b] * dot_b), in float32 per group (mm_q8's dots; the order of the float sums
     * differs). Each row's arithmetic is the same whatever nr and the other rows are. A hint: the AVX2
     * kernel prefetches pf + b * pfs at block b, up to pfs bytes from there (pfs = 0: pf alone; the
     * caller keeps pf + nb * pfs inside the stream: the next pass's rows) */
    void (*mm_q8_rows)(const uint8_t *const *codes, int nr, int bits, int64_t cols, int64_t bpg, const float *s,
                       int64_t G, const int8_t *xq, const float *xd, const uint8_t *pf, int64_t pfs,
                       float *out);
    /* sum of delta[o] * x[col[o]], o < n: a row's outlier correction (the AVX2 kernel gathers 8 at a
     * time; the sets agree to float rounding) */
    float (*mm_corr)(const int32_t *col, const float *delta, int64_t n, const float *x);
    /* one activation row x[0..cols) quantized for mm_q8, per block b of 32 columns (the last one zero
     * padded): d = amax / 127 (amax = max |x|, float32), q = rint(x * (1 / d)) (0 when d = 0) clamped to
     * [-127, 127], stored at xq + 32b in adpq_q8_pos(bits) order; xd[b] = d, xsum[b] = sum of the q.
     * A block with a NaN or Inf gets d = NaN and q = 0 (so that it propagates). Both sets: the same bits. */
    void (*q8_quantize)(const float *x, int64_t cols, int bits, int8_t *xq, float *xd, int32_t *xsum);
    /* GPTQ (gptq.c): c[i*cs + j] -= sum_{t<k} a[i*as + t] * b[t*bs + j] for i < m, j < n (k >= 1). Each
     * sum starts at 0 and adds the terms in t order, each by one fused multiply-add (acc = fma(a, b, acc)),
     * then is subtracted once: every element has the same bits in both sets whatever m, n and the tiling
     * (the solver's lazy batch update in float32; the factorization of the Hessian in float64). */
    void (*gemm_sub)(float *c, int64_t cs, const float *a, int64_t as, const float *b, int64_t bs, int64_t m,
                     int64_t n, int64_t k);
    void (*gemm_sub_f64)(double *c, int64_t cs, const double *a, int64_t as, const double *b, int64_t bs, int64_t m,
                         int64_t n, int64_t k);
    /* GPTQ's update of later columns by earlier columns' errors, rows side by side (a column's rows
     * contiguous): for r < nr, j < n and t = 0, 1, ..., q - 1 in turn,
     * x[j*xs + r] = fma(-e[t*es + r], u[j*us + t], x[j*xs + r]) (one rounding per term) */
    void (*gptq_update)(float *x, int64_t xs, int64_t n, const float *e, int64_t es, int q, const float *u, int64_t us,
                        int64_t nr);
    /* GPTQ's rounding of one column for rows r < nr (adpq_gptq_col): code = adpq_code_of(x, inv, z, qmax),
     * q = (code - z) * s; an outlier (mask) instead: float16(x) (the code stays the inlier one) or its own
     * grid's code and value; codes[r] = code, x[r] = q, e[r] = q - w[r]. Returns the ADPQ_GPTQ_* flags
     * of the rows (0: all finite); a row whose x is not finite leaves its outputs unspecified. */
    int (*gptq_round)(const adpq_gptq_col *c, int64_t nr);
    /* dst[j*ds + i] = src[i*ss + j] for i < rows, j < cols (GPTQ's tiles, in and out) */
    void (*transpose)(float *dst, int64_t ds, const float *src, int64_t ss, int64_t rows, int64_t cols);
    void (*transpose_u8)(uint8_t *dst, int64_t ds, const uint8_t *src, int64_t ss, int64_t rows, int64_t cols);
} adpq_kernels;

/* The column (0..31, within its block of 32) of position p of a quantized activation block for
 * b-bit codes: the order in which the AVX2 kernel decodes 32 codes of the stream cheaply.
 * 8 bits: natural; 4: even then odd columns (low, high nibbles); 2: p = 8m + k holds 4k + m (shift
 * 2m of byte k); 3: 8-column chunks 0, 2, 1, 3 (two 16-bit decodes packed with packus). */
static inline int adpq_q8_pos(int bits, int p) {
    switch (bits) {
    case 4: return p < 16 ? 2 * p : 2 * (p - 16) + 1;
    case 2: return 4 * (p % 8) + p / 8;
    case 3: {
        static const int chunk[4] = {0, 2, 1, 3};
        return chunk[p / 8] * 8 + p % 8;
    }
    default: return p;
    }
}

/* matmul_scalar.c and matmul_avx2.c: the mm_* members of each kernel set (adpq_mm_packed_scalar, ...) */
#define ADPQ_MM_KERNELS(SET)                                                                                           \
    void adpq_mm_packed_##SET(const uint8_t *codes, int bits, int64_t cols, int64_t g, const float *s,                 \
                              const float *nzs, const float *x, int64_t xs, int nx, float *out);                       \
    void adpq_mm_bytes_##SET(const uint8_t *q, int64_t cols, int64_t g, const float *s, const float *nzs,              \
                             const float *x, int64_t xs, int nx, float *out);                                          \
    void adpq_mm_decode_##SET(const uint8_t *codes, int bits, int64_t n, float s, float nzs, float *out);            \
    void adpq_mm_tile_##SET(const float *x, int64_t xs, const float *w, int64_t ws, int64_t k, int nx, int nw,         \
                            float *out, int64_t os);                                                                   \
    void adpq_mm_q8_##SET(const uint8_t *codes, int bits, int64_t cols, int64_t bpg, const float *s,                   \
                          const int8_t *xq, const float *xd, int64_t xbs, int nx, float *out);                  \
    void adpq_mm_q8_rows_##SET(const uint8_t *const *codes, int nr, int bits, int64_t cols, int64_t bpg,              \
                               const float *s, int64_t G, const int8_t *xq, const float *xd, const uint8_t *pf,       \
                               int64_t pfs, float *out);             \
    float adpq_mm_corr_##SET(const int32_t *col, const float *delta, int64_t n, const float *x);                     \
    void adpq_q8_quantize_##SET(const float *x, int64_t cols, int bits, int8_t *xq, float *xd, int32_t *xsum);
ADPQ_MM_KERNELS(scalar)
#if defined(__x86_64__) || defined(__i386__)
ADPQ_MM_KERNELS(avx2)
#endif

extern const adpq_kernels adpq_kernels_scalar;

/* Weights [off, off+len) of row r as float32: in place for float32 input, else converted into buf
 * (len floats). Ignores m->col_mul. */
static inline const float *adpq_row_f32(const adpq_kernels *K, const adpq_matrix *m, int64_t r, int64_t off,
                                        int64_t len, float *buf) {
    if (m->dtype == ADPQ_F32) return (const float *)m->data + r * m->row_stride + off;
    const uint16_t *src = (const uint16_t *)m->data + r * m->row_stride + off;
    if (m->dtype == ADPQ_F16)
        K->f16_to_f32(src, len, buf);
    else
        K->bf16_to_f32(src, len, buf);
    return buf;
}
#if defined(__x86_64__) || defined(__i386__)
#define ADPQ_HAVE_AVX2_KERNELS 1
extern const adpq_kernels adpq_kernels_avx2;
#endif

/* kernels.c */
/* 1 when this CPU runs the AVX2 kernel set (AVX2, F16C and FMA) */
int adpq_avx2_supported(void);
/* "scalar", "avx2" or "auto" -> that kernel set, or NULL when unknown or not on this CPU */
const adpq_kernels *adpq_kernels_by_name(const char *name);
/* the process default (adpq_set_kernels); read once by each public entry point (api.c), never
 * below it: everything else takes the kernel set as an argument */
const adpq_kernels *adpq_active_kernels(void);

/* layout.c */
const char *adpq_dtype_name(int dtype);

/* pack.c: little-endian bit streams; value i of a stream occupies bits [i*b, i*b+b). */
/* Writes n codes (each < 2^bits, bits in {2,3,4,8}) at code position `first` of dst, the
 * byte-aligned body with K->pack_body. Bytes shared with codes outside [first, first+n) are
 * OR-ed, so dst must start zeroed. */
void adpq_pack_codes(const adpq_kernels *K, uint8_t *dst, int64_t first, const uint8_t *codes, int64_t n, int bits);
void adpq_unpack_codes(const uint8_t *src, int64_t first, int64_t n, int bits, uint8_t *codes);
/* the scalar body of adpq_pack_codes (n % 8 == 0, dst at a multiple of 8 codes) */
void adpq_pack_body_scalar(const uint8_t *codes, int64_t n, int bits, uint8_t *out);
/* Same for values of 1..32 bits. */
void adpq_pack_u32(uint8_t *dst, int64_t first, const uint32_t *vals, int64_t n, int bits);
void adpq_unpack_u32(const uint8_t *src, int64_t first, int64_t n, int bits, uint32_t *vals);

/* outliers.c */
/* The k-th largest key of keys[0..n) (1 <= k <= n); permutes keys. O(n) expected. */
uint32_t adpq_select_kth_largest(uint32_t *keys, int64_t n, int64_t k);
/* The largest float32 <= t (t >= 0, finite). */
float adpq_float_floor(double t);
/* (lam / 2)^(1 / (1 + gamma)): the threshold, in units of the scope's scale, of an explicit lam */
double adpq_lam_factor(double lam, double gamma);
/* floor(ratio * n + 0.5): the outlier count of a scope of n weights */
int64_t adpq_outlier_count(double ratio, int64_t n);

/* threads.c: runs fn(ctx, task, worker) for task in [0, ntasks) on up to `threads` workers
 * (worker in [0, threads)). Returns the first non-zero value fn returned, else 0. */
typedef int (*adpq_task_fn)(void *ctx, int64_t task, int worker);
int adpq_parallel_for(int threads, int64_t ntasks, adpq_task_fn fn, void *ctx);

/* dequant.c: a dequantizer prepared once (arrays validated, per-row outlier offsets), then used
 * row by row (adpq_dequantize, and metrics that never materialize w_hat) */
typedef struct {
    const adpq_qmatrix *q;
    const adpq_config *cfg;
    adpq_layout lay;
    const adpq_kernels *K;
    int64_t *row_out;      /* first outlier of each row */
    int64_t *row_ogrp;     /* first outlier group of each row */
    uint32_t *pos;         /* unpacked outlier positions */
    const float *col_mul;  /* NULL or per-column factors */
} adpq_dq;
int adpq_dq_init(adpq_dq *d, const adpq_kernels *K, const adpq_qmatrix *q, const adpq_config *cfg,
                 const float *col_mul, char *err);
/* row r of w_hat into out; codes: cols + 8 bytes of scratch */
void adpq_dq_row(const adpq_dq *d, int64_t r, uint8_t *codes, float *out);
void adpq_dq_free(adpq_dq *d);

/* The public functions of the same names (adpq.h) with the kernel set K (api.c passes the default). */
adpq_status adpq_dequantize_k(const adpq_kernels *K, const adpq_qmatrix *q, const adpq_config *cfg,
                              const float *col_mul, float *out, char *err);
/* matmul.c */
adpq_status adpq_matmul_prepare_k(const adpq_kernels *K, const adpq_qmatrix *q, const adpq_config *cfg,
                                  const float *col_mul, adpq_matmul_plan *plan, char *err);
adpq_status adpq_matmul_k(const adpq_kernels *K, const adpq_matmul_plan *plan, const void *x, int x_dtype, int64_t n,
                          int64_t x_stride, void *y, int y_dtype, int64_t y_stride, int mode, int threads, char *err);
/* 1 when the int8 route takes a call of n activation rows (else float mode) */
int adpq_matmul_int8_applies(const adpq_matmul_plan *plan, int64_t n);
/* metrics.c */
adpq_status adpq_error_stats_of_k(const adpq_kernels *K, const adpq_matrix *w, const float *w_hat, int bins, int threads,
                                  adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat, char *err);
adpq_status adpq_error_stats_q_k(const adpq_kernels *K, const adpq_matrix *w, const adpq_qmatrix *q,
                                 const adpq_config *cfg, const float *col_mul, int bins, int threads,
                                 adpq_error_stats *out, int64_t *hist_w, int64_t *hist_hat, char *err);
/* columns.c */
adpq_status adpq_column_mean_abs_k(const adpq_kernels *K, const adpq_matrix *m, int threads, float *mean, char *err);
adpq_status adpq_column_scales_k(const adpq_kernels *K, const adpq_matrix *m, int threads, uint16_t *scales, float *mul,
                                 char *err);
/* gptq.c: the public functions of the same names (adpq.h) with the kernel set K (u: rows ldu >= n
 * floats apart) */
adpq_status adpq_gptq_inverse_k(const adpq_kernels *K, const double *h, int64_t n, double damp, int act_order,
                                int threads, float *u, int64_t ldu, int64_t *perm, char *err);
adpq_status adpq_gptq_k(const adpq_kernels *K, const float *w, int64_t rows, int64_t cols, const double *h,
                        const uint8_t *mask, const adpq_gptq_config *cfg, float *scales, float *zeros,
                        float *outlier_scales, float *outlier_zeros, uint8_t *codes, float *values, char *err);

#endif /* ADPQ_INTERNAL_H */
