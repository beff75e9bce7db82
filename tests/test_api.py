"""The notebook API: QuantizedTensor, outlier selection, bits per weight, every bad input."""
import dataclasses
import math
import threading

import ml_dtypes
import numpy as np
import pytest

import adpq
from adpq import reference


def weights(shape=(32, 576), seed=0, df=3):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(df, size=shape) * 0.02).astype(np.float32)


def test_config_object_and_keywords_are_the_same():
    w = weights()
    cfg = adpq.QuantConfig(bits=4, group_size=64, outlier_ratio=0.02, outlier_scope="group", symmetric=True)
    a = adpq.quantize(w, config=cfg).arrays()
    b = adpq.quantize(w, bits=4, group_size=64, outlier_ratio=0.02, outlier_scope="group", symmetric=True).arrays()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # keywords override the config
    qt = adpq.quantize(w, config=cfg, bits=2)
    assert qt.config.bits == 2 and qt.config.group_size == 64
    assert adpq.QuantConfig.from_dict(cfg.to_dict()) == cfg


def test_rows_end_in_a_shorter_group():
    w = weights((8, 576))
    qt = adpq.quantize(w, bits=3, group_size=128, outlier_ratio=0, symmetric=False)
    assert qt.arrays()["scales"].shape == (8, 5)  # 4 groups of 128 and one of 64
    # the last group's scale comes from its 64 weights only
    tail = w[:, 512:]
    s = qt.arrays()["scales"][:, 4].astype(np.float32)
    expected = ((tail.max(1) - tail.min(1)) / 7).astype(np.float16).astype(np.float32)
    assert np.allclose(s, expected, rtol=1e-3)


@pytest.mark.parametrize("scope", ["tensor", "group"])
@pytest.mark.parametrize("ratio", [0.001, 0.01, 0.05, 0.25])
def test_solved_outliers_are_exactly_the_largest_of_their_scope(scope, ratio):
    w = weights((40, 300), seed=2, df=4)
    g = 64
    qt = adpq.quantize(w, bits=3, group_size=g, outlier_ratio=ratio, outlier_scope=scope)
    mask = qt.outlier_mask()
    a = np.abs(w)
    if scope == "tensor":
        k = math.floor(ratio * w.size + 0.5)
        assert mask.sum() == qt.num_outliers == k
        assert a[mask].min() >= a[~mask].max()
    else:
        for j in range(0, 300, g):
            blk, m = a[:, j:j + g], mask[:, j:j + g]
            k = math.floor(ratio * blk.shape[1] + 0.5)
            assert (m.sum(axis=1) == k).all()
            for r in range(blk.shape[0]):
                if 0 < k < blk.shape[1]:
                    assert blk[r][m[r]].min() >= blk[r][~m[r]].max()


def test_zero_weights_are_never_outliers():
    w = np.zeros((4, 64), np.float32)
    w[0, :3] = [1.0, -2.0, 3.0]
    qt = adpq.quantize(w, bits=3, group_size=32, outlier_ratio=0.5)
    assert qt.num_outliers == 3
    assert np.array_equal(np.flatnonzero(qt.outlier_mask()), [0, 1, 2])


def test_ratio_zero_is_rtn():
    w = weights()
    qt = adpq.quantize(w, bits=3, group_size=128, outlier_ratio=0, symmetric=False)
    assert qt.num_outliers == 0
    assert set(qt.arrays()) == {"codes", "scales", "zeros"}
    # plain asymmetric min-max RTN, written out
    g = w.reshape(32, -1, 64)  # group_size 128 with 576 columns is ragged; check a g=64 RTN instead
    qt64 = adpq.quantize(w, bits=3, group_size=64, outlier_ratio=0, symmetric=False, zero_point="float")
    mn, mx = g.min(2), g.max(2)
    s = ((mx - mn) / np.float32(7)).astype(np.float16).astype(np.float32)
    z = (-mn / s).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(g * (np.float32(1) / s)[..., None] + z[..., None]), 0, 7)
    w_hat = ((q - z[..., None]) * s[..., None]).reshape(w.shape)
    assert np.array_equal(qt64.dequantize(), w_hat.astype(np.float32))


