"""adpq.matmul (csrc/matmul.c): x @ w_hat.T from the stored arrays, against the float64 product with
w_hat = qt.dequantize() (exact in float64). The contract: every output row within 1e-5 relative (norm)
of it, on both kernel sets, any thread count, every layout (bits, group sizes with a ragged last
group, cols not a multiple of 8, quantizer kinds, scale dtypes, both outlier formats, column scales)."""
import itertools

import numpy as np
import pytest

import adpq
from adpq import _core, reference
from adpq.reference.matmul import matmul_int8

TOL = 1e-5
KERNELS = ["scalar", "avx2"] if _core.kernels() == "avx2" else ["scalar"]  # (auto: avx2 where the CPU has it)


@pytest.fixture
def kernels(request):
    prev = _core.set_kernels(request.param)
    yield request.param
    _core.set_kernels("auto")
    assert prev in ("scalar", "avx2", "auto")


def _quantize(rows, cols, seed=0, **kw):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
    w[:, 3] *= 8  # a loud column: column scaling has something to do
    return adpq.quantize(w, **kw)


def _ref(x, qt):
    w = qt.dequantize().astype(np.float64).reshape(qt.layout.rows, qt.layout.cols)
    return np.asarray(x, dtype=np.float32).astype(np.float64) @ w.T


def _row_err(y, ref):
    y, ref = y.reshape(-1, ref.shape[-1]), ref.reshape(-1, ref.shape[-1])
    return (np.linalg.norm(y - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-30)).max()


def _x(n, cols, seed=1):
    return np.random.default_rng(seed).standard_normal((n, cols)).astype(np.float32)


GRID = list(itertools.product([2, 3, 4, 8], [8, 24, 32, 128, -1]))


@pytest.mark.parametrize("kernels", KERNELS, indirect=True)
@pytest.mark.parametrize("bits,group_size", GRID)
def test_grid_against_float64(kernels, bits, group_size):
    # 3 quantizer kinds x 2 outlier formats, cols with a ragged last group, and one not a multiple of 8
    kinds = [dict(symmetric=True), dict(symmetric=False, zero_point="float"),
             dict(symmetric=False, zero_point="integer")]
    for i, (kind, fmt, cols) in enumerate(itertools.product(kinds, ["group", "fp16"], [200, 203])):
        sd = ["float16", "bfloat16", "float32"][i % 3]
        qt = _quantize(67, cols, seed=i, bits=bits, group_size=group_size, outlier_ratio=0.02, outlier_format=fmt,
                       scale_dtype=sd, column_scaling="mean_abs" if i % 2 else "none", **kind)
        assert qt.num_outliers > 0
        for n, threads in [(1, 1), (3, 3), (70, 1), (70, 3)]:
            x = _x(n, cols, seed=n + i)
            err = _row_err(adpq.matmul(x, qt, threads=threads), _ref(x, qt))
            assert err <= TOL, (bits, group_size, kind, fmt, cols, sd, n, threads, err)


@pytest.mark.parametrize("kernels", KERNELS, indirect=True)
@pytest.mark.parametrize("cols", [4096, 11008])
def test_large_k(kernels, cols):
    qt = _quantize(40, cols, bits=3, group_size=128, outlier_ratio=0.01, outlier_format="fp16",
                   column_scaling="mean_abs")
    for n in (1, 17):
        x = _x(n, cols)
        assert _row_err(adpq.matmul(x, qt, threads=2), _ref(x, qt)) <= TOL


def test_kernel_sets_and_threads_agree():
    # large enough that both routes use several threads (the core runs small products on one)
    qt = _quantize(600, 1024, bits=4, group_size=64, outlier_ratio=0.01)
    x = _x(20, 1024)
    ys = []
    for k in KERNELS:
        _core.set_kernels(k)
        try:
            ys += [adpq.matmul(x, qt, threads=t) for t in (1, 2, 3)]
            ys += [adpq.matmul(x[:1], qt, threads=t) for t in (1, 3)]  # the row route too
        finally:
            _core.set_kernels("auto")
    # threads never change a result (each output is computed by one task)
    for k in range(len(KERNELS)):
        assert np.array_equal(ys[5 * k], ys[5 * k + 1]) and np.array_equal(ys[5 * k], ys[5 * k + 2])
        assert np.array_equal(ys[5 * k + 3], ys[5 * k + 4])
    assert _row_err(ys[-2], ys[0][:1].astype(np.float64)) <= TOL


