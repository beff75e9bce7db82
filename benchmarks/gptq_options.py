"""How GptqConfig's defaults were chosen (issue 14): the output error each option leaves on a real
model's Hessians, on the calibration windows and on held-out windows.

    python benchmarks/gptq_options.py --model /work/models/smollm2-135m --samples 8 --seqlen 2048

Two calibrations of the same model and config (windows of WikiText-2 validation at seeds 0 and 1;
each layer's Hessians from the inputs the quantized layers before it give). Every selected matrix is
then quantized with each option using the seed-0 Hessian H_a, and scored by the output error
tr(dW H dW^T) relative to the start's (AdpQ or RTN without GPTQ) on H_a ("in sample") and on the
seed-1 Hessian H_b ("held out"). The table gives the geometric mean over matrices of these ratios
(lower is better; 1 = no gain over the start). It prints a Markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from datetime import datetime, timezone

import numpy as np

import adpq
from adpq.io.folder import SourceCheckpoint
from adpq.reference.gptq import proxy_loss

STARTS = {
    "adpq b3 g128 r0.01 (default)": adpq.QuantConfig(),
    "rtn b3 g64 (GPTQ alone)": adpq.QuantConfig(bits=3, group_size=64, outlier_ratio=0.0, column_scaling="none"),
}


def _weights(model_dir, names):
    src = SourceCheckpoint(model_dir)
    return {n: np.asarray(src.get(n)) for n in names}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    options = [adpq.GptqConfig(act_order=ao, grids=gr, damp=d)
               for ao, gr, d in itertools.product((True, False), ("fixed", "refit"), (0.001, 0.01, 0.1))
               if not (ao and gr == "refit")]  # (act-order keeps the grids fixed: refit would be the same)
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": a.model,
           "samples": a.samples, "seqlen": a.seqlen, "machine": platform.processor() or platform.machine(),
           "starts": {}}
    print("| start | act_order | grids | damp | in sample (H_a) | held out (H_b) |")
    print("|---|---|---|---|---|---|")
    for label, cfg in STARTS.items():
        t0 = time.perf_counter()
        cal_a = adpq.calibrate(a.model, None, samples=a.samples, seqlen=a.seqlen, config=cfg, seed=0,
                               threads=a.threads, progress=False)
        cal_b = adpq.calibrate(a.model, None, samples=a.samples, seqlen=a.seqlen, config=cfg, seed=1,
                               threads=a.threads, progress=False)
        t_cal = time.perf_counter() - t0
        ws = _weights(a.model, cal_a.hessians)
        base = {n: adpq.quantize(w, config=cfg).dequantize() for n, w in ws.items()}
        rows = []
        for g in options:
            ra, rb = [], []
            for n, w in ws.items():
                wf = w.astype(np.float32)
                ha, hb = cal_a.hessians[n].astype(np.float64), cal_b.hessians[n].astype(np.float64)
                wh = adpq.quantize(w, config=cfg, hessian=ha, gptq=g).dequantize()
                ra.append(proxy_loss(wf, wh, ha) / proxy_loss(wf, base[n], ha))
                rb.append(proxy_loss(wf, wh, hb) / proxy_loss(wf, base[n], hb))
            gm = [math.exp(float(np.mean(np.log(r)))) for r in (ra, rb)]
            rows.append({**g.to_dict(), "in_sample": gm[0], "held_out": gm[1]})
            print(f"| {label} | {g.act_order} | {g.grids} | {g.damp} | {gm[0]:.4f} | {gm[1]:.4f} |", flush=True)
        out["starts"][label] = {"config": cfg.to_dict(), "calibration_seconds": t_cal, "rows": rows,
                                "matrices": len(ws)}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
