"""CafeQ (adpq.transforms, adpq.CafeqConfig, quantize_checkpoint(..., cafeq=...), `adpq quantize --cafeq`):
the V/O transform keeps the model's function, paired rounding lowers the product error at the same
bits, refine_rows, the checkpoint pipeline (records, determinism, resume), errors and the CLI."""
import json
import math
import os
import types

import numpy as np
import pytest

import adpq
import adpq.io.checkpoint
from adpq.core.gptq import refine_rows
from adpq.io.adpq_format import AdpqCheckpoint
from adpq.io.checkpoint import quantize_checkpoint
from adpq.io.folder import INCOMPLETE_MARKER
from adpq.reference import gptq as ref_gptq
from adpq.transforms import (Heads, apply_transform, cafeq_pair, initial_transform, optimize_transform,
                             pair_error, paired_round)
from adpq.transforms.vo_transform import PairProxy

from _ckpt_util import GROUP, llama_config, llama_tensors, make_llama, run_cli, write_checkpoint

RTN = adpq.QuantConfig(bits=3, group_size=32, outlier_ratio=0.0, column_scaling="none")
ADPQ = adpq.QuantConfig(bits=3, group_size=32, outlier_ratio=0.02)
CONFIGS = {"rtn": RTN, "adpq": ADPQ}
# the tiny Llama of _ckpt_util: 4 query heads, 2 KV heads, head_dim 24 (not a power of two)
LLAMA_HEADS = Heads(4, 2, 24)
V0, O0 = "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight"
V1, O1 = "model.layers.1.self_attn.v_proj.weight", "model.layers.1.self_attn.o_proj.weight"


def bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def brute_pair_error(wv, wo, wv_hat, wo_hat, heads, scale=None):
    """pair_error from the products themselves: P_h = W_o[:, h] W_v[g(h)] diag(scale), one per query head."""
    d, g = heads.head_dim, heads.group
    s = np.ones(np.shape(wv)[1]) if scale is None else np.abs(np.float64(scale))
    num = den = 0.0
    for h in range(heads.n_heads):
        k = h // g
        p = np.float64(wo[:, h * d:(h + 1) * d]) @ np.float64(wv[k * d:(k + 1) * d]) * s
        q = np.float64(wo_hat[:, h * d:(h + 1) * d]) @ np.float64(wv_hat[k * d:(k + 1) * d]) * s
        num += float(((p - q) ** 2).sum())
        den += float((p ** 2).sum())
    return math.sqrt(num / den)


def synthetic_pair(heads, n_in, n_out, seed, channel_outliers=4, scale=20.0):
    """(W_v, W_o) float32 with spiky weights, loud input channels and value channels that W_v
    scales up and W_o scales down by the same factor (the product does not see it, quantization does)."""
    rng = np.random.default_rng(seed)
    wv = rng.standard_normal((heads.n_kv_heads * heads.head_dim, n_in)) * 0.05
    wo = rng.standard_normal((n_out, heads.n_heads * heads.head_dim)) * 0.05
    wv[rng.random(wv.shape) < 0.01] *= 8.0
    wo[rng.random(wo.shape) < 0.01] *= 8.0
    wv[:, rng.choice(n_in, 3, replace=False)] *= 6.0
    chans = rng.choice(wv.shape[0], channel_outliers, replace=False)
    wv[chans] *= scale
    cols = heads.kv_row_of_column()
    wo[:, np.isin(cols, chans)] /= scale
    return wv.astype(np.float32), wo.astype(np.float32)


def random_transform(heads, seed):
    """A well-conditioned, non-orthogonal M per KV head (an orthogonal one would hide M^T for M^-1)."""
    rng = np.random.default_rng(seed)
    d = heads.head_dim
    m = np.eye(d)[None] + 0.4 * rng.standard_normal((heads.n_kv_heads, d, d)) / np.sqrt(d)
    m = m * np.exp(0.5 * rng.standard_normal((heads.n_kv_heads, d, 1)))  # rows of very different sizes
    assert np.linalg.cond(m).max() < 100
    return m


# ------------------------------------------------------------------ 1. the transform keeps the function


def _torch_model(kind, n_heads, n_kv, head_dim, seed=0):
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    kw = dict(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=n_heads,
              num_key_value_heads=n_kv, head_dim=head_dim, max_position_embeddings=64, initializer_range=0.2,
              tie_word_embeddings=False)
    if kind == "llama":
        model = tr.LlamaForCausalLM(tr.LlamaConfig(**kw))
    else:
        model = tr.Qwen2ForCausalLM(tr.Qwen2Config(**kw))
        for layer in model.model.layers:  # a bias that matters (its init is zeros)
            with torch.no_grad():
                layer.self_attn.v_proj.bias.normal_(0.0, 0.5)
    return model.float().eval()


def _logits(model):
    import torch

    ids = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits.double().numpy()


def _set_pair(layer, wv, wo, bias):
    import torch

    att = layer.self_attn
    with torch.no_grad():
        att.v_proj.weight.copy_(torch.from_numpy(np.asarray(wv, np.float32)))
        att.o_proj.weight.copy_(torch.from_numpy(np.asarray(wo, np.float32)))
        if bias is not None:
            att.v_proj.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))


def _get_pair(layer):
    att = layer.self_attn
    b = att.v_proj.bias
    return (att.v_proj.weight.detach().double().numpy(), att.o_proj.weight.detach().double().numpy(),
            None if b is None else b.detach().double().numpy())


@pytest.mark.parametrize("kind,n_heads,n_kv,head_dim", [("llama", 4, 2, 16), ("llama", 4, 4, 16),
                                                        ("llama", 6, 2, 12), ("qwen2", 4, 2, 16)])
