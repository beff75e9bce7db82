"""QuantConfig: every parameter of the AdpQ quantizer, validated, as one dataclass (docs/DESIGN.md 2)."""
from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from . import dtypes

BITS = (2, 3, 4, 8)
SCOPES = ("tensor", "group")
OUTLIER_FORMATS = ("group", "fp16")
SCALE_DTYPES = dtypes.FLOAT_DTYPES
ZERO_POINTS = ("float", "integer")
COLUMN_SCALINGS = ("auto", "none", "mean_abs")
AUTO_COLUMN_SCALING_MIN_ROWS = 64  # "auto": 16 bits per column cost at most 0.25 bits per weight
MAX_OUTLIER_RATIO = 0.5
MIN_GROUP_SIZE = 8  # ADPQ_MIN_GROUP_SIZE of csrc/adpq.h (tests hold the two equal)

# codes shared with the C core (csrc/adpq.h)
_SCOPE_CODE = {"tensor": 0, "group": 1}
_FORMAT_CODE = {"group": 0, "fp16": 1}


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


# The C core's integer types (csrc/adpq.h): group_size is an int64_t, bits and threads are ints.
INT_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Threads beyond this many per core only cost memory (per-thread scratch): more are capped to it.
THREADS_PER_CORE_CAP = 8
MIN_THREADS_CAP = 64


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _short(x: Any) -> str:
    """repr(x), shortened: a hostile value (an int of a thousand digits) makes a one-line message."""
    r = repr(x)
    return r if len(r) <= 40 else f"{r[:20]}...{r[-8:]} ({len(r)} characters)"


def check_int(x: Any, name: str, lo: int, hi: int, what: str = "an int") -> int:
    """x (a Python or NumPy integer, not a bool) as a Python int in [lo, hi]; TypeError/ValueError
    naming `name` otherwise, before any C call or allocation."""
    if not _is_int(x):
        raise TypeError(f"{name} must be {what}, got {type(x).__name__} {_short(x)}")
    v = int(x)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {_short(v)}")
    return v


def check_real(x: Any, name: str) -> float:
    """x (a Python or NumPy real, not a bool) as a Python float; TypeError, or ValueError if it does
    not fit a float (a huge int)."""
    if not _is_real(x):
        raise TypeError(f"{name} must be a number, got {type(x).__name__} {_short(x)}")
    try:
        return float(x)
    except (OverflowError, ValueError):
        raise ValueError(f"{name} = {_short(x)} is out of range of a float") from None


def check_bool(x: Any, name: str) -> bool:
    """x (a bool, a NumPy bool, or the int 0/1) as a Python bool; TypeError naming `name` otherwise."""
    if isinstance(x, (bool, np.bool_)) or (_is_int(x) and x in (0, 1)):
        return bool(x)
    raise TypeError(f"{name} must be a bool, got {_short(x)}")


def check_threads(threads: Any, name: str = "threads") -> Optional[int]:
    """None, or a thread count in [1, INT_MAX] as a Python int (NumPy integers accepted)."""
    if threads is None:
        return None
    return check_int(threads, name, 1, INT_MAX, "an int or None")


def useful_threads(threads: Optional[int] = None) -> int:
    """The thread count handed to the C core: `threads` (None: every core) capped at
    THREADS_PER_CORE_CAP threads per core (at least MIN_THREADS_CAP): more only cost per-thread
    scratch memory. (The C core caps it again at the work available.)"""
    t = check_threads(threads)
    cores = default_threads()
    if t is None:
        return cores
    return min(t, max(MIN_THREADS_CAP, THREADS_PER_CORE_CAP * cores))


def _choice(v: Any, name: str, choices: tuple) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {_short(v)}")
    return str(v)


def _from_dict(cls, d: Mapping[str, Any]):
    """A config dataclass from a dict of its fields (unknown names refused)."""
    if not isinstance(d, Mapping):
        raise TypeError(f"a {cls.__name__} is read from a dict, got {type(d).__name__}")
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {_short(sorted(map(repr, unknown)))}")
    return cls(**dict(d))


