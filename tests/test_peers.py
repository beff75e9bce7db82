"""Tests of benchmarks/peers.py: bits/weight accounting, the GPTQ reimplementation, folder round trip.

Peer packages (hqq, sinq, bitsandbytes) are optional: their tests skip when they do not import.
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from _tokenizer_util import tokenizer_for_tests as make_tokenizer  # noqa: E402

CALIB_LINES = [
    " = Calibration text = \n",
    " It has words , numbers like 1 @,@ 234 and a few sentences about nothing in particular . \n",
    " The model only has to see some tokens : " + "lorem ipsum dolor sit amet , " * 8 + "\n",
]

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
peers = importlib.util.module_from_spec(_spec)
sys.modules["peers"] = peers
_spec.loader.exec_module(peers)
# the torch reimplementation of GPTQ that the C solver is timed against
_spec = importlib.util.spec_from_file_location("gptq_speed", ROOT / "benchmarks" / "gptq_speed.py")
gptq_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gptq_speed)


def _has(mod):
    try:
        if mod == "sinq.quantizer":
            peers._sinq_quantizer()
        else:
            peers._import_peer(mod)
        return True
    except Exception:  # noqa: BLE001
        return False


torch.set_num_threads(1)


def _w(rows=96, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.02).to(torch.float16)


def test_code_bytes_exact():
    assert peers.code_bytes(8, 3) == 3
    assert peers.code_bytes(9, 3) == 4
    assert peers.code_bytes(1024, 4) == 512


def test_selection():
    assert peers.is_quantized_name("model.layers.0.self_attn.q_proj.weight", (4, 4))
    assert peers.is_quantized_name("model.layers.3.mlp.down_proj.weight", (4, 4))
    assert not peers.is_quantized_name("model.layers.3.mlp.down_proj.bias", (4,))
    assert not peers.is_quantized_name("model.embed_tokens.weight", (4, 4))
    assert not peers.is_quantized_name("lm_head.weight", (4, 4))
    assert not peers.is_quantized_name("model.layers.0.input_layernorm.weight", (4,))


@pytest.mark.skipif(not _has("hqq.core.quantize"), reason="hqq not installed")
@pytest.mark.parametrize("bits,g", [(2, 64), (3, 128), (4, 64), (4, -1)])
def test_hqq_accounting(bits, g):
    W = _w()
    Wh, st = peers.quant_hqq(W, bits, g)
    n = W.numel()
    ng = W.shape[0] if g == -1 else n // g
    assert st == {"codes": n * bits // 8, "scale": 2 * ng, "zero": 2 * ng}
    rel = ((Wh.float() - W.float()).norm() / W.float().norm()).item()
    assert rel < {2: 0.6, 3: 0.3, 4: 0.15}[bits]


@pytest.mark.skipif(not _has("sinq.quantizer"), reason="sinq not installed")
def test_sinq_accounting():
    W = _w()
    Wh, st, info = peers.quant_sinq(W, 3, 64)
    n = W.numel()
    ng = n // 64
    assert info["effective_group_size"] == 64
    assert st["codes"] == n * 3 // 8
    assert st["col_scale(mu1)"] == 2 * W.shape[1]
    assert st["scale_codes"] == ng and st["zero_codes"] == ng
    assert st["scale_rtn8_meta"] == 2 * 2 * (ng // 32)  # (min, step) fp16 per 32 scales
    assert st["zero_rtn8_meta"] == 2 * 2
    rel = ((Wh.float() - W.float()).norm() / W.float().norm()).item()
    assert rel < 0.3


@pytest.mark.skipif(not _has("bitsandbytes.functional"), reason="bitsandbytes not installed")
@pytest.mark.parametrize("dq", [True, False])
def test_nf4_accounting(dq):
    W = _w()
    Wh, st = peers.quant_nf4(W, 4, 64, double_quant=dq)
    n = W.numel()
    assert st["codes"] == n // 2
    if dq:
        assert st["absmax"] == n // 64  # uint8 per block
        assert st["nested_absmax"] == 4 * ((n // 64 + 255) // 256)  # fp32 per 256 absmax
    else:
        assert st["absmax"] == 4 * (n // 64)  # fp32 per block
    rel = ((Wh.float() - W.float()).norm() / W.float().norm()).item()
    assert rel < 0.15
    with pytest.raises(ValueError):
        peers.quant_nf4(W, 3, 64)


def _rtn_gptq_quantizer(W, bits, g):
    out = torch.empty_like(W)
    for i in range(0, W.shape[1], g):
        q = gptq_speed._GPTQQuantizer(bits)
        q.find_params(W[:, i:i + g])
        out[:, i:i + g] = q.quantize(W[:, i:i + g])
    return out


def test_gptq_identity_hessian_is_rtn():
    W = _w().float()
    H = torch.eye(W.shape[1]) * 3.0
    Q, ng = gptq_speed.gptq_fasterquant(W, H, 3, 64)
    assert ng == W.shape[1] // 64
    assert torch.allclose(Q, _rtn_gptq_quantizer(W, 3, 64), atol=1e-7)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_output_error(act_order):
    g = torch.Generator().manual_seed(1)
    W = _w(64, 192).float()
    # correlated, anisotropic inputs as in a real layer
    X = torch.randn(2048, 192, generator=g) @ (torch.randn(192, 192, generator=g) * 0.3 + torch.eye(192))
    X[:, :8] *= 10
    H = 2 * X.t() @ X / X.shape[0]
    Q, _ = gptq_speed.gptq_fasterquant(W, H, 3, 64, act_order=act_order)
    R = _rtn_gptq_quantizer(W, 3, 64)
    e_gptq = ((Q - W) @ X.t()).pow(2).mean()
    e_rtn = ((R - W) @ X.t()).pow(2).mean()
    assert e_gptq < 0.7 * e_rtn
    # every column of a row takes one of 2^3 values of its group's grid
    if not act_order:
        for i in range(0, 192, 64):
            assert all(len(torch.unique(Q[r, i:i + 64])) <= 8 for r in range(0, 64, 7))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    tr = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    tok = make_tokenizer(CALIB_LINES)
    cfg = tr.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=160,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    tr.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def _check_folder(src, dst, res):
    from safetensors.torch import load_file
    a = load_file(str(next(Path(src).glob("*.safetensors"))))
    b = load_file(str(next(Path(dst).glob("*.safetensors"))))
    assert a.keys() == b.keys()
    nq = 0
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        if peers.is_quantized_name(k, a[k].shape):
            nq += 1
            assert not torch.equal(a[k], b[k])
        else:
            assert torch.equal(a[k], b[k])
    assert nq == res["n_tensors"] == 14
    assert (Path(dst) / "config.json").exists()
    meta = json.loads((Path(dst) / "peer_quantization.json").read_text())
    assert abs(meta["bits_per_weight"] - res["bits_per_weight"]) < 1e-12
    assert abs(sum(res["bits_split"].values()) - res["bits_per_weight"]) < 1e-9


@pytest.mark.skipif(not _has("hqq.core.quantize"), reason="hqq not installed")
def test_folder_hqq(tiny_llama, tmp_path):
    r = peers.quantize_folder(tiny_llama, tmp_path / "h", "hqq", 3, 32)
    _check_folder(tiny_llama, tmp_path / "h", r)
    assert r["bits_per_weight"] == pytest.approx(3 + 32 / 32)