def test_bits_per_weight_is_measured_from_the_arrays():
    w = weights((64, 576))
    for kw in [dict(outlier_ratio=0), dict(outlier_ratio=0.01), dict(outlier_format="fp16"),
               dict(symmetric=True, bits=4, group_size=32), dict(group_size=-1, bits=2)]:
        qt = adpq.quantize(w, **kw)
        total = sum(a.nbytes for a in qt.arrays().values())
        assert qt.bits_per_weight == pytest.approx(8 * total / w.size)
        br = qt.bits_breakdown()
        assert sum(br.values()) == pytest.approx(qt.bits_per_weight)
        assert br["codes"] == pytest.approx(qt.config.bits * 1.0, abs=8 / w.size)
    rtn = adpq.quantize(w, bits=3, group_size=128, outlier_ratio=0, symmetric=False, column_scaling="none")
    # 3.0 bits of codes + two fp16 numbers per group of 128 (and per short group of 64)
    assert rtn.bits_per_weight == pytest.approx(3 + 2 * 16 * 5 / 576)
    sym = adpq.quantize(w, bits=3, group_size=128, outlier_ratio=0, symmetric=True, column_scaling="none")
    assert sym.bits_per_weight == pytest.approx(3 + 16 * 5 / 576)  # no zero-points
    # the default ("auto") scales the columns of a 64-row matrix: 16 more bits per column
    cs = adpq.quantize(w, bits=3, group_size=128, outlier_ratio=0, symmetric=True)
    assert cs.config.column_scaling == "mean_abs"
    assert cs.bits_per_weight == pytest.approx(3 + 16 * 5 / 576 + 16 / 64)
    small = adpq.quantize(w[:63], bits=3, outlier_ratio=0)
    assert small.config.column_scaling == "none" and "column_scales" not in small.arrays()


def test_index_lists_use_ceil_log2_group_bits():
    w = weights((16, 576))
    for g, ib in [(8, 3), (32, 5), (100, 7), (128, 7), (-1, 10)]:
        qt = adpq.quantize(w, bits=3, group_size=g, outlier_ratio=0.02)
        assert qt.layout.index_bits == ib
        assert qt.arrays()["outlier_indices"].nbytes == (qt.num_outliers * ib + 7) // 8


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_input_layouts_give_identical_results(dtype):
    base = weights((24, 160))
    w = base.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else base.astype(dtype)
    ref = adpq.quantize(np.ascontiguousarray(w), bits=3, group_size=32).arrays()
    fortran = np.asfortranarray(w)
    padded = np.zeros((24, 200), w.dtype)
    padded[:, :160] = w
    strided_rows = np.zeros((48, 160), w.dtype)
    strided_rows[::2] = w
    cols_strided = np.zeros((24, 320), w.dtype)
    cols_strided[:, ::2] = w
    for view in (fortran, padded[:, :160], strided_rows[::2], cols_strided[:, ::2]):
        got = adpq.quantize(view, bits=3, group_size=32).arrays()
        assert all(np.array_equal(ref[k], got[k]) for k in ref)
    qt = adpq.quantize(w, bits=3, group_size=32)
    assert qt.dtype == dtype
    assert qt.dequantize().dtype == np.float32
    assert qt.dequantize(dtype="input").dtype == w.dtype


def test_one_dimensional_input():
    w = weights((1, 300))[0]
    qt = adpq.quantize(w, bits=4, group_size=64, outlier_ratio=0.02)
    assert qt.shape == (300,)
    assert qt.dequantize().shape == (300,)
    assert qt.outlier_mask().shape == (300,)


