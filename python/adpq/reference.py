"""A slow, plain-NumPy mirror of the C core, bit-exact with it (codes, scales, indices, values).

It exists to be read and to be tested against (tests/test_reference.py): every rule of the
quantizer is written here once more, in the same float32 operations in the same order.

    arrays = reference.quantize(w, config)         # same names and dtypes as QuantizedTensor.arrays()
    w_hat = reference.dequantize(arrays, shape, config)
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import ml_dtypes
import numpy as np

from . import columns
from .config import QuantConfig
from .core import as_weight_matrix
from .layout import Layout, layout_of, pack_bits, unpack_bits

F32 = np.float32
_ZERO_LIMIT = {"float16": F32(1024.0), "bfloat16": F32(128.0), "float32": F32(4194304.0)}
_TINY = {"float16": F32(2.0 ** -24), "bfloat16": F32(2.0 ** -126), "float32": F32(2.0 ** -126)}
_STORE = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}


def _weights_f32(w) -> Tuple[np.ndarray, Tuple[int, ...]]:
    w2, dname, shape = as_weight_matrix(w)
    if dname == "float16":
        w2 = w2.view(np.float16).astype(F32)
    elif dname == "bfloat16":
        w2 = w2.view(ml_dtypes.bfloat16).astype(F32)
    if not np.isfinite(w2).all():
        bad = np.flatnonzero(~np.isfinite(w2))
        r, c = divmod(int(bad[0]), w2.shape[1])
        raise ValueError(f"w contains {bad.size} non-finite value(s) (NaN or Inf); the first is at row {r}, "
                         f"column {c}")
    return np.ascontiguousarray(w2, dtype=F32), shape


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


def _lower_median_nonzero_keys(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per row: lower median of the nonzero keys, and whether there is one."""
    s = np.sort(keys, axis=1)
    nnz = np.count_nonzero(keys, axis=1)
    idx = (keys.shape[1] - nnz) + np.maximum(nnz - 1, 0) // 2
    return np.take_along_axis(s, idx[:, None], axis=1)[:, 0], nnz > 0


def _groups(lay: Layout):
    """Number of full groups per row, and the length of the last, shorter group (0 if none)."""
    full = lay.cols // lay.group_size
    tail = lay.cols - full * lay.group_size
    return full, tail


def outlier_mask(w, config: QuantConfig) -> np.ndarray:
    """The outlier set of DESIGN.md 2.1, as bool (rows, cols)."""
    w2, _ = _weights_f32(w)
    config = config.resolved(w2.shape[0])
    return _mask(_scaled(w2, config)[0], config)


def _scaled(w2: np.ndarray, cfg: QuantConfig):
    """(the matrix that is quantized, column scales or None): W' = w * (1/c) with column scaling."""
    if cfg.column_scaling == "none":
        return w2, None
    acc = np.zeros(w2.shape[1], dtype=np.float64)
    for r0 in range(0, w2.shape[0], 64):  # float32 sums of 64 rows in row order, then double, as in C
        block = np.zeros(w2.shape[1], dtype=F32)
        for row in w2[r0:r0 + 64]:
            block += np.abs(row)
        acc += block.astype(np.float64)
    scales = columns.scales_from_means((acc / w2.shape[0]).astype(F32))
    return w2 * columns.multipliers(scales)[None, :], scales


def _mask(w: np.ndarray, cfg: QuantConfig) -> np.ndarray:
    rows, cols = w.shape
    keys = _keys(w)
    n = rows * cols
    c = math.pow(cfg.lam * 0.5, 1.0 / (1.0 + cfg.gamma)) if cfg.lam is not None else None
    if cfg.outlier_scope == "tensor":
        if c is not None:
            med, has = _lower_median_nonzero_keys(keys.reshape(1, -1))
            if not has[0]:
                return np.zeros_like(w, dtype=bool)
            thr = _float_floor(float(med.view(F32)[0]) * c)
            return np.abs(w) > thr
        k = math.floor(cfg.outlier_ratio * n + 0.5)
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
            med, has = _lower_median_nonzero_keys(kb)
            t = med.view(F32).astype(np.float64) * c
            thr = np.array([_float_floor(x) for x in t], dtype=F32)
            mb = (np.abs(wb) > thr[:, None]) & has[:, None]
        else:
            k = math.floor(cfg.outlier_ratio * length + 0.5)
            mb = _top_k_mask(kb, np.full(kb.shape[0], k)) if k else np.zeros_like(kb, dtype=bool)
        mask[:, start:stop] = mb.reshape(rows, stop - start)
    return mask


