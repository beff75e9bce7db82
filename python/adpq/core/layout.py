"""The storage layout of a quantized matrix: array names, dtypes and sizes, and bit packing.

This is the format another tool needs to read adpq tensors (docs/FORMAT.md):

- ``codes``            uint8, ceil(rows*cols*bits/8) bytes: one b-bit code per weight, row-major,
                       in a little-endian bit stream (weight i at bits [i*b, i*b+b)).
- ``scales``           (rows, groups_per_row) scale_dtype: inlier scale of each group.
- ``zeros``            (rows, groups_per_row) scale_dtype: inlier zero-point (absent if symmetric).
- ``outlier_counts``   (rows, groups_per_row) uint8/uint16/uint32 (the smallest that holds
                       group_size): outliers per group. Absent when the matrix has no outliers,
                       and then so is every outlier_* array.
- ``outlier_indices``  uint8 bit stream of index_bits = ceil(log2 group_size) bits per outlier:
                       its position in its group; ascending within a group, groups row-major.
                       The outliers of group k start at sum(outlier_counts.flat[:k]).
- ``outlier_scales``   (num_outlier_groups,) scale_dtype, outlier_format "group": the outlier
                       quantizer of each group that has outliers, in group order.
- ``outlier_zeros``    same, asymmetric only.
- ``outlier_values``   (num_outliers,) float16, outlier_format "fp16": exact outlier values.

w_hat = (code - zero) * scale in float32; symmetric quantizers use zero = 2^(bits-1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import QuantConfig

ARRAY_NAMES = (
    "codes",
    "scales",
    "zeros",
    "outlier_counts",
    "outlier_indices",
    "outlier_scales",
    "outlier_zeros",
    "outlier_values",
    "column_scales",
)
CODE_ARRAYS = ("codes",)
SCALE_ARRAYS = ("scales", "zeros", "column_scales")
OUTLIER_ARRAYS = ("outlier_counts", "outlier_indices", "outlier_scales", "outlier_zeros", "outlier_values")

@dataclass(frozen=True)
class Layout:
    rows: int
    cols: int
    group_size: int       # effective: min(group_size, cols), cols for -1
    groups_per_row: int
    code_bytes: int
    count_dtype: np.dtype
    index_bits: int

    @property
    def num_groups(self) -> int:
        return self.rows * self.groups_per_row

    def group_lengths(self) -> np.ndarray:
        """Length of each group of a row (the last one may be shorter)."""
        lens = np.full(self.groups_per_row, self.group_size, dtype=np.int64)
        lens[-1] = self.cols - (self.groups_per_row - 1) * self.group_size
        return lens

    def group_starts(self) -> np.ndarray:
        return np.arange(self.groups_per_row, dtype=np.int64) * self.group_size


def layout_of(rows: int, cols: int, config: QuantConfig) -> Layout:
    """Mirror of adpq_layout_of in csrc/layout.c."""
    g = cols if config.group_size == -1 else min(config.group_size, cols)
    count_dtype = np.dtype(np.uint8 if g <= 255 else np.uint16 if g <= 65535 else np.uint32)
    index_bits = max(1, int(g - 1).bit_length())
    return Layout(
        rows=rows,
        cols=cols,
        group_size=g,
        groups_per_row=-(-cols // g),
        code_bytes=(rows * cols * config.bits + 7) // 8,
        count_dtype=count_dtype,
        index_bits=index_bits,
    )


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian bit stream: value i at bits [i*bits, i*bits+bits)."""
    v = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"value does not fit in {bits} bits")
    bitplanes = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(bitplanes.ravel(), bitorder="little")


def unpack_bits(stream: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Inverse of pack_bits: n values as uint32."""
    flat = np.unpackbits(np.ascontiguousarray(stream, dtype=np.uint8), bitorder="little")
    if flat.size < n * bits:
        raise ValueError(f"bit stream holds {flat.size} bits, {n * bits} needed")
    planes = flat[: n * bits].reshape(n, bits).astype(np.uint32)
    return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
