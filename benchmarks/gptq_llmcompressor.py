#!/usr/bin/env python
"""GPTQ from a maintained package (llm-compressor's GPTQModifier), as a peer folder for quality.py.

    python -m venv .venv-llmc && . .venv-llmc/bin/activate && pip install torch==2.13.0 && \\
        pip install llmcompressor==0.14.0.1 transformers==5.17.0 ml_dtypes
    .venv-llmc/bin/python benchmarks/gptq_llmcompressor.py /work/models/smollm2-135m \\
        /work/models/peers/smollm2-135m-llmcgptq-b3-g64-n16x512 --bits 3 --group-size 64

(llm-compressor pins transformers <= 5.17, hence its own venv.) GPTQ runs on the model in float32
(bfloat16 matmuls are emulated on this CPU: 10x slower); the codes it chooses are then dequantized with
their group scales rounded to float16, the dtype they are counted in (a stored checkpoint keeps them in
16 bits; GPTQ's own format stores fp16 scales). One scheme for every selected Linear (the decoder's q/k/v/o/gate/up/down projections, as for every method):
int `--bits`, group strategy, `--group-size`, symmetric unless `--asym`; the rest is llm-compressor's
GPTQModifier defaults (recorded in the folder). llm-compressor refuses a group size that does not divide
every selected matrix's columns (g128 on SmolLM2's 576-wide matrices), unless told to bypass the check,
which this script does not do. Calibration: the same windows as benchmarks/peers.py's
GPTQ reimplementation (16 random windows x 512 tokens of WikiText-2 *validation*, detokenized, the
model's tokenizer, seed 0). Never the test split. `--seed` seeds torch before oneshot: its sampler
shuffles the windows with the global RNG, which changes the float32 Hessian sums and so the codes.

Which scheme is a fair GPTQ baseline (benchmarks/llmcompressor_diagnosis.py): `--asym` (llm-compressor's
asymmetric int grid, integer zero-points, its defaults otherwise: actorder "static", dampening 0.01), or
`--observer memoryless_mse` when symmetric. Its default symmetric int3 grid (scale = absmax / 3.5 on codes
[-4, 3]) puts every group's extreme half a step off the grid (the largest positive weight clipped to 3/3.5
of itself, the most negative one rounded out to 4/3.5), which hits SmolLM2's "super weights" (the
down_proj weights that multiply massive activations) and GPTQ then spreads that error over the matrix.
Options: --asym, --observer, --actorder static|weight|none, --dampening (unset: the package's defaults).

Output: an ordinary HF folder with the dequantized (fake-quantized) weights in bfloat16, and
peer_quantization.json with bits/weight counted as for every method (docs/DESIGN.md 2.3): codes at exactly
`bits` bits, every stored scale (and zero-point when asymmetric) in its dtype.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))  # adpq from the checkout (+ ml_dtypes)
from peers import code_bytes, is_quantized_name  # noqa: E402
from adpq.hf.calibrate import detokenize_wikitext  # noqa: E402

# WikiText-2 validation in ../shared/assets beside the repository (docs/DESIGN.md section 4)
DEFAULT_CALIB = Path(__file__).resolve().parents[2] / "shared" / "assets" / "wikitext-2-v1" / "wiki.valid.tokens"


def calibration_windows(tokenizer, n: int, seqlen: int, seed: int = 0, path: Path = DEFAULT_CALIB) -> torch.Tensor:
    """n random windows of seqlen tokens of the detokenized text (torch.randint starts, seed): what
    benchmarks/peers.py's calibration_windows did when this script's rows were made (commit 5eacde9)."""
    if "test" in Path(path).name:
        raise ValueError("refusing to calibrate on a test split")
    text = detokenize_wikitext(Path(path).read_text(encoding="utf-8"))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen - 1, (n,), generator=g)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    # GPTQModifier / QuantizationArgs options; unset = the package's defaults (actorder "static",
    # dampening_frac 0.01, observer "memoryless_minmax")
    ap.add_argument("--actorder", choices=["static", "weight", "none"], default=None)
    ap.add_argument("--dampening", type=float, default=None, help="GPTQModifier dampening_frac")
    ap.add_argument("--observer", default=None, help='weight observer, e.g. "memoryless_mse"')
    ap.add_argument("--seed", type=int, default=0,
                    help="torch seed before oneshot: its calibration sampler shuffles the windows with the global "
                         "RNG, and the order changes the float32 Hessian sums, hence the codes (unseeded, three runs "
                         "of the default b3 g64 config gave PPL 90.5, 93.2 and 98.0)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    # (every import up front: a missing one must fail before the minutes of calibration)
    from importlib.metadata import version

    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize, fake_quantize, quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, dst = Path(args.src), Path(args.dst)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    names = {n for n, p in model.named_parameters() if is_quantized_name(n, p.shape)}
    targets = sorted({n.rsplit(".", 2)[-2] for n in names})  # q_proj, k_proj, ... (module name suffixes)
    calib = calibration_windows(tok, args.nsamples, args.seqlen)
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    qa = dict(observer=args.observer) if args.observer else {}
    weights = QuantizationArgs(num_bits=args.bits, type="int", symmetric=not args.asym, strategy="group",
                               group_size=args.group_size, **qa)
    gm = {}
    if args.actorder is not None:
        gm["actorder"] = None if args.actorder == "none" else args.actorder
    if args.dampening is not None:
        gm["dampening_frac"] = args.dampening
    modifier = GPTQModifier(config_groups={"group_0": QuantizationScheme(
        targets=[f"re:.*{t}$" for t in targets], weights=weights)}, ignore=["lm_head"], **gm)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    oneshot(model=model, dataset=ds, recipe=modifier, max_seq_length=args.seqlen,
            num_calibration_samples=args.nsamples)
    seconds = time.perf_counter() - t0

    modules = dict(model.named_modules())
    total_bytes = total_n = 0
    state = {}
    max_change = 0.0
    for name in sorted(names):
        mod = modules[name.rsplit(".", 1)[0]]
        scale, zp = mod.weight_scale.data, getattr(mod, "weight_zero_point", None)
        zp = zp.data if zp is not None else None
        w = mod.weight.data
        # GPTQ leaves the weight on its grid: quantizing it again must change nothing
        max_change = max(max_change, float((fake_quantize(w, scale, zp, weights) - w).abs().max()))
        codes = quantize(w, scale, zp, weights)
        w_hat = dequantize(codes, scale.half().float(), zp, args=weights)
        state[name] = w_hat.to(torch.bfloat16).contiguous()
        nb = code_bytes(w.numel(), args.bits) + scale.numel() * 2  # float16 scales
        if args.asym:  # the zero-points, stored at `bits` bits (packed, like GPTQ's qzeros)
            nb += code_bytes(zp.numel(), args.bits)
        total_bytes += nb
        total_n += w.numel()
    if max_change > 0:
        raise SystemExit(f"the GPTQ weights are not on their grid (max change {max_change}): not fake-quantized")

    # the output folder: the source with the quantized tensors replaced
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors"):
            shutil.copy2(p, tmp / p.name)
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            tensors = {n: (state[n] if n in state else sf.get_tensor(n)) for n in sf.keys()}
            meta = sf.metadata()
        save_file(tensors, str(tmp / f.name), metadata=meta)
    info = dict(method="gptq (llm-compressor GPTQModifier)", bits=args.bits, group_size=args.group_size,
                symmetric=not args.asym, bits_per_weight=8 * total_bytes / total_n, seconds=seconds,
                package=f"llmcompressor {version('llmcompressor')}, compressed-tensors "
                        f"{version('compressed-tensors')}, transformers {version('transformers')}",
                modifier=json.loads(modifier.model_dump_json()),
                seed=args.seed,
                calibration=f"{args.nsamples} random windows x {args.seqlen} tokens of wiki.valid.tokens "
                            "(WikiText-2 validation, detokenized), seed 0, model tokenizer (as benchmarks/peers.py)",
                command="python " + " ".join(sys.argv))
    (tmp / "peer_quantization.json").write_text(json.dumps(info, indent=1, default=str))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(json.dumps({k: info[k] for k in ("bits_per_weight", "seconds", "package")}))


if __name__ == "__main__":
    main()
