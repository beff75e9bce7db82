"""Column scaling: one scale per input column, in front of the AdpQ quantizer (our addition).

With QuantConfig(column_scaling="mean_abs") the matrix that is quantized is W' = W * m, m_j = 1 / c_j,
where c_j is the mean |w| of column j (input channel j) stored as bfloat16; dequantization returns
w_hat' * c_j. Groups run along rows, so the columns of one group can have very different typical
magnitudes (an input channel that is large everywhere); dividing them out lets each group's grid
follow the weights rather than the loudest channel, like the column scales of SINQ, but computed in
one pass with no iteration and no data. The outliers are then the weights largest relative to their
column.

c_j = bfloat16(float32(S_j / rows)), S_j = the float64 sum, in order, of the float32 sums of |w_ij|
over blocks of 64 rows, each in row order from 0; a column whose mean is 0, below the float32 normal
range or beyond the bfloat16 range gets c_j = 1. m_j = float32(1) / float32(c_j). W' and w_hat are
float32 products. The C core computes c and m (csrc/columns.c, adpq_column_scales); the functions below
are their NumPy mirror, and tests hold the two to the same bits.
"""
from __future__ import annotations

import numpy as np

from ..core import dtypes
from ..core.config import QuantConfig

_TINY = np.float32(2.0 ** -126)


def scales_from_means(mean: np.ndarray) -> np.ndarray:
    """c as bfloat16 (cols,) from the float32 column means."""
    mean = np.asarray(mean, dtype=np.float32)
    mean = np.where(np.isfinite(mean) & (mean >= _TINY), mean, np.float32(1.0))
    c = mean.astype(dtypes.NUMPY["bfloat16"])
    return np.where(np.isfinite(c.astype(np.float32)), c, np.ones_like(c))


def multipliers(scales: np.ndarray) -> np.ndarray:
    """m = 1 / c in float32: the factors the quantized matrix is multiplied by."""
    return (np.float32(1.0) / np.asarray(scales, dtype=np.float32)).astype(np.float32)


def unscale(w_hat: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """w_hat' * c (float32, in place when w_hat is float32): the dequantized matrix (rows, cols)."""
    c = np.asarray(scales, dtype=np.float32)
    w_hat *= c[None, :]
    return w_hat


def scaled(w2: np.ndarray, cfg: QuantConfig):
    """(the matrix that is quantized, column scales or None): W' = w * (1/c) with column scaling."""
    if cfg.column_scaling == "none":
        return w2, None
    acc = np.zeros(w2.shape[1], dtype=np.float64)
    for r0 in range(0, w2.shape[0], 64):  # float32 sums of 64 rows in row order, then double, as in C
        block = np.zeros(w2.shape[1], dtype=np.float32)
        for row in w2[r0:r0 + 64]:
            block += np.abs(row)
        acc += block.astype(np.float64)
    scales = scales_from_means((acc / w2.shape[0]).astype(np.float32))
    return w2 * multipliers(scales)[None, :], scales
