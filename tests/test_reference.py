"""The C core against the NumPy reference, bit for bit, and the scalar kernels against AVX2."""
import itertools
import zlib

import ml_dtypes
import numpy as np
import pytest

import adpq
from adpq import _core, reference
from adpq.core.layout import pack_bits, unpack_bits

SHAPES = [(1, 8), (3, 37), (7, 100), (16, 576), (9, 130), (33, 64), (5, 1000)]
DTYPES = ["float32", "float16", "bfloat16"]


def make_weights(shape, dtype, seed=0, dist="t"):
    rng = np.random.default_rng(seed)
    if dist == "t":
        w = rng.standard_t(3, size=shape) * 0.02
    else:
        w = rng.standard_normal(size=shape) * 0.02
    w = w.astype(np.float32)
    return w.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else w.astype(dtype)


def assert_same_arrays(a, b):
    assert set(a) == set(b), (set(a), set(b))
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape or a[k].size == b[k].size, k
        assert np.array_equal(a[k].view(np.uint8).ravel(), b[k].view(np.uint8).ravel()), k


def check_config(w, cfg, one_pass="auto"):
    qt = adpq.quantize(w, config=cfg, one_pass=one_pass)
    ref = reference.quantize(w, cfg)
    assert_same_arrays(qt.arrays(), ref)
    w_c = qt.dequantize()
    w_r = reference.dequantize(qt.arrays(), qt.shape, cfg)
    assert np.array_equal(w_c.view(np.uint32), w_r.view(np.uint32))
    # and the C dequantizer on the reference's arrays
    qt_r = adpq.QuantizedTensor.from_arrays(ref, qt.shape, cfg, qt.dtype)
    assert np.array_equal(qt_r.dequantize().view(np.uint32), w_c.view(np.uint32))
    return qt


