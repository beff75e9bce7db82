"""QuantizedTensor: the packed arrays of one quantized matrix, and what can be read from them."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from .. import _core
from . import dtypes
from .config import QuantConfig
from .layout import ARRAY_NAMES, CODE_ARRAYS, OUTLIER_ARRAYS, SCALE_ARRAYS, layout_of, unpack_bits


def _raw(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The bytes the C core reads: 16-bit floats as uint16, contiguous."""
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    if a.dtype in (dtypes.NUMPY["float16"], dtypes.NUMPY["bfloat16"]):
        return a.view(np.uint16)
    return a


class QuantizedTensor:
    """A matrix quantized with AdpQ. Holds NumPy arrays only (docs/FORMAT.md, adpq.core.layout).

    Build one with adpq.quantize(w, ...) or QuantizedTensor.from_arrays(...).
    """

    __slots__ = ("_arrays", "shape", "config", "dtype", "layout", "num_outliers", "num_outlier_groups", "_matmul_plan")

    def __init__(self, arrays: Mapping[str, np.ndarray], shape: Tuple[int, ...], config: QuantConfig,
                 dtype: str = "float32"):
        if not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (1, 2) or any(s < 1 for s in shape):
            raise ValueError(f"shape must be 1-D or 2-D with positive sizes, got {shape}")
        if dtype not in dtypes.FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {dtypes.FLOAT_DTYPES}, got {dtype!r}")
        unknown = set(arrays) - set(ARRAY_NAMES)
        if unknown:
            raise ValueError(f"unknown array name(s): {sorted(unknown)}")
        rows, cols = (1, shape[0]) if len(shape) == 1 else shape
        config = config.resolved(rows)  # (column_scaling "auto": what quantize decided for this shape)
        lay = layout_of(rows, cols, config)
        self._arrays = {k: v for k, v in arrays.items() if v is not None}
        self.shape, self.config, self.dtype, self.layout = shape, config, dtype, lay
        self._matmul_plan = None
        self._validate()

    @classmethod
    def _from_core(cls, arrays: Dict[str, np.ndarray], shape: Tuple[int, ...], config: QuantConfig,
                   dtype: str) -> "QuantizedTensor":
        """The arrays adpq.quantize's C core just produced (config already resolved): consistent by
        construction, so not validated again (from_arrays and the constructor validate)."""
        qt = cls.__new__(cls)
        rows, cols = (1, shape[0]) if len(shape) == 1 else shape
        qt._arrays, qt.shape, qt.config, qt.dtype = arrays, tuple(shape), config, dtype
        qt.layout = layout_of(rows, cols, config)
        qt.num_outliers, qt.num_outlier_groups = qt._outlier_totals()
        qt._matmul_plan = None
        return qt

    # ------------------------------------------------------------------ checks
    def _expect(self, name: str, dtype: np.dtype, size: int, required: bool = True) -> None:
        a = self._arrays.get(name)
        if a is None:
            if required:
                raise ValueError(f"array {name!r} is missing")
            return
        if not isinstance(a, np.ndarray):
            raise TypeError(f"array {name!r} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype != dtype:
            raise ValueError(f"array {name!r} has dtype {a.dtype}, expected {dtype}")
        if a.size != size:
            raise ValueError(f"array {name!r} has {a.size} elements, expected {size} for shape {self.shape} "
                             f"and this config")

    def _validate(self) -> None:
        cfg, lay = self.config, self.layout
        sdt = dtypes.NUMPY[cfg.scale_dtype]
        self._expect("codes", np.dtype(np.uint8), lay.code_bytes)
        self._expect("scales", sdt, lay.num_groups)
        if cfg.column_scaling == "none":
            if "column_scales" in self._arrays:
                raise ValueError("column_scaling 'none' stores no 'column_scales'")
        else:
            self._expect("column_scales", dtypes.NUMPY["bfloat16"], lay.cols)
            c = self._arrays["column_scales"].astype(np.float32)
            if not np.all(np.isfinite(c) & (c > 0)):
                raise ValueError("column_scales must be finite and > 0 (as quantize writes them)")
        if cfg.symmetric:
            if "zeros" in self._arrays:
                raise ValueError("a symmetric quantizer stores no 'zeros'")
        else:
            self._expect("zeros", sdt, lay.num_groups)
        self._check_finite(("scales", "zeros"))
        counts = self._arrays.get("outlier_counts")
        if counts is None:
            extra = [k for k in OUTLIER_ARRAYS if k in self._arrays]
            if extra:
                raise ValueError(f"outlier arrays {extra} given without 'outlier_counts'")
            self.num_outliers = self.num_outlier_groups = 0
            return
        self._expect("outlier_counts", lay.count_dtype, lay.num_groups)
        self.num_outliers, self.num_outlier_groups = self._outlier_totals()
        self._expect("outlier_indices", np.dtype(np.uint8), (self.num_outliers * lay.index_bits + 7) // 8)
        self._check_outlier_positions()
        if cfg.outlier_format == "group":
            self._expect("outlier_scales", sdt, self.num_outlier_groups)
            self._expect("outlier_zeros", sdt, self.num_outlier_groups, required=not cfg.symmetric)
            if cfg.symmetric and "outlier_zeros" in self._arrays:
                raise ValueError("a symmetric quantizer stores no 'outlier_zeros'")
            if "outlier_values" in self._arrays:
                raise ValueError("outlier_format 'group' stores no 'outlier_values'")
        else:
            self._expect("outlier_values", dtypes.NUMPY["float16"], self.num_outliers)
            for k in ("outlier_scales", "outlier_zeros"):
                if k in self._arrays:
                    raise ValueError(f"outlier_format 'fp16' stores no {k!r}")
        self._check_finite(("outlier_scales", "outlier_zeros", "outlier_values"))

    def _check_finite(self, names) -> None:
        """Stored floats must be finite: a NaN or Inf scale, zero-point or outlier value (a corrupt
        file; quantize never writes one) would dequantize to non-finite weights."""
        for k in names:
            a = self._arrays.get(k)
            if a is not None and a.size and not np.isfinite(a.astype(np.float32, copy=False)).all():
                bad = int(np.flatnonzero(~np.isfinite(a.reshape(-1).astype(np.float32)))[0])
                raise ValueError(f"array {k!r} holds a non-finite value ({a.reshape(-1)[bad]} at index {bad}); "
                                 "stored scales, zero-points and outlier values must be finite")

    def _check_outlier_positions(self) -> None:
        """Each group's outlier count fits the group (the last group of a row may be shorter), and its
        positions are in range and strictly ascending (what outlier_mask and the C core rely on)."""
        lay = self.layout
        counts = self._arrays["outlier_counts"].reshape(-1).astype(np.int64)
        glen = np.full(lay.groups_per_row, lay.group_size, dtype=np.int64)
        glen[-1] = lay.cols - (lay.groups_per_row - 1) * lay.group_size
        glen = np.tile(glen, lay.rows)
        over = np.flatnonzero(counts > glen)
        if over.size:
            k = int(over[0])
            raise ValueError(f"outlier_counts[{k}] = {counts[k]} exceeds its group's {glen[k]} weights")
        n = self.num_outliers
        if not n:
            return
        pos = unpack_bits(self._arrays["outlier_indices"], n, lay.index_bits).astype(np.int64)
        group = np.repeat(np.arange(lay.num_groups, dtype=np.int64), counts)
        bad = pos >= glen[group]
        bad[1:] |= (group[1:] == group[:-1]) & (pos[1:] <= pos[:-1])
        if bad.any():
            o = int(np.flatnonzero(bad)[0])
            raise ValueError(f"outlier_indices: outlier {o} (group {group[o]}, position {pos[o]}) is out of its "
                             "group's range or not ascending within it")

    def _outlier_totals(self) -> Tuple[int, int]:
        """(outliers, groups holding one), from outlier_counts."""
        counts = self._arrays.get("outlier_counts")
        if counts is None:
            return 0, 0
        return int(counts.sum(dtype=np.int64)), int(np.count_nonzero(counts))

    # ------------------------------------------------------------------ API
    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], shape: Tuple[int, ...], config: QuantConfig,
                    dtype: str = "float32") -> "QuantizedTensor":
        """Rebuilds a tensor from the arrays of arrays(); ValueError if they do not fit shape/config."""
        return cls(arrays, shape, config, dtype)

    def arrays(self) -> Dict[str, np.ndarray]:
        """Every stored array by name; nothing else is needed to rebuild the tensor."""
        return dict(self._arrays)

    @property
    def numel(self) -> int:
        return self.layout.rows * self.layout.cols

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    @property
    def bits_per_weight(self) -> float:
        """8 * (bytes of every stored array) / number of weights."""
        return 8.0 * self.nbytes / self.numel

    def bits_breakdown(self) -> Dict[str, float]:
        """Bits per weight split into codes / scales (+ zero-points) / outlier side-channel."""
        n = self.numel

        def bits(names):
            return 8.0 * sum(self._arrays[k].nbytes for k in names if k in self._arrays) / n

        return {"codes": bits(CODE_ARRAYS), "scales": bits(SCALE_ARRAYS), "outliers": bits(OUTLIER_ARRAYS)}

    def _dequantize_kwargs(self, threads: Optional[int] = None) -> dict:
        """The C core's dequantize keyword arguments (also error_stats' `quantized`, which dequantizes
        row by row)."""
        a = self._arrays
        return {
            "arrays": {name: _raw(a[name]) for name in ARRAY_NAMES if name in a and name != "column_scales"},
            "rows": self.layout.rows,
            "cols": self.layout.cols,
            "config": self.config.core_config(threads),
            "num_outliers": self.num_outliers,
            "num_outlier_groups": self.num_outlier_groups,
            # (the column scales' product, done by the C core on each row while it is in cache)
            "col_mul": np.asarray(a["column_scales"], dtype=np.float32) if "column_scales" in a else None,
        }

    def dequantize(self, dtype: Union[None, str, np.dtype] = None, threads: Optional[int] = None) -> np.ndarray:
        """w_hat as float32 (default), the input's dtype (dtype="input") or the given float dtype."""
        out = _core.dequantize(**self._dequantize_kwargs(threads))
        out = out.reshape(self.shape)
        if dtype is None:
            return out
        target = dtypes.NUMPY[self.dtype] if (isinstance(dtype, str) and dtype == "input") else np.dtype(dtype)
        if target.kind != "f" and target != dtypes.NUMPY["bfloat16"]:
            raise TypeError(f"dtype must be a float dtype, got {target}")
        return out.astype(target)

    def matmul_plan(self) -> "_core.MatmulPlan":
        """The C core's plan for adpq.matmul, built on first use and kept: it points into the stored
        arrays (nothing copied) and holds the outliers as a sparse correction."""
        if self._matmul_plan is None:
            self._matmul_plan = _core.matmul_plan(**self._dequantize_kwargs(1))
        return self._matmul_plan

    def outlier_mask(self) -> np.ndarray:
        """Bool array of the tensor's shape, True at outliers (decoded from counts and indices)."""
        lay = self.layout
        mask = np.zeros((lay.rows, lay.cols), dtype=bool)
        if self.num_outliers:
            counts = self._arrays["outlier_counts"].reshape(-1).astype(np.int64)
            group = np.repeat(np.arange(lay.num_groups, dtype=np.int64), counts)
            pos = unpack_bits(self._arrays["outlier_indices"], self.num_outliers, lay.index_bits).astype(np.int64)
            mask[group // lay.groups_per_row, (group % lay.groups_per_row) * lay.group_size + pos] = True
        return mask.reshape(self.shape)

    def __repr__(self) -> str:
        c = self.config
        return (f"QuantizedTensor(shape={self.shape}, dtype={self.dtype}, bits={c.bits}, group_size={c.group_size}, "
                f"outliers={self.num_outliers}, bits_per_weight={self.bits_per_weight:.4f})")