@dataclass(frozen=True)
class QuantConfig:
    """Parameters of the AdpQ quantizer (docs/DESIGN.md section 2).

    bits            code width: 2, 3, 4 or 8.
    group_size      weights per group along a row (>= 8), or -1 for one group per row.
                    A row whose length is not a multiple of it ends in a shorter group.
    outlier_ratio   fraction of weights made outliers when lambda is solved, in [0, 0.5];
                    0 is plain round-to-nearest (RTN).
    outlier_scope   "tensor": one lambda per matrix (outlier counts vary per group);
                    "group": one lambda per group (a fixed count per group).
    gamma           adaptive-LASSO exponent (> 0): b = sign(w) max(|w| - lambda'/|w|^gamma, 0).
    lam             None: solve lambda from outlier_ratio. A number >= 0: the LASSO penalty
                    lambda applied to weights divided by the scope's robust scale (the lower
                    median of its nonzero |w|); outliers are |w/scale|^(1+gamma) > lam / 2.
    symmetric       False: scale + zero-point per quantizer; True: scale only.
    outlier_format  "group": a b-bit quantizer of its own for each group's outliers (the paper);
                    "fp16": outliers stored as exact float16 values (an upper bound, more bits).
    scale_dtype     storage of scales and zero-points: "float16" (default), "bfloat16", "float32".
    threads         worker threads; None uses every core this process may run on.
    zero_point      asymmetric quantizers: "float" (z = -min/s as stored) or "integer"
                    (z = rint(-min/s): a level sits exactly at 0, as in GPTQ).
    column_scaling  "mean_abs": quantize W * (1/c), c_j = mean |w| of input column j (stored as
                    bfloat16, 16 bits per column; docs/DESIGN.md 2.3; our addition); "none"; or
                    "auto" (default): "mean_abs" for matrices of at least 64 rows, else "none".
                    A QuantizedTensor's config holds the resolved choice.
    """

    bits: int = 3
    group_size: int = 128
    outlier_ratio: float = 0.01
    outlier_scope: str = "tensor"
    gamma: float = 1.0
    lam: Optional[float] = None
    symmetric: bool = True
    outlier_format: str = "fp16"
    scale_dtype: str = "float16"
    threads: Optional[int] = None
    zero_point: str = "integer"
    column_scaling: str = "auto"

    def __post_init__(self) -> None:
        # NumPy scalars are taken where Python ints/floats/bools are, and stored as Python values
        # (the config goes to JSON and to the C core); values too large for C are refused here.
        def put(name: str, v: Any) -> None:
            object.__setattr__(self, name, v)

        if not _is_int(self.bits):
            raise TypeError(f"bits must be an int, got {type(self.bits).__name__}")
        put("bits", int(self.bits))
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {_short(self.bits)}")
        if not _is_int(self.group_size):
            raise TypeError(f"group_size must be an int, got {type(self.group_size).__name__}")
        put("group_size", int(self.group_size))
        if self.group_size != -1 and self.group_size < MIN_GROUP_SIZE:
            raise ValueError(f"group_size must be -1 (one group per row) or >= {MIN_GROUP_SIZE}, "
                             f"got {_short(self.group_size)}")
        if self.group_size > INT64_MAX:
            raise ValueError(f"group_size must be at most {INT64_MAX} (a 64-bit integer), got {_short(self.group_size)}")
        put("outlier_ratio", check_real(self.outlier_ratio, "outlier_ratio"))
        if not (0.0 <= self.outlier_ratio <= MAX_OUTLIER_RATIO):
            raise ValueError(f"outlier_ratio must be in [0, {MAX_OUTLIER_RATIO}], got {_short(self.outlier_ratio)}")
        put("outlier_scope", _choice(self.outlier_scope, "outlier_scope", SCOPES))
        put("gamma", check_real(self.gamma, "gamma"))
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"gamma must be > 0 and finite, got {_short(self.gamma)}")
        if self.lam is not None:
            if not _is_real(self.lam):
                raise TypeError(f"lam must be a number or None, got {type(self.lam).__name__}")
            put("lam", check_real(self.lam, "lam"))
            if not (math.isfinite(self.lam) and self.lam >= 0):
                raise ValueError(f"lam must be >= 0 and finite, got {_short(self.lam)}")
        put("symmetric", check_bool(self.symmetric, "symmetric"))
        put("outlier_format", _choice(self.outlier_format, "outlier_format", OUTLIER_FORMATS))
        put("scale_dtype", _choice(self.scale_dtype, "scale_dtype", SCALE_DTYPES))
        put("zero_point", _choice(self.zero_point, "zero_point", ZERO_POINTS))
        put("column_scaling", _choice(self.column_scaling, "column_scaling", COLUMN_SCALINGS))
        if self.threads is not None:
            if not _is_int(self.threads):
                raise TypeError(f"threads must be an int or None, got {type(self.threads).__name__}")
            put("threads", int(self.threads))
            if self.threads < 1:
                raise ValueError(f"threads must be >= 1, got {_short(self.threads)}")
            if self.threads > INT_MAX:
                raise ValueError(f"threads must be at most {INT_MAX}, got {_short(self.threads)}")

    def replace(self, **changes: Any) -> "QuantConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantConfig":
        return _from_dict(cls, d)

    def resolved(self, rows: int) -> "QuantConfig":
        """The config with column_scaling "auto" decided for a matrix of `rows` rows."""
        if self.column_scaling != "auto":
            return self
        out = copy.copy(self)  # (a valid value: no second validation, this runs once per tensor)
        object.__setattr__(out, "column_scaling", "mean_abs" if rows >= AUTO_COLUMN_SCALING_MIN_ROWS else "none")
        return out

    def core_config(self, threads: Optional[int] = None) -> dict:
        """The config as the C core takes it: a dict with exactly the fields of adpq_config in
        csrc/adpq.h (its `route` aside, a keyword of _core.quantize; see adpq/_core.pyi)."""
        t = useful_threads(threads if threads is not None else self.threads)
        return {
            "bits": int(self.bits),
            "group_size": int(self.group_size),
            "scope": _SCOPE_CODE[self.outlier_scope],
            "use_lam": int(self.lam is not None),
            "outlier_ratio": float(self.outlier_ratio),
            "lam": float(self.lam if self.lam is not None else 0.0),
            "gamma": float(self.gamma),
            "symmetric": int(bool(self.symmetric)),
            "outlier_format": _FORMAT_CODE[self.outlier_format],
            "scale_dtype": dtypes.C_CODE[self.scale_dtype],
            "threads": int(t),
            "integer_zero": int(self.zero_point == "integer"),
        }


