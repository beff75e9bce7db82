"""The Adaptive-LASSO threshold arithmetic shared by the API (soft_threshold) and the NumPy reference;
csrc/outliers.c holds the C twins (adpq_lam_factor, adpq_outlier_count)."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def lam_factor(lam: float, gamma: float) -> float:
    """(lam / 2)^(1 / (1 + gamma)): the threshold of an explicit lam, in units of the scope's scale."""
    return math.pow(lam * 0.5, 1.0 / (1.0 + gamma))


def outlier_count(ratio: float, n: int) -> int:
    """floor(ratio * n + 0.5): the outlier count of a scope of n weights."""
    return math.floor(ratio * n + 0.5)


def lower_median_nonzero(a: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """Along axis, the lower median of the nonzero entries of a (>= 0: magnitudes or their keys), and
    whether there is one (where there is none the median returned is 0)."""
    s = np.sort(a, axis=axis)
    nnz = np.count_nonzero(a, axis=axis)
    idx = np.minimum((a.shape[axis] - nnz) + np.maximum(nnz - 1, 0) // 2, a.shape[axis] - 1)
    med = np.take_along_axis(s, np.expand_dims(idx, axis), axis=axis).squeeze(axis)
    has = nnz > 0
    return np.where(has, med, np.zeros_like(med)), has
