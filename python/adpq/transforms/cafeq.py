"""CafeQ on one attention layer's (v_proj, o_proj): the learned transform, then paired rounding
(docs/DESIGN.md 2.8; adpq.transforms.vo_transform and .paired_rounding)."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..core.arrays import as_weight_matrix, to_float32
from ..core.config import CafeqConfig, GptqConfig, QuantConfig
from ..core.quantize import quantize
from ..core.quantized import QuantizedTensor
from .paired_rounding import pair_error, paired_round
from .vo_transform import Heads, apply_transform, initial_transform, optimize_transform


@dataclasses.dataclass
class PairResult:
    """CafeQ's output for one layer. wv/wo/bias: the transformed float pair (float32; the float model
    with them in place of the originals computes the same function); qv/qo: their quantization."""

    qv: QuantizedTensor
    qo: QuantizedTensor
    wv: np.ndarray
    wo: np.ndarray
    bias: Optional[np.ndarray]
    transform: np.ndarray          # M, (n_kv_heads, head_dim, head_dim) float64
    stats: Dict[str, float]


def learn_transform(wv: np.ndarray, wo: np.ndarray, heads: Heads, config: QuantConfig, cafeq: CafeqConfig,
                    key: int = 0, threads: Optional[int] = None, input_scale: Optional[np.ndarray] = None,
                    output_scale: Optional[np.ndarray] = None):
    """(M, stats) for float64 W_v, W_o quantized with config (its group size and symmetry shape the
    proxy): what cafeq_pair and adpq.calibrate(..., cafeq=) both fold in.

    The proxy stands in for the quantized pair's error; where the learned M leaves the plainly
    quantized pair worse than M = I does, M = I is returned (stats["identity"] = 1).
    stats: the proxy at M's start and end, error_plain and error_transformed (the pair error of each
    matrix quantized on its own, without and with M)."""
    rcfg = config.resolved(wv.shape[0])
    m, stats = optimize_transform(wv, wo, heads, rcfg.group_size, rcfg.symmetric, cafeq, key, input_scale,
                                  output_scale)
    run = config if threads is None else config.replace(threads=threads)
    err_plain = _plain_error(wv, wo, heads, run, threads, input_scale, output_scale)
    if cafeq.steps == 0 and cafeq.init == "identity":  # (M = I: nothing to compare)
        return m, {**stats, "error_plain": err_plain, "error_transformed": err_plain, "identity": 0.0}
    wv_t, wo_t, _ = apply_transform(m, wv, wo, heads)
    err_t = _plain_error(wv_t, wo_t, heads, run, threads, input_scale, output_scale)
    identity = err_t > err_plain
    if identity:
        m, err_t = initial_transform(heads, "identity", 0), err_plain
        stats["proxy"] = 1.0  # (the proxy at M = I, relative to the untransformed pair)
    return m, {**stats, "error_plain": err_plain, "error_transformed": err_t, "identity": float(identity)}


def cafeq_pair(w_v: Any, w_o: Any, heads: Heads, config: Optional[QuantConfig] = None,
               cafeq: Optional[CafeqConfig] = None, bias: Any = None, key: int = 0,
               threads: Optional[int] = None, hessians: Optional[Tuple[Any, Any]] = None,
               gptq: Optional[GptqConfig] = None, input_scale: Any = None, output_scale: Any = None) -> PairResult:
    """CafeQ on W_v (n_kv_heads * head_dim, in) and W_o (out, n_heads * head_dim), quantized with
    config (outlier_ratio 0: CafeQ alone; AdpQ's outliers and column scales otherwise).

    bias: v_proj's bias, transformed with W_v (o_proj's is unchanged). key: a number that tells
    layers apart (the layer index): M's random start is seeded by (cafeq.seed, key).
    input_scale: the scale of W_v's inputs per column, e.g. the RMSNorm weight in front of the
    attention (adpq.io.cafeq_pairs finds it): every error and the proxy weigh W_v's column l by it,
    || (W_o W_v - Ŵ_o Ŵ_v) diag(input_scale) ||_F. None: 1. output_scale: the same for W_o's output
    rows, e.g. a norm applied to the attention's output (Gemma's post-attention norm).
    hessians: (H_v, H_o), calibration Hessians of the *transformed* layer's inputs (adpq.calibrate
    with cafeq): each matrix is then rounded by GPTQ with its Hessian (gptq: its options) instead of
    the data-free paired rounding.
    stats: pair errors (relative, adpq.transforms.pair_error) of the plain quantization of the
    untransformed pair ("error_plain"), of the transformed pair ("error_transformed") and of the
    result ("error"); the proxy relative to the untransformed pair at M's start and end;
    "identity" 1.0 where the learned M was dropped (learn_transform); seconds.
    """
    cfg = config if config is not None else QuantConfig()
    caf = cafeq if cafeq is not None else CafeqConfig()
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(cfg).__name__}")
    if not isinstance(caf, CafeqConfig):
        raise TypeError(f"cafeq must be a CafeqConfig, got {type(caf).__name__}")
    if not isinstance(heads, Heads):
        raise TypeError(f"heads must be an adpq.transforms.Heads, got {type(heads).__name__}")
    t0 = time.perf_counter()
    v2, vdt, _ = as_weight_matrix(w_v)
    o2, odt, _ = as_weight_matrix(w_o)
    if v2.ndim != 2 or o2.ndim != 2 or np.ndim(w_v) != 2 or np.ndim(w_o) != 2:
        raise ValueError("w_v and w_o must be 2-D weight matrices")
    heads.check(v2.shape, o2.shape)
    wv = to_float32(v2, vdt).astype(np.float64)
    wo = to_float32(o2, odt).astype(np.float64)
    b = _finite_vector(bias, v2.shape[0], "bias")
    for name, w in (("w_v", wv), ("w_o", wo)):
        if not np.isfinite(w).all():
            raise ValueError(f"{name} has a NaN or Inf")
    sc = _finite_vector(input_scale, v2.shape[1], "input_scale")
    so = _finite_vector(output_scale, o2.shape[0], "output_scale")
    if hessians is not None and (len(hessians) != 2 or any(h is None for h in hessians)):
        raise ValueError("hessians must be a pair (H_v, H_o)")
    run = cfg if threads is None else cfg.replace(threads=threads)
    m, tstats = learn_transform(wv, wo, heads, cfg, caf, key, threads, sc, so)
    wv_t, wo_t, b_t = apply_transform(m, wv, wo, heads, b)
    t_transform = time.perf_counter() - t0
    if hessians is None:
        qv, qo, errors = paired_round(wv_t, wo_t, heads, cfg, caf, threads, dtype=vdt, input_scale=sc,
                                      output_scale=so)
    else:
        v32, o32 = wv_t.astype(np.float32), wo_t.astype(np.float32)
        qv = quantize(v32, config=run, hessian=hessians[0], gptq=gptq)
        qo = quantize(o32, config=run, hessian=hessians[1], gptq=gptq)
        errors = [tstats["error_transformed"],
                  pair_error(wv_t, wo_t, qv.dequantize(dtype="float32", threads=threads),
                             qo.dequantize(dtype="float32", threads=threads), heads, sc, so)]
        qv = QuantizedTensor(qv.arrays(), qv.shape, qv.config, vdt)
    if qo.dtype != odt:
        qo = QuantizedTensor(qo.arrays(), qo.shape, qo.config, odt)
    stats = {**tstats, "error": errors[-1], "seconds_transform": t_transform,
             "seconds": time.perf_counter() - t0}
    return PairResult(qv, qo, wv_t.astype(np.float32), wo_t.astype(np.float32),
                      None if b_t is None else b_t.astype(np.float32), m, stats)


def _plain_error(wv: np.ndarray, wo: np.ndarray, heads: Heads, config: QuantConfig, threads: Optional[int],
                 input_scale: Optional[np.ndarray] = None, output_scale: Optional[np.ndarray] = None) -> float:
    """The pair error of W_v and W_o each quantized on its own."""
    hat = [quantize(w.astype(np.float32), config=config).dequantize(dtype="float32", threads=threads) for w in (wv, wo)]
    return pair_error(wv, wo, hat[0], hat[1], heads, input_scale, output_scale)


def _finite_vector(x: Any, n: int, name: str) -> Optional[np.ndarray]:
    if x is None:
        return None
    a = np.asarray(x, dtype=np.float64)
    if a.shape != (n,) or not np.isfinite(a).all():
        raise ValueError(f"{name} must be a finite vector of {n} values, got shape {a.shape}")
    return a