CONFIGS = [
    dict(bits=b, group_size=g, outlier_scope=s, outlier_ratio=r, symmetric=sym, outlier_format=f)
    for b, g, s, r, sym, f in itertools.product(
        [2, 3, 4, 8], [8, 32, 128, -1], ["tensor", "group"], [0.0, 0.01, 0.1], [False, True], ["group", "fp16"]
    )
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_c_matches_reference_many_configs(shape, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype)).encode()))
    w = make_weights(shape, dtype, seed=int(rng.integers(1 << 30)))
    for i in rng.choice(len(CONFIGS), size=24, replace=False):
        check_config(w, adpq.QuantConfig(**CONFIGS[i]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_column_scaling_matches_reference(shape, dtype):
    """W' = w / c is formed in C (row by row) and in NumPy: same codes, scales, outliers, w_hat."""
    rng = np.random.default_rng(zlib.crc32(repr(("cols", shape, dtype)).encode()))
    w = make_weights(shape, "float32", seed=int(rng.integers(1 << 30)))
    cols = w.shape[-1]
    w = w * rng.uniform(0.05, 4.0, size=cols).astype(np.float32)  # channels of different loudness
    if w.ndim == 2 and w.shape[0] > 3:
        w[:, cols // 2] = 0.0  # an all-zero column: c = 1
    w = w.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else w.astype(dtype)
    for i in rng.choice(len(CONFIGS), size=8, replace=False):
        qt = check_config(w, adpq.QuantConfig(**CONFIGS[i], column_scaling="mean_abs"))
        c = qt.arrays()["column_scales"]
        assert c.dtype == ml_dtypes.bfloat16 and c.size == cols and (c.astype(np.float32) > 0).all()
        assert np.array_equal(adpq.outlier_mask(w, config=qt.config).reshape(qt.shape), qt.outlier_mask())


@pytest.mark.parametrize("scope", ["tensor", "group"])
@pytest.mark.parametrize("lam", [0.0, 1.0, 8.0, 50.0])
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_explicit_lambda_matches_reference(scope, lam, gamma):
    w = make_weights((12, 200), "float32", seed=3)
    check_config(w, adpq.QuantConfig(bits=3, group_size=64, outlier_scope=scope, lam=lam, gamma=gamma))


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16", "float32"])
def test_scale_dtypes_match_reference(scale_dtype):
    w = make_weights((20, 300), "float32", seed=4)
    for sym, zp in ((False, "float"), (True, "float"), (False, "integer")):
        check_config(w, adpq.QuantConfig(bits=4, group_size=64, scale_dtype=scale_dtype, symmetric=sym,
                                          zero_point=zp))


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_zero_points_match_reference_and_represent_zero(dtype):
    w = make_weights((16, 576), dtype, seed=6)
    for bits, ratio, fmt in itertools.product([2, 3, 4], [0.0, 0.01], ["group", "fp16"]):
        cfg = adpq.QuantConfig(bits=bits, group_size=64, outlier_ratio=ratio, outlier_format=fmt,
                               zero_point="integer", symmetric=False)
        qt = check_config(w, cfg)
        z = qt.arrays()["zeros"].astype(np.float32)
        assert np.array_equal(z, np.rint(z))
        # a weight equal to 0 is reconstructed exactly when its group's range holds 0
        w0 = np.array(w, copy=True)
        w0[:, 5] = 0
        assert (adpq.quantize(w0, config=cfg).dequantize()[:, 5] == 0).all()


def test_degenerate_groups_match_reference_and_are_finite():
    w = np.zeros((6, 64), np.float32)
    w[1] = 0.5                      # constant row
    w[2, :] = 1.0
    w[2, 3] = 1.0001                # near-constant far from zero
    w[3, 5] = 3.0                   # one nonzero weight
    w[4] = np.linspace(-1, 1, 64)
    w[5, ::2] = 1e-30               # tiny values (scale underflow)
    for sym, fmt, scope in itertools.product([False, True], ["group", "fp16"], ["tensor", "group"]):
        cfg = adpq.QuantConfig(bits=3, group_size=16, outlier_ratio=0.05, symmetric=sym, outlier_format=fmt,
                               outlier_scope=scope)
        qt = check_config(w, cfg)
        w_hat = qt.dequantize()
        assert np.isfinite(w_hat).all()
        assert np.all(w_hat[0] == 0)
        assert np.allclose(w_hat[1], 0.5, rtol=1e-3)


def test_ties_are_deterministic_and_match_reference():
    # many equal magnitudes: the k-th largest is tied; ties go to the lower row-major index
    w = np.tile(np.array([1.0, -1.0, 0.5, 0.25], np.float32), (16, 16))
    for scope in ("tensor", "group"):
        cfg = adpq.QuantConfig(bits=3, group_size=32, outlier_ratio=0.1, outlier_scope=scope)
        qt = check_config(w, cfg)
        mask = qt.outlier_mask()
        k = round(0.1 * w.size) if scope == "tensor" else None
        if k is not None:
            assert mask.sum() == k
            flat = np.flatnonzero(mask.ravel())
            ties = np.flatnonzero(np.abs(w.ravel()) == 1.0)
            assert np.array_equal(flat, ties[:k])


def available_kernels():
    names = ["scalar"]
    try:
        _core.set_kernels("avx2")
        names.append("avx2")
    except ValueError:  # a CPU without AVX2: the scalar kernels are the only ones
        pass
    finally:
        _core.set_kernels("auto")
    return names


def test_scalar_and_avx2_kernels_agree():
    kernels = available_kernels()
    rng = np.random.default_rng(7)
    try:
        for shape, dtype in [((13, 333), "float32"), ((16, 576), "bfloat16"), ((4, 1030), "float16")]:
            w = make_weights(shape, dtype, seed=int(rng.integers(1000)))
            for i in rng.choice(len(CONFIGS), 20, replace=False):
                cfg = adpq.QuantConfig(**CONFIGS[i])
                results = []
                for name in kernels:
                    _core.set_kernels(name)
                    qt = adpq.quantize(w, config=cfg)
                    results.append((qt.arrays(), qt.dequantize()))
                ref = reference.quantize(w, cfg)
                for arrays, w_hat in results:
                    assert_same_arrays(arrays, ref)
                    assert np.array_equal(w_hat.view(np.uint32), results[0][1].view(np.uint32))
    finally:
        _core.set_kernels("auto")


def test_ties_at_the_threshold_on_both_kernels():
    """bfloat16 weights share magnitudes, so the k-th largest |w| is tied across rows and one row
    takes only some of its ties: every row kind (all ties, none, cut) against the reference."""
    kernels = available_kernels()
    w = make_weights((96, 640), "bfloat16", seed=11)  # large enough for the sampled threshold
    try:
        for cfg in (adpq.QuantConfig(outlier_ratio=0.013), adpq.QuantConfig(outlier_ratio=0.021, symmetric=False,
                                                                          outlier_format="group", group_size=64)):
            ref = reference.quantize(w, cfg)
            mags = np.sort(np.abs(w.astype(np.float32)).ravel())[::-1]
            k = int(np.floor(cfg.outlier_ratio * w.size + 0.5))
            assert mags[k - 1] == mags[k]  # a tie at the threshold, cut
            for name in kernels:
                _core.set_kernels(name)
                assert_same_arrays(adpq.quantize(w, config=cfg).arrays(), ref)
    finally:
        _core.set_kernels("auto")


def test_threads_do_not_change_results():
    w = make_weights((203, 333), "float32", seed=9)
    for scope in ("tensor", "group"):
        cfg = adpq.QuantConfig(bits=3, group_size=64, outlier_ratio=0.02, outlier_scope=scope)
        base = adpq.quantize(w, config=cfg, threads=1).arrays()
        for t in (2, 3, 8):
            assert_same_arrays(base, adpq.quantize(w, config=cfg, threads=t).arrays())


def test_large_matrix_tensor_threshold_uses_sampling_and_is_exact():
    # big enough that the C core estimates the threshold from a sample before the exact selection
    rng = np.random.default_rng(11)
    w = (rng.standard_t(4, size=(512, 1024)) * 0.02).astype(np.float32)
    w[:, 7] *= 40  # an outlier input channel: the sample must still find a low enough threshold
    cfg = adpq.QuantConfig(bits=3, group_size=128, outlier_ratio=0.01)
    qt = adpq.quantize(w, config=cfg)
    k = round(0.01 * w.size)
    assert qt.num_outliers == k
    ref_mask = reference.outlier_mask(w, cfg)
    assert np.array_equal(qt.outlier_mask(), ref_mask)
    assert np.array_equal(adpq.outlier_mask(w, config=cfg), ref_mask)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 8, 12, 32])
def test_bit_packing_round_trip(bits):
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 8, 9, 100):
        v = rng.integers(0, 2 ** bits, size=n, dtype=np.uint64)
        s = pack_bits(v, bits)
        assert s.size == (n * bits + 7) // 8
        assert np.array_equal(unpack_bits(s, n, bits), v.astype(np.uint32))


