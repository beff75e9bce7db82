"""adpq: calibration-free 2/3/4-bit LLM weight quantization with AdpQ (arXiv 2405.13358).

    import adpq
    qt = adpq.quantize(w, bits=3, group_size=128, outlier_ratio=0.01)
    w_hat = qt.dequantize()
    adpq.metrics(w, qt)

The package is layered; each layer imports only the ones before it (docs/DESIGN.md 1):

    adpq.core        the quantizer's API over the C core (adpq._core): QuantConfig, quantize, QuantizedTensor
    adpq.reference   a slow pure-NumPy mirror of the C core, bit-exact with it
    adpq.io          safetensors, model folders, the checkpoint pipeline, the adpq format reader
    adpq.hf          transformers: load an adpq folder; the real test models
    adpq.eval        WikiText-2 perplexity
    adpq.cli         the `adpq` command

The names below load on first use (PEP 562), so `import adpq` loads neither the C core nor torch,
transformers or safetensors until they are needed.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

from ._version import __version__
from .hf import register as _register_hook

# public name -> the module that defines it
_LAZY = {
    "QuantConfig": "adpq.core.config",
    "GptqConfig": "adpq.core.config",
    "CafeqConfig": "adpq.core.config",
    "QuantizedTensor": "adpq.core.quantized",
    "quantize": "adpq.core.quantize",
    "dequantize": "adpq.core.quantize",
    "outlier_mask": "adpq.core.quantize",
    "soft_threshold": "adpq.core.quantize",
    "metrics": "adpq.core.metrics",
    "kl_divergence": "adpq.core.metrics",
    "matmul": "adpq.core.matmul",
    "quantize_checkpoint": "adpq.io.checkpoint",
    "CheckpointReport": "adpq.io.report",
    "CheckpointError": "adpq.io.folder",
    "dequantize_checkpoint": "adpq.io.adpq_format",
    "inspect_checkpoint": "adpq.io.adpq_format",
    "load": "adpq.hf.loading",
    "AdpqConfig": "adpq.hf.quantizer",
    "AdpqLinear": "adpq.runtime.linear",
    "AdpqEmbedding": "adpq.runtime.embedding",
    "load_state_dict": "adpq.hf.loading",
    "cafeq_pair": "adpq.transforms.cafeq",
    "calibrate": "adpq.hf.calibrate",
    "Calibration": "adpq.hf.calibrate",
}

__all__ = ["__version__", "kernels", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily
    from .core.config import CafeqConfig, GptqConfig, QuantConfig
    from .core.matmul import matmul
    from .core.metrics import kl_divergence, metrics
    from .core.quantize import dequantize, outlier_mask, quantize, soft_threshold
    from .core.quantized import QuantizedTensor
    from .hf.calibrate import Calibration, calibrate
    from .transforms.cafeq import cafeq_pair
    from .hf.loading import load, load_state_dict
    from .hf.quantizer import AdpqConfig
    from .runtime.embedding import AdpqEmbedding
    from .runtime.linear import AdpqLinear
    from .io.adpq_format import dequantize_checkpoint, inspect_checkpoint
    from .io.checkpoint import quantize_checkpoint
    from .io.folder import CheckpointError
    from .io.report import CheckpointReport


# transformers learns quant_method "adpq" when it is imported (adpq.hf.register; imports nothing now)
_register_hook.install()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adpq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


def kernels() -> str:
    """Name of the C kernel set entry points use by default ("avx2" or "scalar")."""
    from . import _core

    return _core.kernels()
