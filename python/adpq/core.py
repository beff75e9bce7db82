"""The notebook API: quantize, dequantize, outlier_mask, soft_threshold."""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import ml_dtypes
import numpy as np

from . import _core
from .config import _DTYPE_CODE, QuantConfig, default_threads
from .layout import layout_of
from .quantized import QuantizedTensor

_UNSET: Any = object()


def as_weight_matrix(w: Any, name: str = "w") -> Tuple[np.ndarray, str, Tuple[int, ...]]:
    """Checks a weight array and returns (2-D array the C core can read, dtype name, original shape).

    float32, float16 and bfloat16 are read as they are (any row stride; other layouts are copied);
    float64 is converted to float32.
    """
    if not isinstance(w, np.ndarray):
        if hasattr(w, "__array__") or isinstance(w, (list, tuple)):
            w = np.asarray(w)
        else:
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(w).__name__}")
    dt = w.dtype
    if dt == np.dtype(ml_dtypes.bfloat16):
        dname = "bfloat16"
    elif dt == np.float32:
        dname = "float32"
    elif dt == np.float16:
        dname = "float16"
    elif dt == np.float64:
        dname = "float32"
        with np.errstate(over="ignore"):
            w = w.astype(np.float32)
    else:
        raise TypeError(f"{name} must be a float32, float16 or bfloat16 array, got dtype {dt}")
    if w.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (one row) or 2-D, got {w.ndim}-D with shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"{name} is empty (shape {w.shape})")
    shape = tuple(w.shape)
    w2 = w.reshape(1, -1) if w.ndim == 1 else w
    item = w2.dtype.itemsize
    rows_ok = w2.shape[0] == 1 or (w2.strides[0] > 0 and w2.strides[0] % item == 0
                                   and w2.strides[0] >= w2.shape[1] * item)
    if not (w2.shape[1] == 1 or w2.strides[1] == item) or not rows_ok or not w2.flags.aligned:
        w2 = np.ascontiguousarray(w2)
    if dname != "float32":
        w2 = w2.view(np.uint16)
    return w2, dname, shape


def _resolve_config(config: Optional[QuantConfig], **params: Any) -> QuantConfig:
    if config is not None and not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    base = config if config is not None else QuantConfig()
    changes = {k: v for k, v in params.items() if v is not _UNSET}
    return base.replace(**changes) if changes else base


def quantize(w: Any, bits: int = _UNSET, group_size: int = _UNSET, outlier_ratio: float = _UNSET,
             outlier_scope: str = _UNSET, gamma: float = _UNSET, lam: Optional[float] = _UNSET,
             symmetric: bool = _UNSET, outlier_format: str = _UNSET, threads: Optional[int] = _UNSET,
             scale_dtype: str = _UNSET, zero_point: str = _UNSET, column_scaling: str = _UNSET,
             config: Optional[QuantConfig] = None) -> QuantizedTensor:
    """Quantizes a 1-D or 2-D float array with AdpQ.

    Parameters default to QuantConfig()'s (bits=3, group_size=128, symmetric, ...); `config` gives them all
    at once and keyword arguments override it. See QuantConfig for their meaning.
    The C core runs multi-threaded with the GIL released.
    """
    cfg = _resolve_config(config, bits=bits, group_size=group_size, outlier_ratio=outlier_ratio,
                          outlier_scope=outlier_scope, gamma=gamma, lam=lam, symmetric=symmetric,
                          outlier_format=outlier_format, threads=threads, scale_dtype=scale_dtype,
                          zero_point=zero_point, column_scaling=column_scaling)
    raw, scales, cfg, dname, shape = _quantize_raw(w, cfg)
    arrays = _typed_arrays(raw, cfg)
    if scales is not None:
        arrays["column_scales"] = scales
    return QuantizedTensor._from_core(arrays, shape, cfg, dname)