def test_soft_threshold_formula_and_mask():
    w = weights((16, 256), seed=5)
    gamma = 1.5
    b, mask = adpq.soft_threshold(w, outlier_ratio=0.02, gamma=gamma, return_mask=True)
    assert np.array_equal(mask, adpq.quantize(w, outlier_ratio=0.02).outlier_mask())
    a = np.abs(w.astype(np.float64))
    t = a[~mask].max()
    expected = np.where(mask, np.sign(w) * np.maximum(a - t ** (1 + gamma) / a ** gamma, 0), 0)
    assert np.allclose(b, expected.astype(np.float32), rtol=1e-6, atol=0)
    assert (np.sign(b[mask]) == np.sign(w[mask])).all() and (np.abs(b) <= np.abs(w)).all()
    # explicit lambda: the outlier set is |w/scale|^(1+gamma) > lam/2
    lam = 30.0
    b2, m2 = adpq.soft_threshold(w, lam=lam, gamma=gamma, return_mask=True)
    nz = np.sort(np.abs(w[w != 0]))
    scale = float(nz[(nz.size - 1) // 2])
    expected_mask = (np.abs(w.astype(np.float64)) / scale) ** (1 + gamma) > lam / 2
    assert np.array_equal(m2, expected_mask)
    assert np.array_equal(m2, reference.outlier_mask(w, adpq.QuantConfig(lam=lam, gamma=gamma)))


def test_gil_is_released_during_quantization():
    w = weights((1024, 2048), seed=1)
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(1)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        for _ in range(3):
            adpq.quantize(w, bits=3, outlier_ratio=0.01, threads=1)
    finally:
        done.set()
        t.join()
    assert len(ticks) > 100  # the other Python thread ran while C worked


def test_metrics_match_a_float64_numpy_computation():
    w = weights((100, 300), seed=3)
    for dtype in (np.float32, np.float16):
        wd = w.astype(dtype)
        qt = adpq.quantize(wd, bits=3, group_size=64)
        m = adpq.metrics(wd, qt)
        a = wd.astype(np.float64)
        b = qt.dequantize().astype(np.float64)
        e = a - b
        assert m["mse"] == pytest.approx(np.mean(e * e), rel=1e-12)
        assert m["rel_fro_error"] == pytest.approx(np.sqrt((e * e).sum() / (a * a).sum()), rel=1e-12)
        assert m["max_abs_error"] == np.abs(e).max()
        assert m["kl_divergence"] == pytest.approx(_numpy_kl(a, b), rel=1e-12)
        assert adpq.metrics(wd, qt.dequantize()) == {k: v for k, v in m.items()
                                                     if k not in ("num_outliers", "bits_per_weight")}
    with pytest.raises(ValueError, match="shape"):
        adpq.metrics(w, w[:, :10])


def _numpy_kl(a, b, bins=256):
    """KL of the two histograms as metrics documents it, in float64 NumPy."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())

    def hist(x):
        i = ((x.ravel() - lo) * (bins / (hi - lo))).astype(np.int64)
        return np.bincount(np.clip(i, 0, bins - 1), minlength=bins)

    return reference.kl_from_histograms(hist(a), hist(b))


def test_column_scales_of_the_c_core_match_columns_py():
    """Column scales and multipliers from C, bit for bit against columns.py, edge columns included:
    zero, subnormal, rounding to even, beyond bfloat16's range, non-finite."""
    from adpq import _core
    from adpq.reference import columns
    from adpq.core.dtypes import C_CODE as _DTYPE_CODE

    w = weights((70, 12), seed=8)
    w[:, 0] = 0
    w[:, 1] = np.float32(1e-39)                       # mean below float32's normal range
    w[:, 2] = np.float32(1.0) + np.float32(2.0 ** -8)  # a tie: rounds to even
    w[:3, 3] = np.float32(3.0e38)                     # the float32 block sum overflows
    w[5, 4] = np.inf
    one_row = np.array([[3.4e38, 3.3e38, 1.0]], np.float32)  # 3.4e38 rounds past bfloat16's largest value
    cs = adpq.QuantConfig(column_scaling="mean_abs")
    for m in (w, w.astype(ml_dtypes.bfloat16), one_row):
        dtype = "bfloat16" if m.dtype == ml_dtypes.bfloat16 else "float32"
        bits, mul = _core.column_scales(m, _DTYPE_CODE[dtype], 3)
        with np.errstate(over="ignore"):
            ref = reference.columns.scaled(m.astype(np.float32), cs)[1]  # the means as C sums them, then columns.py
        assert bits.tobytes() == ref.view(np.uint16).tobytes()
        assert mul.tobytes() == columns.multipliers(ref).tobytes()
        if m is not one_row:
            assert list(bits.view(ml_dtypes.bfloat16)[[0, 1, 3, 4]]) == [1, 1, 1, 1]
    assert bits.view(ml_dtypes.bfloat16)[0] == 1 and bits.view(ml_dtypes.bfloat16)[1] != 1


def test_kl_of_the_c_core_matches_the_reference_on_its_histograms():
    """The C core computes the KL from its histograms (reference.kl_from_histograms in NumPy)."""
    from adpq import _core, reference
    from adpq.core.dtypes import C_CODE as _DTYPE_CODE

    w = weights((64, 200), seed=5)
    for hat in (adpq.quantize(w, bits=2).dequantize(), w + np.float32(1e-3), w):
        for bins in (1, 7, 256):
            s = _core.error_stats(w, _DTYPE_CODE["float32"], hat, bins, 2)
            ref = reference.kl_from_histograms(s["hist_w"], s["hist_hat"])
            assert s["kl_divergence"] == pytest.approx(ref, rel=1e-12, abs=1e-15)
            assert s["hist_w"].sum() == w.size and s["hist_hat"].sum() == w.size
    empty = np.zeros(8, np.int64)
    assert reference.kl_from_histograms(empty, empty) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="epsilon"):
        _core.error_stats(w, _DTYPE_CODE["float32"], w, 8, 1, None, 0.0)


@pytest.mark.parametrize("where", ["inside", "below", "above", "both", "on_extreme_rows"])
def test_kl_bins_when_w_hat_leaves_the_range_of_w(where):
    """The C core guesses the histogram range from w's extremes and w_hat on the rows holding them,
    fills the histograms in its first pass, and redoes them when the exact range differs: every
    case must give the documented bins, on both kernels and any thread count."""
    from adpq import _core

    w = weights((40, 300), seed=21)
    hat = w + np.float32(0.01) * weights((40, 300), seed=22)
    np.clip(hat, w.min(), w.max(), out=hat)  # inside w's range
    r_min, r_max = np.unravel_index(np.argmin(w), w.shape)[0], np.unravel_index(np.argmax(w), w.shape)[0]
    other = next(r for r in range(40) if r not in (r_min, r_max))
    if where in ("below", "both"):
        hat[other, 7] = w.min() - 0.5
    if where in ("above", "both"):
        hat[other, 9] = w.max() + 0.25
    if where == "on_extreme_rows":
        hat[r_min, 3] = w.min() - 0.5
        hat[r_max, 5] = w.max() + 0.25
    expected = _numpy_kl(w, hat)
    try:
        for kernels in ("scalar", "auto"):
            _core.set_kernels(kernels)
            for threads in (1, 3):
                assert adpq.metrics(w, hat, threads=threads)["kl_divergence"] == pytest.approx(expected, rel=1e-12)
    finally:
        _core.set_kernels("auto")


@pytest.mark.parametrize("kw", [
    dict(bits=3, group_size=128, column_scaling="mean_abs"),
    dict(bits=4, group_size=64, symmetric=False, outlier_format="group", column_scaling="mean_abs"),
    dict(bits=2, group_size=-1, outlier_ratio=0.0, column_scaling="none"),
    dict(bits=3, group_size=32, outlier_scope="group", outlier_ratio=0.05, outlier_format="group"),
])
def test_metrics_of_a_quantized_tensor_equal_those_of_its_dequantization(kw):
    """metrics(w, qt) dequantizes row by row inside the C core (w_hat never stored): the same
    numbers as metrics(w, qt.dequantize()), for every outlier format, column scaling, ragged rows,
    16-bit input and any thread count."""
    w = weights((70, 300), seed=11)
    for dtype in (np.float32, ml_dtypes.bfloat16):
        wd = w.astype(dtype)
        qt = adpq.quantize(wd, **kw)
        for threads in (1, 3):
            fused = adpq.metrics(wd, qt, threads=threads)
            plain = adpq.metrics(wd, qt.dequantize(), threads=threads)
            assert {k: v for k, v in fused.items() if k in plain} == plain
    with pytest.raises(ValueError, match="shape"):
        adpq.metrics(w[:, :200], qt)


@pytest.mark.parametrize("kw", [dict(), dict(symmetric=False, outlier_format="group"), dict(outlier_ratio=0.0),
                                dict(group_size=-1, column_scaling="none"), dict(outlier_scope="group")])
def test_quantize_result_passes_the_checks_it_skips(kw):
    """quantize builds its QuantizedTensor without re-validating the C core's arrays: the same
    arrays must pass from_arrays' checks and give the same totals and layout."""
    w = weights((90, 200), seed=4)
    for shape_w in (w, w[0]):
        qt = adpq.quantize(shape_w, **kw)
        again = adpq.QuantizedTensor.from_arrays(qt.arrays(), qt.shape, qt.config, qt.dtype)
        assert (again.num_outliers, again.num_outlier_groups, again.layout, again.config) == \
            (qt.num_outliers, qt.num_outlier_groups, qt.layout, qt.config)
        assert np.array_equal(again.dequantize(), qt.dequantize())


def test_repr_and_metrics():
    w = weights()
    qt = adpq.quantize(w)
    assert "bits_per_weight" in repr(qt)
    m = adpq.metrics(w, qt)
    assert set(m) >= {"mse", "rel_fro_error", "sqnr_db", "max_abs_error", "kl_divergence", "num_outliers",
                      "bits_per_weight"}
    assert m["mse"] > 0 and m["sqnr_db"] > 0 and m["kl_divergence"] >= 0
    exact = adpq.metrics(w, w)
    assert exact["mse"] == 0 and exact["sqnr_db"] == float("inf") and exact["kl_divergence"] == pytest.approx(0)


# ---------------------------------------------------------------------------- bad input

BAD_CONFIGS = [
    (dict(bits=5), ValueError, "bits"),
    (dict(bits=1), ValueError, "bits"),
    (dict(bits=3.0), TypeError, "bits"),
    (dict(group_size=0), ValueError, "group_size"),
    (dict(group_size=-2), ValueError, "group_size"),
    (dict(group_size=4), ValueError, "group_size"),
    (dict(outlier_ratio=-0.01), ValueError, "outlier_ratio"),
    (dict(outlier_ratio=0.6), ValueError, "outlier_ratio"),
    (dict(outlier_ratio=float("nan")), ValueError, "outlier_ratio"),
    (dict(gamma=0), ValueError, "gamma"),
    (dict(gamma=-1.0), ValueError, "gamma"),
    (dict(lam=-1.0), ValueError, "lam"),
    (dict(lam=float("inf")), ValueError, "lam"),
    (dict(threads=0), ValueError, "threads"),
    (dict(outlier_scope="row"), ValueError, "outlier_scope"),
    (dict(outlier_format="int8"), ValueError, "outlier_format"),
    (dict(scale_dtype="float8"), ValueError, "scale_dtype"),
    (dict(column_scaling="max"), ValueError, "column_scaling"),
]


@pytest.mark.parametrize("kw,exc,word", BAD_CONFIGS)
def test_bad_parameters(kw, exc, word):
    with pytest.raises(exc, match=word):
        adpq.quantize(weights((4, 64)), **kw)
    with pytest.raises(exc, match=word):
        adpq.QuantConfig(**kw)


@pytest.mark.parametrize("bad,exc,word", [
    (np.zeros((0, 16), np.float32), ValueError, "empty"),
    (np.zeros((4, 0), np.float32), ValueError, "empty"),
    (np.zeros((2, 3, 16), np.float32), ValueError, "3-D"),
    (np.float32(1.0) * np.ones(()), ValueError, "0-D"),
    (np.ones((4, 16), np.int32), TypeError, "dtype"),
    (np.ones((4, 16), np.uint8), TypeError, "dtype"),
    (np.ones((4, 16), np.complex64), TypeError, "dtype"),
    (np.ones((4, 16), bool), TypeError, "dtype"),
    ("not an array", TypeError, "ndarray"),
])
def test_bad_arrays(bad, exc, word):
    with pytest.raises(exc, match=word):
        adpq.quantize(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("scope", ["tensor", "group"])
def test_non_finite_weights_say_how_many_and_where(value, scope):
    w = weights((64, 256))
    w[5, 17] = value
    w[40, 3] = value
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\).*row 5, column 17"):
        adpq.quantize(w, outlier_scope=scope)
    with pytest.raises(ValueError, match="non-finite"):
        adpq.quantize(w.astype(np.float16), outlier_ratio=0)
    # bfloat16 rows are scanned without a conversion in the tensor-scope threshold pass
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\).*row 5, column 17"):
        adpq.quantize(w.astype(ml_dtypes.bfloat16), outlier_scope=scope)
    with pytest.raises(ValueError, match="non-finite"):
        reference.quantize(w, adpq.QuantConfig())


