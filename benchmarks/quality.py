"""Perplexity against bits per weight: RTN, AdpQ sweeps and the peers, on a real model (issue 5).

    python benchmarks/quality.py --model /work/models/smollm2-135m --quick     # a few windows, CPU
    python benchmarks/quality.py --model DIR --ctx 2048 512                    # full test set
    python benchmarks/quality.py --model DIR --report                          # table + plots only
    python benchmarks/quality.py --model /work/models/gemma3-270m --bos-each-window ...  # BOS at each window

--bos-each-window puts the BOS token at the start of every window (adpq.eval.perplexity's
bos_each_window, llama.cpp-style: the window's first token is replaced by BOS); rows record it
(`bos_each_window`) and a row measured one way never stands in for the other when resuming or merging.

The model is loaded once (float32); for each configuration every selected weight (adpq's default
selection: the decoder's q/k/v/o/gate/up/down projections) is quantized from the checkpoint's values
and the dequantized weights are written into the model in place, then WikiText-2 perplexity is
measured with adpq.eval.perplexity (protocol in its docstring). Bits per weight are counted the same
way for every method: 8 * (bytes of every stored array) / quantized weights (adpq: its arrays; peers:
benchmarks/peers.py's accounting). Rows are appended to benchmarks/results/quality_<model>.json as
they finish, so an interrupted sweep resumes; --report rebuilds the table (RESULTS-style markdown)
and the plots from that file.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


# GPTQ calibration: 16 windows x 512 tokens of WikiText-2 *validation* (see benchmarks/peers.py); the
# reference setting (128 x 2048) takes hours per config on a 2-core CPU.
GPTQ_NSAMPLES, GPTQ_SEQLEN = 16, 512


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------ grid
# The grid's base quantizer is the paper's (asymmetric min-max, float zero-point, a b-bit quantizer
# for each group's outliers, one lambda per tensor); entries say what they change.
PAPER = dict(symmetric=False, zero_point="float", outlier_format="group", outlier_scope="tensor",
             column_scaling="none")


def grid(quick: bool):
    return [(m, canon(m, p, PAPER)) for m, p in _grid(quick)]


def _grid(quick: bool):
    """(method, params) pairs, most informative first. adpq params are QuantConfig fields; peers:
    bits, group_size. --quick keeps the 3- and 4-bit points that decide the defaults."""
    rows = [("baseline", {})]
    groups = (32, 64, 128, -1)
    for b in ((3, 4, 2) if quick else (2, 3, 4)):
        for g in ((32, 128) if (quick and b == 2) else groups):
            rows.append(("rtn", dict(bits=b, group_size=g, outlier_ratio=0.0)))
    for b in ((3, 4) if quick else (2, 3, 4)):
        for g in ((64, 128) if quick else groups):
            for r in ((0.005, 0.01) if quick else (0.0025, 0.005, 0.01, 0.02)):
                rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=r)))
                rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=r, outlier_format="fp16")))
            rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=0.01, outlier_scope="group")))
            rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=0.01, symmetric=True)))
    # symmetric quantizers (measured far better than asymmetric ones on SmolLM2 at 3 bits)
    for b in ((3, 4) if quick else (2, 3, 4)):
        sym_groups = ((32, 64, 128) if b == 3 else (32, 64, 128)) if quick else groups
        for g in sym_groups:
            rows.append(("rtn", dict(bits=b, group_size=g, outlier_ratio=0.0, symmetric=True)))
            ratios = ((0.005, 0.02) if (b == 3 and g != 32) else ()) if quick else (0.0025, 0.005, 0.02)
            for r in ratios:
                rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=r, symmetric=True)))
            rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=0.01, symmetric=True,
                                      outlier_format="fp16")))
            if b == 3 and g == 128:  # the default config's outlier-ratio neighbours
                for r in (0.005, 0.02):
                    rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=r, symmetric=True,
                                              outlier_format="fp16")))
            if not quick:
                rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=0.01, symmetric=True,
                                          outlier_scope="group")))
    # integer zero-points (a level exactly at 0)
    for b, g in (((3, 32), (3, 64), (3, 128), (4, 128)) if quick else [(b, g) for b in (2, 3, 4) for g in groups]):
        rows.append(("rtn", dict(bits=b, group_size=g, outlier_ratio=0.0, zero_point="integer")))
        rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=0.01, zero_point="integer")))
        if b == 3:
            rows.append(("adpq", dict(bits=b, group_size=g, outlier_ratio=0.01, zero_point="integer",
                                      outlier_format="fp16")))
    # column scaling (mean |w| per input column; our addition, the default for >= 64-row matrices)
    for b, g, ratios in (((3, 64, (0.0, 0.005, 0.01)), (3, 128, (0.0, 0.005, 0.01)), (4, 128, (0.0, 0.005, 0.01)),
                          (2, 64, (0.01,))) if quick else
                         [(b, g, (0.0, 0.0025, 0.005, 0.01, 0.02)) for b in (2, 3, 4) for g in groups]):
        for r in ratios:
            p = dict(bits=b, group_size=g, outlier_ratio=r, symmetric=True, column_scaling="mean_abs")
            rows.append(("rtn", p) if r == 0 else ("adpq", dict(p, outlier_format="fp16")))
    for method in ("hqq", "sinq"):
        for b, g in (((3, 64), (3, 128), (4, 128)) if quick else
                     [(b, g) for b in (2, 3, 4) for g in groups]):
            rows.append((method, dict(bits=b, group_size=g)))
    for g in ((64, 128) if quick else (32, 64, 128)):
        rows.append(("nf4", dict(bits=4, group_size=g)))
    for b, g in (((3, 64), (3, 128), (4, 128)) if quick else [(b, g) for b in (2, 3, 4) for g in groups]):
        rows.append(("gptq", dict(bits=b, group_size=g)))
    # GPTQ from a maintained package (llm-compressor, symmetric): folders from gptq_llmcompressor.py
    # (it refuses groups that do not divide the rows: g128 on SmolLM2's 576-wide matrices)
    for b, g in ((3, 64), (4, 64)):
        rows.append(("gptq-llmc", dict(bits=b, group_size=g)))
    return rows


def canon(method, params, defaults=None):
    """Every quantizer field that changes the result, explicit, so that a row keeps its meaning when
    QuantConfig's defaults change: rtn -> symmetric (+ zero_point if asymmetric), column_scaling;
    adpq -> also outlier_format and outlier_scope."""
    if method not in ("rtn", "adpq"):
        return dict(params)
    if defaults is None:
        import adpq
        defaults = adpq.QuantConfig().to_dict()
    p = dict(params)
    fields = ["symmetric", "zero_point", "column_scaling"] + (
        ["outlier_format", "outlier_scope"] if method == "adpq" else [])
    for f in fields:
        p.setdefault(f, defaults[f])
    if p["symmetric"]:
        p.pop("zero_point")
    return p


def key_of(method, params):
    return method + ":" + ",".join(f"{k}={params[k]}" for k in sorted(params))


# ---------------------------------------------------------------------------------------- methods
class _CachingTokenizer:
    """The model's tokenizer, remembering its last full-text call: the evaluation text is
    tokenized once per sweep, not once per configuration."""

    def __init__(self, tok):
        self._tok, self._key, self._value = tok, None, None

    def __call__(self, text, **kw):
        key = (hash(text), len(text), tuple(sorted(kw.items())))
        if key != self._key:
            self._key, self._value = key, self._tok(text, **kw)
        return self._value

    def __len__(self):
        return len(self._tok)

    def __getattr__(self, name):
        return getattr(self._tok, name)


class Model:
    """The float32 model, its tokenizer and the checkpoint's original weights."""

    def __init__(self, path: str, threads: int, peer_dir: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from peers import is_quantized_name

        torch.set_num_threads(threads)
        self.path = path
        self.peer_dir = peer_dir
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        self.model.eval()
        self.tokenizer = _CachingTokenizer(AutoTokenizer.from_pretrained(path))
        from adpq.io.safetensors import SafetensorsFile
        self.orig = {}
        params = dict(self.model.named_parameters())
        for f in sorted(Path(path).glob("*.safetensors")):
            sf = SafetensorsFile(str(f))
            for name in sf.names():
                if is_quantized_name(name, sf.tensors[name].shape) and name in params:
                    self.orig[name] = np.array(sf.get(name))  # checkpoint dtype (bf16 here)
        if not self.orig:
            raise SystemExit(f"no quantizable tensors found in {path}")
        self.params = params

    def restore(self):
        import torch
        for name, w in self.orig.items():
            self.params[name].data.copy_(torch.from_numpy(w.astype(np.float32)))

    def _peer_folder(self, method, params):
        """A folder benchmarks/peers.py already wrote for this config (GPTQ: GPTQ_NSAMPLES x
        GPTQ_SEQLEN calibration tokens), or None."""
        b, g, name = params["bits"], params["group_size"], Path(self.path).name
        tag = {"nf4": f"{name}-nf4-g{g}-dq",
               "gptq-llmc": f"{name}-llmcgptq-b{b}-g{g}-n{GPTQ_NSAMPLES}x{GPTQ_SEQLEN}"}.get(
            method, f"{name}-{method}-b{b}-g{g}")
        folder = Path(self.peer_dir) / tag
        return folder if (folder / "peer_quantization.json").exists() else None

    def _load_folder(self, folder):
        """Copies the fake-quantized weights of a peer folder into the model; (bpw, seconds)."""
        import torch
        from adpq.io.safetensors import SafetensorsFile
        info = json.loads((folder / "peer_quantization.json").read_text())
        for f in sorted(folder.glob("*.safetensors")):
            sf = SafetensorsFile(str(f))
            for name in sf.names():
                if name in self.orig:
                    self.params[name].data.copy_(torch.from_numpy(np.array(sf.get(name)).astype(np.float32)))
        log(f"  (weights from {folder})")
        return info["bits_per_weight"], info["seconds"]

    def _gptq(self, params):
        """GPTQ from an RTN start through adpq's solver (the reference algorithm: asymmetric grids with
        integer zero-points refit as the columns go, no act-order, damp 0.01, block 128), Hessians from
        adpq.calibrate on GPTQ_NSAMPLES x GPTQ_SEQLEN tokens of WikiText-2 validation."""
        import torch
        import adpq
        cfg = adpq.QuantConfig(bits=params["bits"], group_size=params["group_size"], outlier_ratio=0.0,
                               column_scaling="none", symmetric=False, zero_point="integer")
        g = adpq.GptqConfig(act_order=False, grids="refit")
        t0 = time.perf_counter()
        cal = adpq.calibrate(self.path, None, samples=GPTQ_NSAMPLES, seqlen=GPTQ_SEQLEN, config=cfg, gptq=g,
                             progress=False)
        total_bytes = total_n = 0
        for name, w in self.orig.items():
            qt = adpq.quantize(w, config=cfg, hessian=cal.hessians[name], gptq=g)
            self.params[name].data.copy_(torch.from_numpy(qt.dequantize()))
            total_bytes += qt.nbytes
            total_n += w.size
        return 8 * total_bytes / total_n, time.perf_counter() - t0, {}

    def apply(self, method, params):
        """Quantize every selected weight; returns (bits_per_weight, seconds, per-tensor metrics)."""
        import torch
        import adpq
        total_bytes = total_n = 0
        seconds = 0.0
        per_tensor = {}
        if method not in ("rtn", "adpq", "gptq"):
            folder = self._peer_folder(method, params)
            if folder is not None:
                return (*self._load_folder(folder), {})
        if method == "gptq":
            return self._gptq(params)
        if method == "gptq-llmc":
            raise RuntimeError(f"no folder for {method} {params} in {self.peer_dir}: write it with "
                               "benchmarks/gptq_llmcompressor.py (in its own venv, see its docstring)")
        for name, w in self.orig.items():
            if method in ("rtn", "adpq"):
                t0 = time.perf_counter()
                qt = adpq.quantize(w, config=adpq.QuantConfig(**params))
                seconds += time.perf_counter() - t0
                w_hat = qt.dequantize()
                nbytes = qt.nbytes
                m = adpq.metrics(w, w_hat)
                per_tensor[name] = {k: m[k] for k in ("mse", "kl_divergence", "rel_fro_error")}
            else:
                import peers
                fn = {"hqq": peers.quant_hqq, "sinq": peers.quant_sinq, "nf4": peers.quant_nf4}[method]
                t = torch.from_numpy(w.astype(np.float32)).to(torch.bfloat16)
                t0 = time.perf_counter()
                r = fn(t, params["bits"], params["group_size"])
                seconds += time.perf_counter() - t0
                w_hat = r[0].float().numpy()
                nbytes = sum(r[1].values())
            self.params[name].data.copy_(torch.from_numpy(np.ascontiguousarray(w_hat, dtype=np.float32)))
            total_bytes += nbytes
            total_n += w.size
        return 8 * total_bytes / total_n, seconds, per_tensor


def evaluate(m: Model, ctxs, max_windows, bos_each_window=False):
    from adpq.eval import perplexity
    out = {}
    for ctx in ctxs:
        r = perplexity(m.model, ctx=ctx, max_windows=max_windows, tokenizer=m.tokenizer, progress=False,
                       bos_each_window=bos_each_window)
        out[str(ctx)] = dict(ppl=r.ppl, windows=r.windows, tokens=r.tokens, seconds=r.seconds,
                             bos_each_window=r.bos_each_window)
    return out


# ---------------------------------------------------------------------------------------- report
def load_rows(path: Path):
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    for r in rows:  # rows from before column scaling existed ran without it
        if r["method"] in ("rtn", "adpq") and "column_scaling" not in r["params"]:
            r["params"]["column_scaling"] = "none"
            r["key"] = key_of(r["method"], r["params"])
    return rows


def save_rows(path: Path, rows, meta):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(meta, rows=rows), indent=1))
    tmp.replace(path)


