"""adpq._core: the CPython wrapper over the C core (csrc/adpqmodule.c over csrc/adpq.h).

The Python layer (adpq.core) is the supported API; this module is its boundary, documented here.
Every function releases the GIL around the C work. Arguments can be given by keyword.

Conventions shared by the functions below:

- ``w``: a 2-D NumPy array of float32 (itemsize 4) or of float16/bfloat16 bits (itemsize 2), with
  contiguous rows (column stride = itemsize), a positive row stride and at least one row and column.
  ``dtype`` says which: 0 float32, 1 float16, 2 bfloat16 (adpq_dtype; ``adpq.core.dtypes.C_CODE``).
- ``config``: a dict with exactly the fields of ``adpq_config`` in csrc/adpq.h, and no other key
  (``route`` excepted: it is ``quantize``'s keyword); see :class:`Config`. A missing or unknown key,
  or a value of the wrong type, raises TypeError naming the key; a value out of range ValueError
  (the C core's message, e.g. "group_size must be -1 (one group per row) or >= 8 (got 4)").
  ``adpq.QuantConfig.core_config(threads)`` builds one.
- ``arrays``: a quantized matrix's stored arrays by name, as ``quantize`` returns them (16-bit floats
  as uint16 bits). Each must be C-contiguous with exactly the bytes the layout of (rows, cols, config)
  gives it (ValueError otherwise); None counts as absent; an unknown name raises TypeError.
- 16-bit float values cross the boundary as their uint16 bits (float16 or bfloat16 per config's
  ``scale_dtype``), never as ml_dtypes arrays.
- Errors of the C core: ValueError (bad argument, NaN/Inf in the input, a value that does not fit
  its storage dtype), MemoryError (an allocation failed).
"""
import os
from typing import Dict, Literal, Mapping, Optional, Tuple, TypedDict, Union

import numpy as np

VERSION: str
"""The package version the extension was built with (ADPQ_VERSION, from python/adpq/_version.py)."""

MIN_GROUP_SIZE: int
"""ADPQ_MIN_GROUP_SIZE: the smallest group_size other than -1 (8)."""


class Config(TypedDict):
    """adpq_config (csrc/adpq.h) as a dict: exactly these keys."""

    bits: int  # 2, 3, 4 or 8
    group_size: int  # >= MIN_GROUP_SIZE, or -1 for one group per row
    scope: int  # 0: one threshold per matrix (tensor), 1: one per group
    use_lam: int  # 0/1 (a bool is accepted): 1 uses `lam`, 0 solves the threshold from outlier_ratio
    outlier_ratio: float  # in [0, 0.5]; 0 without use_lam is plain RTN (an int is accepted)
    lam: float  # >= 0: the LASSO penalty on weights normalised by the scope's scale (with use_lam)
    gamma: float  # > 0: the adaptive weight exponent
    symmetric: int  # 0/1: 1 stores no zero-points (z = 2^(bits-1))
    outlier_format: int  # 0: a quantizer per group's outliers, 1: float16 outlier values
    scale_dtype: int  # 0 float32, 1 float16, 2 bfloat16: storage of scales and zero-points
    threads: int  # >= 1 worker threads
    integer_zero: int  # 0/1: asymmetric zero-points rounded to integers


Route = Literal["auto", "one_pass", "two_pass"]
ArrayName = Literal["codes", "scales", "zeros", "outlier_counts", "outlier_indices", "outlier_scales",
                    "outlier_zeros", "outlier_values"]