@pytest.mark.parametrize("how", ["random", "learned"])
def test_transform_keeps_the_model_function(kind, n_heads, n_kv, head_dim, how):
    heads = Heads(n_heads, n_kv, head_dim)
    model = _torch_model(kind, n_heads, n_kv, head_dim)
    ref = _logits(model)
    scale = np.abs(ref).max()
    originals = [_get_pair(layer) for layer in model.model.layers]
    ms = []
    for i, (wv, wo, b) in enumerate(originals):
        if how == "random":
            m = random_transform(heads, seed=10 + i)
        else:
            m, stats = optimize_transform(wv, wo, heads, 16, True, adpq.CafeqConfig(steps=30, lr=0.02), key=i)
            assert stats["proxy"] < stats["proxy_initial"]
            assert np.abs(m - initial_transform(heads, "hadamard", 0, i)).max() > 1e-3  # Adam moved it
        ms.append(m)
        wv_t, wo_t, b_t = apply_transform(m, wv, wo, heads, b)
        assert (b_t is None) == (b is None)
        # the per-head definition, written out: W_o[:, h] M_g^-1 with g = h // (n_heads / n_kv)
        inv = np.linalg.inv(m)
        for h in range(n_heads):
            g = h // heads.group
            cols = slice(h * head_dim, (h + 1) * head_dim)
            np.testing.assert_allclose(wo_t[:, cols], wo[:, cols] @ inv[g], rtol=1e-10, atol=1e-12)
        for g in range(n_kv):
            rows = slice(g * head_dim, (g + 1) * head_dim)
            np.testing.assert_allclose(wv_t[rows], m[g] @ wv[rows], rtol=1e-10, atol=1e-12)
            if b is not None:
                np.testing.assert_allclose(b_t[rows], m[g] @ b[rows], rtol=1e-10, atol=1e-12)
        assert np.abs(wv_t - wv).max() > 0.1 * np.abs(wv).max()  # the weights did change
        _set_pair(model.model.layers[i], wv_t, wo_t, b_t)
    diff = np.abs(_logits(model) - ref).max()
    assert diff < 1e-4 * scale, (diff, scale)

    # the check can fail: each of these mistakes changes the logits by far more than the tolerance
    def wrong(mutate):
        for i, (wv, wo, b) in enumerate(originals):
            wv_t, wo_t, b_t = apply_transform(ms[i], wv, wo, heads, b)
            wv_t, wo_t, b_t = mutate(ms[i], wv, wo, b, wv_t, wo_t, b_t)
            _set_pair(model.model.layers[i], wv_t, wo_t, b_t)
        return np.abs(_logits(model) - ref).max()

    def no_inverse_on_head_1(m, wv, wo, b, wv_t, wo_t, b_t):
        wo_t = wo_t.copy()
        wo_t[:, head_dim:2 * head_dim] = wo[:, head_dim:2 * head_dim]
        return wv_t, wo_t, b_t

    def transpose_for_inverse(m, wv, wo, b, wv_t, wo_t, b_t):
        o = wo.reshape(wo.shape[0], n_kv, heads.group, head_dim)
        return wv_t, np.einsum("okgd,ked->okge", o, m).reshape(wo.shape), b_t

    assert wrong(no_inverse_on_head_1) > 100 * 1e-4 * scale
    assert wrong(transpose_for_inverse) > 100 * 1e-4 * scale
    if n_kv < n_heads:
        def interleaved_heads(m, wv, wo, b, wv_t, wo_t, b_t):  # g(h) = h % n_kv: the other GQA layout
            inv = np.linalg.inv(m)
            wo_t = wo.copy()
            for h in range(n_heads):
                cols = slice(h * head_dim, (h + 1) * head_dim)
                wo_t[:, cols] = wo[:, cols] @ inv[h % n_kv]
            return wv_t, wo_t, b_t

        assert wrong(interleaved_heads) > 100 * 1e-4 * scale
    if kind == "qwen2":
        assert wrong(lambda m, wv, wo, b, wv_t, wo_t, b_t: (wv_t, wo_t, b)) > 100 * 1e-4 * scale


# ------------------------------------------------------------------ 2. the checkpoint pipeline


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The tiny random Llama of _ckpt_util (float32, GQA 4/2, head_dim 24) and the float model's logits."""
    d = tmp_path_factory.mktemp("cafeq")
    src = make_llama(d / "src", dtype="float32")
    return {"dir": d, "src": src}


def _hf_logits(folder=None, model=None):
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    if model is None:
        model = tr.AutoModelForCausalLM.from_pretrained(str(folder))
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits.double().numpy()


def _folder_weights(folder):
    from adpq.io.folder import SourceCheckpoint

    s = SourceCheckpoint(str(folder))
    return {n: np.asarray(s.get(n), np.float64) for n in s.tensors}