def test_weights_too_large_for_float16_scales():
    w = weights((4, 64)) * 1e8
    with pytest.raises(ValueError, match="float16"):
        adpq.quantize(w)
    qt = adpq.quantize(w, scale_dtype="float32", outlier_format="group")
    assert np.isfinite(qt.dequantize()).all()
    big = weights((4, 64))
    big[0, 0] = 1e6
    with pytest.raises(ValueError, match="fp16"):
        adpq.quantize(big, outlier_format="fp16", scale_dtype="float32")


def test_from_arrays_checks_sizes():
    w = weights((16, 576))
    qt = adpq.quantize(w, outlier_ratio=0.01, symmetric=False, outlier_format="group")
    arrays = qt.arrays()
    assert np.array_equal(adpq.QuantizedTensor.from_arrays(arrays, qt.shape, qt.config).dequantize(), qt.dequantize())
    with pytest.raises(ValueError, match="codes"):
        adpq.QuantizedTensor.from_arrays(arrays, (16, 577), qt.config)
    with pytest.raises(ValueError, match="scales"):
        adpq.QuantizedTensor.from_arrays(arrays, qt.shape, qt.config.replace(group_size=64))
    for name in arrays:
        bad = dict(arrays)
        bad[name] = arrays[name][:-1]
        with pytest.raises(ValueError):
            adpq.QuantizedTensor.from_arrays(bad, qt.shape, qt.config)
    missing = dict(arrays)
    del missing["zeros"]
    with pytest.raises(ValueError, match="zeros"):
        adpq.QuantizedTensor.from_arrays(missing, qt.shape, qt.config)
    with pytest.raises(ValueError, match="unknown"):
        adpq.QuantizedTensor.from_arrays({**arrays, "extra": arrays["codes"]}, qt.shape, qt.config)
    # corrupt side-channel: counts larger than a group, indices out of order
    bad = dict(arrays)
    counts = arrays["outlier_counts"].copy()
    i = int(np.flatnonzero(counts.ravel())[0])
    counts.ravel()[i] += 200
    bad["outlier_counts"] = counts
    with pytest.raises(ValueError):
        adpq.QuantizedTensor.from_arrays(bad, qt.shape, qt.config).dequantize()
    bad = dict(arrays)
    bad["outlier_indices"] = np.full_like(arrays["outlier_indices"], 0xFF)
    with pytest.raises(ValueError, match="indices"):
        adpq.QuantizedTensor.from_arrays(bad, qt.shape, qt.config).dequantize()


