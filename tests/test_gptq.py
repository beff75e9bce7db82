"""GPTQ refinement (adpq.quantize(w, hessian=H)) and calibration (adpq.calibrate, --calibration)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import adpq
from adpq.core.gptq import refine
from adpq.reference import gptq as ref_gptq

sys.path.insert(0, str(Path(__file__).parent))
from _ckpt_util import adpq_env  # noqa: E402


def _data(rows=96, cols=320, n=4096, seed=0, loud=(3, 17, 40, 41, 200)):
    """W and calibration inputs X with a few high-variance, correlated input channels."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 16)).astype(np.float32)
    X = rng.standard_normal((n, cols)).astype(np.float32) + 0.5 * base @ rng.standard_normal((16, cols)).astype(np.float32)
    X[:, [c for c in loud if c < cols]] *= 12.0
    W = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    W[rng.random((rows, cols)) < 0.01] *= 8.0  # heavy tails: AdpQ finds outliers
    H = X.T.astype(np.float64) @ X / n
    return W, X, H


def _out_err(W, X, qt):
    return float(np.linalg.norm((W - qt.dequantize()) @ X.T))


STARTS = {
    "rtn": adpq.QuantConfig(bits=3, group_size=64, outlier_ratio=0.0, column_scaling="none"),
    "rtn-asym": adpq.QuantConfig(bits=3, group_size=64, outlier_ratio=0.0, column_scaling="none", symmetric=False),
    "adpq": adpq.QuantConfig(),
    "adpq-b2-group": adpq.QuantConfig(bits=2, group_size=64, outlier_format="group", symmetric=False,
                                      zero_point="float"),
    "adpq-b4-g48": adpq.QuantConfig(bits=4, group_size=48),
}
OPTIONS = [adpq.GptqConfig(), adpq.GptqConfig(act_order=False), adpq.GptqConfig(act_order=False, grids="refit"),
           adpq.GptqConfig(block_size=7, damp=0.1)]


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("opt", range(len(OPTIONS)))
def test_output_error_falls_at_the_same_bits(start, opt):
    W, X, H = _data()
    cfg, g = STARTS[start], OPTIONS[opt]
    q0 = adpq.quantize(W, config=cfg)
    q1 = adpq.quantize(W, config=cfg, hessian=H, gptq=g)
    assert _out_err(W, X, q1) < 0.9 * _out_err(W, X, q0)
    assert q1.bits_per_weight == q0.bits_per_weight
    a0, a1 = q0.arrays(), q1.arrays()
    assert list(a0) == list(a1)
    for k in a0:
        assert a0[k].dtype == a1[k].dtype and a0[k].shape == a1[k].shape
    np.testing.assert_array_equal(q0.outlier_mask(), q1.outlier_mask())  # AdpQ's outlier set is kept
    if "column_scales" in a0:
        np.testing.assert_array_equal(a0["column_scales"], a1["column_scales"])
    if g.grids == "fixed":
        np.testing.assert_array_equal(a0["scales"], a1["scales"])
    assert not np.array_equal(a0["codes"], a1["codes"])


def test_adpq_start_beats_rtn_start_and_gptq_keeps_outliers_exact():
    W, X, H = _data(seed=1)
    rtn = adpq.QuantConfig(bits=3, group_size=64, outlier_ratio=0.0, column_scaling="none")
    gptq_rtn = adpq.quantize(W, config=rtn, hessian=H)
    gptq_adpq = adpq.quantize(W, config=adpq.QuantConfig(bits=3, group_size=64), hessian=H)
    assert _out_err(W, X, gptq_adpq) < _out_err(W, X, gptq_rtn)


