"""The public surface as a newcomer meets it: help() shows real defaults, torch tensors are taken,
the command line shows every default and its --no- forms."""
import inspect
import pydoc

import ml_dtypes
import numpy as np
import pytest

import adpq
from _ckpt_util import run_cli


@pytest.mark.parametrize("fn", ["quantize", "outlier_mask", "soft_threshold"])
def test_help_shows_the_config_defaults(fn):
    f = getattr(adpq, fn)
    text = pydoc.render_doc(f, renderer=pydoc.plaintext)
    assert "object at 0x" not in text
    defaults = adpq.QuantConfig()
    for name, p in inspect.signature(f).parameters.items():
        if hasattr(defaults, name):
            assert repr(p.default) == repr(getattr(defaults, name)), name
    assert "group_size: 'int' = 128" in text


def test_left_out_keywords_take_the_config_and_given_ones_override_it():
    w = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64) ** 3
    cfg = adpq.QuantConfig(bits=4, group_size=32)
    assert adpq.quantize(w, config=cfg).config.bits == 4
    assert adpq.quantize(w, config=cfg, bits=3).config.bits == 3
    assert adpq.quantize(w, config=cfg, bits=3).config.group_size == 32  # the rest from config


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_tensors_are_read_in_place(dtype):
    t = (torch.randn(96, 200) * 0.02).to(getattr(torch, dtype))
    if dtype == "bfloat16":
        a = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
        a = t.numpy()
    qt, qa = adpq.quantize(t), adpq.quantize(a)
    assert qt.dtype == dtype
    for k, v in qa.arrays().items():
        assert qt.arrays()[k].tobytes() == v.tobytes(), k
    assert adpq.metrics(t, qt) == adpq.metrics(a, qa)
    np.testing.assert_array_equal(adpq.outlier_mask(t), adpq.outlier_mask(a))
    # a view of the tensor's memory, not a copy
    from adpq.core.arrays import as_weight_matrix

    w2 = as_weight_matrix(t)[0]
    assert w2.__array_interface__["data"][0] == t.data_ptr()


def test_torch_tensor_with_grad_and_strided():
    t = torch.randn(64, 300, requires_grad=True)
    assert adpq.quantize(t).arrays()["codes"].tobytes() == adpq.quantize(t.detach().numpy()).arrays()["codes"].tobytes()
    s = torch.randn(300, 64).T  # columns strided: copied, same result
    assert adpq.quantize(s).arrays()["codes"].tobytes() == adpq.quantize(s.numpy().copy()).arrays()["codes"].tobytes()


def test_unsupported_torch_tensors_are_clear_errors():
    with pytest.raises(TypeError, match="float32, float16 or bfloat16 tensor, got torch.int32"):
        adpq.quantize(torch.ones(8, 16, dtype=torch.int32))
    with pytest.raises(TypeError, match="move it to the CPU"):
        adpq.quantize(torch.ones(8, 16, device="meta"))


def _option_help(text):
    """{first flag: its help entry, lines joined} of an argparse --help text."""
    out, cur = {}, None
    for line in text.splitlines():
        s = line.strip()
        if line.startswith("  -") and s.startswith("-"):
            cur = s.split()[0].rstrip(",")
            out[cur] = s
        elif cur and line.startswith("    "):
            out[cur] += " " + s
        else:
            cur = None
    return out


def test_cli_version_and_help_defaults():
    r = run_cli("--version", check=0)
    assert r.stdout.strip() == f"adpq {adpq.__version__}"
    options = _option_help(run_cli("quantize", "--help", check=0).stdout)
    d = adpq.QuantConfig()
    for flag, value in [("--bits", d.bits), ("--group-size", d.group_size), ("--outlier-ratio", d.outlier_ratio),
                        ("--outlier-scope", d.outlier_scope), ("--outlier-format", d.outlier_format),
                        ("--gamma", d.gamma), ("--scale-dtype", d.scale_dtype), ("--zero-point", d.zero_point),
                        ("--column-scaling", d.column_scaling), ("--symmetric", d.symmetric),
                        ("--max-shard-size", "2GB"), ("--format", "adpq")]:
        assert f"(default: {value})" in options[flag], (flag, options[flag])
    assert "--symmetric, --no-symmetric" in options["--symmetric"]
    for flag, text in options.items():
        assert text.count("(default") <= 1 and "(default: None)" not in text, text
    for sub in ("inspect", "dequantize", "eval"):
        assert "usage: adpq " + sub in run_cli(sub, "--help", check=0).stdout


def test_cli_no_symmetric_is_asymmetric(tmp_path):
    from _ckpt_util import GROUP, make_llama

    src = make_llama(tmp_path / "src")
    run_cli("quantize", src, tmp_path / "q", "--no-symmetric", "--group-size", GROUP, "--no-progress", check=0)
    assert adpq.inspect_checkpoint(tmp_path / "q")["quantization_config"]["symmetric"] is False
