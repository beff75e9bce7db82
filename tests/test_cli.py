"""The `adpq` command line, run as `python -m adpq` in a subprocess."""
import json
import os

import numpy as np

import adpq
from adpq.io.checkpoint import quantize_checkpoint
from adpq.io.folder import INCOMPLETE_MARKER
from adpq.io.adpq_format import AdpqCheckpoint
from adpq.io.safetensors import SafetensorsFile

from _ckpt_util import GROUP, make_llama, run_cli


def _user_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("adpq: error:"), r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_quantize_inspect_dequantize(tmp_path):
    src = make_llama(tmp_path / "src", dtype="bfloat16")
    dst = tmp_path / "q"
    r = run_cli("quantize", src, dst, "--bits", "3", "--group-size", GROUP, "--outlier-ratio", "0.02",
                "--max-shard-size", "100KB", "--no-progress", "--json", tmp_path / "rep.json", check=0)
    for k in ("14 quantized", "7 kept", "bits/weight", "q_proj", "down_proj", "GB/s"):
        assert k in r.stdout, r.stdout
    rep = json.load(open(tmp_path / "rep.json"))
    assert rep["totals"]["tensors_quantized"] == 14 and len(rep["tensors"]) == 21

    # the command and the Python API write the same arrays
    c = adpq.QuantConfig(bits=3, group_size=GROUP, outlier_ratio=0.02)
    quantize_checkpoint(src, tmp_path / "api", c, progress=False)
    a, b = AdpqCheckpoint(dst), AdpqCheckpoint(tmp_path / "api")
    assert a.names() == b.names()
    for n in a.names():
        if a.is_quantized(n):
            x, y = a.quantized_tensor(n).arrays(), b.quantized_tensor(n).arrays()
            assert all(x[k].tobytes() == y[k].tobytes() for k in x)

    r = run_cli("inspect", dst, "--json", check=0)
    info = json.loads(r.stdout)
    assert info["totals"]["tensors_quantized"] == 14
    assert abs(info["totals"]["bits_per_weight_quantized"] - rep["totals"]["bits_per_weight_quantized"]) < 1e-9
    layers = info["per_layer_type"]
    assert set(layers) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    for k, row in layers.items():  # the stored bytes, regrouped: the same figures as the quantize report
        assert row["tensors"] == 2 and abs(row["bits_per_weight"] - rep["per_layer_type"][k]["bits_per_weight"]) < 1e-9
    r = run_cli("inspect", dst, "--tensors", check=0)
    assert "model.layers.1.mlp.down_proj.weight" in r.stdout
    assert any(line.startswith("down_proj") for line in r.stdout.splitlines())  # the per-layer-type table

    r = run_cli("dequantize", dst, tmp_path / "deq", "--dtype", "float16", "--no-progress", check=0)
    f = SafetensorsFile(tmp_path / "deq" / "model.safetensors")
    assert {t.dtype for t in f.tensors.values()} == {"F16"}
    w = f.get("model.layers.0.self_attn.q_proj.weight")
    ref = a.quantized_tensor("model.layers.0.self_attn.q_proj.weight").dequantize(dtype=np.float16)
    assert w.tobytes() == ref.tobytes()
    assert "quantization_config" not in json.load(open(tmp_path / "deq" / "config.json"))


def test_fake_format_via_cli(tmp_path):
    src = make_llama(tmp_path / "src")
    run_cli("quantize", src, tmp_path / "f", "--format", "fake", "--group-size", GROUP, "--include",
            "*q_proj*,*k_proj*", "--symmetric", "--no-progress", check=0)
    f = SafetensorsFile(tmp_path / "f" / "model.safetensors")
    assert f.tensors["model.layers.0.self_attn.q_proj.weight"].dtype == "F32"
    conf = json.load(open(tmp_path / "f" / "config.json"))
    assert "quantization_config" not in conf and conf["adpq_fake_quant"]["symmetric"] is True


def test_user_errors(tmp_path):
    src = make_llama(tmp_path / "src")
    _user_error(run_cli("quantize", tmp_path / "nope", tmp_path / "q"), "no such folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    _user_error(run_cli("quantize", tmp_path / "empty", tmp_path / "q"), "no .safetensors")
    _user_error(run_cli("quantize", src, tmp_path / "q", "--include", "*nothing*"), "matches no tensor")
    _user_error(run_cli("quantize", src, tmp_path / "q", "--bits", "5"))
    assert not os.path.exists(tmp_path / "q" / "config.json")
    run_cli("quantize", src, tmp_path / "q", "--group-size", GROUP, "--no-progress", check=0)
    _user_error(run_cli("quantize", src, tmp_path / "q", "--no-progress"), "already exists", "--overwrite")
    run_cli("quantize", src, tmp_path / "q", "--no-progress", "--overwrite", "--bits", "4", check=0)
    _user_error(run_cli("inspect", src), "not an adpq-format folder")
    _user_error(run_cli("inspect", tmp_path / "nope"), "no such folder")
    (tmp_path / "q" / INCOMPLETE_MARKER).write_text("{}")
    _user_error(run_cli("inspect", tmp_path / "q"), "incomplete")
    bad = os.path.join(src, "model-00001-of-00002.safetensors")
    with open(bad, "r+b") as fh:
        fh.truncate(os.path.getsize(bad) - 1)
    _user_error(run_cli("quantize", src, tmp_path / "q2"), "truncated", "model-00001-of-00002.safetensors")
    assert not os.path.exists(tmp_path / "q2")


def test_models_list_and_help():
    r = run_cli("models", "list", check=0)
    assert "smollm2-135m" in r.stdout
    r = run_cli("quantize", "--help", check=0)
    for opt in ("--bits", "--group-size", "--outlier-ratio", "--outlier-scope", "--symmetric", "--format",
                "--include", "--exclude", "--threads", "--overwrite", "--no-progress"):
        assert opt in r.stdout
    r = run_cli()
    assert r.returncode == 2 and "Traceback" not in r.stderr