def quantize(w: np.ndarray, dtype: int, config: Config, col_mul: Optional[np.ndarray] = None, *,
             route: Route = "auto") -> Dict[str, Union[np.ndarray, int]]:
    """Quantizes w under config (adpq_quantize).

    col_mul: None, or a contiguous float32 vector of cols finite factors: the matrix quantized is
        then w[r, j] * col_mul[j] in float32 (column scaling).
    route: how a tensor-scope threshold with a solved lambda is found (adpq_route). The output is
        the same bit for bit on every route; only the speed differs. "auto": one pass for
        column-scaled matrices of at least 24 MiB of input, else two; "one_pass": one pass whenever
        the matrix is large enough to be sampled (more than 8192 weights); "two_pass": a candidate
        pass, the exact threshold, then the quantize pass.

    Returns a dict: "codes" (uint8, the b-bit code stream), "scales" and, when asymmetric, "zeros"
    (rows x groups_per_row; float32, or uint16 bits of float16/bfloat16); with outliers also
    "outlier_counts" (rows x groups_per_row, uint8/16/32), "outlier_indices" (uint8 bit stream),
    and "outlier_scales"/"outlier_zeros" (format 0) or "outlier_values" (format 1, float16 bits).
    Diagnostics, not stored: "_passes" (1 or 2 reads of the matrix) and "_fixed_groups" (groups
    quantized again after the one pass).

    Raises TypeError (w not an array, config keys or types, route not keyword), ValueError (w's
    shape, strides or itemsize, config values, an unknown route, NaN/Inf in w with their count and
    first position, a scale or float16 outlier that overflows its dtype), MemoryError.
    """


def outlier_mask(w: np.ndarray, dtype: int, config: Config, col_mul: Optional[np.ndarray] = None) -> np.ndarray:
    """The outliers quantize chooses for w under config, as a bool array of w's shape
    (adpq_outlier_mask; two passes, whatever the route). Raises as quantize."""


def dequantize(arrays: Mapping[ArrayName, Optional[np.ndarray]], rows: int, cols: int, config: Config,
               num_outliers: int, num_outlier_groups: int, col_mul: Optional[np.ndarray] = None) -> np.ndarray:
    """w_hat (rows x cols float32) of a quantized matrix (adpq_dequantize).

    arrays: the stored arrays by name. Required: "codes", "scales", "zeros" (asymmetric); with
        num_outliers > 0 also "outlier_counts", "outlier_indices" and "outlier_scales" (+
        "outlier_zeros" when asymmetric) for outlier_format 0 or "outlier_values" for format 1.
        Arrays the config does not use are ignored.
    num_outliers, num_outlier_groups: the sum of outlier_counts and the number of groups with one;
        the counts and indices are checked against them and against the groups.
    col_mul: None, or cols float32 factors w_hat[r, j] is multiplied by afterwards (the column scales).

    Raises TypeError (an unknown array name, a missing argument, config keys or types), ValueError
    (config values, a required array missing or of the wrong size, counts or indices inconsistent),
    MemoryError.
    """


class MatmulPlan:
    """A quantized matrix prepared for :func:`matmul` (not constructible: :func:`matmul_plan` makes
    one). It points into the arrays it was made from and holds references to them."""

    rows: int  # out_features
    cols: int  # in_features

    def mode_used(self, n: int, mode: int) -> int:
        """The mode a matmul call with n activation rows and `mode` runs in (int8 falls back to 0)."""


def matmul_plan(arrays: Mapping[ArrayName, Optional[np.ndarray]], rows: int, cols: int, config: Config,
                num_outliers: int, num_outlier_groups: int, col_mul: Optional[np.ndarray] = None) -> MatmulPlan:
    """A plan for :func:`matmul` (adpq_matmul_prepare), from dequantize's arguments (see there; col_mul:
    the column scales). The arrays are validated as dequantize validates them and kept by reference
    (never copied: the codes are decoded where they are); the outliers become a sparse correction
    (per row, columns and float32 deltas w_outlier - w_dense), built once here. Changing the arrays'
    contents afterwards is not supported. Raises as dequantize."""