def _to_storage(v: np.ndarray, dtype: str, is_scale: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(stored array, its float32 value); tiny scales become +-tiny; overflow raises."""
    with np.errstate(over="ignore"):
        st = v.astype(_STORE[dtype])
    val = st.astype(F32)
    if not np.isfinite(val).all():
        raise ValueError(f"a scale or zero-point does not fit in {dtype} (weights too large); use "
                         "scale_dtype='float32'")
    if is_scale:
        tiny = np.abs(val) < _TINY[dtype] if dtype != "float16" else val == 0
        if tiny.any():
            val = np.where(tiny, np.copysign(_TINY[dtype], v), val).astype(F32)
            st = val.astype(_STORE[dtype])
    return st, val


def group_params(mn: np.ndarray, mx: np.ndarray, bits: int, symmetric: bool, scale_dtype: str,
                 integer_zero: bool = False):
    """Mirror of adpq_group_params: (s_stored, s, z_stored or None, z, inv) per group."""
    empty = mn > mx
    mn = np.where(empty, F32(0), mn).astype(F32)
    mx = np.where(empty, F32(0), mx).astype(F32)
    if symmetric:
        half = F32(1 << (bits - 1))
        vmax = np.where(mx >= -mn, mx, mn)
        s = vmax / -half
        s = np.where(s == 0, F32(1), s).astype(F32)
        s_st, s_val = _to_storage(s, scale_dtype, True)
        z_st, z_val = None, np.full_like(s_val, half)
    else:
        qmax = F32((1 << bits) - 1)
        rng = mx - mn
        if not np.isfinite(rng).all():
            raise ValueError(f"a scale or zero-point does not fit in {scale_dtype} (weights too large)")
        s = rng / qmax
        s_min = np.abs(mn) / _ZERO_LIMIT[scale_dtype]
        s = np.where(s < s_min, s_min, s)
        s = np.where(s == 0, F32(1), s).astype(F32)
        s_st, s_val = _to_storage(s, scale_dtype, True)
        z = -mn / s_val
        if integer_zero:
            z = np.rint(z)
        z_st, z_val = _to_storage(z.astype(F32), scale_dtype, False)
    inv = (F32(1) / s_val).astype(F32)
    return s_st, s_val, z_st, z_val, inv


def quantize(w, config: QuantConfig) -> Dict[str, np.ndarray]:
    """The arrays adpq.quantize(w, config=config).arrays() holds, computed in NumPy."""
    w2, _ = _weights_f32(w)
    cfg = config.resolved(w2.shape[0])
    w2, col_scales = _scaled(w2, cfg)
    rows, cols = w2.shape
    lay = layout_of(rows, cols, cfg)
    mask = _mask(w2, cfg)
    starts, lens = lay.group_starts(), lay.group_lengths()

    pinf, ninf = F32(np.inf), F32(-np.inf)
    inl_mn = np.minimum.reduceat(np.where(mask, pinf, w2), starts, axis=1) + F32(0)
    inl_mx = np.maximum.reduceat(np.where(mask, ninf, w2), starts, axis=1) + F32(0)
    out_mn = np.minimum.reduceat(np.where(mask, w2, pinf), starts, axis=1) + F32(0)
    out_mx = np.maximum.reduceat(np.where(mask, w2, ninf), starts, axis=1) + F32(0)
    counts = np.add.reduceat(mask.astype(np.int64), starts, axis=1)

    s_st, _, z_st, z_val, inv = group_params(inl_mn, inl_mx, cfg.bits, cfg.symmetric, cfg.scale_dtype,
                                                 cfg.zero_point == "integer")
    inv_el = np.repeat(inv, lens, axis=1)
    z_el = np.repeat(z_val, lens, axis=1)
    has = counts > 0
    arrays: Dict[str, np.ndarray] = {}
    if cfg.outlier_format == "group" and has.any():
        so_st, _, zo_st, zo_val, inv_o = group_params(np.where(has, out_mn, F32(0)), np.where(has, out_mx, F32(0)),
                                                      cfg.bits, cfg.symmetric, cfg.scale_dtype,
                                                 cfg.zero_point == "integer")
        use_o = mask
        inv_el = np.where(use_o, np.repeat(inv_o, lens, axis=1), inv_el)
        z_el = np.where(use_o, np.repeat(zo_val, lens, axis=1), z_el)
        arrays_o = {"outlier_scales": so_st[has]}
        if not cfg.symmetric:
            arrays_o["outlier_zeros"] = zo_st[has]
    else:
        arrays_o = {}
    qmax = F32((1 << cfg.bits) - 1)
    codes = np.clip(np.rint(w2 * inv_el + z_el), F32(0), qmax).astype(np.uint8)

    arrays["codes"] = pack_bits(codes.ravel(), cfg.bits)
    arrays["scales"] = s_st
    if col_scales is not None:
        arrays["column_scales"] = col_scales
    if not cfg.symmetric:
        arrays["zeros"] = z_st
    if counts.sum() > 0:
        arrays["outlier_counts"] = counts.astype(lay.count_dtype)
        r_idx, c_idx = np.nonzero(mask)
        arrays["outlier_indices"] = pack_bits((c_idx % lay.group_size).astype(np.uint32), lay.index_bits)
        if cfg.outlier_format == "fp16":
            with np.errstate(over="ignore"):
                vals = w2[r_idx, c_idx].astype(np.float16)
            if not np.isfinite(vals).all():
                raise ValueError("an outlier exceeds the float16 range (|w| > 65504), which outlier_format='fp16' "
                                 "cannot store; use outlier_format='group'")
            arrays["outlier_values"] = vals
        arrays.update(arrays_o)
    return arrays


def dequantize(arrays: Dict[str, np.ndarray], shape: Tuple[int, ...], config: QuantConfig) -> np.ndarray:
    """w_hat as float32, from the arrays alone."""
    rows, cols = (1, shape[0]) if len(shape) == 1 else shape
    cfg = config.resolved(rows)
    lay = layout_of(rows, cols, cfg)
    lens = lay.group_lengths()
    codes = unpack_bits(arrays["codes"], rows * cols, cfg.bits).reshape(rows, cols).astype(F32)
    s = np.repeat(arrays["scales"].reshape(rows, -1).astype(F32), lens, axis=1)
    if cfg.symmetric:
        z = np.full_like(s, F32(1 << (cfg.bits - 1)))
    else:
        z = np.repeat(arrays["zeros"].reshape(rows, -1).astype(F32), lens, axis=1)
    out = (codes - z) * s
    counts = arrays.get("outlier_counts")
    if counts is not None and counts.sum() > 0:
        counts = counts.reshape(-1).astype(np.int64)
        n = int(counts.sum())
        group = np.repeat(np.arange(counts.size), counts)
        pos = unpack_bits(arrays["outlier_indices"], n, lay.index_bits).astype(np.int64)
        r = group // lay.groups_per_row
        c = (group % lay.groups_per_row) * lay.group_size + pos
        if cfg.outlier_format == "fp16":
            out[r, c] = arrays["outlier_values"].astype(F32)
        else:
            ordinal = np.cumsum(counts > 0) - 1  # index of each group among groups with outliers
            og = ordinal[group]
            so = arrays["outlier_scales"].astype(F32)[og]
            zo = (np.full(n, F32(1 << (cfg.bits - 1))) if cfg.symmetric
                  else arrays["outlier_zeros"].astype(F32)[og])
            out[r, c] = (codes[r, c] - zo) * so
    if "column_scales" in arrays:
        out = columns.unscale(out, arrays["column_scales"])
    return out.reshape(shape)


def kl_from_histograms(p: np.ndarray, q: np.ndarray, eps: float = 1e-10) -> float:
    """KL(P || Q) in nats of two histograms, as the C core computes it for metrics: each normalised by
    its total (at least 1), eps added to every bin, renormalised."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / max(p.sum(), 1.0) + eps
    q = q / max(q.sum(), 1.0) + eps
    p /= p.sum()
    q /= q.sum()
    return float(np.sum(p * np.log(p / q)))
