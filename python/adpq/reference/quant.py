"""Mirror of the group quantizers and their arrays (csrc/quant.c, dequant.c, the row machinery)."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from ..core import dtypes
from ..core.config import QuantConfig
from ..core.layout import layout_of, pack_bits, unpack_bits
from . import columns
from .outliers import mask_of
from .weights import weights_f32

F32 = np.float32
_ZERO_LIMIT = {"float16": F32(1024.0), "bfloat16": F32(128.0), "float32": F32(4194304.0)}
_TINY = {"float16": F32(2.0 ** -24), "bfloat16": F32(2.0 ** -126), "float32": F32(2.0 ** -126)}


def _to_storage(v: np.ndarray, dtype: str, is_scale: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(stored array, its float32 value); tiny scales become +-tiny; overflow raises."""
    with np.errstate(over="ignore"):
        st = v.astype(dtypes.NUMPY[dtype])
    val = st.astype(F32)
    if not np.isfinite(val).all():
        raise ValueError(f"a scale or zero-point does not fit in {dtype} (weights too large); use "
                         "scale_dtype='float32'")
    if is_scale:
        tiny = np.abs(val) < _TINY[dtype] if dtype != "float16" else val == 0
        if tiny.any():
            val = np.where(tiny, np.copysign(_TINY[dtype], v), val).astype(F32)
            st = val.astype(dtypes.NUMPY[dtype])
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
    w2, _ = weights_f32(w)
    cfg = config.resolved(w2.shape[0])
    w2, col_scales = columns.scaled(w2, cfg)
    rows, cols = w2.shape
    lay = layout_of(rows, cols, cfg)
    mask = mask_of(w2, cfg)
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