def test_shapes_1d_3d_and_strided():
    qt = _quantize(33, 100, bits=4, group_size=32, outlier_ratio=0.01)
    x = _x(12, 100)
    full = adpq.matmul(x, qt)
    assert full.shape == (12, 33) and full.dtype == np.float32
    y1 = adpq.matmul(x[5], qt)
    assert y1.shape == (33,)
    assert np.array_equal(y1, adpq.matmul(x[5:6], qt)[0])
    y3 = adpq.matmul(x.reshape(3, 4, 100), qt)
    assert y3.shape == (3, 4, 33) and np.array_equal(y3.reshape(12, 33), full)
    wide = np.zeros((12, 160), np.float32)
    wide[:, 7:107] = x
    ys = adpq.matmul(wide[:, 7:107], qt)  # rows 160 floats apart, unaligned start
    assert np.array_equal(ys, full)
    assert np.array_equal(adpq.matmul(x[::2], qt), adpq.matmul(x[::2].copy(), qt))  # (6 rows: another route)
    assert np.array_equal(adpq.matmul(x.astype(np.float64), qt), full)
    assert np.array_equal(adpq.matmul(x.tolist(), qt), full)
    assert adpq.matmul(np.zeros((0, 100), np.float32), qt).shape == (0, 33)
    assert _row_err(full, reference.matmul(x, qt.arrays(), qt.shape, qt.config)) <= TOL


def test_one_dimensional_tensor():
    qt = adpq.quantize(np.linspace(-1, 1, 50, dtype=np.float32), bits=4, group_size=16)
    x = _x(2, 50)
    y = adpq.matmul(x, qt)
    assert y.shape == (2, 1)
    assert _row_err(y, _ref(x, qt)) <= TOL


def test_torch_input():
    torch = pytest.importorskip("torch")
    qt = _quantize(16, 64, bits=4, group_size=32)
    x = _x(3, 64)
    assert np.array_equal(adpq.matmul(torch.from_numpy(x), qt), adpq.matmul(x, qt))


def test_nan_and_inf_propagate():
    qt = _quantize(20, 64, bits=4, group_size=32, outlier_ratio=0.02)
    for n in (1, 20):  # the row route and the panel route
        x = _x(n, 64)
        x[0, 5] = np.nan
        if n > 1:
            x[1, 9] = np.inf
        y = adpq.matmul(x, qt)
        assert np.isnan(y[0]).all()
        if n > 1:
            assert not np.isfinite(y[1]).any()
            assert np.isfinite(y[2:]).all()


def test_plan_is_cached_and_keeps_arrays():
    qt = _quantize(10, 64, bits=3, group_size=32, outlier_ratio=0.02)
    plan = qt.matmul_plan()
    assert qt.matmul_plan() is plan and (plan.rows, plan.cols) == (10, 64)
    kw = qt._dequantize_kwargs(1)
    plan2 = _core.matmul_plan(**kw)
    kw["arrays"].clear()  # the plan keeps its own references
    del kw
    x = _x(2, 64)
    assert np.array_equal(_core.matmul(plan2, x), _core.matmul(plan, x))
    qt2 = adpq.QuantizedTensor.from_arrays(qt.arrays(), qt.shape, qt.config)
    assert np.array_equal(adpq.matmul(x, qt2), adpq.matmul(x, qt))


