"""AdpqLinear: a linear layer that holds the stored arrays of its quantized weight, never a dense copy.

On CPU with float32, bfloat16 or float16 inputs the product runs in the C core straight on the
packed format (adpq.matmul; float16 through float32 in torch): bfloat16 activations pass as their bits and the C core converts them, and rounds the
result to bfloat16 (round to nearest even, as torch's .to(torch.bfloat16)). On other
devices, under autograd, or with `use_kernel = False`, the weight is dequantized with torch
operations for the call (adpq.runtime.torch_format) and multiplied by torch.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from .. import _core
from ..core import dtypes
from ..core.config import QuantConfig
from ..core.matmul import MODES
from ..core.quantize import quantize
from ..core.quantized import QuantizedTensor
from . import torch_format

__all__ = ["AdpqLinear", "to_numpy", "to_torch"]

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ACTIVATIONS = tuple(MODES)


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A torch view of a stored array (same memory); bfloat16 through its bits."""
    a = np.ascontiguousarray(a)
    if a.dtype == dtypes.NUMPY["bfloat16"]:
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy().view(dtypes.NUMPY["bfloat16"])
    return t.numpy()


class AdpqLinear(torch.nn.Module):
    """y = x @ W_hat.T + bias, W_hat an adpq QuantizedTensor kept in its stored arrays.

    Build one from a QuantizedTensor (`AdpqLinear(qt, bias)`) or from an nn.Linear
    (`AdpqLinear.from_linear(linear, QuantConfig(...))`). The stored arrays are not parameters or
    buffers: they follow `.to(device)` but never a dtype cast (they are a storage format), transformers
    never re-initializes them, and the model's adpq save writes them (docs/FORMAT.md).

    activations  how the C kernel takes the activations (adpq.core.matmul.MODES): "float32", the
                 float product, or "int8" (quantized per block of 32 columns, integer dot products;
                 below dense_batch rows only)
    threads      threads of the C kernel; None: torch.get_num_threads()
    use_kernel   False forces the torch fallback (dequantize, then torch's matmul)
    dense_batch  from this many rows of activations on (prefill), the C core dequantizes the weight
                 for the call and torch multiplies: a GEMM library's blocking beats the packed kernel
                 once the decode cost is shared by many rows (None: always the packed kernel)
    """

    dense_batch: Optional[int] = 16

    def __init__(self, qt: QuantizedTensor, bias: Optional[torch.Tensor] = None, activations: str = "float32",
                 config_dict: Optional[dict] = None):
        super().__init__()
        if not isinstance(qt, QuantizedTensor):
            raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
        if len(qt.shape) != 2:
            raise ValueError(f"AdpqLinear needs a 2-D weight, got shape {qt.shape}")
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
        self.out_features, self.in_features = qt.shape
        self.activations = activations
        self.threads: Optional[int] = None
        self.use_kernel = True
        # the per-tensor "config" of the adpq format's metadata (as quantize_checkpoint writes it)
        self.config_dict = dict(config_dict) if config_dict is not None else qt.config.to_dict()
        self._qt = qt
        self._arrays = {name: to_torch(a) for name, a in qt.arrays().items()}
        self._plan, self._plan_key = None, None  # the C kernel's plan, and the codes' address it is for
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({self.out_features},)")
            self.bias = torch.nn.Parameter(bias.detach(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, config: QuantConfig, activations: str = "float32") -> "AdpqLinear":
        """Quantizes an nn.Linear's weight (CPU float32/float16/bfloat16) with config."""
        w = linear.weight.detach()
        if w.device.type != "cpu":
            w = w.cpu()
        qt = quantize(w, config=config)
        return cls(qt, linear.bias, activations=activations, config_dict=config.to_dict())

    # ------------------------------------------------------------------ the arrays
    def arrays(self) -> Dict[str, torch.Tensor]:
        """The stored arrays as torch tensors, on the module's device."""
        return dict(self._arrays)

    @property
    def device(self) -> torch.device:
        return self._arrays["codes"].device

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        device = fn(torch.empty(0, dtype=torch.uint8)).device  # the move, without the dtype cast
        if device != self.device:
            self._arrays = {n: t.to(device) for n, t in self._arrays.items()}
        return self

    def quantized_tensor(self) -> QuantizedTensor:
        """The weight as a QuantizedTensor over the current CPU buffers (rebuilt after a move)."""
        codes = self._arrays["codes"]
        if codes.device.type != "cpu":
            raise RuntimeError("the arrays are not on the CPU; move the module with .to('cpu') first")
        if to_numpy(codes).ctypes.data != self._qt.arrays()["codes"].ctypes.data:
            arrays = {n: to_numpy(t) for n, t in self.arrays().items()}
            self._qt = QuantizedTensor.from_arrays(arrays, self._qt.shape, self._qt.config, dtype=self._qt.dtype)
        return self._qt

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """W_hat (out_features, in_features) in float32 (or dtype) on the module's device, with torch."""
        qt = self._qt
        w = torch_format.dequantize(self.arrays(), qt.layout, qt.config)
        return w if dtype is None else w.to(dtype)

    @property
    def bits_per_weight(self) -> float:
        return self._qt.bits_per_weight

    # ------------------------------------------------------------------ forward
    def _kernel_applies(self, x: torch.Tensor) -> bool:
        return (self.use_kernel and x.is_cpu and x.dtype in _KERNEL_DTYPES
                and self._arrays["codes"].is_cpu
                and not (torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None
                                                                          and self.bias.requires_grad))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, this layer takes {self.in_features}")
        if not self._kernel_applies(x):
            w = self.dequantize(dtype=x.dtype)
            return torch.nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        n = x2.shape[0]
        threads = self.threads if self.threads is not None else torch.get_num_threads()
        if self.dense_batch is not None and n >= self.dense_batch:
            w = torch.from_numpy(self.quantized_tensor().dequantize(threads=threads)).to(x.dtype)
            y = torch.nn.functional.linear(x2, w, None if self.bias is None else self.bias.to(x.dtype))
            return y.reshape(*lead, self.out_features)
        if x2.dtype == torch.float16:  # (the C core takes float32 or bfloat16 bits)
            x2 = x2.to(torch.float32)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        key = self._arrays["codes"].data_ptr()
        if self._plan_key != key:
            self._plan, self._plan_key = self.quantized_tensor().matmul_plan(), key
        # bfloat16 goes through the C core as its bits: x converted and y rounded there (as torch does)
        bf16 = x2.dtype == torch.bfloat16
        xn = x2.view(torch.uint16).numpy() if bf16 else x2.numpy()
        if bf16 and self.bias is None:
            out = torch.empty((n, self.out_features), dtype=torch.bfloat16)
            _core.matmul(self._plan, xn, out.view(torch.uint16).numpy(), self._mode, threads)
            return out.view(*lead, self.out_features)
        out = torch.empty((n, self.out_features), dtype=torch.float32)
        _core.matmul(self._plan, xn, out.numpy(), self._mode, threads)
        if self.bias is not None:
            out += self.bias
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return out.view(*lead, self.out_features)

    @property
    def _mode(self) -> int:
        return MODES[self.activations]

    def extra_repr(self) -> str:
        c = self._qt.config
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={c.bits}, group_size={c.group_size}, bits_per_weight={self.bits_per_weight:.3f}, "
                f"activations={self.activations}")