# What the baseline checkpoint was derived from (its ADPQ_PROVENANCE.json "source_quantization"); set by
# main() for the model at hand. SmolLM2-135M's is Q4_1.
BASELINE_SOURCE = "Q4_1"


def baseline_source(model_dir) -> str:
    try:
        prov = json.loads((Path(model_dir) / "ADPQ_PROVENANCE.json").read_text())
        return prov.get("source_quantization") or BASELINE_SOURCE
    except (OSError, ValueError):
        return BASELINE_SOURCE


def label(row):
    p = row["params"]
    if row["method"] == "baseline":
        return f"baseline (bf16, {BASELINE_SOURCE}-derived)"
    s = f"{row['method']} b{p['bits']} g{p['group_size']}"
    if row["method"] == "adpq":
        s += f" r{p['outlier_ratio']}"
    for k, v in sorted(p.items()):
        if k not in ("bits", "group_size", "outlier_ratio"):
            s += f" {k}={v}"
    return s


def series_of(row):
    p = row["params"]
    if row["method"] not in ("adpq", "rtn"):
        return row["method"]
    extra = [f"{k}={v}" for k, v in sorted(p.items()) if k not in ("bits", "group_size", "outlier_ratio")]
    return row["method"] + (" " + " ".join(extra) if extra else "")


