"""Mirror of the GPTQ solver (csrc/gptq.c): AdpQ's start refined with second-order error compensation.

The solver works on the matrix that is quantized, W' (column-scaled when the start has column scales)
and on H' = diag(c) H diag(c), the Hessian of the layer's inputs as W' sees them (docs/DESIGN.md 2.7).
It keeps the start's outlier set and, unless told to refit, its group grids; it rounds the columns one
by one in GPTQ's order and spreads each column's rounding error over the columns not yet rounded:

1. ``upper_inverse_factor``: dead inputs (H_jj = 0) get H_jj = 1; H += damp * mean(diag H) * I;
   with act-order the columns are permuted by descending diag(H) (stable); U = the upper Cholesky
   factor of H^-1 (H^-1 = U^T U), float32. A matrix that is not positive definite after damping is
   an error.
2. ``solve``: for each block of ``block_size`` columns (in permuted order), for each column i of it:
   if grids are refit (natural order only) and i starts a group, the group's grids are recomputed
   from its current values (inliers; the outliers on their own with outlier_format "group");
   q = the column rounded on its grid (an inlier: (code - z) * s; an outlier: float16(w) or its
   own grid); e = (w - q) / U_ii; the block's later columns get -= e * U_i,j; after the block, every
   later column gets -= E @ U[block, later] (the lazy batch update of the GPTQ paper).

The C solver does the same float32 arithmetic in another summation order: the two agree to float
tolerance, not bit for bit (a code whose value sits on a rounding boundary may differ).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .quant import group_params

F32 = np.float32


def column_order(h: np.ndarray, act_order: bool) -> np.ndarray:
    """The order the columns are rounded in: descending diag(H) (stable) with act-order, else natural."""
    n = h.shape[0]
    if not act_order:
        return np.arange(n, dtype=np.int64)
    return np.argsort(-np.diag(h), kind="stable").astype(np.int64)


def upper_inverse_factor(h: np.ndarray, damp: float, perm: np.ndarray) -> np.ndarray:
    """U (float32, upper triangular) with U^T U = (damped H)^-1, rows and columns in `perm` order."""
    hd = np.array(h, dtype=np.float64, copy=True)
    d = np.diag(hd).copy()
    dead = d == 0
    d[dead] = 1.0
    d += damp * float(np.mean(d))
    np.fill_diagonal(hd, d)
    hd = hd[np.ix_(perm, perm)]
    try:
        lower = np.linalg.cholesky(hd)
        inv = np.linalg.inv(lower)
        hinv = inv.T @ inv
        upper = np.linalg.cholesky(hinv).T
    except np.linalg.LinAlgError:
        raise ValueError("the Hessian is not positive definite after damping (raise gptq damp)") from None
    return upper.astype(F32)


def _round(w: np.ndarray, inv: np.ndarray, z: np.ndarray, s: np.ndarray, qmax: F32):
    codes = np.clip(np.rint(w * inv + z), F32(0), qmax)
    return codes.astype(np.uint8), ((codes - z) * s).astype(F32)


def _refit(w: np.ndarray, mask: np.ndarray, bits: int, symmetric: bool, integer_zero: bool, scale_dtype: str):
    """(s, z) of the grid group_params gives the values of w where mask holds, per row (float32)."""
    mn = np.where(mask, w, F32(np.inf)).min(axis=1) + F32(0)
    mx = np.where(mask, w, F32(-np.inf)).max(axis=1) + F32(0)
    _, s, _, z, _ = group_params(mn, mx, bits, symmetric, scale_dtype, integer_zero)
    return s.astype(F32), z.astype(F32)


def solve(w: np.ndarray, h: np.ndarray, mask: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
          outlier_scales: Optional[np.ndarray], outlier_zeros: Optional[np.ndarray], *, bits: int,
          group_size: int, symmetric: bool, integer_zero: bool, scale_dtype: str, damp: float,
          block_size: int, act_order: bool, refit: bool, threads: int = 1) -> Dict[str, np.ndarray]:
    """GPTQ on W' from a start (see the module docstring); the arguments as _core.gptq takes them.

    w float32 (rows, cols); h float64 (cols, cols); mask bool (rows, cols); scales, zeros float32
    (rows, groups) grid values (zeros = 2^(bits-1) when symmetric); outlier_scales/zeros the same
    for outlier_format "group", None for "fp16" (outliers then keep their float16 value).
    threads: ignored (the C solver's; the result does not depend on it).
    Returns codes uint8 (rows, cols), values float32 (rows, cols) (the rounded W', outliers included)
    and the four grids (refit or as given).
    """
    w = np.array(w, dtype=F32, copy=True)
    rows, cols = w.shape
    gs = group_size
    qmax = F32((1 << bits) - 1)
    s, z = np.array(scales, F32), np.array(zeros, F32)
    fp16 = outlier_scales is None
    so = None if fp16 else np.array(outlier_scales, F32)
    zo = None if fp16 else np.array(outlier_zeros, F32)
    perm = column_order(h, act_order)
    u = upper_inverse_factor(h, damp, perm)
    w = w[:, perm]
    m = mask[:, perm]
    codes = np.zeros((rows, cols), dtype=np.uint8)
    values = np.zeros((rows, cols), dtype=F32)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        err = np.zeros((rows, i2 - i1), dtype=F32)
        for i in range(i1, i2):
            col = int(perm[i])
            g = col // gs
            if refit and not act_order and col % gs == 0:
                end = min(col + gs, cols)
                grp, gm = w[:, col:end], m[:, col:end]
                s[:, g], z[:, g] = _refit(grp, ~gm, bits, symmetric, integer_zero, scale_dtype)
                if not fp16:
                    has = gm.any(axis=1)
                    so_new, zo_new = _refit(grp, gm, bits, symmetric, integer_zero, scale_dtype)
                    so[:, g] = np.where(has, so_new, so[:, g])
                    zo[:, g] = np.where(has, zo_new, zo[:, g])
            x = w[:, i]
            inv = (F32(1) / s[:, g]).astype(F32)
            c, q = _round(x, inv, z[:, g], s[:, g], qmax)
            out = m[:, i]
            if out.any():
                if fp16:
                    with np.errstate(over="ignore"):
                        qo = x[out].astype(np.float16).astype(F32)
                    if not np.isfinite(qo).all():
                        raise ValueError("an outlier exceeds the float16 range (|w| > 65504) after error "
                                         "compensation; use outlier_format='group'")
                    q[out] = qo
                else:
                    inv_o = (F32(1) / so[out, g]).astype(F32)
                    c[out], q[out] = _round(x[out], inv_o, zo[out, g], so[out, g], qmax)
            codes[:, col] = c
            values[:, col] = q
            e = ((x - q) / u[i, i]).astype(F32)
            w[:, i + 1:i2] -= e[:, None] * u[i, i + 1:i2][None, :]
            err[:, i - i1] = e
        if i2 < cols:
            w[:, i2:] -= err @ u[i1:i2, i2:]
    return {"codes": codes, "values": values, "scales": s, "zeros": z,
            "outlier_scales": so, "outlier_zeros": zo}


def proxy_loss(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    """tr((W - W_hat) H (W - W_hat)^T) in float64: the output error GPTQ minimises, summed over rows."""
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.sum((d @ np.asarray(h, np.float64)) * d))


__all__ = ["column_order", "upper_inverse_factor", "solve", "proxy_loss"]