def test_hessian_none_is_unchanged_bit_for_bit():
    W, _, _ = _data(rows=40, cols=136)
    for cfg in STARTS.values():
        a = adpq.quantize(W, config=cfg).arrays()
        b = adpq.quantize(W, config=cfg, hessian=None).arrays()
        assert list(a) == list(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("start", ["rtn-asym", "adpq", "adpq-b2-group"])
def test_c_solver_agrees_with_the_numpy_reference(start):
    W, X, H = _data(rows=64, cols=200, seed=2)
    cfg = STARTS[start]
    q0 = adpq.quantize(W, config=cfg)
    for g in OPTIONS[:3]:
        c = refine(W, q0, H, g)
        r = refine(W, q0, H, g, solver=ref_gptq.solve)
        wc, wr = c.dequantize(), r.dequantize()
        assert np.mean(wc == wr) > 0.99
        lc, lr = (ref_gptq.proxy_loss(W, w, H) for w in (wc, wr))
        assert abs(lc - lr) <= 1e-3 * lr


def test_1d_and_16_bit_inputs_and_torch_hessians():
    torch = pytest.importorskip("torch")
    W, X, H = _data(rows=32, cols=128, seed=3)
    wt = torch.from_numpy(W).to(torch.bfloat16)
    q = adpq.quantize(wt, hessian=torch.from_numpy(H).float())
    assert q.dtype == "bfloat16"
    w16 = W.astype(np.float16)
    assert adpq.quantize(w16, hessian=H).dtype == "float16"
    row = W[0]
    q1 = adpq.quantize(row, config=adpq.QuantConfig(group_size=32), hessian=H)
    assert q1.shape == (128,)


def test_bad_hessians_are_clear_errors():
    W, X, H = _data(rows=16, cols=64, n=256)
    with pytest.raises(ValueError, match="shape"):
        adpq.quantize(W, hessian=H[:32, :32])
    with pytest.raises(ValueError, match="shape"):
        adpq.quantize(W, hessian=H.ravel())
    bad = H.copy()
    bad[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        adpq.quantize(W, hessian=bad)
    bad = H.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        adpq.quantize(W, hessian=bad)
    bad = H.copy()
    bad[5, 5] = -1.0
    with pytest.raises(ValueError, match="positive"):
        adpq.quantize(W, hessian=bad)
    v = np.random.default_rng(0).standard_normal(64)
    singular = np.outer(v, v) - 0.5 * np.outer(v[::-1], v[::-1])  # indefinite, positive diagonal
    singular = (singular + singular.T) / 2
    np.fill_diagonal(singular, np.abs(np.diag(singular)) + 1e-3)
    with pytest.raises(ValueError, match="positive definite"):
        adpq.quantize(W, hessian=singular, gptq=adpq.GptqConfig(damp=0.0))
    with pytest.raises(ValueError, match="all zeros"):
        adpq.quantize(W, hessian=np.zeros((64, 64)))
    with pytest.raises(TypeError):
        adpq.quantize(W, hessian="H")
    with pytest.raises(TypeError):
        adpq.quantize(W, hessian=H, gptq={"damp": 0.1})
    with pytest.raises(ValueError, match="need a hessian"):
        adpq.quantize(W, gptq=adpq.GptqConfig())


def test_dead_inputs_are_handled():
    W, X, H = _data(rows=16, cols=64, n=512)
    H[:, 7] = 0.0
    H[7, :] = 0.0
    q = adpq.quantize(W, hessian=H)
    assert np.isfinite(q.dequantize()).all()


@pytest.mark.parametrize("kw, err", [({"damp": -0.1}, ValueError), ({"damp": float("nan")}, ValueError),
                                     ({"block_size": 0}, ValueError), ({"block_size": 1.5}, TypeError),
                                     ({"grids": "free"}, ValueError), ({"act_order": "yes"}, TypeError)])
def test_gptq_config_checks(kw, err):
    with pytest.raises(err):
        adpq.GptqConfig(**kw)


def test_gptq_config_round_trip():
    g = adpq.GptqConfig(damp=0.05, block_size=64, act_order=False, grids="refit")
    assert adpq.GptqConfig.from_dict(g.to_dict()) == g
    with pytest.raises(ValueError, match="unknown"):
        adpq.GptqConfig.from_dict({"dampening": 0.1})


# ------------------------------------------------------------------ calibration on a tiny Llama

LINES = [f"line {i} of the calibration text, with words {i * 7 % 13} and {i % 5} more words.\n" for i in range(300)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    from _tokenizer_util import small_bpe_tokenizer

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    tok = small_bpe_tokenizer(LINES)
    cfg = tr.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    tr.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(d / "model"))
    tok.save_pretrained(str(d / "model"))
    (d / "calib.txt").write_text("".join(LINES), encoding="utf-8")
    return d


def test_calibrate_is_sequential_and_matches_the_checkpoint(tiny, tmp_path):
    src, text = tiny / "model", tiny / "calib.txt"
    cfg3 = adpq.QuantConfig(bits=3, group_size=32)
    cal = adpq.calibrate(src, text, samples=3, seqlen=48, config=cfg3, progress=False)
    names = sorted(cal.hessians)
    assert len(names) == 14
    q = cal.hessians["model.layers.0.self_attn.q_proj.weight"]
    assert cal.hessians["model.layers.0.self_attn.k_proj.weight"] is q  # one input, one Hessian
    assert q.shape == (64, 64) and np.allclose(q, q.T)
    assert cal.hessians["model.layers.0.mlp.down_proj.weight"].shape == (160, 160)
    # layer 0 sees the float model; layer 1 sees quantized layer 0: its Hessian depends on the bits
    cal8 = adpq.calibrate(src, text, samples=3, seqlen=48, config=cfg3.replace(bits=8), progress=False)
    np.testing.assert_array_equal(cal8.hessians["model.layers.0.self_attn.q_proj.weight"], q)
    assert not np.array_equal(cal8.hessians["model.layers.1.self_attn.q_proj.weight"],
                              cal.hessians["model.layers.1.self_attn.q_proj.weight"])
    # the checkpoint pipeline with this calibration makes the weights calibrate made
    rep = adpq.quantize_checkpoint(src, tmp_path / "out", calibration=cal, progress=False)
    assert sum(r.gptq for r in rep.tensors) == 14
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["bits"] == 3 and qc["calibration"]["samples"] == 3 and qc["calibration"]["seqlen"] == 48
    assert qc["calibration"]["text"]["file"] == "calib.txt" and len(qc["calibration"]["text"]["sha256"]) == 64
    plain = adpq.quantize_checkpoint(src, tmp_path / "plain", config=cfg3, progress=False)
    assert [r.bits_per_weight for r in plain.tensors] == [r.bits_per_weight for r in rep.tensors]
    # what the folder stores is what calibrate propagated to the next layer
    from adpq.io.adpq_format import AdpqCheckpoint

    name = "model.layers.1.mlp.down_proj.weight"
    stored = AdpqCheckpoint(str(tmp_path / "out")).quantized_tensor(name).dequantize()
    np.testing.assert_array_equal(stored, cal_model_weight(src, text, cfg3).numpy())
    with pytest.raises(adpq.CheckpointError, match="another quantization config"):
        adpq.quantize_checkpoint(src, tmp_path / "mismatch", config=cfg3.replace(bits=4), calibration=cal,
                                 progress=False)


def cal_model_weight(src, text, cfg):
    """layer 1's down_proj as calibrate leaves it in its model (re-run with hooks into the load)."""
    import torch
    import transformers

    from adpq.hf import calibrate as C

    box = {}
    orig = transformers.AutoModelForCausalLM.from_pretrained

    def grab(*a, **k):
        box["m"] = orig(*a, **k)
        return box["m"]

    transformers.AutoModelForCausalLM.from_pretrained = grab
    try:
        C.calibrate(src, text, samples=3, seqlen=48, config=cfg, progress=False)
    finally:
        transformers.AutoModelForCausalLM.from_pretrained = orig
    return box["m"].model.layers[1].mlp.down_proj.weight.detach().to(torch.float32)


def test_calibration_errors(tiny, tmp_path):
    src = tiny / "model"
    test_split = tmp_path / "wiki.test.raw"
    test_split.write_text("x" * 1000)
    with pytest.raises(ValueError, match="test split"):
        adpq.calibrate(src, test_split, samples=2, seqlen=16, progress=False)
    with pytest.raises(FileNotFoundError):
        adpq.calibrate(src, tmp_path / "missing.txt", samples=2, seqlen=16, progress=False)
    short = tmp_path / "short.txt"
    short.write_text("a few words")
    with pytest.raises(ValueError, match="fewer than seqlen"):
        adpq.calibrate(src, short, samples=2, seqlen=64, progress=False)
    for kw in ({"samples": 0}, {"seqlen": 1}, {"samples": 2.5}):
        with pytest.raises((ValueError, TypeError)):
            adpq.calibrate(src, tiny / "calib.txt", progress=False, **{"samples": 2, "seqlen": 16, **kw})
    adpq.quantize_checkpoint(src, tmp_path / "q", progress=False)
    with pytest.raises(adpq.CheckpointError, match="already quantized"):
        adpq.calibrate(tmp_path / "q", tiny / "calib.txt", samples=2, seqlen=16, progress=False)


def test_cli_quantize_with_calibration(tiny, tmp_path):
    dst = tmp_path / "cli"
    cmd = [sys.executable, "-m", "adpq", "quantize", str(tiny / "model"), str(dst), "--bits", "4",
           "--group-size", "32", "--calibration", str(tiny / "calib.txt"), "--samples", "2", "--seqlen", "32",
           "--gptq-damp", "0.05", "--no-gptq-act-order", "--gptq-grids", "refit", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=adpq_env())
    assert r.returncode == 0, r.stderr
    assert "calibration: calib.txt, 2 x 32 tokens" in r.stderr
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert qc["bits"] == 4
    assert qc["calibration"]["gptq"] == {"damp": 0.05, "block_size": 128, "act_order": False, "grids": "refit"}
    r = subprocess.run([sys.executable, "-m", "adpq", "quantize", str(tiny / "model"), str(tmp_path / "x"),
                        "--gptq-damp", "0.1"], capture_output=True, text=True, env=adpq_env())
    assert r.returncode != 0 and "need --calibration" in r.stderr


def test_detokenize_wikitext():
    from adpq.hf.calibrate import detokenize_wikitext

    s = detokenize_wikitext(" The 1 @,@ 000 @-@ year old , he said ( in 2010 ) . \n")
    assert "1,000-year old, he said (in 2010)." in s
