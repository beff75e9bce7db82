"""Mirror of the outlier selection (csrc/outliers.c, threshold.c): the set O of docs/DESIGN.md 2.1.

Ties at the threshold go to the lower index (row-major); zeros are never outliers.
"""
from __future__ import annotations

import numpy as np

from ..core import thresholds
from ..core.config import QuantConfig
from ..core.layout import Layout, layout_of
from . import columns
from .weights import weights_f32

F32 = np.float32


def _keys(w: np.ndarray) -> np.ndarray:
    """Magnitude keys: the bits of |w|, which order like |w|."""
    return w.view(np.uint32) & np.uint32(0x7FFFFFFF)


def _float_floor(t: float) -> F32:
    """Largest float32 <= t."""
    f = F32(t)
    if float(f) > t:
        f = np.nextafter(f, F32(0))
    return f


def _top_k_mask(keys: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row of keys (2-D): the k largest keys, ties to the lower index, zeros never."""
    order = np.argsort(np.int64(0x7FFFFFFF) - keys.astype(np.int64), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(keys.shape[1])[None, :].repeat(keys.shape[0], 0), axis=1)
    return (rank < np.asarray(k).reshape(-1, 1)) & (keys > 0)


def _groups(lay: Layout):
    """Number of full groups per row, and the length of the last, shorter group (0 if none)."""
    full = lay.cols // lay.group_size
    tail = lay.cols - full * lay.group_size
    return full, tail


def outlier_mask(w, config: QuantConfig) -> np.ndarray:
    """The outlier set of docs/DESIGN.md 2.1, as bool (rows, cols)."""
    w2, _ = weights_f32(w)
    config = config.resolved(w2.shape[0])
    return mask_of(columns.scaled(w2, config)[0], config)


def mask_of(w: np.ndarray, cfg: QuantConfig) -> np.ndarray:
    rows, cols = w.shape
    keys = _keys(w)
    n = rows * cols
    c = thresholds.lam_factor(cfg.lam, cfg.gamma) if cfg.lam is not None else None
    if cfg.outlier_scope == "tensor":
        if c is not None:
            med, has = thresholds.lower_median_nonzero(keys.reshape(1, -1), 1)
            if not has[0]:
                return np.zeros_like(w, dtype=bool)
            thr = _float_floor(float(med.view(F32)[0]) * c)
            return np.abs(w) > thr
        k = thresholds.outlier_count(cfg.outlier_ratio, n)
        if k == 0:
            return np.zeros_like(w, dtype=bool)
        return _top_k_mask(keys.reshape(1, -1), np.array([k])).reshape(rows, cols)
    lay = layout_of(rows, cols, cfg)
    full, tail = _groups(lay)
    g = lay.group_size
    mask = np.zeros_like(w, dtype=bool)
    blocks = []
    if full:
        blocks.append((0, full * g, g))
    if tail:
        blocks.append((full * g, cols, tail))
    for start, stop, length in blocks:
        kb = keys[:, start:stop].reshape(-1, length)
        wb = w[:, start:stop].reshape(-1, length)
        if c is not None:
            med, has = thresholds.lower_median_nonzero(kb, 1)
            t = med.view(F32).astype(np.float64) * c
            thr = np.array([_float_floor(x) for x in t], dtype=F32)
            mb = (np.abs(wb) > thr[:, None]) & has[:, None]
        else:
            k = thresholds.outlier_count(cfg.outlier_ratio, length)
            mb = _top_k_mask(kb, np.full(kb.shape[0], k)) if k else np.zeros_like(kb, dtype=bool)
        mask[:, start:stop] = mb.reshape(rows, stop - start)
    return mask