def test_column_scales_are_stored_counted_and_checked():
    rng = np.random.default_rng(5)
    w = weights((24, 320)) * rng.uniform(0.1, 5.0, size=320).astype(np.float32)
    plain = adpq.quantize(w, column_scaling="none")
    qt = adpq.quantize(w, column_scaling="mean_abs")
    c = qt.arrays()["column_scales"]
    assert c.dtype == ml_dtypes.bfloat16 and c.shape == (320,)
    expect = (np.abs(w.astype(np.float64)).mean(axis=0)).astype(np.float32).astype(ml_dtypes.bfloat16)
    assert np.array_equal(c.view(np.uint16), expect.view(np.uint16))
    # 16 more bits per column, counted with the scales
    assert qt.bits_breakdown()["scales"] == pytest.approx(plain.bits_breakdown()["scales"] + 16 * 320 / w.size)
    assert qt.bits_per_weight * w.size == 8 * sum(a.nbytes for a in qt.arrays().values())
    # w_hat = (dequantized W') * c, column by column
    w_hat_scaled = adpq.QuantizedTensor.from_arrays(
        {k: v for k, v in qt.arrays().items() if k != "column_scales"}, qt.shape,
        qt.config.replace(column_scaling="none")).dequantize()
    assert np.array_equal(qt.dequantize(), w_hat_scaled * c.astype(np.float32)[None, :])
    # the outliers are chosen in W' = w / c
    mask = adpq.outlier_mask(w, column_scaling="mean_abs")
    assert np.array_equal(mask, qt.outlier_mask()) and not np.array_equal(mask, plain.outlier_mask())
    b, m2 = adpq.soft_threshold(w, config=qt.config, return_mask=True)
    assert np.array_equal(m2, mask) and np.all(b[~mask] == 0) and np.all(np.sign(b[mask]) * np.sign(w[mask]) >= 0)
    missing = {k: v for k, v in qt.arrays().items() if k != "column_scales"}
    with pytest.raises(ValueError, match="column_scales"):
        adpq.QuantizedTensor.from_arrays(missing, qt.shape, qt.config)
    with pytest.raises(ValueError, match="column_scales"):
        adpq.QuantizedTensor.from_arrays(qt.arrays(), qt.shape, qt.config.replace(column_scaling="none"))
    with pytest.raises(ValueError, match="column_scales"):
        adpq.QuantizedTensor.from_arrays({**qt.arrays(), "column_scales": c[:-1]}, qt.shape, qt.config)
    for bad in (np.inf, np.nan, 0.0, -1.0):
        c_bad = c.copy()
        c_bad[5] = bad
        with pytest.raises(ValueError, match="column_scales must be finite"):
            adpq.QuantizedTensor.from_arrays({**qt.arrays(), "column_scales": c_bad}, qt.shape, qt.config)
    # NaN is still found and located with column scaling on
    w[3, 7] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\).*row 3, column 7"):
        adpq.quantize(w, column_scaling="mean_abs")


def test_config_is_frozen_and_replaceable():
    cfg = adpq.QuantConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bits = 4
    assert cfg.replace(bits=4).bits == 4
    with pytest.raises(ValueError, match="unknown"):
        adpq.QuantConfig.from_dict({"bitz": 3})
