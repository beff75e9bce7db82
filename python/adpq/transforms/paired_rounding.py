"""CafeQ's paired adaptive rounding of a (W_v, W_o) pair (docs/DESIGN.md 2.8; the paper's Algorithm 1).

The pair only acts through the products P_h = W_o[:, h] W_v[g(h)] (one per query head), so the
rounding minimizes E = sum_h || P_h - Ŵ_o[:, h] Ŵ_v[g(h)] ||_F^2, alternating:

  W_o with Ŵ_v fixed: E = sum_h || (T_h - Ŵ_o[:, h]) Ŵ_v[g] ||^2 + const, T_h = P_h Ŵ_v[g]^+
      (the least-squares target, from the pseudo-inverse): each row of W_o is rounded against T
      with error feedback through G_o = blockdiag_h(Ŵ_v[g] Ŵ_v[g]^T), GPTQ's solver with G_o in the
      place of a data Hessian.
  W_v with Ŵ_o fixed: E = || Ô_g (T_g - Ŵ_v[g]) ||^2 + const per KV head, Ô_g the query heads' blocks
      of Ŵ_o stacked, T_g = Ô_g^+ O_g W_v[g]: each column of W_v is rounded against T with feedback
      through G_v = blockdiag_g(Ô_g^T Ô_g) (adpq.core.gptq.refine_rows).

Both keep the plain quantization's grids, outlier sets and column scales: the bits do not change.
A half-pass is kept only if it lowers E. No data: the Gram matrices are the weights' own.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from ..core.config import CafeqConfig, GptqConfig, QuantConfig
from ..core.gptq import refine, refine_rows
from ..core.quantize import quantize
from ..core.quantized import QuantizedTensor
from .vo_transform import Heads, heads_times

F64 = np.float64


def _blocks(wv: np.ndarray, wo: np.ndarray, heads: Heads):
    """W_v as (n_kv, d, in) and W_o's head blocks stacked per KV head as (n_kv, group * out, d)."""
    n, d, g = heads.n_kv_heads, heads.head_dim, heads.group
    v = np.asarray(wv, F64).reshape(n, d, -1)
    o = np.asarray(wo, F64).reshape(wo.shape[0], n, g, d).transpose(1, 2, 0, 3).reshape(n, g * wo.shape[0], d)
    return v, o


def pair_error(wv: np.ndarray, wo: np.ndarray, wv_hat: np.ndarray, wo_hat: np.ndarray, heads: Heads,
               input_scale: Optional[np.ndarray] = None, output_scale: Optional[np.ndarray] = None) -> float:
    """sqrt(sum_h || R (P_h - P̂_h) S ||_F^2 / sum_h || R P_h S ||_F^2), S = diag(input_scale),
    R = diag(output_scale) (None: I), from d x d Gram matrices (the products themselves are out x in
    per query head)."""
    if input_scale is not None:
        wv, wv_hat = _scaled(wv, input_scale), _scaled(wv_hat, input_scale)
    if output_scale is not None:
        wo, wo_hat = _rows_scaled(wo, output_scale), _rows_scaled(wo_hat, output_scale)
    v, o = _blocks(wv, wo, heads)
    vh, oh = _blocks(wv_hat, wo_hat, heads)

    def tr(a, b):  # sum over KV heads of tr(A B)
        return float((a * b.transpose(0, 2, 1)).sum())

    t = lambda x: x.transpose(0, 2, 1)  # noqa: E731
    pp = tr(t(o) @ o, v @ t(v))
    cross = tr(t(o) @ oh, vh @ t(v))
    hh = tr(t(oh) @ oh, vh @ t(vh))
    return float(np.sqrt(max(pp - 2 * cross + hh, 0.0) / pp)) if pp > 0 else 0.0


def _scaled(w: np.ndarray, input_scale: Optional[np.ndarray]) -> np.ndarray:
    """W_v with its columns scaled by the inputs' scale (W_v S)."""
    w = np.asarray(w, F64)
    return w if input_scale is None else w * np.asarray(input_scale, F64)[None, :]


def _rows_scaled(w: np.ndarray, output_scale: Optional[np.ndarray]) -> np.ndarray:
    """W_o with its rows scaled by the outputs' scale (R W_o)."""
    w = np.asarray(w, F64)
    return w if output_scale is None else w * np.asarray(output_scale, F64)[:, None]


