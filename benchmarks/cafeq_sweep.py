"""Quick perplexity sweep of CafeQ options (how CafeqConfig's defaults were chosen): for each variant,
quantize_checkpoint with that QuantConfig / CafeqConfig, then WikiText-2 test perplexity at ctx 2048 on
the first --windows windows (few windows: a screen, not a result; the chosen settings are then measured
by benchmarks/cafeq.py). One JSON line per variant on stdout.

    python benchmarks/cafeq_sweep.py --model /work/models/smollm2-135m --windows 2 \
        '[{"caf": null}, {"caf": {"damp": 1.0}}, {"q": {"bits": 3, "group_size": 128, "outlier_ratio": 0.005}, "caf": {}}]'

"q": QuantConfig fields (default RTN b3 g64: bits 3, group_size 64, outlier_ratio 0, column_scaling none);
"caf": CafeqConfig fields over the defaults, or null for no CafeQ.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import adpq
from adpq import eval as adpq_eval

RTN3 = dict(bits=3, group_size=64, outlier_ratio=0.0, column_scaling="none")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", help="JSON list of {\"q\": {...}, \"caf\": {...} | null}")
    ap.add_argument("--model", required=True)
    ap.add_argument("--windows", type=int, default=2)
    a = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="adpq-cafeq-sweep-")
    try:
        for v in json.loads(a.variants):
            dst = f"{work}/out"
            shutil.rmtree(dst, ignore_errors=True)
            t = time.perf_counter()
            rep = adpq.quantize_checkpoint(a.model, dst, adpq.QuantConfig(**v.get("q", RTN3)), cafeq=v.get("caf"),
                                           progress=False, compute_metrics=False)
            tq = time.perf_counter() - t
            pairs = [r.cafeq for r in rep.tensors if r.cafeq and r.layer_type == "v_proj"]
            r = adpq_eval.perplexity(dst, ctx=2048, max_windows=a.windows, dequantize=True, progress=False)
            print(json.dumps({"v": v, "ppl": round(r.ppl, 3), "windows": a.windows,
                              "pair_err": sum(p["error"] for p in pairs) / len(pairs) if pairs else None,
                              "seconds_quantize": round(tq, 1)}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
