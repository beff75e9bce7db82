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


def codes_at(codes: torch.Tensor, index: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes of the weights at flat positions `index` (int64), read from the bit stream."""
    off = index * bits
    byte = off // 8
    nxt = torch.clamp(byte + 1, max=codes.numel() - 1)  # a 3-bit code may straddle two bytes
    window = codes[byte].to(torch.int64) | (codes[nxt].to(torch.int64) << 8)
    return (window >> (off % 8)) & ((1 << bits) - 1)


def outliers(arrays: Dict[str, torch.Tensor], lay: Layout, cfg: QuantConfig):
    """(row, column, value) of every outlier, in storage order, values in float32 before column
    scales; None when the matrix has none."""
    counts = arrays.get("outlier_counts")
    if counts is None:
        return None
    counts = counts.reshape(-1).to(torch.int64)
    n_out = int(counts.sum())
    if not n_out:
        return None
    g, G = lay.group_size, lay.groups_per_row
    dev = counts.device
    group = torch.repeat_interleave(torch.arange(lay.num_groups, device=dev), counts)
    pos = unpack_bits(arrays["outlier_indices"], n_out, lay.index_bits)
    r, c = group // G, (group % G) * g + pos
    if cfg.outlier_format == "fp16":
        return r, c, _as_float(arrays["outlier_values"]).reshape(-1)
    rank = torch.cumsum((counts > 0).to(torch.int64), 0) - 1  # of each group among those with outliers
    og = rank[group]
    so = _as_float(arrays["outlier_scales"]).reshape(-1)[og]
    zo = (torch.full_like(so, float(1 << (cfg.bits - 1))) if cfg.symmetric
          else _as_float(arrays["outlier_zeros"]).reshape(-1)[og])
    q = codes_at(arrays["codes"], r * lay.cols + c, cfg.bits).to(torch.float32)
    return r, c, (q - zo) * so


def _dense(arrays: Dict[str, torch.Tensor], lay: Layout, cfg: QuantConfig, q: torch.Tensor,
           rows: torch.Tensor | None) -> torch.Tensor:
    """(q - z) * s for codes q of the given rows (None: all), every weight as an inlier."""
    g, G = lay.group_size, lay.groups_per_row
    group_of_col = torch.arange(lay.cols, device=q.device) // g
    s = _as_float(arrays["scales"]).reshape(lay.rows, G)
    s = s if rows is None else s[rows]
    if cfg.symmetric:
        return (q - float(1 << (cfg.bits - 1))) * s[:, group_of_col]
    z = _as_float(arrays["zeros"]).reshape(lay.rows, G)
    z = z if rows is None else z[rows]
    return (q - z[:, group_of_col]) * s[:, group_of_col]


def dequantize(arrays: Dict[str, torch.Tensor], lay: Layout, cfg: QuantConfig) -> torch.Tensor:
    """w_hat (rows, cols) in float32 on the arrays' device."""
    q = unpack_codes(arrays["codes"], lay.rows * lay.cols, cfg.bits).to(torch.float32).reshape(lay.rows, lay.cols)
    w = _dense(arrays, lay, cfg, q, None)
    out = outliers(arrays, lay, cfg)
    if out is not None:
        w[out[0], out[1]] = out[2]
    cs = arrays.get("column_scales")
    if cs is not None:
        w = w * _as_float(cs).reshape(1, lay.cols)
    return w


def dequantize_rows(arrays: Dict[str, torch.Tensor], lay: Layout, cfg: QuantConfig, rows: torch.Tensor,
                    row_outliers) -> torch.Tensor:
    """w_hat[rows] (len(rows), cols) in float32: only those rows are decoded (an embedding lookup).
    row_outliers: (row_ptr, columns, values) from outliers_by_row(), or None."""
    cols, bits = lay.cols, cfg.bits
    rows = rows.to(torch.int64)
    if cols * bits % 8 == 0:  # every row starts at a byte: gather the rows' bytes
        per_row = cols * bits // 8
        raw = arrays["codes"][: lay.rows * per_row].reshape(lay.rows, per_row)[rows].reshape(-1)
        q = unpack_codes(raw, rows.numel() * cols, bits)
    else:
        idx = (rows.unsqueeze(1) * cols + torch.arange(cols, device=rows.device)).reshape(-1)
        q = codes_at(arrays["codes"], idx, bits)
    w = _dense(arrays, lay, cfg, q.to(torch.float32).reshape(-1, cols), rows)
    if row_outliers is not None:
        ptr, ocol, oval = row_outliers
        start, count = ptr[rows], ptr[rows + 1] - ptr[rows]
        if int(count.sum()):
            which = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
            first = torch.repeat_interleave(start - torch.cumsum(count, 0) + count, count)
            k = first + torch.arange(which.numel(), device=rows.device)
            w[which, ocol[k]] = oval[k]
    cs = arrays.get("column_scales")
    if cs is not None:
        w = w * _as_float(cs).reshape(1, cols)
    return w


def outliers_by_row(arrays: Dict[str, torch.Tensor], lay: Layout, cfg: QuantConfig):
    """(row_ptr (rows + 1), columns, values) of the outliers, for dequantize_rows; None if none.
    Storage order is row-major, so the outliers of row r are row_ptr[r]:row_ptr[r + 1]."""
    out = outliers(arrays, lay, cfg)
    if out is None:
        return None
    r, c, v = out
    ptr = torch.zeros(lay.rows + 1, dtype=torch.int64, device=r.device)
    ptr[1:] = torch.cumsum(torch.bincount(r, minlength=lay.rows), 0)
    return ptr, c, v