def _quantize_raw(w: Any, cfg: QuantConfig):
    """The C quantizer on w: (its dict, column scales or None, the resolved config, dtype name, shape)."""
    w2, dname, shape = as_weight_matrix(w)
    cfg = cfg.resolved(w2.shape[0])
    scales, mul = _column_scaling(w2, dname, cfg)
    return _core.quantize(w2, _DTYPE_CODE[dname], cfg.core_tuple(), mul), scales, cfg, dname, shape


def quantize_diagnostics(w: Any, config: Optional[QuantConfig] = None) -> dict:
    """What the C quantizer did on w (nothing is kept): `passes` over the matrix (tensor scope: 1 when
    the sampled threshold let it quantize each row as it was read, 2 when it fell back to a
    candidate pass then a quantize pass) and `fixed_groups`, the groups quantized a second time
    because the sampled estimate put one of their weights on the wrong side of the exact threshold."""
    raw = _quantize_raw(w, _resolve_config(config))[0]
    return {"passes": raw["_passes"], "fixed_groups": raw["_fixed_groups"], "groups": raw["scales"].size}


def _column_scaling(w2: np.ndarray, dname: str, cfg: QuantConfig):
    """(column scales, the float32 factors the C core multiplies columns by), or (None, None)."""
    if cfg.column_scaling == "none":
        return None, None
    bits, mul = _core.column_scales(w2, _DTYPE_CODE[dname], cfg.threads or default_threads())
    return bits.view(ml_dtypes.bfloat16), mul  # (columns.scales_from_means and multipliers, in C)


def _typed_arrays(raw: dict, cfg: QuantConfig) -> dict:
    """The core returns 16-bit floats as uint16 bits: give them their dtype. (Its "_" entries are
    diagnostics, not stored arrays.)"""
    sdt = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[cfg.scale_dtype]
    out = {}
    for k, v in raw.items():
        if k.startswith("_"):
            continue
        if k in ("scales", "zeros", "outlier_scales", "outlier_zeros") and cfg.scale_dtype != "float32":
            v = v.view(sdt)
        elif k == "outlier_values":
            v = v.view(np.float16)
        out[k] = v
    return out


def dequantize(qt: QuantizedTensor, dtype: Union[None, str, np.dtype] = None,
               threads: Optional[int] = None) -> np.ndarray:
    """w_hat of a QuantizedTensor (float32 by default; dtype="input" for the input's dtype)."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"dequantize expects a QuantizedTensor, got {type(qt).__name__}")
    return qt.dequantize(dtype=dtype, threads=threads)


def outlier_mask(w: Any, outlier_ratio: float = _UNSET, outlier_scope: str = _UNSET, group_size: int = _UNSET,
                 gamma: float = _UNSET, lam: Optional[float] = _UNSET, threads: Optional[int] = _UNSET,
                 column_scaling: str = _UNSET, config: Optional[QuantConfig] = None) -> np.ndarray:
    """The outlier set O that quantize would use, as a bool array of w's shape (computed in C)."""
    cfg = _resolve_config(config, outlier_ratio=outlier_ratio, outlier_scope=outlier_scope,
                          group_size=group_size, gamma=gamma, lam=lam, threads=threads,
                          column_scaling=column_scaling)
    w2, dname, shape = as_weight_matrix(w)
    cfg = cfg.resolved(w2.shape[0])
    _, mul = _column_scaling(w2, dname, cfg)
    return _core.outlier_mask(w2, _DTYPE_CODE[dname], cfg.core_tuple(), mul).reshape(shape)


