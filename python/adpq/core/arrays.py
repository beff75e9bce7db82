"""Weight arrays as the C core reads them: checked, 2-D, rows strided, 16-bit floats as uint16 bits.

NumPy arrays and CPU torch tensors are taken (torch without importing it: a tensor is recognised by
its type's module, and read through `.numpy()`, which shares its memory).
"""
from __future__ import annotations

import sys
from typing import Any, Tuple

import numpy as np

from . import dtypes


def _from_torch(t: Any, name: str) -> np.ndarray:
    if t.device.type != "cpu":
        raise TypeError(f"{name} is a torch tensor on {t.device}; move it to the CPU first (.cpu())")
    t = t.detach()
    if str(t.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: the same bits, viewed
        torch = sys.modules["torch"]
        return t.view(torch.int16).numpy().view(dtypes.NUMPY["bfloat16"])
    if str(t.dtype) not in ("torch.float32", "torch.float16", "torch.float64"):
        raise TypeError(f"{name} must be a float32, float16 or bfloat16 tensor, got {t.dtype}")
    return t.numpy()


def as_array(w: Any, name: str = "w") -> np.ndarray:
    """w as a NumPy array without a copy where it can be (ndarray, CPU torch tensor, array-like)."""
    if isinstance(w, np.ndarray):
        return w
    if type(w).__module__.split(".")[0] == "torch" and hasattr(w, "detach"):
        return _from_torch(w, name)
    if hasattr(w, "__array__") or isinstance(w, (list, tuple)):
        return np.asarray(w)
    raise TypeError(f"{name} must be a numpy.ndarray or a torch tensor, got {type(w).__name__}")


def as_weight_matrix(w: Any, name: str = "w") -> Tuple[np.ndarray, str, Tuple[int, ...]]:
    """Checks a weight array and returns (2-D array the C core can read, dtype name, original shape).

    float32, float16 and bfloat16 are read as they are (any row stride; other layouts are copied);
    float64 is converted to float32.
    """
    w = as_array(w, name)
    dt = w.dtype
    if dt == np.float64:
        dname = "float32"
        with np.errstate(over="ignore"):
            w = w.astype(np.float32)
    else:
        try:
            dname = dtypes.name_of(dt)
        except ValueError:
            raise TypeError(f"{name} must be a float32, float16 or bfloat16 array, got dtype {dt}") from None
    if w.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (one row) or 2-D, got {w.ndim}-D with shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"{name} is empty (shape {w.shape})")
    shape = tuple(w.shape)
    w2 = w.reshape(1, -1) if w.ndim == 1 else w
    item = w2.dtype.itemsize
    rows_ok = w2.shape[0] == 1 or (w2.strides[0] > 0 and w2.strides[0] % item == 0
                                   and w2.strides[0] >= w2.shape[1] * item)
    if not (w2.shape[1] == 1 or w2.strides[1] == item) or not rows_ok or not w2.flags.aligned:
        w2 = np.array(w2, order="C", copy=True)  # (a new array: aligned, which ascontiguousarray is not always)
    if dname != "float32":
        w2 = w2.view(np.uint16)
    return w2, dname, shape


def to_float32(w2: np.ndarray, dname: str) -> np.ndarray:
    """An as_weight_matrix result as float32 values (16-bit floats converted)."""
    if dname == "float32":
        return w2
    return w2.view(dtypes.NUMPY[dname]).astype(np.float32)
