"""GPTQ refinement of an AdpQ result with a Hessian of calibration inputs (docs/DESIGN.md 2.7).

AdpQ supplies the start (its outlier set, column scales and group grids); the C solver
(csrc/gptq.c, mirrored by adpq.reference.gptq) rounds the columns one by one and compensates each
column's error on the columns not yet rounded. The result has the same arrays, in the same sizes,
as the start: bits per weight do not change.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np

from .. import _core
from . import dtypes
from .arrays import as_array, as_weight_matrix, to_float32
from .config import GptqConfig, QuantConfig, useful_threads
from .layout import pack_bits, unpack_bits
from .quantized import QuantizedTensor

F32 = np.float32
# H is symmetric up to float rounding of its accumulation: asymmetry beyond this (relative to
# max |H|) is a wrong matrix, not rounding.
SYMMETRY_RTOL = 1e-4
_TILE = 256


def check_hessian(h: Any, cols: int) -> np.ndarray:
    """H (cols x cols) as float64 (no copy when it is one); ValueError/TypeError naming what is wrong."""
    a = as_array(h, "hessian")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.dtype == np.bool_:
        raise TypeError(f"hessian must be a float array, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape != (cols, cols):
        raise ValueError(f"hessian must have shape ({cols}, {cols}) (in_features x in_features of the "
                         f"weight), got {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    # one pass in row tiles (no full-size temporaries: H is in_features^2 doubles)
    scale, asym = 0.0, 0.0
    for i0 in range(0, cols, _TILE):
        rows = a[i0:i0 + _TILE]
        if not np.isfinite(rows).all():
            raise ValueError("hessian has non-finite values (NaN or inf)")
        scale = max(scale, float(np.abs(rows).max()))
        asym = max(asym, float(np.abs(rows - a[:, i0:i0 + _TILE].T).max()))
    if scale == 0.0:
        raise ValueError("hessian is all zeros (the calibration saw no input)")
    if asym > SYMMETRY_RTOL * scale:
        raise ValueError("hessian is not symmetric (H = X^T X is)")
    if (np.diag(a) < 0).any():
        raise ValueError("hessian has a negative diagonal entry: it is not positive semi-definite")
    return a  # (the solvers read one triangle: within the tolerance above, either is H)


def _grid(arr: np.ndarray) -> np.ndarray:
    """A stored scale/zero array (16-bit floats or float32) as float32 values."""
    return np.asarray(arr).astype(F32)


def _start_grids(qt: QuantizedTensor):
    """(s, z, so, zo) float32 (rows, groups) of the start; so/zo None with fp16 outliers."""
    cfg, lay = qt.config, qt.layout
    a = qt.arrays()
    shape = (lay.rows, lay.groups_per_row)
    s = _grid(a["scales"]).reshape(shape)
    z = np.full(shape, F32(1 << (cfg.bits - 1))) if cfg.symmetric else _grid(a["zeros"]).reshape(shape)
    if cfg.outlier_format == "fp16":
        return s, z, None, None
    so = np.ones(shape, dtype=F32)
    zo = np.full(shape, F32(1 << (cfg.bits - 1)) if cfg.symmetric else F32(0))
    if qt.num_outliers:
        has = a["outlier_counts"].reshape(shape) > 0
        so[has] = _grid(a["outlier_scales"])
        if not cfg.symmetric:
            zo[has] = _grid(a["outlier_zeros"])
    return s, z, so, zo


def _scaled_target(w: Any, start: QuantizedTensor):
    """(W' = W / c float32, c or None, dtype name, shape): the weights a refinement of start rounds,
    in the space of its column scales (W' = W * m, m = 1/c in float32, as reference.columns)."""
    w2, dname, shape = as_weight_matrix(w)
    if tuple(shape) != tuple(start.shape):
        raise ValueError(f"the start was quantized from shape {start.shape}, not {shape}")
    wf = to_float32(w2, dname)  # (read only: the solvers copy what they change)
    cs = start.arrays().get("column_scales")
    if cs is None:
        return wf, None, dname, shape
    c = np.asarray(cs).astype(F32)
    return wf * (F32(1) / c)[None, :], c, dname, shape


def c_solver(w, h, mask, s, z, so, zo, **kw) -> Dict[str, np.ndarray]:
    """_core.gptq with the reference's argument names (codes come back packed)."""
    kw["scale_dtype"] = dtypes.C_CODE[kw["scale_dtype"]]
    return _core.gptq(w, h, mask, s, z, so, zo, **kw)


def refine(w: Any, start: QuantizedTensor, hessian: Any, gptq: Optional[GptqConfig] = None,
           threads: Optional[int] = None, solver: Optional[Callable[..., Dict[str, np.ndarray]]] = None
           ) -> QuantizedTensor:
    """start (adpq.quantize(w, config)) refined by GPTQ with H = hessian: the same config, arrays and
    sizes, new codes (and outlier values, and grids with grids="refit").

    solver: the C core (default) or adpq.reference.gptq.solve (tests); both take the same arguments.
    """
    g = gptq if gptq is not None else GptqConfig()
    if not isinstance(g, GptqConfig):
        raise TypeError(f"gptq must be a GptqConfig, got {type(g).__name__}")
    wf, c, dname, shape = _scaled_target(w, start)
    cfg: QuantConfig = start.config
    lay = start.layout
    h = check_hessian(hessian, lay.cols)
    arrays = start.arrays()
    if c is not None:
        c64 = c.astype(np.float64)
        h = h * c64[:, None] * c64[None, :]  # the inputs W' sees: x * c
    mask = np.ascontiguousarray(start.outlier_mask().reshape(lay.rows, lay.cols))
    s, z, so, zo = _start_grids(start)
    run = solver if solver is not None else c_solver
    res = run(np.ascontiguousarray(wf), h, mask, s, z, so, zo, bits=cfg.bits, group_size=lay.group_size, symmetric=cfg.symmetric,
              integer_zero=cfg.zero_point == "integer", scale_dtype=cfg.scale_dtype, damp=g.damp,
              block_size=g.block_size, act_order=g.act_order, refit=g.grids == "refit",
              threads=useful_threads(threads if threads is not None else cfg.threads))
    codes = res["codes"]
    if codes.ndim == 2:  # (the reference returns one code per weight)
        codes = pack_bits(codes.ravel(), cfg.bits)
    arrays["codes"] = codes
    sdt = dtypes.NUMPY[cfg.scale_dtype]
    arrays["scales"] = res["scales"].astype(sdt).reshape(arrays["scales"].shape)
    if not cfg.symmetric:
        arrays["zeros"] = res["zeros"].astype(sdt).reshape(arrays["zeros"].shape)
    if start.num_outliers:
        if cfg.outlier_format == "fp16":
            arrays["outlier_values"] = _fp16_outliers(res["values"][mask])
        else:
            has = arrays["outlier_counts"].reshape(lay.rows, lay.groups_per_row) > 0
            arrays["outlier_scales"] = res["outlier_scales"][has].astype(sdt)
            if not cfg.symmetric:
                arrays["outlier_zeros"] = res["outlier_zeros"][has].astype(sdt)
    return QuantizedTensor(arrays, shape, cfg, dname)


def _fp16_outliers(vals: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = vals.astype(np.float16)
    if not np.isfinite(out).all():
        raise ValueError("an outlier exceeds the float16 range after error compensation; use outlier_format='group'")
    return out


def refine_rows(w: Any, start: QuantizedTensor, gram: Any, damp: float = 0.01, act_order: bool = True,
                threads: Optional[int] = None, solver: Optional[Callable[..., Dict[str, np.ndarray]]] = None
                ) -> QuantizedTensor:
    """start's codes (and fp16 outlier values) re-chosen for W = w to lower
    sum_l (w_l - ŵ_l)^T G (w_l - ŵ_l) over the columns l, with G = gram (rows x rows): GPTQ across
    the rows of each column, on the start's grids (CafeQ rounds W_v against the Gram of Ŵ_o this way:
    adpq.transforms). The same config, arrays and sizes as the start.

    The solver runs on W^T, each weight with its own grid (group_size 1). A column scale c_l weighs
    all of column l's error by c_l^2, which does not move its minimum.
    """
    wf, _, dname, shape = _scaled_target(w, start)
    cfg: QuantConfig = start.config
    lay = start.layout
    h = check_hessian(gram, lay.rows)
    arrays = start.arrays()
    mask = start.outlier_mask().reshape(lay.rows, lay.cols)
    col_group = np.arange(lay.cols) // lay.group_size

    def per_weight(g):  # (rows, groups) -> (cols, rows): weight (r, c)'s grid at [c, r]
        return None if g is None else np.ascontiguousarray(g[:, col_group].T)

    grids = [per_weight(g) for g in _start_grids(start)]
    run = solver if solver is not None else c_solver
    res = run(np.ascontiguousarray(wf.T), h, np.ascontiguousarray(mask.T), *grids, bits=cfg.bits, group_size=1,
              symmetric=cfg.symmetric, integer_zero=cfg.zero_point == "integer", scale_dtype=cfg.scale_dtype,
              damp=damp, block_size=128, act_order=act_order, refit=False,
              threads=useful_threads(threads if threads is not None else cfg.threads))
    codes = res["codes"]
    if codes.ndim == 1:
        codes = unpack_bits(codes, lay.rows * lay.cols, cfg.bits).reshape(lay.cols, lay.rows)
    arrays["codes"] = pack_bits(np.ascontiguousarray(codes.T).ravel(), cfg.bits)
    if start.num_outliers and cfg.outlier_format == "fp16":
        arrays["outlier_values"] = _fp16_outliers(res["values"].T[mask])
    return QuantizedTensor(arrays, shape, cfg, dname)
