"""The notebook API: quantize, dequantize, outlier_mask, soft_threshold."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import numpy as np

from .. import _core
from . import dtypes, thresholds
from .arrays import as_weight_matrix, to_float32
from .config import GptqConfig, QuantConfig, useful_threads
from .gptq import refine
from .layout import layout_of
from .quantized import QuantizedTensor


class _Default:
    """A keyword left out: help() shows QuantConfig's default, and `config` (if given) supplies the value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


_D = {f.name: _Default(f.default) for f in dataclasses.fields(QuantConfig)}

# quantize's one_pass -> the C core's route (csrc/adpq.h adpq_route)
ONE_PASS = {"auto": "auto", "always": "one_pass", "never": "two_pass"}


def _route(one_pass: str) -> str:
    if not isinstance(one_pass, str) or one_pass not in ONE_PASS:
        raise ValueError(f"one_pass must be one of {tuple(ONE_PASS)}, got {one_pass!r}")
    return ONE_PASS[one_pass]


def _resolve_config(config: Optional[QuantConfig], **params: Any) -> QuantConfig:
    if config is not None and not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    base = config if config is not None else QuantConfig()
    changes = {k: v for k, v in params.items() if not isinstance(v, _Default)}
    return base.replace(**changes) if changes else base


def quantize(w: Any, bits: int = _D["bits"], group_size: int = _D["group_size"],
             outlier_ratio: float = _D["outlier_ratio"], outlier_scope: str = _D["outlier_scope"],
             gamma: float = _D["gamma"], lam: Optional[float] = _D["lam"], symmetric: bool = _D["symmetric"],
             outlier_format: str = _D["outlier_format"], threads: Optional[int] = _D["threads"],
             scale_dtype: str = _D["scale_dtype"], zero_point: str = _D["zero_point"],
             column_scaling: str = _D["column_scaling"],
             config: Optional[QuantConfig] = None, one_pass: str = "auto", hessian: Any = None,
             gptq: Optional[GptqConfig] = None) -> QuantizedTensor:
    """Quantizes a 1-D or 2-D float array with AdpQ (and refines it with GPTQ when given a Hessian).

    w: a NumPy array or a CPU torch tensor of float32, float16 or bfloat16 (float64 is converted to
    float32), read in place where its layout allows.
    The defaults shown are QuantConfig()'s; `config` gives every parameter at once, and keyword
    arguments override it. See QuantConfig for their meaning.
    one_pass: how a tensor-scope threshold with a solved lambda is found; the result is the same bit
    for bit, only the speed differs. "auto": one pass over column-scaled matrices of at least 24 MiB
    (a sampled threshold, the few groups it got wrong quantized again), else two passes; "always":
    one pass whenever the matrix is large enough to be sampled; "never": two passes.
    hessian: H = X^T X of the layer's calibration inputs X (in_features x in_features; any positive
    multiple): AdpQ's result is then the start of GPTQ (docs/DESIGN.md 2.7), which keeps its outliers,
    column scales and (gptq.grids="fixed") group grids and re-rounds the codes to lower the output
    error ||(W - W_hat) X^T||; same arrays, same bits per weight. None: AdpQ alone.
    gptq: the GPTQ options (GptqConfig; default GptqConfig()), only with a hessian.
    The C core runs multi-threaded with the GIL released.
    """
    cfg = _resolve_config(config, bits=bits, group_size=group_size, outlier_ratio=outlier_ratio,
                          outlier_scope=outlier_scope, gamma=gamma, lam=lam, symmetric=symmetric,
                          outlier_format=outlier_format, threads=threads, scale_dtype=scale_dtype,
                          zero_point=zero_point, column_scaling=column_scaling)
    if hessian is None and gptq is not None:
        raise ValueError("gptq options need a hessian (adpq.quantize(w, hessian=H, gptq=...))")
    raw, scales, cfg, dname, shape = _quantize_raw(w, cfg, one_pass)
    arrays = _typed_arrays(raw, cfg)
    if scales is not None:
        arrays["column_scales"] = scales
    qt = QuantizedTensor._from_core(arrays, shape, cfg, dname)
    if hessian is not None:
        qt = refine(w, qt, hessian, gptq)
    return qt


def _quantize_raw(w: Any, cfg: QuantConfig, one_pass: str = "auto"):
    """The C quantizer on w: (its dict, column scales or None, the resolved config, dtype name, shape)."""
    route = _route(one_pass)
    w2, dname, shape = as_weight_matrix(w)
    cfg = cfg.resolved(w2.shape[0])
    scales, mul = _column_scaling(w2, dname, cfg)
    raw = _core.quantize(w2, dtypes.C_CODE[dname], cfg.core_config(), mul, route=route)
    return raw, scales, cfg, dname, shape


