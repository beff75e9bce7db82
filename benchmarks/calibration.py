"""Pre-calibration (issue 14): RTN, AdpQ, GPTQ from RTN and AdpQ -> GPTQ at matched bits per weight,
perplexity in domain (WikiText-2 test) and off domain (Python source code), with the time of each
method split into calibration forward passes and solving.

    python benchmarks/calibration.py --model /work/models/smollm2-135m --name smollm2-135m \
        --samples 16 --seqlen 2048 --windows 8 --threads 2

Every row is a folder quantize_checkpoint writes (bits per weight = every stored byte of the quantized
tensors); GPTQ rows are calibrated with adpq.calibrate on WikiText-2 *validation* (never the test split).
The off-domain text is the CPython standard library's source (the running interpreter's Lib/*.py, sorted
by name, concatenated up to --ood-bytes bytes), rebuilt deterministically and identified by its sha256.
Rows already in the results JSON are skipped (resume); --report prints the table only.
"""
from __future__ import annotations

import argparse
import hashlib
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

# (label, method, QuantConfig fields, GptqConfig fields or None); ~3.3 and ~4.3 bits per weight
RTN3 = dict(bits=3, group_size=64, outlier_ratio=0.0, column_scaling="none")
ADPQ3 = dict(bits=3, group_size=128, outlier_ratio=0.005)
RTN4 = dict(bits=4, group_size=64, outlier_ratio=0.0, column_scaling="none")
ADPQ4 = dict(bits=4, group_size=128, outlier_ratio=0.005)
ROWS = [
    ("rtn b3 g64", "rtn", RTN3, None),
    ("adpq b3 g128 r0.005", "adpq", ADPQ3, None),
    ("gptq b3 g64 (ours, RTN start)", "gptq", RTN3, {}),
    ("adpq->gptq b3 g128 r0.005", "adpq-gptq", ADPQ3, {}),
    ("rtn b4 g64", "rtn", RTN4, None),
    ("adpq b4 g128 r0.005", "adpq", ADPQ4, None),
    ("gptq b4 g64 (ours, RTN start)", "gptq", RTN4, {}),
    ("adpq->gptq b4 g128 r0.005", "adpq-gptq", ADPQ4, {}),
    ("adpq->gptq b3 g128 r0.005, damp 0.1", "adpq-gptq", ADPQ3, {"damp": 0.1}),
    ("adpq->gptq b4 g128 r0.005, damp 0.1", "adpq-gptq", ADPQ4, {"damp": 0.1}),
    ("gptq b3 g64 (ours, RTN start, natural order, grids refit)", "gptq", RTN3, {"act_order": False, "grids": "refit"}),
    # data-free Hessian proxies (no calibration text)
    ("adpq->gptq b3 g128 r0.005, proxy H = W^T W", "proxy-wtw", ADPQ3, {}),
    ("adpq->gptq b3 g128 r0.005, proxy: random-token text", "proxy-random", ADPQ3, {}),
]


def weight_gram_calibration(model_dir, cfg, g):
    """A data-free Hessian per matrix from the weights alone: H = W^T W / rows (the matrix's own rows
    as pseudo-activations)."""
    import numpy as np
    from adpq.hf.calibrate import Calibration
    from adpq.io.checkpoint import select_tensors
    from adpq.io.folder import SourceCheckpoint

    src = SourceCheckpoint(model_dir)
    hs = {}
    for name in select_tensors(list(src.tensors.values())):
        w = np.asarray(src.get(name)).astype(np.float32).astype(np.float64)
        hs[name] = (w.T @ w / w.shape[0]).astype(np.float32)
    return Calibration(hs, cfg, g, {"proxy": "W^T W / rows per matrix (weights only)", "tensors": len(hs)})