def test_core_matmul_out_and_arguments():
    qt = _quantize(10, 64, bits=4, group_size=32)
    plan, x = qt.matmul_plan(), _x(3, 64)
    out = np.full((3, 10), 7.0, np.float32)
    assert _core.matmul(plan, x, out) is out
    assert np.array_equal(out, _core.matmul(plan, x=x, threads=2, mode=0))
    assert np.array_equal(out, _core.matmul(plan, x, None, 0, 1))
    with pytest.raises(TypeError, match="plan"):
        _core.matmul(object(), x)
    with pytest.raises(TypeError, match="float32"):
        _core.matmul(plan, x.astype(np.float64))
    with pytest.raises(ValueError, match="64 columns"):
        _core.matmul(plan, x[:, :63])
    with pytest.raises(ValueError, match="contiguous"):
        _core.matmul(plan, np.asfortranarray(x))
    with pytest.raises(ValueError, match="shape"):
        _core.matmul(plan, x, np.empty((3, 11), np.float32))
    with pytest.raises(TypeError, match="out"):
        _core.matmul(plan, x, np.empty((3, 10), np.float64))
    big = np.zeros(300, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        _core.matmul(plan, big[:192].reshape(3, 64), big[100:130].reshape(3, 10))
    with pytest.raises(ValueError, match="mode"):
        _core.matmul(plan, x, None, 7)
    with pytest.raises(ValueError, match="threads"):
        _core.matmul(plan, x, None, 0, 0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        _core.matmul(plan, x, bogus=1)
    with pytest.raises(TypeError, match="multiple values"):
        _core.matmul(plan, x, x=x)
    with pytest.raises(TypeError, match="missing"):
        _core.matmul(plan)


def test_python_api_rejects_bad_inputs():
    qt = _quantize(10, 64, bits=4, group_size=32)
    with pytest.raises(ValueError, match="in_features, 64"):
        adpq.matmul(_x(2, 65), qt)
    with pytest.raises(ValueError, match="in_features"):
        adpq.matmul(np.float32(1.0), qt)
    with pytest.raises(TypeError, match="float"):
        adpq.matmul(np.ones((2, 64), np.int32), qt)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        adpq.matmul(_x(2, 64), np.ones((10, 64)))
    with pytest.raises(ValueError, match="activations"):
        adpq.matmul(_x(2, 64), qt, activations="int4")
    with pytest.raises(ValueError, match="threads"):
        adpq.matmul(_x(2, 64), qt, threads=0)


def test_plan_rejects_inconsistent_arrays():
    qt = _quantize(10, 64, bits=4, group_size=32, outlier_ratio=0.05)
    kw = qt._dequantize_kwargs(1)
    kw["arrays"]["codes"] = kw["arrays"]["codes"][:-1].copy()
    with pytest.raises(ValueError, match="codes"):
        _core.matmul_plan(**kw)
    kw = qt._dequantize_kwargs(1)
    kw["num_outliers"] += 1
    with pytest.raises(ValueError):
        _core.matmul_plan(**kw)


# ------------------------------------------------------------------ int8 activations
INT8_GRID = list(itertools.product([2, 3, 4, 8], [32, 64, 128, -1]))


@pytest.mark.parametrize("kernels", KERNELS, indirect=True)
@pytest.mark.parametrize("bits,group_size", INT8_GRID)
def test_int8_against_its_mirror(kernels, bits, group_size):
    # the C int8 mode vs the NumPy mirror of the same int8 arithmetic (float64), and loosely vs float64
    for i, (sym, fmt, cols) in enumerate(itertools.product([True, False], ["group", "fp16"], [256, 200])):
        qt = _quantize(37, cols, seed=i, bits=bits, group_size=group_size, outlier_ratio=0.02, outlier_format=fmt,
                       symmetric=sym, column_scaling="mean_abs" if i % 2 else "none")
        assert qt.matmul_plan().mode_used(1, 1) == 1
        for n, threads in [(1, 1), (4, 3), (15, 1)]:
            x = _x(n, cols, seed=n + i)
            y = adpq.matmul(x, qt, threads=threads, activations="int8")
            assert _row_err(y, matmul_int8(x, qt.arrays(), qt.shape, qt.config)) <= TOL
            assert _row_err(y, _ref(x, qt)) <= 0.03


def test_int8_kernel_sets_and_threads_agree():
    # > 2^21 weights: the int8 route runs on several threads; 2051 rows: passes of 4 weight rows
    # (n = 1) and a partial last one; 1032 columns: a ragged last block
    qt = _quantize(2051, 1032, bits=4, group_size=64, outlier_ratio=0.02)
    for n in (1, 5):
        x = _x(n, 1032, seed=n)
        ys = []
        for k in KERNELS:
            _core.set_kernels(k)
            try:
                ys.append([adpq.matmul(x, qt, threads=t, activations="int8") for t in (1, 2, 3)])
            finally:
                _core.set_kernels("auto")
        for y in ys:
            assert np.array_equal(y[0], y[1]) and np.array_equal(y[0], y[2])
            assert _row_err(y[0], matmul_int8(x, qt.arrays(), qt.shape, qt.config)) <= TOL
        assert _row_err(ys[-1][0], ys[0][0].astype(np.float64)) <= TOL


def test_int8_falls_back_to_float():
    qt = _quantize(20, 100, bits=4, group_size=24)  # groups not of whole blocks of 32, cols % 8 != 0
    x = _x(3, 100)
    assert qt.matmul_plan().mode_used(3, 1) == 0
    assert np.array_equal(adpq.matmul(x, qt, activations="int8"), adpq.matmul(x, qt))
    qt = _quantize(20, 128, bits=4, group_size=32)
    x = _x(16, 128)  # from 16 rows: the float panel route
    assert qt.matmul_plan().mode_used(16, 1) == 0 and qt.matmul_plan().mode_used(15, 1) == 1
    assert np.array_equal(adpq.matmul(x, qt, activations="int8"), adpq.matmul(x, qt))


def test_int8_nan_and_zero_rows():
    qt = _quantize(20, 128, bits=4, group_size=32, outlier_ratio=0.02)
    x = _x(3, 128)
    x[1] = 0
    x[2, 40] = np.nan
    y = adpq.matmul(x, qt, activations="int8")
    assert np.isfinite(y[0]).all() and (y[1] == 0).all() and np.isnan(y[2]).all()


def test_bfloat16_in_and_out():
    torch = pytest.importorskip("torch")
    qt = _quantize(33, 128, bits=4, group_size=32, outlier_ratio=0.02, column_scaling="mean_abs")
    plan = qt.matmul_plan()
    for mode in (0, 1):
        for n in (1, 5, 20):
            xt = torch.from_numpy(_x(n, 128)).to(torch.bfloat16)
            xb = xt.view(torch.uint16).numpy()
            y32 = _core.matmul(plan, xt.float().numpy(), None, mode, 2)
            assert np.array_equal(_core.matmul(plan, xb, None, mode, 2), y32)
            out = np.empty((n, 33), np.uint16)
            assert _core.matmul(plan, xb, out, mode, 2) is out
            want = torch.from_numpy(y32).to(torch.bfloat16).view(torch.uint16).numpy()
            assert np.array_equal(out, want)
    with pytest.raises(TypeError, match="uint16"):
        _core.matmul(plan, np.zeros((1, 128), np.float16))