GPTQ_GRIDS = ("fixed", "refit")
MAX_GPTQ_BLOCK = 1 << 20


@dataclass(frozen=True)
class GptqConfig:
    """How adpq.quantize(w, hessian=H) refines AdpQ's result with GPTQ (docs/DESIGN.md 2.7).

    damp        added to H's diagonal, as a fraction of its mean (>= 0; GPTQ's percdamp). 0.1 (not
                GPTQ's 0.01): lower perplexity in and off domain on SmolLM2 (RESULTS.md, "Issue 14").
    block_size  columns per lazy batch update (>= 1): speed only, the same result up to float
                rounding.
    act_order   round the columns in order of descending H_jj (the most active inputs first);
                the group grids are then static (the start's), as GPTQ's static groups.
    grids       "fixed": keep the start's group grids (AdpQ's, or RTN's with outlier_ratio=0) and
                change the codes only; "refit": recompute each group's grid from its compensated
                weights when its first column is reached (natural order only: with act_order the
                grids stay fixed).
    The outlier set and the column scales are always the start's; bits per weight never change.
    """

    damp: float = 0.1
    block_size: int = 128
    act_order: bool = True
    grids: str = "fixed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "damp", check_real(self.damp, "damp"))
        if not (math.isfinite(self.damp) and 0.0 <= self.damp <= 1e6):
            raise ValueError(f"damp must be in [0, 1e6], got {_short(self.damp)}")
        object.__setattr__(self, "block_size", check_int(self.block_size, "block_size", 1, MAX_GPTQ_BLOCK))
        object.__setattr__(self, "act_order", check_bool(self.act_order, "act_order"))
        object.__setattr__(self, "grids", _choice(self.grids, "grids", GPTQ_GRIDS))

    def replace(self, **changes: Any) -> "GptqConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GptqConfig":
        return _from_dict(cls, d)