def quantize_diagnostics(w: Any, config: Optional[QuantConfig] = None, one_pass: str = "auto") -> dict:
    """What the C quantizer did on w (nothing is kept): `passes` over the matrix (tensor scope: 1 when
    the sampled threshold let it quantize each row as it was read, 2 when it took a candidate pass
    then a quantize pass) and `fixed_groups`, the groups quantized a second time because the sampled
    estimate put one of their weights on the wrong side of the exact threshold. one_pass: as quantize's."""
    raw = _quantize_raw(w, _resolve_config(config), one_pass)[0]
    return {"passes": raw["_passes"], "fixed_groups": raw["_fixed_groups"], "groups": raw["scales"].size}


def _column_scaling(w2: np.ndarray, dname: str, cfg: QuantConfig):
    """(column scales, the float32 factors the C core multiplies columns by), or (None, None)."""
    if cfg.column_scaling == "none":
        return None, None
    bits, mul = _core.column_scales(w2, dtypes.C_CODE[dname], useful_threads(cfg.threads))
    return bits.view(dtypes.NUMPY["bfloat16"]), mul  # (reference.columns' scales and multipliers, in C)


def _typed_arrays(raw: dict, cfg: QuantConfig) -> dict:
    """The core returns 16-bit floats as uint16 bits: give them their dtype. (Its "_" entries are
    diagnostics, not stored arrays.)"""
    sdt = dtypes.NUMPY[cfg.scale_dtype]
    out = {}
    for k, v in raw.items():
        if k.startswith("_"):
            continue
        if k in ("scales", "zeros", "outlier_scales", "outlier_zeros") and cfg.scale_dtype != "float32":
            v = v.view(sdt)
        elif k == "outlier_values":
            v = v.view(dtypes.NUMPY["float16"])
        out[k] = v
    return out


def dequantize(qt: QuantizedTensor, dtype: Union[None, str, np.dtype] = None,
               threads: Optional[int] = None) -> np.ndarray:
    """w_hat of a QuantizedTensor (float32 by default; dtype="input" for the input's dtype)."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"dequantize expects a QuantizedTensor, got {type(qt).__name__}")
    return qt.dequantize(dtype=dtype, threads=threads)


def outlier_mask(w: Any, outlier_ratio: float = _D["outlier_ratio"], outlier_scope: str = _D["outlier_scope"],
                 group_size: int = _D["group_size"], gamma: float = _D["gamma"], lam: Optional[float] = _D["lam"],
                 threads: Optional[int] = _D["threads"], column_scaling: str = _D["column_scaling"],
                 config: Optional[QuantConfig] = None) -> np.ndarray:
    """The outlier set O that quantize would use, as a bool array of w's shape (computed in C)."""
    cfg = _resolve_config(config, outlier_ratio=outlier_ratio, outlier_scope=outlier_scope,
                          group_size=group_size, gamma=gamma, lam=lam, threads=threads,
                          column_scaling=column_scaling)
    w2, dname, shape = as_weight_matrix(w)
    cfg = cfg.resolved(w2.shape[0])
    _, mul = _column_scaling(w2, dname, cfg)
    return _core.outlier_mask(w2, dtypes.C_CODE[dname], cfg.core_config(), mul).reshape(shape)


def soft_threshold(w: Any, outlier_ratio: float = _D["outlier_ratio"], outlier_scope: str = _D["outlier_scope"],
                   group_size: int = _D["group_size"], gamma: float = _D["gamma"], lam: Optional[float] = _D["lam"],
                   column_scaling: str = _D["column_scaling"],
                   config: Optional[QuantConfig] = None, return_mask: bool = False):
    """The Adaptive-LASSO estimate b (docs/DESIGN.md 2.1), float32 of w's shape.

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
    mask = _core.outlier_mask(w2, dtypes.C_CODE[dname], cfg.core_config(), mul)
    wf = to_float32(w2, dname)
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


def _scope_thresholds(a: np.ndarray, mask: np.ndarray, cfg: QuantConfig) -> np.ndarray:
    """t per element (broadcast from its scope), for soft_threshold."""
    c = thresholds.lam_factor(cfg.lam, cfg.gamma) if cfg.lam is not None else None
    if cfg.outlier_scope == "tensor":
        if c is not None:
            return np.full_like(a, float(thresholds.lower_median_nonzero(a.reshape(1, -1), 1)[0][0]) * c)
        inl = a[~mask]
        return np.full_like(a, float(inl.max()) if inl.size else 0.0)
    lay = layout_of(a.shape[0], a.shape[1], cfg)
    pad = lay.groups_per_row * lay.group_size - lay.cols
    ap = np.pad(a, ((0, 0), (0, pad))).reshape(lay.rows, lay.groups_per_row, lay.group_size)
    if c is not None:
        tg = thresholds.lower_median_nonzero(ap, 2)[0] * c
    else:
        mp = np.pad(mask, ((0, 0), (0, pad))).reshape(ap.shape)
        tg = np.where(mp, 0.0, ap).max(axis=2)
    return np.repeat(tg, lay.group_size, axis=1)[:, : lay.cols]
