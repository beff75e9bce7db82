"""The stored arrays of a quantized matrix (docs/FORMAT.md) dequantized with torch operations.

The fallback of AdpqLinear on devices the C kernel does not run on (and under autograd): the same
arithmetic as adpq.dequantize in float32 (w_hat = (q - z) * s, outliers, then column scales), so
that the result equals the C core's bit for bit on CPU.
"""
from __future__ import annotations

from typing import Dict

import torch

from ..core.config import QuantConfig
from ..core.layout import Layout

# torch dtype holding each stored scale dtype (16-bit floats are stored in torch as themselves)
SCALE_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def unpack_bits(stream: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """n values of `bits` bits from a little-endian bit stream of uint8 (value i at bits [i*b, i*b+b)),
    as int64."""
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=stream.device)
    planes = (stream.to(torch.int64).unsqueeze(1) >> torch.arange(8, device=stream.device)) & 1
    planes = planes.reshape(-1)[: n * bits].reshape(n, bits)
    return (planes << torch.arange(bits, device=stream.device)).sum(dim=1)


def unpack_codes(codes: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """n codes of bits in {2, 3, 4, 8}: every 8 codes are `bits` whole bytes, so whole words are
    shifted instead of single bits."""
    nblocks = -(-n // 8)
    raw = codes.to(torch.int64)
    pad = nblocks * bits - raw.numel()
    if pad > 0:
        raw = torch.cat([raw, raw.new_zeros(pad)])
    words = (raw[: nblocks * bits].reshape(nblocks, bits) << (8 * torch.arange(bits, device=codes.device))).sum(1)
    shifts = bits * torch.arange(8, device=codes.device)
    return ((words.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


def dequantize(arrays: Dict[str, torch.Tensor], lay: Layout, cfg: QuantConfig) -> torch.Tensor:
    """w_hat (rows, cols) in float32 on the arrays' device."""
    rows, cols, g, G = lay.rows, lay.cols, lay.group_size, lay.groups_per_row
    dev = arrays["codes"].device
    q = unpack_codes(arrays["codes"], rows * cols, cfg.bits).to(torch.float32).reshape(rows, cols)
    col = torch.arange(cols, device=dev)
    group_of_col = col // g
    s = _as_float(arrays["scales"]).reshape(rows, G)
    if cfg.symmetric:
        z = torch.full_like(s, float(1 << (cfg.bits - 1)))
    else:
        z = _as_float(arrays["zeros"]).reshape(rows, G)
    w = (q - z[:, group_of_col]) * s[:, group_of_col]
    counts = arrays.get("outlier_counts")
    if counts is not None:
        counts = counts.reshape(-1).to(torch.int64)
        n_out = int(counts.sum())
        if n_out:
            group = torch.repeat_interleave(torch.arange(lay.num_groups, device=dev), counts)
            pos = unpack_bits(arrays["outlier_indices"], n_out, lay.index_bits)
            r, c = group // G, (group % G) * g + pos
            if cfg.outlier_format == "fp16":
                vals = _as_float(arrays["outlier_values"]).reshape(-1)
            else:
                # rank of each outlier's group among the groups that hold outliers
                rank = torch.cumsum((counts > 0).to(torch.int64), 0) - 1
                og = rank[group]
                so = _as_float(arrays["outlier_scales"]).reshape(-1)[og]
                zo = (torch.full_like(so, float(1 << (cfg.bits - 1))) if cfg.symmetric
                      else _as_float(arrays["outlier_zeros"]).reshape(-1)[og])
                vals = (q[r, c] - zo) * so
            w[r, c] = vals
    cs = arrays.get("column_scales")
    if cs is not None:
        w = w * _as_float(cs).reshape(1, cols)
    return w
