"""The extension module's boundary (csrc/adpqmodule.c, documented in python/adpq/_core.pyi): a config
is a dict with exactly adpq_config's field names, arrays go by name, arguments by keyword, and a
mistake names what is wrong."""
import numpy as np
import pytest

import adpq
from adpq import _core
from adpq.core import dtypes

F32 = dtypes.C_CODE["float32"]


@pytest.fixture()
def w():
    return (np.random.default_rng(0).standard_normal((16, 96)) * 0.02).astype(np.float32)


def config(**changes):
    cfg = adpq.QuantConfig(bits=3, group_size=32, outlier_ratio=0.02, threads=2).core_config()
    cfg.update(changes)
    return cfg


def test_config_fields_are_adpq_config_s():
    assert sorted(config()) == sorted(["bits", "group_size", "scope", "use_lam", "outlier_ratio", "lam", "gamma",
                                       "symmetric", "outlier_format", "scale_dtype", "threads", "integer_zero"])


@pytest.mark.parametrize("change, exc, message", [
    (dict(bits="3"), TypeError, r"config\['bits'\] must be an int, got str"),
    (dict(bits=True), TypeError, r"config\['bits'\] must be an int, got bool"),
    (dict(group_size=32.0), TypeError, r"config\['group_size'\] must be an int, got float"),
    (dict(outlier_ratio="0.1"), TypeError, r"config\['outlier_ratio'\] must be a float, got str"),
    (dict(symmetric=2), ValueError, r"config\['symmetric'\] = 2 is out of range \(0 or 1\)"),
    (dict(threads=1 << 40), ValueError, r"config\['threads'\] = \d+ is out of range"),
    (dict(route=1), TypeError, r"unknown key 'route' \(route is a keyword of quantize\)"),
    (dict(bit=3), TypeError, r"unknown key 'bit'"),
    (dict(group_size=4), ValueError, r"group_size must be -1 \(one group per row\) or >= 8 \(got 4\)"),
    (dict(bits=5), ValueError, r"bits must be 2, 3, 4 or 8 \(got 5\)"),
])
def test_config_mistakes_name_the_key(w, change, exc, message):
    with pytest.raises(exc, match=message):
        _core.quantize(w, F32, config(**change))


def test_config_missing_key_and_not_a_dict(w):
    cfg = config()
    del cfg["gamma"]
    with pytest.raises(TypeError, match="config is missing 'gamma'"):
        _core.outlier_mask(w, F32, cfg)
    with pytest.raises(TypeError, match="config must be a dict"):
        _core.quantize(w, F32, tuple(config().values()))


def test_flags_take_bools(w):
    a = _core.quantize(w, F32, config(symmetric=True, use_lam=False))
    b = _core.quantize(w, F32, config(symmetric=1, use_lam=0))
    assert a["codes"].tobytes() == b["codes"].tobytes()


def test_route_keyword(w):
    big = np.random.default_rng(1).standard_normal((128, 200)).astype(np.float32)
    one = _core.quantize(big, F32, config(), route="one_pass")
    two = _core.quantize(big, F32, config(), route="two_pass")
    assert (one["_passes"], two["_passes"]) == (1, 2)
    assert one["codes"].tobytes() == two["codes"].tobytes()
    assert _core.quantize(big, F32, config())["_passes"] == 2  # auto: small, no column factors
    with pytest.raises(ValueError, match="route must be 'auto', 'one_pass' or 'two_pass', got 'always'"):
        _core.quantize(big, F32, config(), route="always")
    with pytest.raises(TypeError):
        _core.quantize(big, F32, config(), None, "one_pass")  # keyword only


def test_dequantize_by_name(w):
    qt = adpq.quantize(w, bits=3, group_size=32, outlier_ratio=0.02, column_scaling="none")
    kw = qt._dequantize_kwargs(2)
    assert np.array_equal(_core.dequantize(**kw), qt.dequantize())
    arrays = dict(kw["arrays"])
    arrays["column_scales"] = arrays["codes"]
    with pytest.raises(TypeError, match="arrays has an unknown key 'column_scales'"):
        _core.dequantize(**dict(kw, arrays=arrays))
    arrays = {k: v for k, v in kw["arrays"].items() if k != "outlier_indices"}
    with pytest.raises(ValueError, match=r"arrays\['outlier_indices'\] is required"):
        _core.dequantize(**dict(kw, arrays=arrays))
    with pytest.raises(ValueError, match="scales has 2 bytes, expected"):
        _core.dequantize(**dict(kw, arrays=dict(kw["arrays"], scales=np.zeros(1, np.uint16))))
    with pytest.raises(TypeError, match="num_outliers"):
        _core.dequantize(**{k: v for k, v in kw.items() if k != "num_outliers"})


def test_error_stats_by_name(w):
    qt = adpq.quantize(w, bits=3, group_size=32, outlier_ratio=0.02, column_scaling="none")
    hat = qt.dequantize()
    a = _core.error_stats(w, F32, None, 32, 2, quantized=qt._dequantize_kwargs(2))
    b = _core.error_stats(w=w, dtype=F32, w_hat=hat, bins=32, threads=2, kl_eps=1e-10)
    assert a["sum_sq_err"] == b["sum_sq_err"] and np.array_equal(a["hist_hat"], b["hist_hat"])
    with pytest.raises(TypeError, match="quantized must be a dict"):
        _core.error_stats(w, F32, None, 32, 2, quantized=(1, 2))


def test_module_constants():
    assert isinstance(_core.MIN_GROUP_SIZE, int) and isinstance(_core.VERSION, str)
    assert not hasattr(_core, "version")
    assert _core.layout(rows=4, cols=100, config=config())["groups_per_row"] == 4


def test_stub_documents_every_name():
    """python/adpq/_core.pyi has every function and constant of the module, and nothing else."""
    import ast
    import os

    path = os.path.join(os.path.dirname(adpq.__file__), "_core.pyi")
    with open(path) as f:
        tree = ast.parse(f.read())
    stub = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    stub |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    assert stub == {k for k in dir(_core) if not k.startswith("__")}
