#!/usr/bin/env python
"""Why llm-compressor's GPTQ (W3 g64 symmetric) scored worse than plain RTN on SmolLM2-135M: a
single-matrix diagnosis (RESULTS.md, "GPTQ from a maintained package: llm-compressor").

Runs in llm-compressor's own venv (it pins transformers <= 5.17); adpq is imported from this
checkout's python/ (it needs numpy and ml_dtypes only, so `pip install ml_dtypes` in that venv):

    python3 -m venv /work/venv-llmc && /work/venv-llmc/bin/pip install torch==2.13.0 && \\
        /work/venv-llmc/bin/pip install llmcompressor==0.14.0.1 transformers==5.17.0 ml_dtypes
    OMP_NUM_THREADS=1 nice -n 19 /work/venv-llmc/bin/python benchmarks/llmcompressor_diagnosis.py \\
        [--model /work/models/smollm2-135m] [--out benchmarks/results/llmcompressor_diagnosis.json]

What it does, per selected matrix W (float32 from the bf16 checkpoint):
1. Hessians from a plain float32 forward (no quantized layers before, unlike the sequential pipeline)
   with forward hooks on the selected Linear modules:
   - H_cal: 16 windows x 512 tokens of detokenized WikiText-2 *validation*, torch seed 0 (the windows
     benchmarks/gptq_llmcompressor.py calibrates on), accumulated in float64 as mean x x^T;
     H_llmc: the same inputs through llm-compressor's own accumulate_hessian (float32, 2 x x^T per
     sample, divided by the number of *sequences*), which is what its GPTQ actually receives;
   - H_test: 8 windows x 512 tokens of wiki.test.raw (a different text; diagnostic only, never used
     to choose anything).
2. Quantizes W with every variant below (3 bits, groups of 64 along the input dimension) and reports the
   proxy loss tr((W - W_hat) H (W - W_hat)^T) on H_cal and on H_test, each relative to RTN with adpq's
   symmetric grid (row rtn_adpq_sym), the relative weight error ||W - W_hat||_F / ||W||_F, and how many
   codes sit on the grid's ends.

Variants (see the printed table / results.json):
- rtn_adpq_sym      adpq.quantize(W, bits=3, group_size=64, outlier_ratio=0, column_scaling="none",
                    symmetric=True): signed fp16 scale, the largest-magnitude weight lands on -4 exactly.
- rtn_llmc          llm-compressor's weight observer (memoryless_minmax, its default) + fake_quantize:
                    scale = absmax / 3.5, codes clamped to [-4, 3] (compressed_tensors calculate_qparams).
- rtn_llmc_mse      the same with observer="memoryless_mse" (its optional MSE scale search).
- gptq_llmc         llm-compressor's quantize_weight with its defaults (actorder static == weight,
                    dampening_frac 0.01, block_size 128) on H_llmc and the observer's scales.
- rtn_llmc_asym     its asymmetric int3 grid (symmetric=False: scale (max-min)/7, integer zero-point).
- gptq_llmc_<...>   one option changed: noact (actorder None), damp0.1 / damp0.001, bs64, hcal (our
                    float64 H_cal instead of H_llmc), mse (MSE observer scales), adpqgrid (adpq's
                    signed scales passed to llm-compressor's solver: the same 8 levels as rtn_adpq_sym),
                    asym / asym_noact / asym_damp0.1 (the asymmetric grid).
- gptq_ref_*        benchmarks/gptq_speed.py gptq_fasterquant (the reference GPTQ fasterquant):
                    sym_act_static (what llm-compressor does), sym_refit (reference default: no act-order,
                    grids refit per group from the compensated weights), asym_refit.
- gptq_adpq_*       adpq's GPTQ (adpq.core.gptq.refine with adpq.reference.gptq.solve while the C
                    solver is not built; the C solver when it is): sym_act_fixed (adpq's default
                    GptqConfig), sym_refit, asym_refit (quality.py's "gptq" row: asymmetric, integer zero,
                    no act-order, grids refit) and rtn_adpq_asym, its RTN start.
W_hat[top] is the dequantized value of the weight that multiplies the input channel with the largest
H_jj (where that weight is also its group's absmax, llm-compressor's symmetric grid misses it by half a
step, 1/7 of it).

Model-level check (the same venv; WikiText-2 test perplexity by adpq.eval.perplexity, quality.py's
protocol, ctx 2048 x 8 windows by default; merged into --out under "perplexity"):

    OMP_NUM_THREADS=1 nice -n 19 /work/venv-llmc/bin/python benchmarks/llmcompressor_diagnosis.py \
        --out benchmarks/results/llmcompressor_diagnosis_ppl.json --ppl rtn_llmc rtn_adpq_sym folder:DIR folder:DIR+restore [--restore-only down_proj]

folder:DIR is a benchmarks/gptq_llmcompressor.py output; +restore puts the "super weights" back to their
float values first: in each quantized matrix, for each input channel whose mean x^2 on the calibration
windows exceeds --massive-ratio (1000) x the matrix's median, the largest-|W| weight of that column.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "benchmarks"))

ASSETS = REPO.parent / "shared" / "assets"
VALID = ASSETS / "wikitext-2-v1" / "wiki.valid.tokens"
TEST = ASSETS / "wikitext-2-raw-v1" / "wiki.test.raw"
DEFAULT_MATRICES = [
    "model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.k_proj", "model.layers.3.self_attn.v_proj",
    "model.layers.3.self_attn.o_proj", "model.layers.3.mlp.gate_proj", "model.layers.3.mlp.down_proj",
    "model.layers.20.self_attn.o_proj", "model.layers.20.mlp.down_proj",
    # the down_projs whose inputs carry SmolLM2's massive activations (H_jj up to 8e5 x the median)
    "model.layers.11.mlp.down_proj", "model.layers.28.mlp.down_proj", "model.layers.29.mlp.down_proj",
]


def windows(tok, path: Path, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """n random windows of seqlen tokens of a detokenized WikiText file (benchmarks/peers.py's
    calibration_windows at commit 5eacde9: torch.randint starts, the tokenizer's defaults)."""
    from adpq.hf.calibrate import detokenize_wikitext
    text = detokenize_wikitext(path.read_text(encoding="utf-8"))
    ids = tok(text, return_tensors="pt").input_ids[0]
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen - 1, (n,), generator=g)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