def merged(rows):
    """One row per configuration and protocol (bos_each_window or not): the PPL of every (ctx, windows)
    run of it together."""
    out = {}
    for r in rows:
        if r.get("error"):
            continue
        m = out.setdefault((r["key"], bool(r.get("bos_each_window"))), dict(r, ppl={}))
        m["ppl"].update(r["ppl"])
    return list(out.values())


def report(path: Path, model_name: str):
    rows = merged(load_rows(path))
    if not rows:
        raise SystemExit(f"no results in {path}")
    ctxs = sorted({c for r in rows for c in r["ppl"]}, key=int, reverse=True)
    # a protocol column only when some row has BOS at each window (SmolLM2's table stays as it was)
    proto = any(r.get("bos_each_window") for r in rows)
    lines = ["| method | config | bits/weight | " + " | ".join(f"PPL ctx {c} (windows)" for c in ctxs)
             + (" | protocol" if proto else "") + " | quantize s |",
             "|---|---|---|" + "---|" * (len(ctxs) + proto) + "---|"]
    for r in sorted(rows, key=lambda r: (r["method"] != "baseline", r["bits_per_weight"])):
        ppl = " | ".join(f"{r['ppl'][c]['ppl']:.2f} ({r['ppl'][c]['windows']})" if c in r["ppl"] else "-"
                         for c in ctxs)
        pr = (" | " + ("bos-each-window" if r.get("bos_each_window") else "gptq")) if proto else ""
        lines.append(f"| {r['method']} | {label(r)} | {r['bits_per_weight']:.3f} | {ppl}{pr} | {r['seconds']:.2f} |")
    table = "\n".join(lines)
    print(table)
    plot_pareto(rows, "512" if "512" in ctxs else ctxs[0], path.parent / f"pareto_{model_name}.png", model_name)
    plot_layers(rows, path.parent / f"layers_{model_name}.png", model_name)
    return table


