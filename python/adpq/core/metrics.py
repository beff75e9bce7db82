"""Per-tensor error metrics (docs/DESIGN.md 2.5), from sums the C core computes in one pass."""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import numpy as np

from .. import _core
from . import dtypes
from .arrays import as_array, as_weight_matrix
from .config import check_int, useful_threads
from .quantized import QuantizedTensor

KL_BINS = 256
KL_EPS = 1e-10
MAX_KL_BINS = 1 << 16  # (the C core keeps a histogram per task: bins are bounded before it allocates)


def kl_divergence(w: Any, w_hat: Any, bins: int = KL_BINS) -> float:
    """KL(P_w || P_w_hat) between histograms of the two weight sets.

    Binning: `bins` equal-width bins over [min, max] of w and w_hat together; a value's bin is
    floor((x - min) * bins / (max - min)), the maximum in the last bin. Each histogram is normalised,
    KL_EPS is added to every bin and they are normalised again (adpq.reference.kl_from_histograms).
    """
    return metrics(w, w_hat, kl_bins=bins)["kl_divergence"]


def metrics(w: Any, w_hat: Union[np.ndarray, QuantizedTensor], kl_bins: int = KL_BINS,
            threads: Optional[int] = None) -> Dict[str, float]:
    """MSE, relative Frobenius error, SQNR (dB), max abs error and histogram KL divergence of w_hat
    against w (sums in float64). If w_hat is a QuantizedTensor it is dequantized (row by row, in C,
    without storing w_hat), and its outlier count and bits per weight are reported too."""
    qt = w_hat if isinstance(w_hat, QuantizedTensor) else None
    kl_bins = check_int(kl_bins, "kl_bins", 1, MAX_KL_BINS)
    nthreads = useful_threads(threads)
    w2, dname, shape = as_weight_matrix(w, "w")
    if qt is not None:
        if qt.shape != shape:
            raise ValueError(f"w has shape {shape} but the QuantizedTensor has shape {qt.shape}")
        # dequantized row by row inside the C core: w_hat is never stored whole
        s = _core.error_stats(w2, dtypes.C_CODE[dname], None, kl_bins, nthreads,
                              quantized=qt._dequantize_kwargs(nthreads), kl_eps=KL_EPS)
    else:
        hat_arr = as_array(w_hat, "w_hat")
        if hat_arr.shape != shape:
            raise ValueError(f"w has shape {shape} but w_hat has shape {hat_arr.shape}")
        as_weight_matrix(hat_arr, "w_hat")  # the same dtype and shape checks as w
        hat = np.ascontiguousarray(hat_arr, dtype=np.float32).reshape(w2.shape)  # no copy when float32
        s = _core.error_stats(w2, dtypes.C_CODE[dname], hat, kl_bins, nthreads, kl_eps=KL_EPS)
    n = w2.shape[0] * w2.shape[1]
    sq, ref = s["sum_sq_err"], s["sum_sq_ref"]
    out = {
        "mse": sq / n,
        "rel_fro_error": float(np.sqrt(sq / ref)) if ref > 0 else (0.0 if sq == 0 else float("inf")),
        "sqnr_db": float(10 * np.log10(ref / sq)) if sq > 0 else float("inf"),
        "max_abs_error": s["max_abs_err"],
        "kl_divergence": s["kl_divergence"],
    }
    if qt is not None:
        out["num_outliers"] = float(qt.num_outliers)
        out["bits_per_weight"] = qt.bits_per_weight
    return out