def soft_threshold(w: Any, outlier_ratio: float = _UNSET, outlier_scope: str = _UNSET, group_size: int = _UNSET,
                   gamma: float = _UNSET, lam: Optional[float] = _UNSET, column_scaling: str = _UNSET,
                   config: Optional[QuantConfig] = None, return_mask: bool = False):
    """The Adaptive-LASSO estimate b (DESIGN.md 2.1), float32 of w's shape.

    b_i = sign(w_i) * max(|w_i| - lambda' / |w_i|^gamma, 0) for i in O, 0 elsewhere, where O is
    exactly the outlier set quantize uses and lambda' = t^(1+gamma) per scope:
      - lambda solved (lam=None): t = the largest |w| of the scope that is not an outlier (the
        smallest lambda' giving O; an outlier tied with t gets b = 0);
      - explicit lam: t = scale * (lam/2)^(1/(1+gamma)), scale = lower median of the scope's
        nonzero |w|.
    With config.column_scaling, all of this is computed for W' = w / c (the matrix quantize
    selects outliers in) and b is returned times c, in w's units.
    With return_mask=True returns (b, mask).
    """
    cfg = _resolve_config(config, outlier_ratio=outlier_ratio, outlier_scope=outlier_scope,
                          group_size=group_size, gamma=gamma, lam=lam, column_scaling=column_scaling)
    w2, dname, shape = as_weight_matrix(w)
    cfg = cfg.resolved(w2.shape[0])
    scales, mul = _column_scaling(w2, dname, cfg)
    mask = _core.outlier_mask(w2, _DTYPE_CODE[dname], cfg.core_tuple(), mul)
    wf = _to_float32(w2, dname)
    if mul is not None:
        wf = wf * mul[None, :]
    wf = wf.astype(np.float64)
    a = np.abs(wf)
    t = _scope_thresholds(a, mask, cfg)
    with np.errstate(divide="ignore", invalid="ignore"):
        shrunk = a - np.power(t, 1.0 + cfg.gamma) / np.power(a, cfg.gamma)
    b = np.where(mask, np.sign(wf) * np.maximum(shrunk, 0.0), 0.0)
    if scales is not None:
        b = b * np.asarray(scales, dtype=np.float64)[None, :]
    b = b.astype(np.float32).reshape(shape)
    return (b, mask.reshape(shape)) if return_mask else b


def _to_float32(w2: np.ndarray, dname: str) -> np.ndarray:
    if dname == "float32":
        return w2
    return w2.view(np.float16 if dname == "float16" else ml_dtypes.bfloat16).astype(np.float32)


def _lower_median_nonzero(a: np.ndarray, axis: int) -> np.ndarray:
    """Lower median of the nonzero entries along axis (0 where all are zero)."""
    s = np.sort(a, axis=axis)
    nnz = np.count_nonzero(a, axis=axis)
    idx = (a.shape[axis] - nnz) + np.maximum(nnz - 1, 0) // 2
    med = np.take_along_axis(s, np.expand_dims(idx, axis), axis=axis).squeeze(axis)
    return np.where(nnz > 0, med, 0.0)


def _scope_thresholds(a: np.ndarray, mask: np.ndarray, cfg: QuantConfig) -> np.ndarray:
    """t per element (broadcast from its scope), for soft_threshold."""
    c = math.pow(cfg.lam * 0.5, 1.0 / (1.0 + cfg.gamma)) if cfg.lam is not None else None
    if cfg.outlier_scope == "tensor":
        if c is not None:
            return np.full_like(a, float(_lower_median_nonzero(a.reshape(1, -1), 1)[0]) * c)
        inl = a[~mask]
        return np.full_like(a, float(inl.max()) if inl.size else 0.0)
    lay = layout_of(a.shape[0], a.shape[1], cfg)
    pad = lay.groups_per_row * lay.group_size - lay.cols
    ap = np.pad(a, ((0, 0), (0, pad))).reshape(lay.rows, lay.groups_per_row, lay.group_size)
    if c is not None:
        tg = _lower_median_nonzero(ap, 2) * c
    else:
        mp = np.pad(mask, ((0, 0), (0, pad))).reshape(ap.shape)
        tg = np.where(mp, 0.0, ap).max(axis=2)
    return np.repeat(tg, lay.group_size, axis=1)[:, : lay.cols]
