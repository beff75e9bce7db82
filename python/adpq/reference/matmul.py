"""The NumPy mirror of adpq.matmul (csrc/matmul.c): the float64 product x @ w_hat.T, with w_hat from
the stored arrays by the reference dequantize (float32 values, exact in float64). The C core's float
mode approaches it to float32 rounding."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from ..core.config import QuantConfig
from .quant import dequantize


def matmul(x: np.ndarray, arrays: Dict[str, np.ndarray], shape: Tuple[int, ...], config: QuantConfig) -> np.ndarray:
    """x (..., cols) @ w_hat.T in float64, of shape x.shape[:-1] + (rows,)."""
    w_hat = dequantize(arrays, shape, config).astype(np.float64)
    w_hat = w_hat.reshape(1, -1) if w_hat.ndim == 1 else w_hat
    return np.asarray(x, dtype=np.float64) @ w_hat.T
