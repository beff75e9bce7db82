"""CafeQ (issue 15): RTN, RTN + CafeQ, AdpQ, AdpQ + CafeQ at matched bits per weight, perplexity in
domain (WikiText-2 test) and off domain (Python source), with the per-layer pair errors and the time
of the CafeQ pass; the baseline, RTN, AdpQ and GPTQ rows come from benchmarks/calibration.py's results when they have
the same windows (same harness and texts; --plain-rows measures RTN/AdpQ here too).

    python benchmarks/cafeq.py --model /work/models/smollm2-135m --name smollm2-135m --windows 8
    python benchmarks/cafeq.py --model M --name N --exactness     # the transform alone: float logits
    python benchmarks/cafeq.py --model M --name N --report

Every row is a folder quantize_checkpoint writes (bits per weight = every stored byte of the quantized
tensors). Rows already in the results JSON are skipped (resume).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import adpq
from adpq import eval as adpq_eval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration import ADPQ3, ADPQ4, RTN3, RTN4, baseline_row, ood_text, perplexities  # noqa: E402

ROWS = [  # (label, QuantConfig fields, CafeqConfig fields or None)
    ("rtn b3 g64", RTN3, None),
    ("rtn+cafeq b3 g64", RTN3, {}),
    ("adpq b3 g128 r0.005", ADPQ3, None),
    ("adpq+cafeq b3 g128 r0.005", ADPQ3, {}),
    ("rtn b4 g64", RTN4, None),
    ("rtn+cafeq b4 g64", RTN4, {}),
    ("adpq b4 g128 r0.005", ADPQ4, None),
    ("adpq+cafeq b4 g128 r0.005", ADPQ4, {}),
]
LEARNED = {"steps": 100, "init": "hadamard"}  # the learned transform on top of the default rounding
EXTRA = [  # --extra
    ("rtn+cafeq b3 g64, learned transform", RTN3, LEARNED),
    ("adpq+cafeq b3 g128 r0.005, learned transform", ADPQ3, LEARNED),
    ("rtn+cafeq b3 g64, learned transform, no rounding", RTN3, {**LEARNED, "rounds": 0}),
]


def run_row(a, label, qfields, cfields, work: Path) -> dict:
    dst = work / label.replace(" ", "_").replace("+", "_")
    cfg = adpq.QuantConfig(**qfields, threads=a.threads)
    caf = None if cfields is None else adpq.CafeqConfig(**{**json.loads(a.cafeq), **cfields})
    row = {"label": label, "method": "cafeq" if caf else "plain",
           "config": {k: v for k, v in cfg.to_dict().items() if k != "threads"}}
    if caf:
        row["cafeq"] = caf.to_dict()
    if dst.exists():
        shutil.rmtree(dst)
    t0 = time.perf_counter()
    rep = adpq.quantize_checkpoint(a.model, dst, config=cfg, cafeq=caf, progress=False, compute_metrics=False)
    row["seconds_quantize_checkpoint"] = round(time.perf_counter() - t0, 2)
    q = [r for r in rep.tensors if r.quantized]
    row["bits_per_weight"] = 8 * sum(r.bytes_out for r in q) / sum(r.numel for r in q)
    pairs = [r.cafeq for r in q if r.cafeq and r.layer_type == "v_proj"]
    if pairs:
        row["pairs"] = [{k: round(v, 5) for k, v in p.items()} for p in pairs]
        row["seconds_cafeq"] = round(sum(p["seconds"] for p in pairs), 2)
    row.update(perplexities(a, str(dst), dequantize=True))
    shutil.rmtree(dst, ignore_errors=True)
    return row


def exactness(a) -> dict:
    """Float logits of the model with every (v_proj, o_proj) transformed by CafeQ (no quantization)
    against the untouched model, on the first --exact-tokens tokens of WikiText-2 test."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adpq.io.cafeq_pairs import attention_heads
    from adpq.transforms import apply_transform, optimize_transform

    tok = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, local_files_only=True).eval()
    text = Path(adpq_eval.default_text_file()).read_text(encoding="utf-8")[:20000]
    ids = tok(text, return_tensors="pt").input_ids[:, :a.exact_tokens]
    with torch.no_grad():
        before = model(ids).logits[0]
    heads = attention_heads(json.loads((Path(a.model) / "config.json").read_text()))
    caf = adpq.CafeqConfig(**json.loads(a.cafeq))
    cfg = adpq.QuantConfig(**RTN3)
    t0 = time.perf_counter()
    for i, layer in enumerate(model.model.layers):
        att = layer.self_attn
        wv, wo = att.v_proj.weight.detach().double().numpy(), att.o_proj.weight.detach().double().numpy()
        m, _ = optimize_transform(wv, wo, heads, cfg.group_size, cfg.symmetric, caf, key=i)
        bias = att.v_proj.bias.detach().double().numpy() if att.v_proj.bias is not None else None
        v2, o2, b2 = apply_transform(m, wv, wo, heads, bias)
        att.v_proj.weight.data = torch.from_numpy(v2).float()
        att.o_proj.weight.data = torch.from_numpy(o2).float()
        if b2 is not None:
            att.v_proj.bias.data = torch.from_numpy(b2).float()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        after = model(ids).logits[0]
    diff = (after - before).abs()
    nll = lambda lg: float(torch.nn.functional.cross_entropy(lg[:-1], ids[0, 1:]))  # noqa: E731
    return {"tokens": int(ids.shape[1]), "max_abs_logit_diff": float(diff.max()),
            "max_abs_logit": float(before.abs().max()), "rms_logit_diff": float(diff.double().pow(2).mean().sqrt()),
            "nll_before": nll(before), "nll_after": nll(after), "argmax_agree": float(
                (after.argmax(-1) == before.argmax(-1)).double().mean()),
            "seconds_transforms": round(seconds, 2), "cafeq": caf.to_dict(), "layers": len(model.model.layers)}


