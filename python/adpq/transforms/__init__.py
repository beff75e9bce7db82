"""Function-preserving weight transforms before quantization (docs/DESIGN.md 1.2, 2.8).

    res = adpq.transforms.cafeq_pair(w_v, w_o, adpq.transforms.Heads(9, 3, 64), config, adpq.CafeqConfig())

CafeQ (arXiv 2511.19705) on an attention layer's (v_proj, o_proj): a learned invertible transform per
KV head, folded into both weights, then paired rounding of the two. Weights in, weights out: NumPy
and adpq.core only.
"""
from .cafeq import PairResult, cafeq_pair, learn_transform
from .paired_rounding import pair_error, paired_round
from .vo_transform import Heads, apply_transform, initial_transform, optimize_transform

__all__ = ["Heads", "PairResult", "cafeq_pair", "learn_transform", "pair_error", "paired_round", "apply_transform",
           "initial_transform", "optimize_transform"]
