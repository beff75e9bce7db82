"""How GptqConfig's defaults were chosen (issue 14): the output error each option leaves on a real
model's Hessians, on the calibration windows and on held-out windows.

    python benchmarks/gptq_options.py --model /work/models/smollm2-135m --samples 8 --seqlen 2048

Two sets of Hessians of the float model (forward hooks on every selected linear, one pass over
`samples` windows of WikiText-2 validation at seed 0, another at seed 1; not the sequential
calibration of adpq.calibrate, which would need a pass per start config: the option ranking is a
per-matrix question). Every selected matrix is then quantized with each option using the seed-0
Hessian H_a, and scored by the output error
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


def float_hessians(model_dir, samples, seqlen, seed):
    """name -> mean x x^T of each selected linear's inputs in the float model (one forward per window)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adpq.hf.calibrate import _windows, default_calibration_file, read_calibration_text
    from adpq.io.checkpoint import select_tensors

    selected = set(select_tensors(list(SourceCheckpoint(model_dir).tensors.values())))
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    text, _ = read_calibration_text(default_calibration_file())
    windows, _, _ = _windows(tok, text, samples, seqlen, seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
    sums, count = {}, {}

    def hook(name):
        def f(mod, inp, out):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + (x.T @ x).double()
            count[name] = count.get(name, 0) + x.shape[0]
        return f

    hooks = [m.register_forward_hook(hook(n + ".weight")) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n + ".weight" in selected]
    with torch.no_grad():
        for j in range(windows.shape[0]):
            model(windows[j:j + 1], use_cache=False)
    for h in hooks:
        h.remove()
    return {n: (sums[n] / count[n]).numpy() for n in sums}


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
    t0 = time.perf_counter()
    h_a = float_hessians(a.model, a.samples, a.seqlen, 0)
    h_b = float_hessians(a.model, a.samples, a.seqlen, 1)
    t_cal = time.perf_counter() - t0
    ws = _weights(a.model, h_a)
    for label, cfg in STARTS.items():
        base = {n: adpq.quantize(w, config=cfg).dequantize() for n, w in ws.items()}
        rows = []
        for g in options:
            ra, rb = [], []
            for n, w in ws.items():
                wf = w.astype(np.float32)
                ha, hb = h_a[n], h_b[n]
                wh = adpq.quantize(w, config=cfg, hessian=ha, gptq=g).dequantize()
                ra.append(proxy_loss(wf, wh, ha) / proxy_loss(wf, base[n], ha))
                rb.append(proxy_loss(wf, wh, hb) / proxy_loss(wf, base[n], hb))
            gm = [math.exp(float(np.mean(np.log(r)))) for r in (ra, rb)]
            rows.append({**g.to_dict(), "in_sample": gm[0], "held_out": gm[1]})
            print(f"| {label} | {g.act_order} | {g.grids} | {g.damp} | {gm[0]:.4f} | {gm[1]:.4f} |", flush=True)
        out["starts"][label] = {"config": cfg.to_dict(), "hessian_seconds": t_cal, "rows": rows,
                                "matrices": len(ws)}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
