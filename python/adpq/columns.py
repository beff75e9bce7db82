"""Column scaling: one scale per input column, in front of the AdpQ quantizer (our addition).

With QuantConfig(column_scaling="mean_abs") the matrix that is quantized is W' = W * m, m_j = 1 / c_j,
where c_j is the mean |w| of column j (input channel j) stored as bfloat16; dequantization returns
w_hat' * c_j. Groups run along rows, so the columns of one group can have very different typical
magnitudes (an input channel that is large everywhere); dividing them out lets each group's grid
follow the weights rather than the loudest channel, like the column scales of SINQ, but computed in
one pass with no iteration and no data. The outliers are then the weights largest relative to their
column. The same function serves the C path and the NumPy reference, so both see the same W'.

c_j = bfloat16(float32(sum_i |w_ij| / rows)) with the sum in float64 over rows in order (blocks of
rows, each summed in row order); a column whose mean is 0 (or below the float32 normal range) gets
c_j = 1. m_j = float32(1) / float32(c_j). W' and w_hat are float32 products.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

_BLOCK_ROWS = 1024
_TINY = np.float32(2.0 ** -126)


def column_scales(w2: np.ndarray) -> np.ndarray:
    """c as bfloat16, shape (cols,), of a 2-D float32/float16/bfloat16 matrix (finite values)."""
    rows = w2.shape[0]
    acc = np.zeros(w2.shape[1], dtype=np.float64)
    for r0 in range(0, rows, _BLOCK_ROWS):
        block = np.abs(np.asarray(w2[r0:r0 + _BLOCK_ROWS], dtype=np.float32))
        acc += np.add.reduce(block, axis=0, dtype=np.float64)
    mean = (acc / rows).astype(np.float32)
    mean = np.where(np.isfinite(mean) & (mean >= _TINY), mean, np.float32(1.0))
    return mean.astype(ml_dtypes.bfloat16)


def multipliers(scales: np.ndarray) -> np.ndarray:
    """m = 1 / c in float32: the factors the quantized matrix is multiplied by."""
    return (np.float32(1.0) / np.asarray(scales, dtype=np.float32)).astype(np.float32)


def unscale(w_hat: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """w_hat' * c (float32, in place when w_hat is float32): the dequantized matrix (rows, cols)."""
    c = np.asarray(scales, dtype=np.float32)
    w_hat *= c[None, :]
    return w_hat
