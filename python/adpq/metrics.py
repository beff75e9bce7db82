"""Per-tensor error metrics (DESIGN.md 2.5)."""
from __future__ import annotations

from typing import Any, Dict, Union

import ml_dtypes
import numpy as np

from .core import as_weight_matrix
from .quantized import QuantizedTensor

KL_BINS = 256


def _float64(x: Any, name: str) -> np.ndarray:
    w2, dname, shape = as_weight_matrix(x, name)
    if dname != "float32":
        w2 = w2.view(np.float16 if dname == "float16" else ml_dtypes.bfloat16)
    return w2.astype(np.float64).reshape(shape)


def _uniform_histogram(x: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts per bin, bin = floor((x - lo) / (hi - lo) * bins), the maximum in the last bin."""
    idx = ((x - lo) * (bins / (hi - lo))).astype(np.int64)
    np.clip(idx, 0, bins - 1, out=idx)
    return np.bincount(idx, minlength=bins)


def kl_divergence(w: np.ndarray, w_hat: np.ndarray, bins: int = KL_BINS, eps: float = 1e-10) -> float:
    """KL(P_w || P_w_hat) in nats between histograms of the two weight sets.

    Binning: `bins` equal-width bins over [min, max] of w and w_hat together (a value's bin is
    floor((x - min) / (max - min) * bins), the maximum in the last bin); each histogram is
    normalised to a distribution, eps is added to every bin and it is renormalised (so empty bins
    of w_hat stay finite).
    """
    lo = float(min(w.min(), w_hat.min()))
    hi = float(max(w.max(), w_hat.max()))
    if hi <= lo:
        return 0.0
    p = _uniform_histogram(w, lo, hi, bins)
    q = _uniform_histogram(w_hat, lo, hi, bins)
    p = p / p.sum() + eps
    q = q / q.sum() + eps
    p /= p.sum()
    q /= q.sum()
    return float(np.sum(p * np.log(p / q)))


def metrics(w: Any, w_hat: Union[np.ndarray, QuantizedTensor], kl_bins: int = KL_BINS) -> Dict[str, float]:
    """MSE, relative Frobenius error, SQNR (dB), max abs error and histogram KL divergence of w_hat
    against w. If w_hat is a QuantizedTensor it is dequantized, and its outlier count and bits per
    weight are reported too."""
    qt = w_hat if isinstance(w_hat, QuantizedTensor) else None
    a = _float64(w, "w")
    b = qt.dequantize().astype(np.float64) if qt is not None else _float64(w_hat, "w_hat")
    if a.shape != b.shape:
        raise ValueError(f"w has shape {a.shape} but w_hat has shape {b.shape}")
    err = a - b
    sq = float(np.sum(err * err))
    ref = float(np.sum(a * a))
    out = {
        "mse": sq / a.size,
        "rel_fro_error": float(np.sqrt(sq / ref)) if ref > 0 else (0.0 if sq == 0 else float("inf")),
        "sqnr_db": float(10 * np.log10(ref / sq)) if sq > 0 else float("inf"),
        "max_abs_error": float(np.max(np.abs(err))),
        "kl_divergence": kl_divergence(a.ravel(), b.ravel(), bins=kl_bins),
    }
    if qt is not None:
        out["num_outliers"] = float(qt.num_outliers)
        out["bits_per_weight"] = qt.bits_per_weight
    return out