@pytest.mark.parametrize("outliers", [0.0, 0.02])
def test_quantize_checkpoint_with_cafeq(llama, outliers):
    pytest.importorskip("transformers")
    d, src = llama["dir"], llama["src"]
    cfg = adpq.QuantConfig(bits=3, group_size=GROUP, outlier_ratio=outliers)
    caf = adpq.CafeqConfig(steps=40, lr=0.01, rounds=2, seed=3)
    tag = f"o{outliers}"
    fake = quantize_checkpoint(src, d / f"fake-{tag}", cfg, format="fake", cafeq=caf, progress=False)
    plain_fake = quantize_checkpoint(src, d / f"plainfake-{tag}", cfg, format="fake", progress=False)
    packed = quantize_checkpoint(src, d / f"q-{tag}", cfg, cafeq=caf, progress=False)
    plain = quantize_checkpoint(src, d / f"plain-{tag}", cfg, progress=False)

    # same bits: every tensor as many bits (and outliers) as without CafeQ
    for a, b in ((fake, plain_fake), (packed, plain)):
        assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
        for x, y in zip(a.tensors, b.tensors):
            assert (x.bits_per_weight, x.num_outliers, x.bits_breakdown) == (y.bits_per_weight, y.num_outliers,
                                                                               y.bits_breakdown), x.name
        assert a.totals()["bits_per_weight_quantized"] == b.totals()["bits_per_weight_quantized"]
    # the stored arrays of v/o have the plain run's names, dtypes and sizes; other tensors are identical
    qa, qb = AdpqCheckpoint(str(d / f"q-{tag}")), AdpqCheckpoint(str(d / f"plain-{tag}"))
    for n in qa.names():
        if qa.is_quantized(n):
            x, y = qa.quantized_tensor(n).arrays(), qb.quantized_tensor(n).arrays()
            assert list(x) == list(y) and all(x[k].dtype == y[k].dtype and x[k].shape == y[k].shape for k in x)
            if "v_proj" in n or "o_proj" in n:
                assert not bits_equal(x["codes"], y["codes"]), n
            else:
                assert all(bits_equal(x[k], y[k]) for k in x), n
        else:
            assert bits_equal(qa.tensor(n), qb.tensor(n)), n

    # the per-tensor stats are on v_proj and o_proj only, one pair's stats on both
    for rep in (fake, packed):
        by = {t.name: t for t in rep.tensors}
        for t in rep.tensors:
            assert bool(t.cafeq) == (t.layer_type in ("v_proj", "o_proj")), t.name
        for v, o in ((V0, O0), (V1, O1)):
            s = by[v].cafeq
            assert s == by[o].cafeq
            assert set(s) == {"error_plain", "error_transformed", "error", "proxy_initial", "proxy",
                              "identity", "seconds_transform", "seconds"}
            assert s["error"] < s["error_plain"] and s["proxy"] < s["proxy_initial"]
    # quantization_config records the options, the pairs and the errors
    qc = json.loads((d / f"q-{tag}" / "config.json").read_text())["quantization_config"]
    fc = json.loads((d / f"fake-{tag}" / "config.json").read_text())["adpq_fake_quant"]
    for rec, rep in ((qc["cafeq"], packed), (fc["cafeq"], fake)):
        assert {k: rec[k] for k in caf.to_dict()} == caf.to_dict()
        assert rec["pairs"] == 2
        vs = [t.cafeq for t in rep.tensors if t.layer_type == "v_proj"]
        for k in ("error_plain", "error_transformed", "error"):
            assert rec[f"mean_{k}"] == pytest.approx(np.mean([s[k] for s in vs]), rel=1e-12)
        assert rec["mean_error"] < rec["mean_error_plain"]
    assert "cafeq" not in json.loads((d / f"plain-{tag}" / "config.json").read_text())["quantization_config"]

    # the fake folder's v/o are a quantization of the transformed pair: its products are the
    # original ones up to the reported error (a v/o mismatch would be an error of ~1)
    src_w, fake_w, pf_w = _folder_weights(src), _folder_weights(d / f"fake-{tag}"), _folder_weights(d / f"plainfake-{tag}")
    by = {t.name: t for t in fake.tensors}
    for v, o in ((V0, O0), (V1, O1)):
        # (the errors weigh W_v's inputs by the RMSNorm weight in front of the attention)
        norm = src_w[v.replace("self_attn.v_proj", "input_layernorm")]
        e = brute_pair_error(src_w[v], src_w[o], fake_w[v], fake_w[o], LLAMA_HEADS, norm)
        assert e == pytest.approx(by[v].cafeq["error"], rel=1e-3, abs=1e-5)
        e_plain = brute_pair_error(src_w[v], src_w[o], pf_w[v], pf_w[o], LLAMA_HEADS, norm)
        assert e_plain == pytest.approx(by[v].cafeq["error_plain"], rel=1e-3, abs=1e-5)
        assert e < e_plain

    # transformers loads it; its logits are near the float model's, nearer than without CafeQ (at 3
    # bits this random model is far from its float logits either way)
    ref = _hf_logits(src)
    got = _hf_logits(d / f"fake-{tag}")
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    err_plain = np.linalg.norm(_hf_logits(d / f"plainfake-{tag}") - ref) / np.linalg.norm(ref)
    assert err < 0.5 and err < err_plain, (err, err_plain)
    # the adpq folder: packed and dequantized, the same model as the fake folder
    packed_model = adpq.load(d / f"q-{tag}")
    assert any(isinstance(m, adpq.AdpqLinear) for m in packed_model.modules())
    a = _hf_logits(model=packed_model)
    b = _hf_logits(model=adpq.load(d / f"q-{tag}", dequantize=True))
    scale = np.abs(b).max()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(b, got, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """A tiny random Qwen2 (v_proj with a bias, GQA 4/2, head_dim 16) saved by transformers, float32."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("qwen2")
    torch.manual_seed(0)
    cfg = tr.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    m = tr.Qwen2ForCausalLM(cfg).float()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.v_proj.bias.normal_(0.0, 0.5)
    m.save_pretrained(str(d / "src"))
    return {"dir": d, "src": str(d / "src")}


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_cafeq_at_8_bits_is_the_float_model(model, request):
    """Only v/o quantized, at 8 bits: any slip in the transform (or a v/o pair from different
    transforms, or v_proj's bias left untransformed) would show far above 8-bit rounding."""
    tr = pytest.importorskip("transformers")
    import torch

    f = request.getfixturevalue(model)
    d, src = f["dir"], f["src"]
    cfg = adpq.QuantConfig(bits=8, group_size=GROUP, outlier_ratio=0.0)
    inc = ["*v_proj.weight", "*o_proj.weight"]
    rep = quantize_checkpoint(src, d / "fake8", cfg, include=inc, format="fake", cafeq=adpq.CafeqConfig(steps=20),
                              progress=False)
    assert sorted({t.layer_type for t in rep.tensors if t.cafeq}) == ["o_proj", "v_proj"]
    quantize_checkpoint(src, d / "plain8", cfg, include=inc, format="fake", progress=False)
    ref = _hf_logits(src)

    def err(logits):
        return np.linalg.norm(logits - ref) / np.linalg.norm(ref)

    e_caf, e_plain = err(_hf_logits(d / "fake8")), err(_hf_logits(d / "plain8"))
    assert e_caf < 0.03 and e_caf < 2 * e_plain, (e_caf, e_plain)
    src_w, out_w = _folder_weights(src), _folder_weights(d / "fake8")
    bias = "model.layers.1.self_attn.v_proj.bias"
    assert (bias in src_w) == (model == "qwen2")
    # the check can fail: the fake folder with one o_proj (or v_proj's bias) put back as it was
    m = tr.AutoModelForCausalLM.from_pretrained(str(d / "fake8"))
    with torch.no_grad():
        m.model.layers[1].self_attn.o_proj.weight.copy_(torch.from_numpy(src_w[O1]))
    assert err(_hf_logits(model=m)) > 10 * e_caf
    if model == "qwen2":
        assert np.abs(out_w[bias] - src_w[bias]).max() > 0.1  # the bias was transformed
        m = tr.AutoModelForCausalLM.from_pretrained(str(d / "fake8"))
        with torch.no_grad():
            m.model.layers[1].self_attn.v_proj.bias.copy_(torch.from_numpy(src_w[bias]))
        assert err(_hf_logits(model=m)) > 10 * e_caf
        # the adpq format: the transformed bias is stored as a kept tensor beside the packed pair
        rep = quantize_checkpoint(src, d / "q8", cfg, include=inc, cafeq=adpq.CafeqConfig(steps=20), progress=False)
        ck = AdpqCheckpoint(str(d / "q8"))
        assert not ck.is_quantized(bias) and bits_equal(ck.tensor(bias), out_w[bias].astype(np.float32))
        assert err(_hf_logits(model=adpq.load(d / "q8"))) == pytest.approx(e_caf, rel=1e-3)


# ------------------------------------------------------------------ 3. paired rounding


@pytest.mark.parametrize("heads", [Heads(6, 2, 16), Heads(6, 6, 16)], ids=["gqa", "mha"])
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_rounding_lowers_the_product_error_at_the_same_bits(heads, cfg, seed):
    config = CONFIGS[cfg]
    wv, wo = synthetic_pair(heads, 96, 96, seed)
    caf = adpq.CafeqConfig(rounds=2)
    qv, qo, errors = paired_round(wv, wo, heads, config, caf)
    assert len(errors) == 1 + 2 * caf.rounds
    assert all(b <= a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.9 * errors[0], errors
    # errors[0] is plain quantization's; errors[-1] the result's, both as brute force computes them
    pv, po = adpq.quantize(wv, config=config), adpq.quantize(wo, config=config)
    assert errors[0] == pytest.approx(brute_pair_error(wv, wo, pv.dequantize(), po.dequantize(), heads), rel=1e-9)
    assert errors[-1] == pytest.approx(brute_pair_error(wv, wo, qv.dequantize(), qo.dequantize(), heads), rel=1e-9)
    assert pair_error(wv, wo, qv.dequantize(), qo.dequantize(), heads) == pytest.approx(errors[-1], rel=1e-12)
    # the same arrays, dtypes and sizes as adpq.quantize: the same bits; AdpQ's outliers and grids kept
    for q, p in ((qv, pv), (qo, po)):
        a, b = q.arrays(), p.arrays()
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            if k not in ("codes", "outlier_values"):
                assert bits_equal(a[k], b[k]), k
        assert q.bits_per_weight == p.bits_per_weight and q.config == p.config and q.shape == p.shape
        np.testing.assert_array_equal(q.outlier_mask(), p.outlier_mask())
    assert not bits_equal(qv.arrays()["codes"], pv.arrays()["codes"]) or \
        not bits_equal(qo.arrays()["codes"], po.arrays()["codes"])
    # rounds=0: plain quantization
    qv0, qo0, e0 = paired_round(wv, wo, heads, config, adpq.CafeqConfig(rounds=0))
    assert e0 == [errors[0]] and bits_equal(qv0.arrays()["codes"], pv.arrays()["codes"])


def test_pair_error_is_the_product_error():
    heads = Heads(6, 2, 16)
    wv, wo = synthetic_pair(heads, 40, 24, 5)
    rng = np.random.default_rng(0)
    wv_hat, wo_hat = wv + 0.01 * rng.standard_normal(wv.shape), wo + 0.01 * rng.standard_normal(wo.shape)
    assert pair_error(wv, wo, wv_hat, wo_hat, heads) == pytest.approx(brute_pair_error(wv, wo, wv_hat, wo_hat, heads),
                                                                       rel=1e-9)
    assert pair_error(wv, wo, wv, wo, heads) < 1e-7
    # scaling W_v by a and W_o by 1/a changes each matrix, not the products
    assert pair_error(wv, wo, 3.0 * wv, wo / 3.0, heads) < 1e-6


# ------------------------------------------------------------------ 4. the learned transform


@pytest.mark.parametrize("proxy", ["product", "range"])
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_learned_transform_lowers_the_proxy_and_cafeq_the_error(proxy, cfg):
    heads = Heads(4, 2, 16)
    wv, wo = synthetic_pair(heads, 96, 96, 7, channel_outliers=3, scale=30.0)
    config = CONFIGS[cfg]
    caf = adpq.CafeqConfig(steps=60, lr=0.01, proxy=proxy, init="identity")
    m, opt = optimize_transform(wv, wo, heads, config.group_size, config.symmetric, caf)
    assert opt["proxy_initial"] == pytest.approx(1.0, rel=1e-9)  # identity: the untransformed pair
    assert opt["proxy"] < 0.9 * opt["proxy_initial"], opt
    res = cafeq_pair(wv, wo, heads, config, caf)
    s = res.stats
    assert s["error"] <= s["error_transformed"] <= s["error_plain"] and s["error"] < s["error_plain"], s
    if s["identity"]:  # the learned M left the quantized pair worse: dropped
        assert s["proxy"] == 1.0 and np.array_equal(res.transform, np.broadcast_to(np.eye(16), (2, 16, 16)))
    else:
        assert s["proxy"] == opt["proxy"]
    if proxy == "product":
        assert not s["identity"] and s["error"] < 0.8 * s["error_plain"]
    # a Hadamard start: a rotation mixes the loud value channels with the others (its proxy may be
    # above the untransformed pair's), Adam takes it below
    res_h = cafeq_pair(wv, wo, heads, config, adpq.CafeqConfig(steps=60, lr=0.01, proxy=proxy, init="hadamard"))
    sh = res_h.stats
    assert sh["proxy"] < min(1.0, sh["proxy_initial"]) and sh["error"] < 0.8 * sh["error_plain"], sh
    # on a pair without loud channels the rotation alone lowers the proxy
    wv2, wo2 = synthetic_pair(heads, 96, 96, 7, channel_outliers=0)
    caf2 = adpq.CafeqConfig(steps=60, lr=0.01, proxy=proxy, init="hadamard")
    _, opt2 = optimize_transform(wv2, wo2, heads, config.group_size, config.symmetric, caf2)
    assert opt2["proxy"] < opt2["proxy_initial"] < 0.9, opt2
    s2 = cafeq_pair(wv2, wo2, heads, config, caf2).stats
    assert s2["error"] < s2["error_plain"], s2
    # the result: the float pair is the transform of the input (same products), the quantized one
    # is as far from the input's products as stats["error"] says
    wv_t, wo_t, _ = apply_transform(res.transform, wv, wo, heads)
    np.testing.assert_allclose(res.wv, wv_t, rtol=1e-6, atol=1e-6 * np.abs(wv_t).max())
    np.testing.assert_allclose(res.wo, wo_t, rtol=1e-6, atol=1e-6 * np.abs(wo_t).max())
    assert pair_error(wv, wo, res.wv, res.wo, heads) < 1e-5
    e = brute_pair_error(wv, wo, res.qv.dequantize(), res.qo.dequantize(), heads)
    assert e == pytest.approx(s["error"], rel=1e-4)
    assert res.qv.bits_per_weight == adpq.quantize(wv, config=config).bits_per_weight
    assert res.qv.dtype == res.qo.dtype == "float32"
    # PairProxy agrees with the stats: the M returned has the value reported
    pp = PairProxy(wv, wo, heads, config.group_size, config.symmetric, proxy)
    assert pp.value_and_grad(res.transform, grad=False)[0] == pytest.approx(s["proxy"], rel=1e-9)


def test_cafeq_pair_dtypes_bias_and_key():
    heads = Heads(4, 2, 16)
    wv, wo = synthetic_pair(heads, 64, 48, 3)
    b = np.random.default_rng(0).standard_normal(wv.shape[0]).astype(np.float32)
    caf = adpq.CafeqConfig(steps=10, init="hadamard")
    r = cafeq_pair(wv.astype(np.float16), wo.astype(np.float16), heads, ADPQ, caf, bias=b, key=1)
    assert r.qv.dtype == r.qo.dtype == "float16"
    assert r.bias.dtype == np.float32
    np.testing.assert_allclose(r.bias, (r.transform @ b.astype(np.float64).reshape(2, 16, 1)).ravel(), rtol=1e-5,
                               atol=1e-6)
    r2 = cafeq_pair(wv.astype(np.float16), wo.astype(np.float16), heads, ADPQ, caf, bias=b, key=1)
    assert bits_equal(r.transform, r2.transform) and bits_equal(r.qv.arrays()["codes"], r2.qv.arrays()["codes"])
    # another layer, another random start
    m1, _ = optimize_transform(wv, wo, heads, 32, True, caf, key=1)
    m2, _ = optimize_transform(wv, wo, heads, 32, True, caf, key=2)
    assert not np.array_equal(m1, m2)


# ------------------------------------------------------------------ 5. the proxy's gradient


@pytest.mark.parametrize("proxy", ["product", "range"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scaled", [False, True])
def test_proxy_gradient_matches_finite_differences(proxy, symmetric, scaled):
    heads = Heads(4, 2, 6)  # W_o rows of 24, W_v rows of 50: group 16 divides neither
    rng = np.random.default_rng(11)
    wv = rng.standard_normal((12, 50))
    wo = rng.standard_normal((20, 24))
    wv[3] *= 5.0
    # (input columns and output rows weighed by the norms' scales)
    scale = np.exp(rng.standard_normal(50)) if scaled else None
    out_scale = np.exp(rng.standard_normal(20)) if scaled else None
    pp = PairProxy(wv, wo, heads, 16, symmetric, proxy, scale, out_scale)
    assert pp.go.pad and pp.gv.pad
    m = random_transform(heads, 4)
    value, grad = pp.value_and_grad(m)
    assert value == pytest.approx(pp.value_and_grad(m, grad=False)[0], rel=1e-12)
    assert grad.shape == m.shape and np.isfinite(grad).all() and np.abs(grad).max() > 0
    eps = 1e-6

    def f(x):
        return pp.value_and_grad(x, grad=False)[0]

    for k in range(3):  # directional derivatives
        u = rng.standard_normal(m.shape)
        fd = (f(m + eps * u) - f(m - eps * u)) / (2 * eps)
        assert fd == pytest.approx(float((grad * u).sum()), rel=1e-4, abs=1e-7), k
    idx = [tuple(rng.integers(0, s) for s in m.shape) for _ in range(12)] + [(1, 5, 5), (0, 0, 3)]
    for i in idx:  # entries
        e = np.zeros_like(m)
        e[i] = eps
        fd = (f(m + e) - f(m - e)) / (2 * eps)
        assert fd == pytest.approx(grad[i], rel=1e-4, abs=1e-7 * np.abs(grad).max()), i


def test_product_proxy_ignores_the_overall_scale():
    heads = Heads(4, 2, 8)
    wv, wo = synthetic_pair(heads, 40, 24, 1)
    pp = PairProxy(wv, wo, heads, 16, True, "product")
    m = random_transform(heads, 2)
    assert pp.value_and_grad(3.0 * m, grad=False)[0] == pytest.approx(pp.value_and_grad(m, grad=False)[0], rel=1e-9)
    eye = initial_transform(heads, "identity", 0)
    assert pp.value_and_grad(eye, grad=False)[0] == pytest.approx(1.0, rel=1e-12)


# ------------------------------------------------------------------ 6. refine_rows


def _gram(rows, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, rows // 2)) @ rng.standard_normal((rows // 2, rows))
    return a @ a.T / rows + 0.05 * np.eye(rows)


def _row_loss(w, w_hat, g):
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.sum(d * (g @ d)))  # sum over columns l of d_l^T G d_l


REFINE_CONFIGS = {
    "rtn": RTN,
    "rtn-asym": RTN.replace(symmetric=False),
    "adpq-fp16-mean_abs": adpq.QuantConfig(bits=3, group_size=32, outlier_ratio=0.03, column_scaling="mean_abs"),
    "adpq-group": adpq.QuantConfig(bits=3, group_size=32, outlier_ratio=0.03, outlier_format="group",
                                   symmetric=False, zero_point="float", column_scaling="mean_abs"),
    "adpq-b4-g24": adpq.QuantConfig(bits=4, group_size=24, outlier_ratio=0.02),
}


@pytest.mark.parametrize("cfg", list(REFINE_CONFIGS))
def test_refine_rows(cfg):
    config = REFINE_CONFIGS[cfg]
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((72, 80)) * rng.uniform(0.2, 3.0, 80)).astype(np.float32)
    w[rng.random(w.shape) < 0.01] *= 8.0
    g = _gram(72, 4)
    start = adpq.quantize(w, config=config)
    c = refine_rows(w, start, g)
    r = refine_rows(w, start, g, solver=ref_gptq.solve)
    a0, ac, ar = start.arrays(), c.arrays(), r.arrays()
    assert "column_scales" in a0 or config.column_scaling == "none"
    codes = [adpq.core.layout.unpack_bits(x["codes"], w.size, config.bits) for x in (ac, ar)]
    assert np.mean(codes[0] == codes[1]) >= 0.999
    l0, lc, lr = (_row_loss(w, q.dequantize(), g) for q in (start, c, r))
    assert lc < 0.5 * l0 and lr < 0.5 * l0, (l0, lc, lr)
    assert abs(lc - lr) <= 1e-2 * lr
    for x in (ac, ar):  # the same arrays and bits; only the codes (and fp16 outlier values) move
        assert list(x) == list(a0)
        for k in x:
            assert x[k].dtype == a0[k].dtype and x[k].shape == a0[k].shape, k
            if k not in ("codes", "outlier_values"):
                assert bits_equal(x[k], a0[k]), k
    np.testing.assert_array_equal(c.outlier_mask(), start.outlier_mask())
    assert c.bits_per_weight == start.bits_per_weight
    # G = I: nothing to trade between rows, the start is kept (nearest rounding on the same grids)
    same = refine_rows(w, start, np.eye(72), damp=0.0)
    assert np.mean(adpq.core.layout.unpack_bits(same.arrays()["codes"], w.size, config.bits)
                   == adpq.core.layout.unpack_bits(a0["codes"], w.size, config.bits)) > 0.999
    with pytest.raises(ValueError, match="shape"):
        refine_rows(w, start, np.eye(80))
    with pytest.raises(ValueError, match="shape"):
        refine_rows(w[:, :64], start, g)


# ------------------------------------------------------------------ 7. determinism and resume


def _safetensors_bytes(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))
            if f.endswith(".safetensors")}


def test_runs_are_deterministic_and_the_seed_matters(llama):
    d, src = llama["dir"], llama["src"]
    cfg = adpq.QuantConfig(bits=3, group_size=GROUP, outlier_ratio=0.02)
    caf = {"steps": 15, "seed": 5, "init": "hadamard"}
    quantize_checkpoint(src, d / "det1", cfg, cafeq=caf, progress=False)
    quantize_checkpoint(src, d / "det2", cfg, cafeq=caf, progress=False)
    a, b = _safetensors_bytes(d / "det1"), _safetensors_bytes(d / "det2")
    assert a and a == b
    # one thread, one tensor at a time: the same arrays (the metadata records config.threads)
    quantize_checkpoint(src, d / "det1t", cfg.replace(threads=1), cafeq=caf, progress=False)
    x, y = AdpqCheckpoint(str(d / "det1")), AdpqCheckpoint(str(d / "det1t"))
    for n in x.names():
        if x.is_quantized(n):
            p, q = x.quantized_tensor(n).arrays(), y.quantized_tensor(n).arrays()
            assert all(bits_equal(p[k], q[k]) for k in p), n
    quantize_checkpoint(src, d / "det3", cfg, cafeq={**caf, "seed": 6}, progress=False)
    x, y = AdpqCheckpoint(str(d / "det1")), AdpqCheckpoint(str(d / "det3"))
    for n in (V0, V1, O0, O1):
        assert not bits_equal(x.quantized_tensor(n).arrays()["codes"], y.quantized_tensor(n).arrays()["codes"]), n
    q = "model.layers.0.self_attn.q_proj.weight"
    assert bits_equal(x.quantized_tensor(q).arrays()["codes"], y.quantized_tensor(q).arrays()["codes"])


class _Crash(Exception):
    pass


def test_resume_after_a_crash_between_a_pairs_members(llama, monkeypatch):
    """One tensor per shard: a crash at layer 1's post_attention_layernorm leaves layer 1's v_proj
    written and its o_proj lost; the re-run computes that pair again for o_proj alone."""
    d, src = llama["dir"], llama["src"]
    cfg = adpq.QuantConfig(bits=3, group_size=GROUP, outlier_ratio=0.02)
    caf = adpq.CafeqConfig(steps=15, seed=2)
    dst = d / "resumed"
    real = adpq.io.checkpoint._process_tensor
    crash_at = "model.layers.1.post_attention_layernorm.weight"

    def crashing(*args):
        if args[-1].name == crash_at:
            raise _Crash("simulated crash")
        return real(*args)

    monkeypatch.setattr(adpq.io.checkpoint, "_process_tensor", crashing)
    with pytest.raises(_Crash):
        quantize_checkpoint(src, dst, cfg, cafeq=caf, progress=False, max_shard_size=0)
    monkeypatch.setattr(adpq.io.checkpoint, "_process_tensor", real)
    assert (dst / INCOMPLETE_MARKER).exists()
    # other CafeQ options are other settings
    with pytest.raises(adpq.CheckpointError, match="different settings"):
        quantize_checkpoint(src, dst, cfg, cafeq=caf.replace(seed=3), progress=False, max_shard_size=0)
    with pytest.raises(adpq.CheckpointError, match="different settings"):
        quantize_checkpoint(src, dst, cfg, progress=False, max_shard_size=0)
    rep = quantize_checkpoint(src, dst, cfg, cafeq=caf, progress=False, max_shard_size=0)
    by = {t.name: t for t in rep.tensors}
    assert by[V1].resumed and not by[O1].resumed and by[V0].resumed and by[O0].resumed
    assert not (dst / INCOMPLETE_MARKER).exists()
    clean = quantize_checkpoint(src, d / "clean", cfg, cafeq=caf, progress=False, max_shard_size=0)
    a, b = AdpqCheckpoint(str(dst)), AdpqCheckpoint(str(d / "clean"))
    assert a.names() == b.names()
    for n in a.names():
        if a.is_quantized(n):
            x, y = a.quantized_tensor(n).arrays(), b.quantized_tensor(n).arrays()
            assert x.keys() == y.keys() and all(bits_equal(x[k], y[k]) for k in x), n
        else:
            assert bits_equal(a.tensor(n), b.tensor(n)), n
    assert _safetensors_bytes(dst) == _safetensors_bytes(d / "clean")
    ra = json.loads((dst / "config.json").read_text())["quantization_config"]["cafeq"]
    rb = json.loads((d / "clean" / "config.json").read_text())["quantization_config"]["cafeq"]
    assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    # the resumed v_proj keeps its stats (from the manifest), equal to the recomputed o_proj's but for time
    cb = {t.name: t for t in clean.tensors}
    for n in (V1, O1):
        assert {k: v for k, v in by[n].cafeq.items() if not k.startswith("seconds")} == \
            {k: v for k, v in cb[n].cafeq.items() if not k.startswith("seconds")}


# ------------------------------------------------------------------ 8. errors


@pytest.mark.parametrize("kw,err", [
    ({"steps": -1}, ValueError), ({"steps": 1.5}, TypeError), ({"steps": True}, TypeError),
    ({"lr": 0}, ValueError), ({"lr": -1e-3}, ValueError), ({"lr": float("nan")}, ValueError),
    ({"lr": float("inf")}, ValueError), ({"lr": "0.1"}, TypeError), ({"proxy": "x"}, ValueError),
    ({"init": "x"}, ValueError), ({"rounds": True}, TypeError), ({"rounds": -1}, ValueError),
    ({"damp": -1}, ValueError), ({"damp": float("nan")}, ValueError), ({"seed": -1}, ValueError),
    ({"seed": 1.0}, TypeError), ({"norm_weights": "yes"}, TypeError), ({"norm_weights": 2}, TypeError)])
def test_cafeq_config_checks(kw, err, llama, tmp_path):
    (field,) = kw
    with pytest.raises(err, match=field):
        adpq.CafeqConfig(**kw)
    with pytest.raises(adpq.CheckpointError, match=field):  # the same options as a dict
        quantize_checkpoint(llama["src"], tmp_path / "x", cafeq=kw, progress=False)
    assert not (tmp_path / "x").exists()


def test_cafeq_config_round_trip():
    c = adpq.CafeqConfig(steps=7, lr=0.02, proxy="range", init="identity", rounds=1, damp=0.1, seed=9)
    assert adpq.CafeqConfig.from_dict(c.to_dict()) == c
    assert adpq.CafeqConfig(steps=np.int64(3)).steps == 3 and type(adpq.CafeqConfig(steps=np.int64(3)).steps) is int
    with pytest.raises(ValueError, match="unknown"):
        adpq.CafeqConfig.from_dict({"stepz": 1})


def test_checkpoint_errors(llama, tmp_path):
    src = llama["src"]
    dst = tmp_path / "dst"

    def refused(exc, match, source=src, **kw):
        with pytest.raises(exc, match=match):
            quantize_checkpoint(source, dst, progress=False, **kw)
        assert not dst.exists()  # refused before anything is written

    refused(adpq.CheckpointError, "o_proj", cafeq=True, exclude=["*o_proj*"])
    refused(adpq.CheckpointError, "v_proj", cafeq=True, include=["*q_proj*", "*o_proj*"])
    refused(TypeError, "cafeq", cafeq="yes")
    refused(TypeError, "cafeq", cafeq=1)
    refused(adpq.CheckpointError, "stepz", cafeq={"stepz": 1})
    refused(adpq.CheckpointError, "steps", cafeq={"steps": -1})
    cal = types.SimpleNamespace(hessians={}, config=adpq.QuantConfig(), gptq=adpq.GptqConfig(), info={},
                                fingerprint=lambda: "x", cafeq=None)
    refused(adpq.CheckpointError, "without CafeQ", cafeq=True, calibration=cal)
    cal.cafeq = adpq.CafeqConfig(steps=3)
    refused(adpq.CheckpointError, "other CafeQ options", cafeq={"steps": 4}, calibration=cal)

    def variant(name, tensors=None, **conf):
        t = llama_tensors(False, np.float32) if tensors is None else tensors
        c = {k: v for k, v in llama_config(False, "float32").items() if k not in conf}
        c.update({k: v for k, v in conf.items() if v is not None})
        return write_checkpoint(tmp_path / name, t, c, shards=1)

    refused(adpq.CheckpointError, "num_attention_heads", variant("noheads", num_attention_heads=None), cafeq=True)
    refused(adpq.CheckpointError, "head_dim", variant("wronghd", head_dim=16), cafeq=True)
    refused(adpq.CheckpointError, "num_key_value_heads", variant("badkv", num_key_value_heads=3), cafeq=True)
    t = llama_tensors(False, np.float32)
    t["model.layers.0.self_attn.v_norm.weight"] = np.ones(24, np.float32)
    refused(adpq.CheckpointError, "v_norm", variant("vnorm", t), cafeq=True)
    t = {k: v for k, v in llama_tensors(False, np.float32).items() if "v_proj" not in k}
    refused(adpq.CheckpointError, "no \\(v_proj, o_proj\\) pair", variant("nov", t), cafeq=True)
    t = {k: v for k, v in llama_tensors(False, np.float32).items() if k != O1}
    refused(adpq.CheckpointError, "o_proj", variant("noo", t), cafeq=True)
    # the same folders are fine without cafeq
    quantize_checkpoint(tmp_path / "noheads", tmp_path / "ok", progress=False)


def _multimodal(tmp_path):
    """A LLaVA-like folder: the tiny Llama under language_model. (heads in text_config) and a vision
    tower whose attention has v_proj but out_proj (as CLIP/SigLIP)."""
    t = {"language_model." + k: v for k, v in llama_tensors(False, np.float32).items()}
    rng = np.random.default_rng(0)
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        t[f"vision_tower.encoder.layers.0.self_attn.{n}.weight"] = rng.standard_normal((32, 32)).astype(np.float32)
    return write_checkpoint(tmp_path / "mm", t, {"model_type": "llava", "text_config": llama_config(False, "float32")},
                            shards=1)


def test_multimodal_heads_come_from_text_config(tmp_path):
    src = _multimodal(tmp_path)
    with pytest.raises(adpq.CheckpointError, match="out_proj|o_proj"):  # the vision tower's attention, selected
        quantize_checkpoint(src, tmp_path / "q", cafeq=True, progress=False)


def test_cafeq_on_the_language_model_of_a_multimodal_folder(tmp_path):
    src = _multimodal(tmp_path)
    rep = quantize_checkpoint(src, tmp_path / "q", adpq.QuantConfig(bits=3, group_size=GROUP), cafeq={"steps": 5},
                              exclude=["*vision_tower*"], progress=False)
    assert sum(1 for t in rep.tensors if t.cafeq) == 4


def test_transform_api_errors():
    with pytest.raises(ValueError, match="multiple"):
        Heads(6, 4, 8)
    with pytest.raises(ValueError):
        Heads(0, 1, 8)
    with pytest.raises(TypeError):
        Heads(4.0, 2, 8)
    heads = Heads(4, 2, 8)
    wv, wo = synthetic_pair(heads, 32, 24, 0)
    for v, o in ((wv[:15], wo), (wv, wo[:, :31]), (wv.T, wo), (wv, wo.T), (wv.ravel(), wo)):
        with pytest.raises(ValueError):
            cafeq_pair(v, o, heads, RTN, adpq.CafeqConfig(steps=2))
    for v, o in ((wv.copy(), wo), (wv, wo.copy())):
        (v if v is not wv else o)[1, 2] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            cafeq_pair(v, o, heads, RTN, adpq.CafeqConfig(steps=2))
    bad = wv.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError):
        cafeq_pair(bad, wo, heads, RTN, adpq.CafeqConfig(steps=2))
    with pytest.raises(ValueError, match="bias"):
        cafeq_pair(wv, wo, heads, RTN, adpq.CafeqConfig(steps=2), bias=np.zeros(15))
    with pytest.raises(ValueError, match="bias"):
        cafeq_pair(wv, wo, heads, RTN, adpq.CafeqConfig(steps=2), bias=np.full(16, np.nan))
    with pytest.raises(TypeError):
        cafeq_pair(wv, wo, heads, RTN, {"steps": 2})
    with pytest.raises(TypeError):
        cafeq_pair(wv, wo, (4, 2, 8), RTN, adpq.CafeqConfig(steps=2))
    with pytest.raises(ValueError):
        apply_transform(np.eye(8)[None].repeat(2, 0), wv[:15], wo, heads)


# ------------------------------------------------------------------ 9. the command line


def _user_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("adpq: error:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_cli_quantize_with_cafeq(llama, tmp_path):
    src = llama["src"]
    dst = tmp_path / "cli"
    r = run_cli("quantize", src, dst, "--bits", "3", "--group-size", GROUP, "--outlier-ratio", "0", "--cafeq",
                "--cafeq-steps", "5", "--cafeq-proxy", "range", "--cafeq-init", "identity", "--cafeq-rounds", "1",
                "--cafeq-lr", "0.02", "--cafeq-damp", "0.05", "--cafeq-seed", "4", "--no-progress", check=0)
    lines = [x for x in r.stderr.splitlines() if x.startswith("cafeq:")]
    assert len(lines) == 1 and "2 (v_proj, o_proj) pairs" in lines[0], r.stderr
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert {k: qc["cafeq"][k] for k in ("steps", "lr", "proxy", "init", "rounds", "damp", "seed", "pairs")} == \
        {"steps": 5, "lr": 0.02, "proxy": "range", "init": "identity", "rounds": 1, "damp": 0.05, "seed": 4, "pairs": 2}
    assert qc["bits"] == 3 and qc["outlier_ratio"] == 0.0
    # the command writes what the API writes
    quantize_checkpoint(src, tmp_path / "api", adpq.QuantConfig(bits=3, group_size=GROUP, outlier_ratio=0.0),
                        cafeq=adpq.CafeqConfig(steps=5, proxy="range", init="identity", rounds=1, lr=0.02, damp=0.05,
                                               seed=4), progress=False)
    assert _safetensors_bytes(dst) == _safetensors_bytes(tmp_path / "api")
    _user_error(run_cli("quantize", src, tmp_path / "x", "--cafeq-steps", "5"), "--cafeq")
    _user_error(run_cli("quantize", src, tmp_path / "x", "--cafeq", "--cafeq-lr", "0"), "lr")
    _user_error(run_cli("quantize", src, tmp_path / "x", "--cafeq", "--exclude", "*o_proj*"), "o_proj")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ 10. AdpqConfig


def test_save_pretrained_keeps_the_cafeq_record(llama, tmp_path):
    tr = pytest.importorskip("transformers")
    src = llama["src"]
    q = tmp_path / "q"
    quantize_checkpoint(src, q, adpq.QuantConfig(bits=4, group_size=GROUP, outlier_ratio=0.02),
                        cafeq=adpq.CafeqConfig(steps=10), progress=False)
    m = tr.AutoModelForCausalLM.from_pretrained(str(q))
    record = json.loads((q / "config.json").read_text())["quantization_config"]
    assert m.config.quantization_config.cafeq == record["cafeq"]
    m.save_pretrained(tmp_path / "saved")
    assert _safetensors_bytes(tmp_path / "saved") == _safetensors_bytes(q)
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["quantization_config"] == record
    cfg = adpq.AdpqConfig(**record)
    assert cfg.cafeq == record["cafeq"] and cfg.to_dict() == record
    with pytest.raises(ValueError, match="CafeQ"):
        tr.AutoModelForCausalLM.from_pretrained(src, quantization_config=adpq.AdpqConfig(bits=3, cafeq={"steps": 5}))
    with pytest.raises(TypeError, match="cafeq"):
        adpq.AdpqConfig(bits=3, cafeq=True)


# ------------------------------------------------------------------ 11. with a calibration (GPTQ)


def test_calibrate_with_cafeq_matches_the_checkpoint(tmp_path):
    """calibrate(cafeq=) folds the transform in before the Hessians; quantize_checkpoint folds in the
    same one and rounds v/o by GPTQ: the folder stores the weights calibrate propagated."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    from _tokenizer_util import small_bpe_tokenizer

    lines = [f"line {i} of the text, words {i * 7 % 13} and {i % 5}.\n" for i in range(200)]
    torch.manual_seed(0)
    tok = small_bpe_tokenizer(lines)
    cfg = tr.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    src, text = tmp_path / "model", tmp_path / "calib.txt"
    tr.LlamaForCausalLM(cfg).save_pretrained(str(src))
    tok.save_pretrained(str(src))
    text.write_text("".join(lines), encoding="utf-8")
    q = adpq.QuantConfig(bits=3, group_size=16)
    caf = adpq.CafeqConfig(steps=5)
    box = {}
    orig = tr.AutoModelForCausalLM.from_pretrained

    def grab(*a, **k):
        box["m"] = orig(*a, **k)
        return box["m"]

    tr.AutoModelForCausalLM.from_pretrained = grab
    try:
        cal = adpq.calibrate(src, text, samples=2, seqlen=32, config=q, cafeq=caf, progress=False)
    finally:
        tr.AutoModelForCausalLM.from_pretrained = orig
    plain = adpq.calibrate(src, text, samples=2, seqlen=32, config=q, progress=False)
    v0, o0 = "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight"
    np.testing.assert_array_equal(cal.hessians[v0], plain.hessians[v0])  # v_proj's input is unchanged
    assert not np.allclose(cal.hessians[o0], plain.hessians[o0])         # o_proj's is transformed
    assert cal.info["cafeq"] == caf.to_dict() and plain.info["cafeq"] is None
    rep = quantize_checkpoint(src, tmp_path / "out", calibration=cal, progress=False)  # cafeq: the calibration's
    assert sum(r.gptq for r in rep.tensors) == 14 and sum(1 for r in rep.tensors if r.cafeq) == 4
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["cafeq"]["steps"] == 5 and qc["calibration"]["cafeq"]["steps"] == 5
    from adpq.io.adpq_format import AdpqCheckpoint

    ck = AdpqCheckpoint(str(tmp_path / "out"))
    layers = box["m"].model.layers
    for i in range(2):
        att = layers[i].self_attn
        for n, mod in (("v_proj", att.v_proj), ("o_proj", att.o_proj)):
            stored = ck.quantized_tensor(f"model.layers.{i}.self_attn.{n}.weight").dequantize()
            np.testing.assert_array_equal(stored, mod.weight.detach().float().numpy())
    # the folder computes what the float model does, up to the quantization
    ids = torch.randint(0, len(tok), (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = orig(str(src)).eval()(ids).logits
        got = adpq.load(str(tmp_path / "out"), dequantize=True)(ids).logits
        noc = quantize_checkpoint(src, tmp_path / "nocafeq", calibration=plain, progress=False)
        base = adpq.load(str(tmp_path / "nocafeq"), dequantize=True)(ids).logits
    assert noc is not None and float((got - ref).abs().max()) < 3 * float((base - ref).abs().max()) + 1e-3


def test_input_scale_weighs_the_pair_error():
    """pair_error with input_scale is the product error with W_v's columns scaled; cafeq_pair uses
    it throughout (its stats agree with the brute-force weighted error)."""
    heads = Heads(4, 2, 8)
    wv, wo = synthetic_pair(heads, 40, 32, 5)
    scale = np.exp(np.random.default_rng(1).standard_normal(40))
    res = cafeq_pair(wv, wo, heads, RTN, adpq.CafeqConfig(steps=10), input_scale=scale)
    e = brute_pair_error(wv, wo, res.qv.dequantize(), res.qo.dequantize(), heads, scale)
    assert e == pytest.approx(res.stats["error"], rel=1e-4)
    out = np.exp(np.random.default_rng(2).standard_normal(32))
    r2 = cafeq_pair(wv, wo, heads, RTN, adpq.CafeqConfig(steps=10), input_scale=scale, output_scale=out)
    e2 = brute_pair_error(wv, wo * out[:, None], r2.qv.dequantize(), r2.qo.dequantize() * out[:, None], heads, scale)
    assert e2 == pytest.approx(r2.stats["error"], rel=1e-4) and r2.stats["error"] < r2.stats["error_plain"]
    assert e != pytest.approx(brute_pair_error(wv, wo, res.qv.dequantize(), res.qo.dequantize(), heads), rel=1e-3)
    assert res.stats["error"] < res.stats["error_plain"]
    with pytest.raises(ValueError, match="input_scale"):
        cafeq_pair(wv, wo, heads, RTN, adpq.CafeqConfig(steps=1), input_scale=scale[:-1])
    with pytest.raises(ValueError, match="output_scale"):
        cafeq_pair(wv, wo, heads, RTN, adpq.CafeqConfig(steps=1), output_scale=out[:-1])


def test_norms_around_the_attention_are_found():
    """input_layernorm scales v_proj's inputs; post_attention_layernorm scales o_proj's outputs only in
    Gemma 2/3's sandwich (a pre_feedforward_layernorm beside it); in Llama it is the MLP's input norm."""
    from adpq.io.cafeq_pairs import find_pairs

    heads = Heads(4, 2, 8)
    p = "model.layers.3."
    shapes = {p + "self_attn.v_proj.weight": (16, 32), p + "self_attn.o_proj.weight": (32, 32),
              p + "input_layernorm.weight": (32,), p + "post_attention_layernorm.weight": (32,)}
    names = list(shapes)
    llama, = find_pairs(names, names[:2], heads, shapes, "llama")
    assert (llama.norm, llama.out_norm, llama.norm_offset, llama.key) == (p + "input_layernorm.weight", None, 0.0, 3)
    shapes[p + "pre_feedforward_layernorm.weight"] = (32,)
    gemma, = find_pairs(list(shapes), names[:2], heads, shapes, "gemma3_text")
    assert (gemma.out_norm, gemma.norm_offset) == (p + "post_attention_layernorm.weight", 1.0)
    w = {p + "input_layernorm.weight": np.full(32, -3.0), p + "post_attention_layernorm.weight": np.arange(32.0)}
    np.testing.assert_array_equal(gemma.input_scale(w.get), np.full(32, 2.0))   # |1 + w|
    np.testing.assert_array_equal(gemma.output_scale(w.get), np.arange(32.0) + 1)
    shapes[p + "input_layernorm.weight"] = (31,)  # not the inputs' size: not taken
    assert find_pairs(list(shapes), names[:2], heads, shapes, "gemma3_text")[0].norm is None