def _block_diagonal(blocks: np.ndarray, repeat: int) -> np.ndarray:
    """blockdiag of blocks (n, d, d), each repeated `repeat` times in a row."""
    n, d, _ = blocks.shape
    out = np.zeros((n * repeat * d, n * repeat * d))
    for i in range(n * repeat):
        out[i * d:(i + 1) * d, i * d:(i + 1) * d] = blocks[i // repeat]
    return out


def _o_target(wv: np.ndarray, wo: np.ndarray, wv_hat: np.ndarray, heads: Heads):
    """(T, G_o): W_o's least-squares target with Ŵ_v fixed, and the Gram its error is weighted by."""
    n, d, g = heads.n_kv_heads, heads.head_dim, heads.group
    v, vh = np.asarray(wv, F64).reshape(n, d, -1), np.asarray(wv_hat, F64).reshape(n, d, -1)
    target = heads_times(wo, v @ np.linalg.pinv(vh), heads)      # T_h = W_o[:, h] (W_v[g] Ŵ_v[g]^+)
    return target, _block_diagonal(vh @ vh.transpose(0, 2, 1), g)


def _v_target(wv: np.ndarray, wo: np.ndarray, wo_hat: np.ndarray, heads: Heads):
    """(T, G_v): W_v's least-squares target with Ŵ_o fixed, and the Gram its error is weighted by."""
    n, d = heads.n_kv_heads, heads.head_dim
    _, o = _blocks(wv, wo, heads)
    _, oh = _blocks(wv, wo_hat, heads)
    k = np.linalg.pinv(oh) @ o                                    # T_g = (Ô_g^+ O_g) W_v[g]
    target = (k @ np.asarray(wv, F64).reshape(n, d, -1)).reshape(wv.shape)
    return target, _block_diagonal(oh.transpose(0, 2, 1) @ oh, 1)


def paired_round(wv: np.ndarray, wo: np.ndarray, heads: Heads, config: QuantConfig, cafeq: CafeqConfig,
                 threads: Optional[int] = None, dtype: str = "float32", input_scale: Optional[np.ndarray] = None,
                 output_scale: Optional[np.ndarray] = None) -> Tuple[QuantizedTensor, QuantizedTensor, List[float]]:
    """(Ŵ_v, Ŵ_o, pair errors): the pair quantized with config, then cafeq.rounds alternating passes.

    input_scale: the scale of W_v's inputs per column (e.g. the RMSNorm weight before it): errors are
    || (P - P̂) diag(input_scale) ||. W_o's target and Gram then come from Ŵ_v S; W_v's rounding is
    per column, which a column weight does not change. output_scale (e.g. a norm after o_proj, as
    Gemma's post-attention norm): errors are || R (P - P̂) S ||; W_v's target and Gram come from R Ô,
    W_o's rounding is per row, which a row weight does not change.

    errors[0] is the plain quantization's pair error, then one entry per half-pass (the error kept).
    dtype: the QuantizedTensors' dequantize dtype (the source checkpoint's, not the float64 of wv/wo).
    """
    heads.check(wv.shape, wo.shape)
    wv32, wo32 = np.asarray(wv, np.float32), np.asarray(wo, np.float32)
    cfg = config if threads is None else config.replace(threads=threads)
    qv0, qo0 = quantize(wv32, config=cfg), quantize(wo32, config=cfg)
    qv, qo = qv0, qo0
    deq = lambda q: q.dequantize(dtype="float32", threads=threads)  # noqa: E731
    v_hat, o_hat = deq(qv), deq(qo)
    err = lambda v_, o_: pair_error(wv, wo, v_, o_, heads, input_scale, output_scale)  # noqa: E731
    errors = [err(v_hat, o_hat)]
    gptq = GptqConfig(damp=cafeq.damp, act_order=True, grids="fixed")
    for _ in range(cafeq.rounds):
        if not (v_hat.any() and o_hat.any()):
            break  # (a partner rounded to zero weighs nothing: there is no product to fit)
        target, gram = _o_target(_scaled(wv, input_scale), wo, _scaled(v_hat, input_scale), heads)
        cand = refine(target, qo0, gram, gptq, threads=threads)
        c_hat = deq(cand)
        e = err(v_hat, c_hat)
        if e < errors[-1]:
            qo, o_hat = cand, c_hat
        errors.append(min(e, errors[-1]))
        target, gram = _v_target(wv, _rows_scaled(wo, output_scale), _rows_scaled(o_hat, output_scale), heads)
        cand = refine_rows(target, qv0, gram, damp=cafeq.damp, threads=threads)
        c_hat = deq(cand)
        e = err(c_hat, o_hat)
        if e < errors[-1]:
            qv, v_hat = cand, c_hat
        errors.append(min(e, errors[-1]))
    relabel = lambda q: q if q.dtype == dtype else QuantizedTensor(q.arrays(), q.shape, q.config, dtype)  # noqa: E731
    return relabel(qv), relabel(qo), errors
