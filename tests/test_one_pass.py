"""Tensor scope in one pass (csrc/threshold.c): rows are quantized with a sampled estimate of the
threshold and the groups it got wrong are quantized again. The result must be the reference's, bit
for bit, whether the estimate was right, wrong in places (fixed groups, ties at the threshold) or
useless (too few candidates: the two-pass route)."""
import itertools
import zlib

import ml_dtypes
import numpy as np
import pytest

import adpq
from adpq.core.quantize import quantize_diagnostics

from test_reference import assert_same_arrays, check_config

# Small matrices take two passes by default (ADPQ_ONE_PASS_MIN_BYTES): the tests force the one pass
# with one_pass="always" ("never" forces two).
ALWAYS = "always"


# large enough to be sampled (more than 8192 weights); rows that end in a shorter group, cols % 8 != 0
SHAPES = [(64, 300), (128, 1000), (40, 576), (256, 130)]
DISTS = ["t", "ties", "loud_columns", "loud_rows"]


def make(shape, dist, dtype, rng):
    if dist == "t":
        w = rng.standard_t(3, size=shape) * 0.02
    elif dist == "ties":  # few distinct magnitudes: partial ties at the threshold
        w = np.round(rng.standard_t(3, size=shape) * 20) * 0.001
    elif dist == "loud_columns":
        w = rng.standard_normal(size=shape) * 0.02
        w[:, rng.choice(shape[1], 5, replace=False)] *= 30
    else:
        w = rng.standard_normal(size=shape) * 0.02
        w[rng.choice(shape[0], 3, replace=False), :] *= 20
    w = w.astype(np.float32)
    return w.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else w.astype(dtype)


def random_config(rng):
    return adpq.QuantConfig(
        bits=int(rng.choice([2, 3, 4, 8])), group_size=int(rng.choice([8, 32, 128, -1])), outlier_scope="tensor",
        outlier_ratio=float(rng.choice([0.003, 0.01, 0.1])), symmetric=bool(rng.integers(2)),
        outlier_format=str(rng.choice(["group", "fp16"])), column_scaling=str(rng.choice(["none", "mean_abs"])))


