"""adpq: calibration-free 2/3/4-bit LLM weight quantization with AdpQ (arXiv 2405.13358).

    import adpq
    qt = adpq.quantize(w, bits=3, group_size=128, outlier_ratio=0.01)
    w_hat = qt.dequantize()
    adpq.metrics(w, qt)
"""
from . import _core
from .checkpoint import CheckpointError, CheckpointReport, quantize_checkpoint
from .config import QuantConfig
from .core import dequantize, outlier_mask, quantize, soft_threshold
from .hf import dequantize_checkpoint, inspect_checkpoint, load, load_state_dict
from .metrics import kl_divergence, metrics
from .quantized import QuantizedTensor

__version__ = "0.1.0"

__all__ = [
    "QuantConfig",
    "QuantizedTensor",
    "quantize",
    "dequantize",
    "outlier_mask",
    "soft_threshold",
    "metrics",
    "kl_divergence",
    "quantize_checkpoint",
    "CheckpointReport",
    "CheckpointError",
    "load",
    "load_state_dict",
    "dequantize_checkpoint",
    "inspect_checkpoint",
]


def kernels() -> str:
    """Name of the active C kernel set ("avx2" or "scalar")."""
    return _core.kernels()