class _Stop(Exception):
    pass


def collect_hessians(model, names, ids: torch.Tensor, llmc: bool):
    """{name: H float64 mean x x^T} (and llm-compressor's own accumulation when llmc) over the windows."""
    from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian
    mods = dict(model.named_modules())
    last_layer = max(int(n.split(".")[2]) for n in names)
    H = {n: torch.zeros(mods[n].in_features, mods[n].in_features, dtype=torch.float64) for n in names}
    HL = {n: make_empty_hessian(mods[n]) for n in names} if llmc else {}
    NL = {n: torch.zeros(()) for n in names}
    ntok = {n: 0 for n in names}

    def hook(n):
        def f(mod, args, out):
            x = args[0].detach()
            x2 = x.reshape(-1, x.shape[-1]).double()
            H[n] += x2.t() @ x2
            ntok[n] += x2.shape[0]
            if llmc:
                HL[n], NL[n] = accumulate_hessian(x, mod, HL[n], NL[n])
        return f

    def stop(mod, args, out):
        raise _Stop

    hs = [mods[n].register_forward_hook(hook(n)) for n in names]
    hs.append(mods[f"model.layers.{last_layer}"].register_forward_hook(stop))
    try:
        with torch.no_grad():
            for row in ids:
                try:
                    model(input_ids=row[None])
                except _Stop:
                    pass
    finally:
        for h in hs:
            h.remove()
    Hm = {n: H[n] / ntok[n] for n in names}
    Hl = {n: HL[n] / NL[n] for n in names} if llmc else {}
    return Hm, Hl


def proxy(W, Wh, H):
    d = (W.double() - Wh.double())
    return float(torch.einsum("ij,jk,ik->", d, H, d))