def core_stats(w, cfg, one_pass=ALWAYS):
    """(passes, fixed groups) of the C quantizer on w."""
    d = quantize_diagnostics(w, cfg, one_pass=one_pass)
    return d["passes"], d["fixed_groups"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dist", DISTS)
def test_one_pass_matches_reference(shape, dist):
    rng = np.random.default_rng(zlib.crc32(repr((shape, dist)).encode()))
    one_pass = fixed = 0
    for dtype in ["float32", "float16", "bfloat16"]:
        w = make(shape, dist, dtype, rng)
        for _ in range(2):
            cfg = random_config(rng)
            check_config(w, cfg, ALWAYS)
            passes, n_fixed = core_stats(w, cfg)
            one_pass += passes == 1
            fixed += n_fixed
    assert one_pass >= 3  # (ties at the sample's threshold may leave it no estimate: two passes)
    assert fixed > 0  # the fix-up ran: the estimate was wrong somewhere


def test_ties_at_the_threshold_are_fixed_in_row_major_order():
    rng = np.random.default_rng(7)
    w = make((128, 1000), "ties", "float32", rng)
    for fmt, sym in itertools.product(["group", "fp16"], [False, True]):
        cfg = adpq.QuantConfig(bits=3, group_size=32, outlier_ratio=0.01, symmetric=sym, outlier_format=fmt,
                               column_scaling="none")
        qt = check_config(w, cfg, ALWAYS)
        assert qt.outlier_mask().sum() == round(0.01 * w.size)
        assert core_stats(w, cfg)[1] > 0


def test_unlucky_sample_takes_two_passes():
    """Every sampled weight loud, the rest quiet: the sample's threshold leaves fewer than k
    candidates, so the one pass is undone and the two passes give the same result."""
    rows, cols = 64, 300
    n = rows * cols
    sw = (max(n // 64, 4096) + rows - 1) // rows  # the sample's window per row (threshold.c)
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((rows, cols)) * 0.01).astype(np.float32)
    for r in range(rows):
        off = (r * 2654435761) % (cols - sw + 1)
        w[r, off:off + sw] = rng.uniform(10, 20, size=sw).astype(np.float32) * rng.choice([-1, 1], size=sw)
    for fmt in ["group", "fp16"]:
        cfg = adpq.QuantConfig(bits=4, group_size=32, outlier_ratio=0.1, outlier_format=fmt, column_scaling="none")
        check_config(w, cfg, ALWAYS)
        assert core_stats(w, cfg)[0] == 2
    # and with a sample that is right, one pass
    w2 = (rng.standard_t(3, size=(rows, cols)) * 0.01).astype(np.float32)
    assert core_stats(w2, adpq.QuantConfig(outlier_ratio=0.1, column_scaling="none"))[0] == 1


def test_one_pass_and_two_passes_agree():
    """The same arrays either way, on a matrix too large for the reference to be quick."""
    rng = np.random.default_rng(11)
    w = (rng.standard_t(4, size=(1024, 1100)) * 0.02).astype(np.float32)
    for cfg in [adpq.QuantConfig(), adpq.QuantConfig(bits=4, group_size=64, symmetric=False, outlier_format="group"),
                adpq.QuantConfig(bits=2, outlier_ratio=0.003, column_scaling="none", threads=3)]:
        one = adpq.quantize(w, config=cfg, one_pass="always").arrays()
        assert core_stats(w, cfg)[0] == 1
        two = adpq.quantize(w, config=cfg, one_pass="never").arrays()
        assert core_stats(w, cfg, "never") == (2, 0)
        assert_same_arrays(one, two)


def test_default_choice():
    """One pass for column-scaled matrices of 24 MiB and more, two otherwise (threshold.c)."""
    rng = np.random.default_rng(12)
    small = (rng.standard_t(4, size=(256, 1000)) * 0.02).astype(np.float32)
    assert core_stats(small, adpq.QuantConfig(), "auto")[0] == 2  # in cache: two passes are cheaper
    big = (rng.standard_t(4, size=(2048, 3200)) * 0.02).astype(np.float32)  # 25 MiB
    assert core_stats(big, adpq.QuantConfig(), "auto")[0] == 1
    assert core_stats(big, adpq.QuantConfig(column_scaling="none"), "auto")[0] == 2
    assert adpq.quantize(small, one_pass="auto").arrays()["codes"].tobytes() == \
        adpq.quantize(small, one_pass="always").arrays()["codes"].tobytes()


def test_one_pass_values():
    w = np.ones((8, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="one_pass must be one of"):
        adpq.quantize(w, one_pass="sometimes")
    with pytest.raises(ValueError, match="one_pass must be one of"):
        quantize_diagnostics(w, one_pass=True)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_errors_in_one_pass(dtype):
    """The same messages as two passes: NaN/Inf (count, first position), fp16 overflow, scale overflow."""
    rng = np.random.default_rng(13)
    w = rng.standard_normal((300, 400)).astype(np.float32)
    w[200, 17], w[250, 3] = np.nan, np.inf
    w = w.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else w.astype(dtype)
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\).*row 200, column 17"):
        adpq.quantize(w, one_pass=ALWAYS)
    big = rng.standard_normal((300, 400)).astype(np.float32)
    big[5, 5] = 1e6
    with pytest.raises(ValueError, match="row 5: an outlier exceeds the float16 range"):
        adpq.quantize(big, outlier_format="fp16", column_scaling="none", one_pass=ALWAYS)
    with pytest.raises(ValueError, match="does not fit in float16"):
        adpq.quantize(big * 1e6, column_scaling="none", one_pass=ALWAYS)