def matmul(plan: MatmulPlan, x: np.ndarray, out: Optional[np.ndarray] = None, mode: int = 0,
           threads: int = 1) -> np.ndarray:
    """out[i, r] = sum_j x[i, j] * w_hat[r, j] (adpq_matmul): x @ w_hat.T without materialising w_hat.

    x: a 2-D float32 array, or uint16 holding bfloat16 bits (converted in C), with plan.cols columns,
        rows contiguous (any positive row stride, e.g. a slice; a single row any stride), aligned.
    out: None (a new (n, plan.rows) float32 array) or a C-contiguous writeable float32 array, or uint16
        for bfloat16 bits (each output rounded to nearest even), of shape (n, plan.rows) not
        overlapping x; it is returned.
    mode: 0 float32 arithmetic (each output row within ~1e-6 relative of the float64 product);
        1 the activations quantized to int8 per block of 32 columns (ggml's q8_0; ~0.5% relative
        error per row), where plan.mode_used(n, 1) == 1 (n < 16, cols % 8 == 0, group_size % 32 == 0
        or per-row groups); otherwise float32.
    threads: >= 1; fewer are used for small products. Arguments by position or keyword (called per
        layer per token: no dict is built). The GIL is released. NaN/Inf in x propagate to out.

    Raises TypeError (plan not a MatmulPlan, x or out not float32/uint16 arrays, a missing/unknown argument),
    ValueError (x's columns or strides, out's shape, overlap, mode, threads), MemoryError.
    """


def gptq_inverse(h: np.ndarray, damp: float, act_order: bool, threads: int) -> Tuple[np.ndarray, np.ndarray]:
    """GPTQ's damped inverse factor (adpq_gptq_inverse; python/adpq/reference/gptq.py's
    upper_inverse_factor and column_order), computed in float64.

    h: a C-contiguous, aligned float64 (n, n) array, finite and symmetric (of the permuted matrix the
        lower triangle is read, as numpy's cholesky reads it). Dead inputs (h[j, j] == 0) get 1, then
        every diagonal entry damp * mean(diag) more (damp >= 0).
    act_order: the rounding order is descending diag(h), ties by index (else 0..n-1).
    threads: >= 1; the result is the same for any count.

    Returns (U, perm): U float32 (n, n), upper triangular with a positive diagonal, U^T U = the
    inverse of the damped h[perm][:, perm]; perm int64 (n,).

    Raises TypeError (h not a float64 array, act_order/threads types), ValueError (h's shape or
    layout, NaN/Inf in h, damp < 0 or not finite, threads < 1, "the Hessian is not positive definite
    after damping"), MemoryError.
    """


def gptq(w: np.ndarray, h: np.ndarray, mask: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
         outlier_scales: Optional[np.ndarray], outlier_zeros: Optional[np.ndarray], *, bits: int,
         group_size: int, symmetric: bool, integer_zero: bool, scale_dtype: int, damp: float, block_size: int,
         act_order: bool, refit: bool, threads: int) -> Dict[str, Optional[np.ndarray]]:
    """GPTQ from a start (adpq_gptq; python/adpq/reference/gptq.py's solve is the specification, which
    it matches to float rounding: the lazy batch update sums in another order).

    w: float32 (rows, cols), C-contiguous and aligned, finite; not modified.
    h: float64 (cols, cols), as gptq_inverse takes it.
    mask: bool or uint8 (rows, cols), nonzero = outlier.
    scales, zeros: float32 (rows, groups_per_row) grid values of the inliers (zeros = 2^(bits-1) for
        symmetric grids; scales finite with a finite inverse); groups_per_row = ceil(cols / g), g =
        group_size (cols for -1 or a group longer than the row).
    outlier_scales, outlier_zeros: the outliers' grids, the same shape (read where a group has
        outliers), for outlier format "group"; both None for float16 outliers (each rounds to its
        float16 value; ValueError past 65504).
    bits: 2, 3, 4 or 8. group_size: -1, >= MIN_GROUP_SIZE, or >= cols (one group per row). symmetric, integer_zero, scale_dtype
        (adpq.core.dtypes.C_CODE): the quantizer kind of refit grids. damp: as gptq_inverse.
        block_size: >= 1 columns per lazy batch update. act_order: the columns in descending diag(h)
        order. refit (natural order only; ignored with act_order): a group's grids are recomputed from
        its current values when its first column is rounded (an outlier grid only where the row's
        group has outliers). threads: >= 1; the result is the same for any count.

    Returns {"codes": uint8 (ceil(rows * cols * bits / 8),), the packed stream (code i of the
    row-major matrix at bits [i*b, i*b+b), little-endian; an outlier's code on its own grid, or for
    float16 outliers on the inlier grid), "values": float32 (rows, cols), the rounded matrix (outliers
    included; original column order), "scales", "zeros", "outlier_scales", "outlier_zeros": new
    float32 (rows, groups_per_row) arrays, refit or copies (the last two None when given None)}.

    Raises TypeError (an argument of the wrong type or dtype, a missing keyword), ValueError (shapes,
    layout, values out of range, NaN/Inf in w or h, grids not finite, "the Hessian is not positive
    definite after damping", a float16 outlier overflow, a refit grid that does not fit scale_dtype),
    MemoryError.
    """


