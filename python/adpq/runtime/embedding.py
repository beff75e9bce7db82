"""AdpqEmbedding: an input embedding held as the stored arrays of its quantized matrix.

A lookup decodes only the rows it needs (adpq.runtime.torch_format.dequantize_rows), on any device.
Built at load time for the runtime (adpq.load(..., embeddings=...)); with tied weights it shares its
arrays with the AdpqLinear of the output projection, so the matrix is held once.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..core.quantized import QuantizedTensor
from . import torch_format
from .linear import to_torch

__all__ = ["AdpqEmbedding"]


class AdpqEmbedding(torch.nn.Module):
    """embedding(ids) = W_hat[ids] with W_hat (num_embeddings, embedding_dim) a QuantizedTensor.

    dtype: the dtype of the returned vectors (follows `.to(dtype)` of the model); the stored arrays,
    like AdpqLinear's, follow `.to(device)` only."""

    def __init__(self, qt: QuantizedTensor, dtype: torch.dtype = torch.float32, padding_idx: Optional[int] = None,
                 arrays: Optional[Dict[str, torch.Tensor]] = None):
        super().__init__()
        if not isinstance(qt, QuantizedTensor) or len(qt.shape) != 2:
            raise TypeError("AdpqEmbedding needs a 2-D QuantizedTensor")
        self.num_embeddings, self.embedding_dim = qt.shape
        self.padding_idx = padding_idx
        self.dtype = dtype
        self._qt = qt
        self._arrays = arrays if arrays is not None else {n: to_torch(a) for n, a in qt.arrays().items()}
        self._row_outliers = torch_format.outliers_by_row(self._arrays, qt.layout, qt.config)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        probe = fn(torch.empty(0, dtype=self.dtype))
        self.dtype = probe.dtype if probe.is_floating_point() else self.dtype
        device = fn(torch.empty(0, dtype=torch.uint8)).device
        if device != self._arrays["codes"].device:
            self._arrays = {n: t.to(device) for n, t in self._arrays.items()}
            if self._row_outliers is not None:
                self._row_outliers = tuple(t.to(device) for t in self._row_outliers)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"embedding indices must be integers, got {ids.dtype}")
        flat = ids.reshape(-1).to(torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"embedding index out of range [0, {self.num_embeddings})")
        uniq, inverse = torch.unique(flat, return_inverse=True)
        rows = torch_format.dequantize_rows(self._arrays, self._qt.layout, self._qt.config,
                                            uniq.to(self._arrays["codes"].device), self._row_outliers)
        return rows.to(self.dtype)[inverse.to(rows.device)].reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        c = self._qt.config
        return (f"{self.num_embeddings}, {self.embedding_dim}, bits={c.bits}, group_size={c.group_size}, "
                f"bits_per_weight={self._qt.bits_per_weight:.3f}")
