"""The NumPy mirror of adpq.matmul (csrc/matmul.c): the float64 product x @ w_hat.T, with w_hat from
the stored arrays by the reference dequantize (float32 values, exact in float64). The C core's float
mode approaches it to float32 rounding; its int8 mode (activations="int8") approaches matmul_int8."""
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


def quantize_activations(x: np.ndarray) -> np.ndarray:
    """x (n, cols) float32 as the int8 mode sees it: per block of 32 columns d = max|x| / 127 (float32),
    q = rint(x * (1 / d)) clamped to [-127, 127] (0 when d = 0); returns d * q in float64."""
    x = np.asarray(x, dtype=np.float32)
    n, cols = x.shape
    nb = -(-cols // 32)
    xp = np.zeros((n, nb * 32), np.float32)
    xp[:, :cols] = x
    xp = xp.reshape(n, nb, 32)
    d = (np.abs(xp).max(axis=2) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / np.where(d == 0, np.float32(1), d)).astype(np.float32)
    q = np.clip(np.rint(xp * inv[:, :, None]), -127, 127)
    return (d[:, :, None].astype(np.float64) * q).reshape(n, nb * 32)[:, :cols]


def matmul_int8(x: np.ndarray, arrays: Dict[str, np.ndarray], shape: Tuple[int, ...], config: QuantConfig) -> np.ndarray:
    """The int8 mode's arithmetic in float64, of shape x.shape[:-1] + (rows,): x' = x * column scales
    (float32), quantized by quantize_activations; y = x_hat @ dense.T + x' @ delta.T, dense = w_hat
    with every code dequantized as an inlier of its group (before the column scales), delta = w_hat -
    dense in float32 (the outliers' correction, on the float activations)."""
    rows, cols = (1, shape[0]) if len(shape) == 1 else shape
    x = np.asarray(x, dtype=np.float32)
    lead = x.shape[:-1]
    x = x.reshape(-1, cols)
    base = {k: v for k, v in arrays.items() if k != "column_scales"}
    xp = x * arrays["column_scales"].astype(np.float32) if "column_scales" in arrays else x
    w_hat = dequantize(base, shape, config).reshape(rows, cols)
    dense = dequantize({k: v for k, v in base.items() if not k.startswith("outlier")}, shape, config)
    dense = dense.reshape(rows, cols)
    delta = (w_hat - dense).astype(np.float64)
    y = quantize_activations(xp) @ dense.astype(np.float64).T + xp.astype(np.float64) @ delta.T
    return y.reshape(lead + (rows,))