CAFEQ_PROXIES = ("product", "range")
CAFEQ_INITS = ("hadamard", "identity")
MAX_CAFEQ_STEPS = 100_000
MAX_CAFEQ_ROUNDS = 100


@dataclass(frozen=True)
class CafeqConfig:
    """CafeQ on each attention layer's value/output pair (docs/DESIGN.md 2.8): a learned invertible
    transform M per KV head (W_v <- M W_v, W_o <- W_o M^-1: the float model is unchanged), then
    paired rounding that lowers || W_o W_v - Ŵ_o Ŵ_v ||_F. No data is used.

    The defaults are what lowered perplexity on SmolLM2 (RESULTS.md, "Issue 15"): paired rounding
    with a strong damping, and no learned transform (steps 0, init identity): the transforms lowered
    the pair error but raised perplexity. `steps=100, init="hadamard"` learns one.

    steps   Adam steps optimizing M (>= 0; 0 keeps the initial M).
    lr      Adam's learning rate on M's entries (> 0).
    proxy   what M minimizes: "product", the expected product error under the quantizer's
            rounding noise (each group's step from its range); "range", a LogSumExp (smooth
            maximum) of the group ranges of both matrices, each relative to its untransformed mean.
    init    M's start: "hadamard" (a random-sign Hadamard matrix, or a random rotation when
            head_dim is not a power of two; rotations spread outliers over the head) or "identity".
    rounds  alternating passes of paired rounding (>= 0; 0: the transformed pair is quantized as
            any other matrix). Each pass rounds W_o against W_o W_v with Ŵ_v fixed, then W_v with Ŵ_o
            fixed (least-squares targets from pseudo-inverses, error feedback through the partner's
            Gram matrix); a pass is kept only if it lowers the product error.
    damp    added to the partner's Gram diagonal in the rounding, as a fraction of its mean (>= 0).
    seed    the random signs / rotation of init (the result is deterministic for a seed).
    norm_weights  weigh W_v's input columns by the RMSNorm weight in front of the attention (the
            scale the norm gives each input channel), and W_o's output rows by a norm after the
            attention where there is one (Gemma 2/3), in the proxy and the rounding; False: plain
            Frobenius norms.
    """

    steps: int = 0
    lr: float = 1e-2
    proxy: str = "product"
    init: str = "identity"
    rounds: int = 2
    damp: float = 1.0
    seed: int = 0
    norm_weights: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check_int(self.steps, "steps", 0, MAX_CAFEQ_STEPS))
        object.__setattr__(self, "norm_weights", check_bool(self.norm_weights, "norm_weights"))
        object.__setattr__(self, "lr", check_real(self.lr, "lr"))
        if not (math.isfinite(self.lr) and 0.0 < self.lr <= 1.0):
            raise ValueError(f"lr must be in (0, 1], got {_short(self.lr)}")
        object.__setattr__(self, "proxy", _choice(self.proxy, "proxy", CAFEQ_PROXIES))
        object.__setattr__(self, "init", _choice(self.init, "init", CAFEQ_INITS))
        object.__setattr__(self, "rounds", check_int(self.rounds, "rounds", 0, MAX_CAFEQ_ROUNDS))
        object.__setattr__(self, "damp", check_real(self.damp, "damp"))
        if not (math.isfinite(self.damp) and 0.0 <= self.damp <= 1e6):
            raise ValueError(f"damp must be in [0, 1e6], got {_short(self.damp)}")
        object.__setattr__(self, "seed", check_int(self.seed, "seed", 0, 2**63 - 1))

    def replace(self, **changes: Any) -> "CafeqConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CafeqConfig":
        return _from_dict(cls, d)