def massive_columns(model, names, ids, ratio):
    """{name: [(row, col)]}: in each matrix, the input channels whose mean x_j^2 over the windows is more
    than `ratio` x the matrix's median (massive activations), and in each such column the row of its
    largest |W| (the "super weight" that multiplies it)."""
    mods = dict(model.named_modules())
    sq = {n: torch.zeros(mods[n].in_features, dtype=torch.float64) for n in names}

    def hook(n):
        def f(mod, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sq[n] += (x * x).sum(0)
        return f

    hs = [mods[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for row in ids:
                model(input_ids=row[None])
    finally:
        for h in hs:
            h.remove()
    out = {}
    for n in names:
        d = sq[n]
        cols = torch.nonzero(d > ratio * d.median()).flatten().tolist()
        if cols:
            W = mods[n].weight.data
            out[n] = [(int(torch.argmax(W[:, j].abs())), j) for j in cols]
    return out


def ppl_main(args):
    """Model-level check: WikiText-2 test perplexity (adpq.eval.perplexity, quality.py's protocol) of
    whole-model variants; results merged into args.out under "perplexity"."""
    import adpq
    from adpq.eval import perplexity
    from compressed_tensors.quantization import QuantizationArgs, fake_quantize
    from llmcompressor.observers import Observer
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peers import is_quantized_name

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    orig = {}
    with safe_open(str(Path(args.model) / "model.safetensors"), framework="pt") as sf:
        for n in sf.keys():
            if n in params and is_quantized_name(n, sf.get_slice(n).get_shape()):
                orig[n] = sf.get_tensor(n).float()
    names = [n[:-len(".weight")] for n in orig]
    supers = None
    if any(sp.endswith("+restore") for sp in args.ppl):
        nc, lc = map(int, args.cal.split("x"))
        supers = massive_columns(model, names, windows(tok, VALID, nc, lc, 0), args.massive_ratio)
        if args.restore_only:
            import re
            supers = {m: rc for m, rc in supers.items() if re.search(args.restore_only, m)}
        print("super weights (row, col) by matrix:", json.dumps(supers), flush=True)
    a = QuantizationArgs(num_bits=args.bits, type="int", symmetric=True, strategy="group",
                         group_size=args.group_size)
    out_path = Path(args.out)
    res = json.loads(out_path.read_text()) if out_path.exists() else {}
    table = res.setdefault("perplexity", {})
    for spec in args.ppl:
        base, restore = (spec[:-len("+restore")], True) if spec.endswith("+restore") else (spec, False)
        new = {}
        if base == "float":
            new = dict(orig)
        elif base == "rtn_llmc":  # llm-compressor's default observer and grid, no GPTQ
            for n, W in orig.items():
                obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=a)
                obs(W)
                qp = obs.get_qparams()
                new[n] = fake_quantize(W, qp["scale"], qp["zero_point"], a).to(torch.bfloat16).float()
        elif base == "rtn_adpq_sym":
            for n, W in orig.items():
                q = adpq.quantize(W.numpy(), bits=args.bits, group_size=args.group_size, outlier_ratio=0.0,
                                  column_scaling="none", symmetric=True)
                new[n] = torch.from_numpy(np.asarray(q.dequantize(), dtype=np.float32))
        elif base.startswith("folder:"):
            folder = Path(base[len("folder:"):])
            for f in sorted(folder.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as sf:
                    for n in sf.keys():
                        if n in orig:
                            new[n] = sf.get_tensor(n).float()
            missing = set(orig) - set(new)
            if missing:
                raise SystemExit(f"{folder} lacks {len(missing)} quantized tensors, e.g. {sorted(missing)[:3]}")
        else:
            raise SystemExit(f"unknown --ppl spec {spec!r}")
        nrest = 0
        if restore:
            for m, rc in supers.items():
                for r, c in rc:
                    new[m + ".weight"][r, c] = orig[m + ".weight"][r, c]
                    nrest += 1
        changed = sum(int((new[n] != orig[n]).any()) for n in orig)
        with torch.no_grad():
            for n, W in new.items():
                params[n].data.copy_(W)
        r = perplexity(model, ctx=args.ctx, max_windows=args.windows, tokenizer=tok, progress=False)
        key = spec + (f" (only {args.restore_only})" if restore and args.restore_only else "")
        table[key] = dict(ppl=r.ppl, ctx=args.ctx, windows=r.windows, tokens=r.tokens,
                           restored_weights=nrest, matrices_changed=changed)
        print(f"{key}: PPL {r.ppl:.2f} (ctx {args.ctx}, {r.windows} windows; {changed} matrices changed, "
              f"{nrest} weights restored)", flush=True)
        with torch.no_grad():
            for n, W in orig.items():
                params[n].data.copy_(W)
        if supers is not None:
            res["super_weights"] = {m: [[r, c, float(orig[m + ".weight"][r, c])] for r, c in rc]
                                    for m, rc in supers.items()}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/work/models/smollm2-135m")
    ap.add_argument("--out", default="/tmp/llmc/results.json")
    ap.add_argument("--matrices", default=",".join(DEFAULT_MATRICES))
    ap.add_argument("--cal", default="16x512", help="calibration windows NxL (validation, seed 0)")
    ap.add_argument("--test", default="8x512", help="windows NxL of wiki.test.raw for the held-out H (seed 1)")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--ppl", nargs="+", default=None, metavar="SPEC",
                    help="model-level check instead of the matrices: perplexity of each SPEC, one of float, "
                         "rtn_llmc, rtn_adpq_sym, folder:DIR (a gptq_llmcompressor.py output), each optionally "
                         "with +restore (the super weights, see --massive-ratio, put back to their float value)")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--massive-ratio", type=float, default=1000.0,
                    help="+restore: input channels with mean x^2 above this x the matrix's median")
    ap.add_argument("--restore-only", default=None, metavar="REGEX",
                    help="+restore: only in the matrices whose name matches REGEX (e.g. down_proj)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.ppl:
        return ppl_main(args)

    from importlib.metadata import version

    import adpq
    from compressed_tensors.quantization import ActivationOrdering, QuantizationArgs, fake_quantize
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    from llmcompressor.observers import Observer
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adpq.core.gptq import refine
    from adpq.reference.gptq import solve
    from gptq_speed import gptq_fasterquant

    names = args.matrices.split(",")
    bits, gs = args.bits, args.group_size
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    nc, lc = map(int, args.cal.split("x"))
    nt, lt = map(int, args.test.split("x"))
    t0 = time.perf_counter()
    cal_ids = windows(tok, VALID, nc, lc, 0)
    test_ids = windows(tok, TEST, nt, lt, 1)
    Hcal, Hllmc = collect_hessians(model, names, cal_ids, llmc=True)
    Htest, _ = collect_hessians(model, names, test_ids, llmc=False)
    print(f"hessians: {time.perf_counter() - t0:.0f} s", flush=True)
    weights = {}
    with safe_open(str(Path(args.model) / "model.safetensors"), framework="pt") as sf:
        for n in names:
            weights[n] = sf.get_tensor(n + ".weight").float()
    del model

    # adpq's GPTQ: the C solver when built, else the reference (same arguments, same result)
    try:
        from adpq import _core
        solver = None if hasattr(_core, "gptq") else solve
    except ImportError:
        solver = solve
    solver_name = "C (_core.gptq)" if solver is None else "adpq.reference.gptq.solve"

    def qargs(actorder=None, observer=None, sym=True):
        return QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy="group", group_size=gs,
                                actorder=actorder, observer=observer)

    def observe(W, observer, sym=True):
        a = qargs(observer=observer, sym=sym)
        obs = Observer.load_from_registry(observer, base_name="weight", args=a)
        obs(W)
        qp = obs.get_qparams()
        return qp["scale"], qp["zero_point"]

    def llmc_gptq(W, H, scale, zp, actorder=ActivationOrdering.STATIC, damp=0.01, bs=128, sym=True):
        a = qargs(actorder=actorder, sym=sym)
        q, _, fb = quantize_weight(W[None].clone(), H[None].float().clone(), scale[None], zp[None], None, a,
                                   blocksize=bs, percdamp=damp)
        assert not bool(fb.any()), "RTN fallback (Cholesky failed)"
        return q[0]

    def adpq_cfg(sym):
        if sym:
            return adpq.QuantConfig(bits=bits, group_size=gs, outlier_ratio=0.0, column_scaling="none",
                                    symmetric=True)
        return adpq.QuantConfig(bits=bits, group_size=gs, outlier_ratio=0.0, column_scaling="none",
                                symmetric=False, zero_point="integer")

    def adpq_gptq(W, H, sym, **g):
        cfg = adpq_cfg(sym)
        start = adpq.quantize(W.numpy(), config=cfg)
        qt = refine(W.numpy(), start, H.numpy(), adpq.GptqConfig(**g), solver=solver)
        return torch.from_numpy(np.asarray(qt.dequantize(), dtype=np.float32))

    results = {}
    for n in names:
        W = weights[n]
        Hc, Hl, Ht = Hcal[n], Hllmc[n], Htest[n]
        # how different llm-compressor's H is from ours, up to its scale (2 x tokens per sequence)
        hl = Hl.double() / (2 * lc)
        hdiff = float((hl - Hc).norm() / Hc.norm())
        s_mm, z_mm = observe(W, "memoryless_minmax")
        s_mse, z_mse = observe(W, "memoryless_mse")
        s_as, z_as = observe(W, "memoryless_minmax", sym=False)
        start_sym = adpq.quantize(W.numpy(), config=adpq_cfg(True))
        s_adpq = torch.from_numpy(np.asarray(start_sym.arrays()["scales"]).astype(np.float32)).reshape(s_mm.shape)
        a0 = qargs()
        V = {}
        V["rtn_adpq_sym"] = torch.from_numpy(np.asarray(start_sym.dequantize(), dtype=np.float32))
        V["rtn_adpq_asym"] = torch.from_numpy(np.asarray(adpq.quantize(W.numpy(), config=adpq_cfg(False))
                                                         .dequantize(), dtype=np.float32))
        V["rtn_llmc"] = fake_quantize(W, s_mm, z_mm, a0)
        V["rtn_llmc_mse"] = fake_quantize(W, s_mse, z_mse, a0)
        V["rtn_llmc_adpqgrid"] = fake_quantize(W, s_adpq, torch.zeros_like(z_mm), a0)  # check: == rtn_adpq_sym
        V["rtn_llmc_asym"] = fake_quantize(W, s_as, z_as, qargs(sym=False))
        tg = time.perf_counter()
        V["gptq_llmc"] = llmc_gptq(W, Hl, s_mm, z_mm)
        t_llmc = time.perf_counter() - tg
        V["gptq_llmc_noact"] = llmc_gptq(W, Hl, s_mm, z_mm, actorder=None)
        V["gptq_llmc_damp0.1"] = llmc_gptq(W, Hl, s_mm, z_mm, damp=0.1)
        V["gptq_llmc_damp0.001"] = llmc_gptq(W, Hl, s_mm, z_mm, damp=0.001)
        V["gptq_llmc_bs64"] = llmc_gptq(W, Hl, s_mm, z_mm, bs=64)
        V["gptq_llmc_hcal"] = llmc_gptq(W, Hc, s_mm, z_mm)
        V["gptq_llmc_mse"] = llmc_gptq(W, Hl, s_mse, z_mse)
        V["gptq_llmc_mse_noact"] = llmc_gptq(W, Hl, s_mse, z_mse, actorder=None)
        V["gptq_llmc_adpqgrid"] = llmc_gptq(W, Hl, s_adpq, torch.zeros_like(z_mm))
        V["gptq_llmc_adpqgrid_noact"] = llmc_gptq(W, Hl, s_adpq, torch.zeros_like(z_mm), actorder=None)
        V["gptq_llmc_asym"] = llmc_gptq(W, Hl, s_as, z_as, sym=False)
        V["gptq_llmc_asym_noact"] = llmc_gptq(W, Hl, s_as, z_as, actorder=None, sym=False)
        V["gptq_llmc_asym_damp0.1"] = llmc_gptq(W, Hl, s_as, z_as, damp=0.1, sym=False)
        V["gptq_ref_sym_act_static"] = gptq_fasterquant(W, Hc.float(), bits, gs, act_order=True,
                                                        static_groups=True, sym=True)[0]
        V["gptq_ref_sym_static"] = gptq_fasterquant(W, Hc.float(), bits, gs, static_groups=True, sym=True)[0]
        V["gptq_ref_sym_refit"] = gptq_fasterquant(W, Hc.float(), bits, gs, sym=True)[0]
        V["gptq_ref_asym_refit"] = gptq_fasterquant(W, Hc.float(), bits, gs)[0]
        V["gptq_adpq_sym_act_fixed"] = adpq_gptq(W, Hc, True, act_order=True, grids="fixed")
        V["gptq_adpq_sym_noact_fixed"] = adpq_gptq(W, Hc, True, act_order=False, grids="fixed")
        V["gptq_adpq_sym_refit"] = adpq_gptq(W, Hc, True, act_order=False, grids="refit")
        V["gptq_adpq_asym_refit"] = adpq_gptq(W, Hc, False, act_order=False, grids="refit")
        V["gptq_adpq_asym_act_fixed"] = adpq_gptq(W, Hc, False, act_order=True, grids="fixed")

        base_c = proxy(W, V["rtn_adpq_sym"], Hc)
        base_t = proxy(W, V["rtn_adpq_sym"], Ht)
        # codes on llm-compressor's grid (scale s_mm): how many sit on -4 / +3
        sc = s_mm.repeat_interleave(gs, dim=1)
        # the input channel with the largest H_jj (a massive activation) and its largest weight
        dg = torch.diag(Hc)
        jt = int(torch.argmax(dg))
        rt = int(torch.argmax(W[:, jt].abs()))
        top = dict(col=jt, hjj_over_median=float(dg[jt] / dg.median()), row=rt, w=float(W[rt, jt]),
                   group_absmax=float(W[rt, (jt // gs) * gs:(jt // gs + 1) * gs].abs().max()))
        rows = {}
        for k, Wh in V.items():
            r = dict(cal_rel=proxy(W, Wh, Hc) / base_c, test_rel=proxy(W, Wh, Ht) / base_t,
                     werr=float((W - Wh).norm() / W.norm()), top_w_hat=float(Wh[rt, jt]))
            if k.startswith(("rtn_llmc", "gptq_llmc")) and not any(t in k for t in ("adpqgrid", "mse", "asym")):
                c = torch.round(Wh / sc)
                r["frac_code_-4"] = float((c == -4).float().mean())
                r["frac_code_+3"] = float((c == 3).float().mean())
            rows[k] = r
        results[n] = dict(shape=list(W.shape), hessian_llmc_vs_float64_reldiff=hdiff, top_input=top,
                          proxy_rtn_adpq_sym=dict(cal=base_c, test=base_t), seconds_gptq_llmc=t_llmc,
                          variants=rows)
        print(f"\n{n} {tuple(W.shape)}  (H_llmc vs H_cal rel diff {hdiff:.1e}; llmc GPTQ {t_llmc:.1f} s)")
        print(f"  largest H_jj: column {jt}, {top['hjj_over_median']:.3g} x the median; its largest weight "
              f"W[{rt},{jt}] = {top['w']:+.4f} (group absmax {top['group_absmax']:.4f})")
        print(f"  {'variant':28s} {'cal/rtn':>8s} {'test/rtn':>8s} {'||dW||/||W||':>12s} {'W_hat[top]':>10s}")
        for k, r in rows.items():
            ext = (f"  codes -4: {r['frac_code_-4']:.3f}  +3: {r['frac_code_+3']:.3f}"
                   if "frac_code_-4" in r else "")
            print(f"  {k:28s} {r['cal_rel']:8.3f} {r['test_rel']:8.3f} {r['werr']:12.4f} {r['top_w_hat']:+10.4f}{ext}",
                  flush=True)

    # geometric means over the matrices
    keys = list(next(iter(results.values()))["variants"])
    gm = {k: {m: math.exp(sum(math.log(results[n]["variants"][k][m]) for n in names) / len(names))
              for m in ("cal_rel", "test_rel", "werr")} for k in keys}
    print("\ngeometric mean over the matrices")
    for k in keys:
        print(f"  {k:28s} {gm[k]['cal_rel']:8.3f} {gm[k]['test_rel']:8.3f} {gm[k]['werr']:12.4f}")
    out = dict(model=args.model, bits=bits, group_size=gs,
               calibration=f"{nc} x {lc} tokens of detokenized wiki.valid.tokens, torch seed 0 (plain float "
                           "forward, no quantized layers before)",
               held_out=f"{nt} x {lt} tokens of detokenized wiki.test.raw, torch seed 1 (diagnostic only)",
               adpq_gptq_solver=solver_name,
               packages=f"llmcompressor {version('llmcompressor')}, compressed-tensors "
                        f"{version('compressed-tensors')}, torch {torch.__version__}",
               metrics="cal_rel / test_rel: tr(dW H dW^T) relative to rtn_adpq_sym on H_cal / H_test; werr: "
                       "||W - W_hat||_F / ||W||_F",
               matrices=results, geometric_mean=gm)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if Path(args.out).exists():  # keep the model-level results of --ppl runs
        old = json.loads(Path(args.out).read_text())
        for k in ("perplexity", "super_weights"):
            if k in old:
                out[k] = old[k]
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