def error_stats(w: np.ndarray, dtype: int, w_hat: Optional[np.ndarray], bins: int, threads: int,
                quantized: Optional[Mapping[str, object]] = None, kl_eps: float = 1e-10) -> Dict[str, object]:
    """The sums behind adpq.metrics (adpq_error_stats_of / adpq_error_stats_q).

    w_hat: a C-contiguous float32 array of w's size; or None, and then `quantized`: dequantize's
        keyword arguments as a dict (arrays, rows, cols, config, num_outliers, num_outlier_groups,
        col_mul), dequantized row by row and never stored whole (its config's threads is replaced by
        `threads`).
    bins, threads: >= 1. kl_eps: > 0, added to every normalised bin before the KL divergence.

    Returns {"sum_sq_err", "sum_sq_ref", "max_abs_err", "min", "max": float (sums in float64),
    "hist_w", "hist_hat": int64 arrays of `bins` counts over [min, max] of both, "kl_divergence": float}.
    The sums are added per chunk of rows, so their last bits depend on `threads`.

    Raises TypeError (neither w_hat nor quantized, quantized not a dict, w_hat not float32),
    ValueError (bad sizes, bins/threads < 1, kl_eps <= 0, NaN/Inf in w or w_hat), MemoryError.
    """


def column_scales(w: np.ndarray, dtype: int, threads: int) -> Tuple[np.ndarray, np.ndarray]:
    """Column scaling of w (adpq_column_scales): (uint16 bfloat16 bits of the scales c_j, the mean |w|
    of column j rounded to bfloat16, or 1 where it is not finite or too small; float32 1 / c_j).
    Raises ValueError (threads < 1, w's shape or strides), MemoryError."""


def layout(rows: int, cols: int, config: Config) -> Dict[str, int]:
    """The sizes every array follows (adpq_layout_of): group_size (effective), groups_per_row,
    num_groups, code_bytes, count_bytes, index_bits, scale_bytes. Raises ValueError for sizes or
    config values out of range, TypeError for config keys or types."""


def set_kernels(name: Literal["scalar", "avx2", "auto"]) -> str:
    """Sets the process-default kernel set, which each later call reads once; returns the previous
    name. Raises ValueError for an unknown name or "avx2" on a CPU without AVX2 and F16C."""


def kernels() -> str:
    """The name of the kernel set calls use now: "scalar" or "avx2"."""


def kth_largest(keys: np.ndarray, k: int) -> int:
    """The k-th largest of a 1-D array of uint32 keys (copied), 1 <= k <= len(keys) (tests of the
    selection). Raises ValueError for k out of range."""


def round_f32(x: np.ndarray, to: Literal[1, 2]) -> np.ndarray:
    """The uint16 bits of 1-D float32 x rounded to float16 (to=1) or bfloat16 (to=2), nearest even,
    with the core's conversions (tests). Raises ValueError for another `to`."""


def map_range(path: Union[str, bytes, os.PathLike], offset: int, nbytes: int) -> np.ndarray:
    """A read-only uint8 array of bytes [offset, offset + nbytes) of the file, memory-mapped; mapped
    and unmapped (when the array is freed) without the GIL. Raises ValueError (offset < 0,
    nbytes < 1, the file ends before), OSError (open, stat or mmap failed)."""