def calibration_rows(name: str, windows) -> list:
    """benchmarks/calibration.py's rows for this model with the same evaluation windows (the same
    harness and texts: its baseline, RTN and AdpQ rows are what this script's would be, and its GPTQ
    rows are the calibrated reference)."""
    here = Path(__file__).resolve().parent / "results"
    rows = []
    for f in sorted(here.glob(f"calibration_{name}*.json")):
        for r in json.loads(f.read_text()).get("rows", []):
            if "eval_wikitext" in r and r["eval_wikitext"]["windows"] == windows and "proxy" not in r.get("method", ""):
                rows.append({**r, "label": f"{r['label']} [calibration.py]"})
    return rows


def table(res: dict, name: str = "") -> str:
    out = ["| row | bits/weight | PPL WikiText-2 test | PPL off-domain (Python source) | mean pair error "
           "(plain -> transformed -> paired) | CafeQ s |", "|---|---|---|---|---|---|"]
    windows = res.get("setup", {}).get("windows")
    for r in res["rows"] + (calibration_rows(name, windows) if name else []):
        p = r.get("pairs")
        pe = "-"
        if p:
            m = lambda k: sum(x[k] for x in p) / len(p)  # noqa: E731
            pe = f"{m('error_plain'):.4f} -> {m('error_transformed'):.4f} -> {m('error'):.4f}"
        out.append(f"| {r['label']} | {r['bits_per_weight']:.3f} | {r['ppl_wikitext']:.2f} | {r['ppl_ood']:.3f} | "
                   f"{pe} | {r.get('seconds_cafeq', '-')} |")
    if "exactness" in res:
        e = res["exactness"]
        out.append(f"\ntransform alone ({e['layers']} layers, {e['tokens']} tokens): max |logit diff| "
                   f"{e['max_abs_logit_diff']:.2e} (max |logit| {e['max_abs_logit']:.1f}), NLL {e['nll_before']:.6f} "
                   f"-> {e['nll_after']:.6f}, argmax agreement {e['argmax_agree']:.4f}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--cafeq", default="{}", help="CafeqConfig fields as JSON, for every CafeQ row")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=8, help="evaluation windows per text (0: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ood-bytes", type=int, default=400_000)
    ap.add_argument("--only", default=None, help="';'-separated row labels (default: all)")
    ap.add_argument("--results", default=None)
    ap.add_argument("--work", default="/tmp/adpq-cafeq-bench")
    ap.add_argument("--exactness", action="store_true", help="only the float-logits check of the transform")
    ap.add_argument("--exact-tokens", type=int, default=512, help="tokens of the --exactness check")
    ap.add_argument("--plain-rows", action="store_true", help="also the baseline, RTN and AdpQ rows")
    ap.add_argument("--extra", action="store_true", help="also the learned-transform rows (EXTRA)")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    a.windows = a.windows or None
    here = Path(__file__).resolve().parent
    out = Path(a.results or here / "results" / f"cafeq_{a.name}.json")
    res = json.loads(out.read_text()) if out.exists() else {"rows": []}
    if a.report:
        print(table(res, a.name))
        return 0
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    res["setup"] = {"model": a.model, "ctx": a.ctx, "windows": a.windows, "threads": a.threads,
                    "cafeq": json.loads(a.cafeq), "machine": f"{platform.node()} {os.cpu_count()} cores",
                    "command": " ".join(sys.argv)}
    if a.exactness:
        res["exactness"] = {**exactness(a), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(table({"rows": [], "exactness": res["exactness"]}))
        return 0
    work = Path(a.work) / a.name
    work.mkdir(parents=True, exist_ok=True)
    a.ood_file = str(work / "ood_python_stdlib.txt")
    res["setup"]["ood_sha256"] = ood_text(Path(a.ood_file), a.ood_bytes)
    only = set(a.only.split(";")) if a.only else None
    done = {r["label"] for r in res["rows"]}
    todo = [("baseline (bf16, Q4-derived)", None, None)] + ROWS + (EXTRA if a.extra else [])
    if not a.plain_rows:
        todo = [t for t in todo if t[2] is not None]
    for label, q, c in todo:
        if label in done or (only is not None and label not in only):
            continue
        print(f"== {label}", file=sys.stderr)
        row = baseline_row(a) if q is None else run_row(a, label, q, c, work)
        row["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        res["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(table({"rows": [row]}).splitlines()[-1], file=sys.stderr)
    print(table(res, a.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