def random_token_text(model_dir, path: Path, tokens: int = 300_000, seed: int = 0) -> Path:
    """Pseudo text: uniformly random vocabulary tokens, decoded (no calibration data)."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    special = set(tok.all_special_ids)
    ids = [int(i) for i in np.random.default_rng(seed).integers(0, len(tok), size=tokens) if int(i) not in special]
    path.write_text(tok.decode(ids), encoding="utf-8")
    return path


def ood_text(path: Path, max_bytes: int) -> str:
    """Write the off-domain text (stdlib source) to path; return its sha256."""
    lib = Path(os.__file__).parent
    parts, n = [], 0
    for f in sorted(lib.glob("*.py")):
        s = f.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# ---- {f.name}\n{s}\n")
        n += len(parts[-1].encode())
        if n >= max_bytes:
            break
    text = "".join(parts).encode()[:max_bytes].decode("utf-8", errors="ignore")
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def run_row(a, label, method, qfields, gfields, work: Path) -> dict:
    dst = work / label.replace(" ", "_").replace(">", "").replace("(", "").replace(")", "").replace(",", "")
    cfg = adpq.QuantConfig(**qfields, threads=a.threads)
    row = {"label": label, "method": method, "config": {k: v for k, v in cfg.to_dict().items() if k != "threads"}}
    t0 = time.perf_counter()
    cal = None
    if gfields is not None:
        g = adpq.GptqConfig(**{**json.loads(a.gptq), **gfields})
        if method == "proxy-wtw":
            cal = weight_gram_calibration(a.model, cfg, g)
        else:
            text = random_token_text(a.model, work / "random_tokens.txt") if method == "proxy-random" else a.calibration
            cal = adpq.calibrate(a.model, text, samples=a.samples, seqlen=a.seqlen, config=cfg, gptq=g,
                                 threads=a.threads, progress=not a.quiet)
        row["gptq"] = g.to_dict()
        row["calibration"] = {k: v for k, v in cal.info.items() if k != "gptq"}
    if dst.exists():
        shutil.rmtree(dst)
    rep = adpq.quantize_checkpoint(a.model, dst, config=cfg, calibration=cal, progress=False,
                                   compute_metrics=False)
    row["seconds_total"] = round(time.perf_counter() - t0, 2)
    row["seconds_quantize_checkpoint"] = round(rep.seconds, 2)
    q = [r for r in rep.tensors if r.quantized]
    row["bits_per_weight"] = 8 * sum(r.bytes_out for r in q) / sum(r.numel for r in q)
    row["tensors_gptq"] = sum(r.gptq for r in q)
    del cal
    row.update(perplexities(a, str(dst), dequantize=True))
    shutil.rmtree(dst, ignore_errors=True)
    return row


def baseline_row(a) -> dict:
    return {"label": "baseline (bf16, Q4-derived)", "method": "baseline", "bits_per_weight": 16.0,
            **perplexities(a, a.model)}


def perplexities(a, folder: str, dequantize: bool = False) -> dict:
    """ppl_/eval_ entries of a row: the folder on WikiText-2 test and on the off-domain text."""
    out = {}
    for key, text, plain in (("wikitext", None, False), ("ood", a.ood_file, True)):
        r = adpq_eval.perplexity(folder, text_file=text, ctx=a.ctx, max_windows=a.windows, progress=not a.quiet,
                                 plain_text=plain, dequantize=dequantize)
        out[f"ppl_{key}"] = r.ppl
        out[f"eval_{key}"] = {"windows": r.windows, "tokens": r.tokens, "ctx": r.ctx, "seconds": round(r.seconds, 1)}
    return out


def table(res: dict) -> str:
    rows = res["rows"]
    base = next((r for r in rows if r["method"] == "baseline"), None)
    out = ["| row | bits/weight | PPL WikiText-2 test | PPL off-domain (Python source) | calibration forward s | "
           "solve s | total s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.get("calibration", {})
        out.append(f"| {r['label']} | {r['bits_per_weight']:.3f} | {r['ppl_wikitext']:.2f} | {r['ppl_ood']:.3f} | "
                   f"{c.get('seconds_forward', '-')} | {c.get('seconds_solve', '-')} | {r.get('seconds_total', '-')} |")
    if base:
        out.append(f"\nbaseline: {base['label']}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--calibration", default=None, help="calibration text (default: WikiText-2 validation)")
    ap.add_argument("--gptq", default="{}", help="GptqConfig fields as JSON, for every GPTQ row")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=8, help="evaluation windows per text (None: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ood-bytes", type=int, default=400_000)
    ap.add_argument("--only", default=None, help="';'-separated row labels (default: all)")
    ap.add_argument("--results", default=None)
    ap.add_argument("--work", default="/tmp/adpq-calibration-bench")
    ap.add_argument("--proxies", action="store_true", help="also the data-free Hessian proxy rows")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    here = Path(__file__).resolve().parent
    out = Path(a.results or here / "results" / f"calibration_{a.name}.json")
    res = json.loads(out.read_text()) if out.exists() else {"rows": []}
    if a.report:
        print(table(res))
        return 0
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    work = Path(a.work) / a.name
    work.mkdir(parents=True, exist_ok=True)
    a.ood_file = str(work / "ood_python_stdlib.txt")
    sha = ood_text(Path(a.ood_file), a.ood_bytes)
    res["setup"] = {"model": a.model, "samples": a.samples, "seqlen": a.seqlen, "ctx": a.ctx, "windows": a.windows,
                    "threads": a.threads, "gptq": json.loads(a.gptq),
                    "ood_text": {"source": f"CPython {platform.python_version()} Lib/*.py sorted, first {a.ood_bytes} "
                                           "bytes", "sha256": sha},
                    "machine": f"{platform.node()} {os.cpu_count()} cores", "command": " ".join(sys.argv)}
    only = set(a.only.split(";")) if a.only else None
    done = {r["label"] for r in res["rows"]}
    todo = [("baseline (bf16, Q4-derived)", None, None, None)] + [r for r in ROWS if not r[1].startswith("proxy")
                                                                   or a.proxies]
    for label, method, q, g in todo:
        if label in done or (only is not None and label not in only):
            continue
        print(f"== {label}", file=sys.stderr)
        row = baseline_row(a) if method is None else run_row(a, label, method, q, g, work)
        row["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        res["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(table({"rows": [row]}).splitlines()[-1], file=sys.stderr)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
