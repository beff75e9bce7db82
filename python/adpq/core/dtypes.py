"""The one table of floating-point dtypes adpq knows: their names, NumPy dtypes and C codes.

Weights are read in float32, float16 or bfloat16 (float64 is converted to float32); scales and
zero-points are stored in one of the same three. Every other layer (safetensors, torch, the command
line) maps its own spelling through `canonical`.
"""
from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

FLOAT_DTYPES = ("float32", "float16", "bfloat16")

NUMPY = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

# adpq_dtype in csrc/adpq.h
C_CODE = {"float32": 0, "float16": 1, "bfloat16": 2}

_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16", "f16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


def canonical(name: Any) -> str:
    """"float32", "float16" or "bfloat16" from any usual spelling (fp16, bf16, torch.bfloat16, a NumPy
    dtype); ValueError otherwise."""
    if isinstance(name, np.dtype) or (isinstance(name, type) and issubclass(name, np.generic)):
        key = np.dtype(name).name
    else:
        key = str(name).lower()
    key = key[6:] if key.startswith("torch.") else key
    try:
        return _ALIASES[key]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r} (use float32, float16 or bfloat16)") from None


def np_dtype(name: Any) -> np.dtype:
    """The NumPy dtype of a float dtype name (any spelling `canonical` takes)."""
    return NUMPY[canonical(name)]


def name_of(dt: Any) -> str:
    """The name of a NumPy float dtype adpq reads; ValueError for any other dtype."""
    dt = np.dtype(dt)
    for name, d in NUMPY.items():
        if d == dt:
            return name
    raise ValueError(f"unsupported dtype {dt} (use float32, float16 or bfloat16)")