def test_three_bit_codes_are_exactly_three_bits():
    w = make_weights((64, 128), "float32")
    qt = adpq.quantize(w, bits=3, group_size=128, outlier_ratio=0)
    assert qt.arrays()["codes"].nbytes * 8 == 3 * w.size
    # 8 codes in 3 bytes, little-endian: decode the first 8 codes by hand
    codes = unpack_bits(qt.arrays()["codes"], 8, 3)
    word = int.from_bytes(qt.arrays()["codes"][:3].tobytes(), "little")
    assert [(word >> (3 * i)) & 7 for i in range(8)] == list(codes)


def test_float16_and_bfloat16_rounding_match_numpy():
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2 ** 32, size=200000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    special = np.array([65504, 65519.99, 65520, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 0.0, -0.0, 1e-45, 3.4e38],
                       np.float32)
    x = np.concatenate([x, special, -special, (rng.standard_normal(10000) * 1e-5).astype(np.float32)])
    with np.errstate(over="ignore"):
        want16 = x.astype(np.float16).view(np.uint16)
        want_bf = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(_core.round_f32(x, 1), want16)
    assert np.array_equal(_core.round_f32(x, 2), want_bf)


@pytest.mark.parametrize("n", [1, 7, 4095, 4096, 5000, 65535, 65536, 100_000])
def test_kth_largest_selection(n):
    """The selection behind every outlier threshold (quickselect, radix, histogram-first by size),
    against a sort, on keys with many ties (weights that were quantized before) and on distinct keys."""
    rng = np.random.default_rng(n)
    tied = rng.integers(0, 40, size=n).astype(np.uint32) * 0x10000 + 0x3C000000
    distinct = rng.integers(0, 2**31, size=n, dtype=np.uint32)
    for keys in (tied, distinct, np.zeros(n, np.uint32)):
        desc = np.sort(keys)[::-1]
        for k in {1, n, max(1, n // 3), max(1, n - 1)}:
            assert _core.kth_largest(keys, k) == desc[k - 1]
    with pytest.raises(ValueError):
        _core.kth_largest(tied, n + 1)
