"""Smoke test of benchmarks/checkpoint.py on a tiny checkpoint: every mode runs, in its own child, and
the JSON holds what RESULTS.md quotes (times, ratios, peak RSS, bits/weight). Speed itself is a
benchmark's business, not a test's: nothing here asserts a time."""
import json
import subprocess
import sys
from pathlib import Path

from _ckpt_util import adpq_env, make_llama

ROOT = Path(__file__).resolve().parents[1]
MODES = ("read", "read-mmap", "read+write", "quantize", "quantize-nometrics")


def test_checkpoint_benchmark_runs_every_mode(tmp_path):
    src = make_llama(tmp_path / "tiny", dtype="bfloat16", shards=1, layers=2)
    out = tmp_path / "ck.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "checkpoint.py"), "--src", src, "--runs", "1",
           "--layer-mult", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=adpq_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| quantize-nometrics |" in proc.stdout  # the table
    res = json.loads(out.read_text())
    assert res["meta"]["command"].startswith("python benchmarks/checkpoint.py")
    real, syn = res["results"]
    assert syn["label"].endswith("x2 layers (synthetic)")
    assert syn["num_tensors"] > real["num_tensors"]  # twice the layers, the same other tensors
    for r in (real, syn):
        for mode in MODES:
            m = r[mode]
            assert len(m["seconds_all"]) == 1 and m["seconds_median"] > 0 and m["maxrss_bytes"] > 0
            assert m["bytes"] == r["model_bytes"] if mode.startswith("read") else m["bytes"] == r["tensor_bytes"]
        for mode in MODES[1:]:
            assert r[mode]["ratio_vs_read"] > 0 and r[mode]["ratio_vs_read_write"] > 0
        q = r["quantize"]
        assert 3.0 < q["bits_per_weight"] < 4.0  # the default config: 3-bit codes plus side arrays
        assert 0 < q["output_bytes"] < r["model_bytes"]
        assert r["read+write"]["ratio_vs_read_write"] == 1.0