def plot_pareto(rows, ctx, out, model_name):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6))
    series = {}
    for r in rows:
        if r["method"] == "baseline" or ctx not in r["ppl"]:
            continue
        series.setdefault(series_of(r), []).append((r["bits_per_weight"], r["ppl"][ctx]["ppl"]))
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(series), 2)))
    markers = "osD^v<>pXh*"
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        # the lower envelope: best PPL at each bits/weight or fewer
        front, best = [], math.inf
        for b, p in pts:
            if p < best:
                front.append((b, p))
                best = p
        ax.plot([b for b, _ in front], [p for _, p in front], marker=markers[i % len(markers)], color=colors[i],
                lw=2.2 if name.startswith("adpq") else 1.2, label=name)
        ax.scatter([b for b, _ in pts], [p for _, p in pts], s=8, alpha=0.3, color=colors[i])
    base = [r for r in rows if r["method"] == "baseline" and ctx in r["ppl"]]
    if base:
        b0 = base[0]["ppl"][ctx]["ppl"]
        ax.axhline(b0, color="k", ls="--", label=f"baseline ({BASELINE_SOURCE}-derived)")
        ax.set_ylim(0.9 * b0, 30 * b0)  # 2-bit points of a 135M model are off the chart (see table)
    ax.set_xlim(2.9, 5.1)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (every stored array counted)")
    ax.set_ylabel(f"WikiText-2 perplexity, ctx {ctx}")
    ax.set_title(f"{model_name}: perplexity vs bits per weight (Pareto front per method)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    log(f"wrote {out}")


def plot_layers(rows, out, model_name):
    """Per tensor, AdpQ's KL divergence and MSE against RTN's with the same quantizer (bits, group
    size, symmetric, zero-point, column scaling): AdpQ at outlier_ratio 0.01 with fp16 tensor-scope
    outliers (the default kind) against outlier_ratio 0. Per bit width, the pair closest to the
    default (g128, column-scaled, symmetric) that has per-tensor metrics."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def quantizer(p):
        return (p.get("bits"), p.get("group_size"), p.get("symmetric"), p.get("zero_point"), p.get("column_scaling"))

    rtn = {quantizer(q["params"]): q for q in rows if q["method"] == "rtn" and q.get("per_tensor")}
    pairs = []
    for r in rows:
        p = r["params"]
        if (r["method"] == "adpq" and r.get("per_tensor") and p.get("outlier_ratio") == 0.01
                and p.get("outlier_format") == "fp16" and p.get("outlier_scope") == "tensor"
                and quantizer(p) in rtn):
            pairs.append((r, rtn[quantizer(p)]))
    if not pairs:
        return
    pairs.sort(key=lambda rq: (rq[0]["params"]["group_size"] != 128, rq[0]["params"].get("column_scaling") != "mean_abs",
                               not rq[0]["params"].get("symmetric")))
    chosen = {}
    for r, q in pairs:
        chosen.setdefault(r["params"]["bits"], (r, q))
    fig, axes = plt.subplots(2, len(chosen), figsize=(5 * len(chosen), 7), squeeze=False)
    for col, (bits, (r, q)) in enumerate(sorted(chosen.items())):
        names = list(r["per_tensor"])
        x = np.arange(len(names))
        desc = label(q).replace("rtn ", "")
        for row_i, metric in enumerate(("kl_divergence", "mse")):
            ax = axes[row_i][col]
            a = np.array([r["per_tensor"][n][metric] for n in names])
            b = np.array([q["per_tensor"][n][metric] for n in names])
            ax.semilogy(x, b, ".", label=f"RTN {desc}")
            ax.semilogy(x, a, ".", label="AdpQ, same quantizer, r0.01 fp16 outliers")
            short = {"kl_divergence": "KL", "mse": "MSE"}[metric]
            ax.set_title(f"{bits}-bit {short}: {int((a < b).sum())}/{len(a)} lower with AdpQ, "
                         f"median ratio {np.median(a / b):.2f}", fontsize=9)
            ax.set_xlabel("tensor (checkpoint order)")
            ax.legend(fontsize=7)
    fig.suptitle(f"{model_name}: per-tensor weight error, AdpQ vs RTN with the same quantizer")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    log(f"wrote {out}")


# ------------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/work/models/smollm2-135m")
    ap.add_argument("--name", default=None, help="model name in file names (default: folder name)")
    ap.add_argument("--quick", action="store_true", help="ctx 512, 4 windows, a smaller grid")
    ap.add_argument("--ctx", type=int, nargs="+", default=None)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--methods", default="baseline,rtn,adpq,hqq,sinq,nf4,gptq,gptq-llmc")
    ap.add_argument("--bits", type=int, nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-dir", default="/work/models/peers",
                    help="folders written by benchmarks/peers.py (GPTQ results are reused from there)")
    ap.add_argument("--results", default=None, help="JSON file (default benchmarks/results/quality_<name>.json)")
    ap.add_argument("--report", action="store_true", help="only rebuild the table and plots")
    ap.add_argument("--force", action="store_true", help="re-run configurations already in the results")
    ap.add_argument("--match", default=None, help="only configurations whose key contains this text")
    ap.add_argument("--only", default=None, help="only these labels (as the table shows them), ';'-separated")
    ap.add_argument("--bos-each-window", action="store_true",
                    help="BOS token at the start of every window (llama.cpp-style; recorded in each row)")
    args = ap.parse_args(argv)
    global BASELINE_SOURCE
    BASELINE_SOURCE = baseline_source(args.model)
    name = args.name or Path(args.model).name
    path = Path(args.results) if args.results else HERE / "results" / f"quality_{name}.json"
    if args.report:
        report(path, name)
        return
    ctxs = args.ctx or ([512] if args.quick else [2048, 512])
    max_windows = args.max_windows if args.max_windows is not None else (4 if args.quick else None)
    methods = set(args.methods.split(","))
    todo = [(m, p) for m, p in grid(args.quick) if m in methods and (args.bits is None or p.get("bits") in args.bits
                                                                   or m == "baseline")]
    if args.match:
        todo = [(m, p) for m, p in todo if args.match in key_of(m, p)]
    if args.only:
        wanted = {x.strip() for x in args.only.split(";")}
        todo = [(m, p) for m, p in todo if label(dict(method=m, params=p)) in wanted]
        missing = wanted - {label(dict(method=m, params=p)) for m, p in todo}
        if missing:
            raise SystemExit(f"--only: not in the grid: {sorted(missing)}")
    rows = load_rows(path)
    bos = bool(args.bos_each_window)
    done = {(r["key"], tuple(sorted(r["ppl"])), r["max_windows"], bool(r.get("bos_each_window"))) for r in rows}
    meta = dict(model=args.model, command="python " + " ".join([str(Path(__file__).relative_to(HERE.parent))]
                                                                 + (argv if argv is not None else sys.argv[1:])),
                machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
                baseline_source=BASELINE_SOURCE)
    m = Model(args.model, args.threads, args.peer_dir)
    log(f"{len(todo)} configurations; ctx {ctxs}, max_windows {max_windows}; results -> {path}")
    for method, params in todo:
        k = key_of(method, params)
        if not args.force and (k, tuple(sorted(str(c) for c in ctxs)), max_windows, bos) in done:
            continue
        m.restore()
        try:
            bpw, secs, per_tensor = (16.0, 0.0, {}) if method == "baseline" else m.apply(method, params)
        except Exception as e:  # a peer that cannot run this config: recorded, not hidden
            log(f"{k}: FAILED {type(e).__name__}: {e}")
            rows.append(dict(key=k, method=method, params=params, error=f"{type(e).__name__}: {e}",
                             ppl={}, bits_per_weight=float("nan"), seconds=0.0, max_windows=max_windows,
                             bos_each_window=bos, date=time.strftime("%Y-%m-%d %H:%M:%S %Z")))
            save_rows(path, rows, meta)
            continue
        ppl = evaluate(m, ctxs, max_windows, bos)
        row = dict(key=k, method=method, params=params, bits_per_weight=bpw, seconds=secs, ppl=ppl,
                   max_windows=max_windows, bos_each_window=bos, per_tensor=per_tensor, command=meta["command"],
                   date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        rows = [r for r in rows if not (r["key"] == k and r["max_windows"] == max_windows
                                        and sorted(r["ppl"]) == sorted(ppl)
                                        and bool(r.get("bos_each_window")) == bos)] + [row]
        save_rows(path, rows, meta)
        log(f"{label(row):55s} bpw {bpw:6.3f}  " + "  ".join(f"ctx{c} {v['ppl']:9.3f}" for c, v in ppl.items())
            + f"  ({secs:.1f} s quantize)")
    report(path, name)


if __name__ == "__main__":
    main()
