"""The packed runtime: AdpqLinear, transformers' from_pretrained / save_pretrained / quantize at load,
adpq.load, the torch fallback, `adpq generate` and `adpq eval` through the packed path."""
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import adpq  # noqa: E402  (registers quant_method "adpq" with transformers)
from adpq.io.checkpoint import quantize_checkpoint  # noqa: E402
from adpq.io.safetensors import SafetensorsFile  # noqa: E402
from adpq.runtime import torch_format  # noqa: E402
from adpq.runtime.linear import AdpqLinear, to_numpy  # noqa: E402

from _ckpt_util import adpq_env, llama_config, llama_tensors, make_llama, run_cli, write_checkpoint  # noqa: E402

CFG = dict(bits=4, group_size=64, outlier_ratio=0.02)  # HIDDEN 96: every row ends in a short group
QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny random Llama (float32, untied), its adpq folder and its fake-quant folder."""
    d = tmp_path_factory.mktemp("runtime")
    src = make_llama(d / "src", tied=False, dtype="float32")
    cfg = adpq.QuantConfig(**CFG)
    quantize_checkpoint(src, d / "q", cfg, progress=False)
    quantize_checkpoint(src, d / "fake", cfg, format="fake", progress=False)
    return {"src": src, "q": str(d / "q"), "fake": str(d / "fake"), "tmp": d}


def _ids(n=11, batch=2, vocab=128):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(0))


def _adpq_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, AdpqLinear)}


def test_from_pretrained_gives_packed_layers_with_fake_quant_logits(folders):
    torch.set_num_threads(1)
    m = transformers.AutoModelForCausalLM.from_pretrained(folders["q"])
    f = transformers.AutoModelForCausalLM.from_pretrained(folders["fake"])
    lin = _adpq_linears(m)
    assert len(lin) == 2 * len(QUANTIZED) and all(n.rsplit(".", 1)[1] in QUANTIZED for n in lin)
    assert not any(isinstance(x, torch.nn.Linear) and x is not m.lm_head for x in m.modules())
    for mod in lin.values():  # the stored arrays, no dense copy
        assert not hasattr(mod, "weight") and mod.arrays()["codes"].dtype == torch.uint8
        assert sum(t.numel() * t.element_size() for t in mod.arrays().values()) < mod.in_features * mod.out_features
    x = _ids()
    with torch.no_grad():
        b = f(x).logits
        for dense_batch in (None, 16, 1):  # the packed kernel at every batch; prefill dense; all dense
            for mod in lin.values():
                mod.dense_batch = dense_batch
            a = m(x).logits
            assert a.dtype == b.dtype == torch.float32
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item()), (dense_batch, (a - b).abs().max())
        for mod in lin.values():
            del mod.dense_batch  # (back to the class default)
    # and not the original model's
    o = transformers.AutoModelForCausalLM.from_pretrained(folders["src"])
    with torch.no_grad():
        assert (o(x).logits - b).abs().max() > 100 * (a - b).abs().max()
    gm = m.generate(x[:1], max_new_tokens=6, do_sample=False)
    gf = f.generate(x[:1], max_new_tokens=6, do_sample=False)
    assert gm.shape == (1, 17) and torch.equal(gm, gf)


def test_torch_fallback_is_the_dequantized_model(folders):
    m = adpq.load(folders["q"])
    d = adpq.load(folders["q"], dequantize=True)
    assert _adpq_linears(m) and not _adpq_linears(d)
    for mod in _adpq_linears(m).values():
        mod.use_kernel = False
    x = _ids()
    with torch.no_grad():
        assert torch.equal(m(x).logits, d(x).logits)  # same float32 arithmetic as the C dequantizer
    # autograd takes the fallback too (the kernel has no backward)
    lin = next(iter(_adpq_linears(m).values()))
    lin.use_kernel = True
    xi = torch.randn(3, lin.in_features, requires_grad=True)
    lin(xi).sum().backward()
    assert xi.grad is not None and torch.isfinite(xi.grad).all()


@pytest.mark.parametrize("bits,group_size,kw", [
    (2, 32, {}), (3, 64, {"symmetric": False}), (4, 8, {"outlier_format": "group"}),
    (8, -1, {"symmetric": False, "zero_point": "float"}), (3, 24, {"scale_dtype": "bfloat16"}),
    (4, 128, {"scale_dtype": "float32", "outlier_scope": "group", "column_scaling": "mean_abs"}),
])
def test_torch_format_matches_c_dequantize(bits, group_size, kw):
    rng = np.random.default_rng(bits * 100 + group_size)
    w = rng.standard_normal((70, 200)).astype(np.float32) * rng.uniform(0.1, 3, 200).astype(np.float32)
    qt = adpq.quantize(w, bits=bits, group_size=group_size, outlier_ratio=0.03, **kw)
    lin = AdpqLinear(qt)
    got = torch_format.dequantize(lin.arrays(), qt.layout, qt.config)
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), qt.dequantize())


def test_adpq_linear_dtypes_shapes_and_errors():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 96)).astype(np.float32)
    lin = AdpqLinear.from_linear(torch.nn.Linear(96, 48).requires_grad_(False), adpq.QuantConfig(bits=4, group_size=32))
    ref_w = torch.from_numpy(lin.quantized_tensor().dequantize())
    x = torch.randn(2, 5, 96)
    with torch.no_grad():
        y = lin(x)
        assert y.shape == (2, 5, 48) and y.dtype == torch.float32
        exp = torch.nn.functional.linear(x.double(), ref_w.double(), lin.bias.double())
        assert torch.allclose(y.double(), exp, rtol=1e-5, atol=1e-5)
        yb = lin(x.to(torch.bfloat16))
        assert yb.dtype == torch.bfloat16 and torch.allclose(yb.float(), y, rtol=2e-2, atol=2e-2)
        with pytest.raises(ValueError, match="features"):
            lin(torch.randn(3, 95))
    # a dtype cast of the model moves nothing and casts no stored array
    before = {k: (t.dtype, t.data_ptr()) for k, t in lin.arrays().items()}
    lin.half()
    lin.to(torch.bfloat16)
    assert {k: (t.dtype, t.data_ptr()) for k, t in lin.arrays().items()} == before
    assert lin.bias.dtype == torch.bfloat16
    with pytest.raises(TypeError):
        AdpqLinear(w)
    with pytest.raises(ValueError, match="activations"):
        AdpqLinear(adpq.quantize(w), activations="int4")
    assert "bits=4" in repr(lin)


def test_save_pretrained_is_byte_identical(folders):
    m = transformers.AutoModelForCausalLM.from_pretrained(folders["q"])
    out = folders["tmp"] / "saved"
    m.save_pretrained(out)
    src_files = sorted(f for f in os.listdir(folders["q"]) if f.endswith(".safetensors"))
    assert src_files == sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    for f in src_files:
        assert (out / f).read_bytes() == open(os.path.join(folders["q"], f), "rb").read(), f
    qc = json.load(open(out / "config.json"))["quantization_config"]
    assert qc == json.load(open(os.path.join(folders["q"], "config.json")))["quantization_config"]
    again = transformers.AutoModelForCausalLM.from_pretrained(out)
    x = _ids()
    with torch.no_grad():
        assert torch.equal(again(x).logits, m(x).logits)


def test_quantize_at_load_equals_the_pipeline(folders):
    m = transformers.AutoModelForCausalLM.from_pretrained(folders["src"], quantization_config=adpq.AdpqConfig(**CFG))
    p = transformers.AutoModelForCausalLM.from_pretrained(folders["q"])
    assert set(_adpq_linears(m)) == set(_adpq_linears(p))
    for name, mod in _adpq_linears(m).items():
        a, b = mod.quantized_tensor().arrays(), _adpq_linears(p)[name].quantized_tensor().arrays()
        assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a), name
    x = _ids()
    with torch.no_grad():
        assert torch.equal(m(x).logits, p(x).logits)
    out = folders["tmp"] / "saved_at_load"
    m.save_pretrained(out)
    back = adpq.io.adpq_format.AdpqCheckpoint(out)
    for name, mod in _adpq_linears(m).items():
        stored = back.quantized_tensor(f"{name}.weight").arrays()["codes"]
        assert stored.tobytes() == mod.quantized_tensor().arrays()["codes"].tobytes()
    with pytest.raises(TypeError, match="unknown"):
        adpq.AdpqConfig(bitz=3)
    with pytest.raises(ValueError):
        adpq.AdpqConfig(bits=5)
    c = adpq.AdpqConfig(bits=3, include="*.mlp.*")
    assert c.bits == 3 and c.to_dict()["include"] == ["*.mlp.*"] and c.to_dict()["quant_method"] == "adpq"
    only_mlp = transformers.AutoModelForCausalLM.from_pretrained(folders["src"], quantization_config=c)
    assert sorted({n.rsplit(".", 1)[1] for n in _adpq_linears(only_mlp)}) == ["down_proj", "gate_proj", "up_proj"]


def test_without_adpq_transformers_refuses_the_folder(folders):
    code = ("import sys, transformers\n"
            "try:\n    transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
            "except Exception as e:\n    print('REFUSED', type(e).__name__, e); sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code, folders["q"]], capture_output=True, text=True, env=adpq_env(),
                       timeout=300)
    assert r.returncode == 3 and "REFUSED" in r.stdout and "mismatch" in (r.stdout + r.stderr).lower(), r.stdout


def test_import_adpq_registers_lazily():
    code = ("import sys, adpq\n"
            "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
            "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING, AUTO_QUANTIZATION_CONFIG_MAPPING\n"
            "assert AUTO_QUANTIZER_MAPPING['adpq'].__name__ == 'AdpqHfQuantizer'\n"
            "assert AUTO_QUANTIZATION_CONFIG_MAPPING['adpq'] is adpq.AdpqConfig\n"
            "print('OK')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=adpq_env(), timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    code2 = ("import transformers, adpq\n"  # transformers first: registered at `import adpq`
             "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING\n"
             "assert 'adpq' in AUTO_QUANTIZER_MAPPING\nprint('OK')\n")
    r = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, env=adpq_env(), timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_bfloat16_model_and_tied_embeddings(tmp_path):
    src = make_llama(tmp_path / "src", tied=True, dtype="bfloat16")
    quantize_checkpoint(src, tmp_path / "q", adpq.QuantConfig(bits=3, group_size=32), progress=False)
    m = adpq.load(tmp_path / "q")
    d = adpq.load(tmp_path / "q", dequantize=True, dtype="float32")
    assert m.dtype == torch.bfloat16 and m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    x = _ids()
    with torch.no_grad():
        a, b = m(x).logits.float(), d(x).logits
    assert (a - b).abs().max() < 0.05 * b.abs().max()  # bfloat16 activations
    m.save_pretrained(tmp_path / "saved")
    f = SafetensorsFile(str(tmp_path / "saved" / "model.safetensors"))
    assert "lm_head.weight" not in f.names()  # tied: stored once, as the source
    assert (tmp_path / "saved" / "model.safetensors").read_bytes() == (tmp_path / "q" / "model.safetensors").read_bytes()


# ------------------------------------------------------------------ commands


@pytest.fixture(scope="module")
def tok_model(tmp_path_factory):
    """A tiny Llama with a real tokenizer (vocab to match), quantized."""
    from _tokenizer_util import small_bpe_tokenizer

    d = tmp_path_factory.mktemp("tokmodel")
    lines = ["The quick brown fox jumps over the lazy dog.", "Packed weights run in C on the CPU."] * 20
    tok = small_bpe_tokenizer(lines, vocab_size=300)
    vocab = len(tok)
    t = llama_tensors(False, np.float32)
    rng = np.random.default_rng(1)
    t["model.embed_tokens.weight"] = rng.standard_normal((vocab, 96), dtype=np.float32) * 0.05
    t["lm_head.weight"] = rng.standard_normal((vocab, 96), dtype=np.float32) * 0.05
    conf = dict(llama_config(False, "float32"), vocab_size=vocab, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)
    src = write_checkpoint(d / "src", t, conf, shards=1, extra_files=False)
    tok.save_pretrained(src)
    text = d / "text.txt"
    text.write_text(" \n = Title = \n \n" + " ".join(lines) + "\n")
    quantize_checkpoint(src, d / "q", adpq.QuantConfig(**CFG), progress=False)
    return {"src": src, "q": str(d / "q"), "text": str(text)}


def test_generate_command(tok_model):
    r = run_cli("generate", tok_model["q"], "--prompt", "The quick brown", "--max-new-tokens", "5", "--threads", "1",
                "--json", check=0)
    stats = json.loads(r.stdout[r.stdout.index("{"):])
    assert stats["new_tokens"] >= 1 and stats["decode_tokens_per_s"] > 0 and stats["rss_after_load"] > 0
    assert stats["prompt_tokens"] >= 2 and stats["threads"] == 1
    r = run_cli("generate", tok_model["q"], "--prompt", "x", "--max-new-tokens", "0")
    assert r.returncode == 2 and "max_new_tokens" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("generate", str(tok_model["q"]) + "-missing", "--prompt", "x")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_eval_packed_equals_dequantized(tok_model):
    from adpq.eval import perplexity

    kw = dict(text_file=tok_model["text"], ctx=16, progress=False)
    packed = perplexity(tok_model["q"], **kw)
    fake = perplexity(tok_model["q"], dequantize=True, **kw)
    assert abs(packed.ppl / fake.ppl - 1) < 1e-3 and packed.ppl > 1


def test_bfloat16_through_the_core_matches_torch_conversion():
    # bf16 x passes as its bits: the same y as x.float(), rounded as torch's .to(bfloat16), bit for bit
    import torch
    from adpq.core.config import QuantConfig
    from adpq.runtime.linear import AdpqLinear

    torch.manual_seed(0)
    for bias, act in [(False, "float32"), (True, "float32"), (False, "int8")]:
        lin = torch.nn.Linear(128, 48, bias=bias)
        m = AdpqLinear.from_linear(lin, QuantConfig(bits=4, group_size=32, outlier_ratio=0.01), activations=act)
        for n in (1, 5):
            x = torch.randn(2, n, 128).to(torch.bfloat16)
            with torch.no_grad():
                y = m(x)
                want = m(x.float()).to(torch.bfloat16)
            assert y.dtype == torch.bfloat16 and y.shape == (2, n, 48)
            assert torch.equal(y.view(torch.uint16), want.view(torch.uint16))


def test_quantized_tensor_that_is_not_a_linear_layer_is_refused_clearly(tmp_path):
    src = make_llama(tmp_path / "src", tied=False, dtype="float32")
    quantize_checkpoint(src, tmp_path / "q", adpq.QuantConfig(bits=4, group_size=32),
                        include=["*proj.weight", "model.embed_tokens.weight"], progress=False)
    with pytest.raises(adpq.CheckpointError, match="not the weight of a linear layer"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    d = adpq.load(tmp_path / "q", dequantize=True)  # the way out the message names
    assert d.model.embed_tokens.weight.shape == (128, 96)


def test_float16_activations_run_the_kernel():
    w = np.random.default_rng(3).standard_normal((40, 96)).astype(np.float32)
    lin = AdpqLinear(adpq.quantize(w, bits=4, group_size=32))
    x = torch.randn(3, 96)
    calls = []
    real = adpq.runtime.linear._core.matmul
    adpq.runtime.linear._core.matmul = lambda *a: calls.append(1) or real(*a)
    try:
        with torch.no_grad():
            y16 = lin(x.half())
    finally:
        adpq.runtime.linear._core.matmul = real
    assert calls and y16.dtype == torch.float16
    with torch.no_grad():
        assert torch.equal(y16, lin(x.half().float()).half())


def test_quantize_at_load_refuses_a_tied_weight(tmp_path):
    src = make_llama(tmp_path / "src", tied=True, dtype="float32")
    with pytest.raises(adpq.CheckpointError, match="tied"):
        transformers.AutoModelForCausalLM.from_pretrained(
            src, quantization_config=adpq.AdpqConfig(bits=4, include=["lm_head.weight"]))
