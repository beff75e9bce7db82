"""The input of every reference function: w as float32, checked as the C core checks it."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..core.arrays import as_weight_matrix, to_float32


def weights_f32(w) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """(w as a C-contiguous float32 2-D array, w's shape); ValueError on NaN/Inf, as the C core."""
    w2, dname, shape = as_weight_matrix(w)
    w2 = to_float32(w2, dname)
    if not np.isfinite(w2).all():
        bad = np.flatnonzero(~np.isfinite(w2))
        r, c = divmod(int(bad[0]), w2.shape[1])
        raise ValueError(f"w contains {bad.size} non-finite value(s) (NaN or Inf); the first is at row {r}, "
                         f"column {c}")
    return np.ascontiguousarray(w2, dtype=np.float32), shape
