"""Golden hashes: fixed matrices and configs, a SHA-256 of every stored array, of the dequantized values,
of the outlier mask and of the metrics. A refactor that changes no behaviour leaves every hash as it is.

The matrices come from integer arithmetic and float64 rationals only (no NumPy random stream, no libm),
so they are the same on every platform and NumPy version. `python tests/test_golden.py --write`
rewrites tests/data/golden.json; do that only for a change that is meant to alter the output, and
say so in its commit.
"""
import hashlib
import json
import os
import sys

import ml_dtypes
import numpy as np
import pytest

import adpq

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden.json")


def heavy_tailed(rows, cols, seed, dtype="float32"):
    """A heavy-tailed matrix from a 64-bit LCG: (u - 1/2) / (u (1 - u)), u uniform in (0, 1)."""
    n = rows * cols
    x = (np.arange(n, dtype=np.uint64) + np.uint64(seed * 7919 + 1)) * np.uint64(6364136223846793005)
    x = x ^ (x >> np.uint64(29))
    x = x * np.uint64(1442695040888963407)
    u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    w = ((u - 0.5) / (u * (1.0 - u)) * 0.01).reshape(rows, cols)
    w[:, 3] *= 8.0  # an input channel with large weights, as real models have
    w = w.astype(np.float32)
    return w.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else w.astype(dtype)


# (name, rows, cols, seed, input dtype, config fields)
CASES = [
    ("default", 96, 200, 1, "float32", {}),
    ("rtn_b4_g32_asym", 64, 256, 2, "float32", dict(bits=4, group_size=32, outlier_ratio=0.0, symmetric=False)),
    ("b2_g64_group_format", 80, 136, 3, "float32", dict(bits=2, group_size=64, outlier_format="group")),
    ("b3_group_scope_asym_float_zero", 72, 192, 4, "float16",
     dict(outlier_scope="group", symmetric=False, zero_point="float", outlier_ratio=0.03)),
    ("b8_per_channel_bf16_scales", 40, 100, 5, "bfloat16", dict(bits=8, group_size=-1, scale_dtype="bfloat16")),
    ("lam_tensor_gamma2", 64, 128, 6, "float32", dict(lam=3.0, gamma=2.0, column_scaling="none")),
    ("lam_group_f32_scales", 33, 77, 7, "float16",
     dict(lam=1.5, outlier_scope="group", group_size=16, scale_dtype="float32", outlier_format="group",
          symmetric=False)),
    ("one_row", 1, 300, 8, "float32", dict(bits=4, group_size=8)),
    ("small_auto_no_columns", 16, 512, 9, "bfloat16", dict(outlier_ratio=0.05, group_size=256)),
    # over the one-pass size (24 MiB of weights with column scaling): the sampled-threshold route
    ("one_pass_route", 1536, 4352, 10, "float32", dict(bits=3, group_size=128)),
]


def _digest(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def case_digests(rows, cols, seed, dtype, fields):
    w = heavy_tailed(rows, cols, seed, dtype)
    cfg = adpq.QuantConfig(**fields, threads=2)
    qt = adpq.quantize(w, config=cfg)
    m = adpq.metrics(w, qt, threads=1)
    return {
        "arrays": _digest(qt.arrays()),
        "dequantized": _digest({"w_hat": qt.dequantize()}),
        "mask": _digest({"mask": adpq.outlier_mask(w, config=cfg)}),
        "bits_per_weight": round(float(qt.bits_per_weight), 9),
        "metrics": {k: float(f"{float(v):.10g}") for k, v in sorted(m.items()) if np.isscalar(v)},
    }


def _load():
    with open(GOLDEN) as f:
        return json.load(f)


@pytest.mark.parametrize("name,rows,cols,seed,dtype,fields", CASES, ids=[c[0] for c in CASES])
def test_golden(name, rows, cols, seed, dtype, fields):
    assert case_digests(rows, cols, seed, dtype, fields) == _load()[name]


def test_golden_covers_every_case():
    assert sorted(_load()) == sorted(c[0] for c in CASES)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_golden.py --write")
    out = {c[0]: case_digests(*c[1:]) for c in CASES}
    with open(GOLDEN, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(out)} cases to {GOLDEN}")
