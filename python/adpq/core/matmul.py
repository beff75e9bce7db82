"""adpq.matmul: y = x @ w_hat.T computed from a QuantizedTensor's stored arrays by the C core, which
decodes the codes where they are stored and never materialises w_hat (csrc/matmul.c)."""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from .. import _core
from . import dtypes
from .arrays import as_array
from .quantized import QuantizedTensor

# activations -> the C core's mode (adpq_matmul_mode)
MODES = {"float32": 0, "int8": 1}


def matmul(x: Any, qt: QuantizedTensor, threads: Optional[int] = None, activations: str = "float32") -> np.ndarray:
    """x @ w_hat.T as float32, of shape x.shape[:-1] + (rows,), with w_hat = qt.dequantize().

    x: float array-like (NumPy, CPU torch tensor, list) of shape (..., in_features), cast to float32.
    activations: "float32" (float arithmetic: each output row within ~1e-6 relative of the float64
        product), or "int8" (ggml's q8_0 trick: x * column scales quantized to int8 per block of 32
        columns, integer dot products with the codes; ~0.5% relative error per output row on gaussian
        data, 1.5-2x faster at batch 1). int8 applies to fewer than 16 rows of x, in_features % 8 == 0
        and group_size % 32 == 0 (or per-row groups); other calls run in float32 silently
        (qt.matmul_plan().mode_used(n, MODES["int8"]) tells which).
    threads: None for os.cpu_count(); fewer are used for small products.
    The plan (qt.matmul_plan()) is built on the first call and kept on qt.
    """
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
    if activations not in MODES:
        raise ValueError(f"activations must be one of {sorted(MODES)}, got {activations!r}")
    if threads is None:
        threads = os.cpu_count() or 1
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
    x = as_array(x, "x")
    if x.dtype.kind != "f" and x.dtype != dtypes.NUMPY["bfloat16"]:
        raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    rows, cols = qt.layout.rows, qt.layout.cols
    if x.ndim == 0 or x.shape[-1] != cols:
        raise ValueError(f"x has shape {x.shape}: its last dimension must be the in_features, {cols}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cols)
    if x2.dtype != np.float32:
        x2 = x2.astype(np.float32)
    n = x2.shape[0]
    rows_ok = n <= 1 or (x2.strides[0] > 0 and x2.strides[0] % 4 == 0 and x2.strides[0] >= 4 * cols)
    if not ((cols == 1 or x2.strides[1] == 4) and rows_ok and x2.flags.aligned):
        x2 = np.ascontiguousarray(x2)
    y = _core.matmul(qt.matmul_plan(), x2, None, MODES[activations], threads)
    return y.reshape(lead + (rows,))
