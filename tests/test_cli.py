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


# ---------------------------------------------------------------------------- hostile input (issue 16)

import errno  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from adpq import cli  # noqa: E402
from _ckpt_util import adpq_env  # noqa: E402


def _main_error(capsys, *argv):
    """adpq.cli.main in this process: exit status 2 and one `adpq: error:` line, no traceback."""
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert err.startswith("adpq: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert len(err) < 500, err
    return err


@pytest.fixture(scope="module")
def small_src(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("cli_hostile") / "src")


@pytest.mark.parametrize("opt,value", [
    ("--group-size", 2**63), ("--group-size", 2**64), ("--group-size", -(2**63)), ("--group-size", 10**30),
    ("--threads", 2**31), ("--threads", 2**63), ("--threads", 0), ("--threads", -1),
    ("--bits", 10**20), ("--bits", -3), ("--outlier-ratio", "1e400"), ("--outlier-ratio", "nan"),
    ("--gamma", "inf"), ("--gamma", "-1e400"), ("--lam", "nan"), ("--lam", "1e999"),
    ("--max-shard-size", "1e400GB"), ("--max-shard-size", "99999999999999999999999TB"),
    ("--max-shard-size", "-1"), ("--max-shard-size", "GB"),
], ids=lambda v: str(v)[:20])
def test_hostile_numbers_on_the_command_line(capsys, small_src, tmp_path, opt, value):
    _main_error(capsys, "quantize", small_src, tmp_path / "q", f"{opt}={value}", "--no-progress")
    assert not os.path.exists(tmp_path / "q" / "config.json")


@pytest.mark.parametrize("argv", [
    ["inspect", "/nonexistent/adpq/folder"],
    ["dequantize", "/nonexistent/adpq/folder", "/tmp/adpq-never-written"],
    ["quantize", "/nonexistent/adpq/folder", "/tmp/adpq-never-written"],
    ["eval", "/nonexistent/adpq/folder"],
    ["eval", "/"],
], ids=lambda a: " ".join(a)[:30])
def test_missing_folders_fail_at_once(capsys, argv):
    t0 = time.perf_counter()
    err = _main_error(capsys, *argv)
    assert time.perf_counter() - t0 < 5, err  # (eval: no tokenizer, no model hub retries)
    assert not os.path.exists("/tmp/adpq-never-written")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO],
                         ids=lambda c: errno.errorcode[c])
def test_os_errors_are_one_line_saying_what_and_where(capsys, monkeypatch, small_src, tmp_path, code):
    dst = tmp_path / "q"

    def boom(*a, **k):
        raise OSError(code, os.strerror(code), str(dst / "model-part-00001.safetensors"))

    from adpq.io import safetensors as st
    monkeypatch.setattr(st.ShardWriter, "add", boom)
    err = _main_error(capsys, "quantize", small_src, dst, "--group-size", GROUP, "--no-progress")
    assert str(dst) in err and errno.errorcode[code] in err, err
    assert not [n for n in os.listdir(dst) if n.endswith(".tmp")]
    assert not os.path.exists(dst / "config.json")


def test_raw_os_errors_from_anywhere_are_one_line(capsys, monkeypatch, tmp_path):
    def boom(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/some/where/file.json")

    monkeypatch.setitem(cli.COMMANDS, "inspect", boom)
    err = _main_error(capsys, "inspect", tmp_path)
    assert "/some/where/file.json" in err and "Permission denied" in err and "EACCES" in err


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    def bug(args):
        raise KeyError("oops")

    monkeypatch.setitem(cli.COMMANDS, "inspect", bug)
    rc = cli.main(["inspect", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "KeyError" in err and "--debug" in err, err
    for flag in ("--debug", "--traceback"):
        with pytest.raises(KeyError):
            cli.main([flag, "inspect", str(tmp_path)])
    monkeypatch.setitem(cli.COMMANDS, "inspect", lambda a: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(ValueError):
        cli.main(["--debug", "inspect", str(tmp_path)])


def test_the_command_is_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _main_error(capsys, "eval", tmp_path / "nope")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "--debug" in cli._build_parser().format_help()


def test_eval_of_a_missing_folder_in_a_subprocess_is_fast_and_one_line(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "adpq", "eval", str(tmp_path / "nope")], capture_output=True, text=True,
                       env=adpq_env(), timeout=120)
    _user_error(r, "no such folder", str(tmp_path / "nope"))
    assert time.perf_counter() - t0 < 30
    r = subprocess.run([sys.executable, "-m", "adpq", "--debug", "eval", str(tmp_path / "nope")], capture_output=True,
                       text=True, env=adpq_env(), timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr
