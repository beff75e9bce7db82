"""Mirror of csrc/metrics.c's KL divergence (adpq_kl_from_histograms)."""
from __future__ import annotations

import numpy as np


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
