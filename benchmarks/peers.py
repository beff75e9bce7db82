#!/usr/bin/env python
"""Peer quantizers for adpq's quality comparison (issue 5): fake-quantized HF folders + honest bits/weight.

(One file over 600 lines on purpose: each peer's adapter is short and they share the bits/weight
accounting below; split per peer, the accounting would be repeated or scattered.)

For a Hugging Face causal-LM folder (config.json + *.safetensors) this writes a copy whose quantized
tensors hold quantize->dequantize'd weights in the input dtype (an ordinary HF folder that any loader
opens), and reports the bits per weight counted the way adpq counts them (docs/DESIGN.md 2.3):

    bits_per_weight = 8 * (bytes of every stored array) / (number of quantized weights)

with codes counted at exactly `bits` bits (ceil(n*bits/8) bytes per tensor, whatever packing the peer
uses in memory: HQQ/SINQ pack 3-bit as 10 codes per int32, that is 3.2 bits; we count 3.0, like adpq),
and every scale / zero-point / side array in the dtype the method stores it in. Scalars that are
configuration (shape, nbits, group size) are not counted, for adpq neither. See benchmarks/PEERS.md.

Quantized tensors (same default selection as adpq): 2-D `*.{q,k,v,o,gate,up,down}_proj.weight` of
the decoder. Embeddings, lm_head, norms, biases are copied unchanged.

Methods
  hqq   : PyPI `hqq` (HQQLinear, device='cpu'), BaseQuantizeConfig defaults (axis=1, optimize=True,
          round_zero for 4-bit, lp=0.7, beta=10, kappa=1.01, 20 iters with early stop).
          Stored: codes + fp16 scale + fp16 zero per group.
  sinq  : PyPI `sinq` (sinq.quantizer.Quantizer.quantize, device='cpu'), method "sinq" as its
          sinq_base_quant_config maps it (= "sinq_quantAux": per-group scale and zero stored as 8-bit
          codes with rtn8 side data), tiling_mode 1D, axis 1. Stored: codes, per-group uint8 scale
          codes + fp16 (min, step) per rtn8 column, per-group uint8 zero codes + one fp16 (min, step)
          per tensor, fp16 column scale (Sinkhorn mu1) per input channel. opts aux="fp16" gives plain
          "sinq" with fp16 per-group scale and zero.
  nf4   : PyPI `bitsandbytes` (CPU backend) quantize_4bit/dequantize_4bit, quant_type nf4, blocksize =
          group_size (64 is the HF default), double_quant True/False. Stored: every tensor of
          QuantState.as_dict(packed=True) (what transformers serializes) + the packed codes.
  GPTQ is not here: it runs through adpq's own solver (adpq.calibrate + adpq.quantize(w, hessian=H),
          docs/DESIGN.md 2.7; benchmarks/calibration.py), and benchmarks/gptq_speed.py keeps the torch
          reimplementation of the reference `fasterquant` that the C solver is timed against.

CLI: python benchmarks/peers.py SRC DST --method hqq --bits 3 --group-size 64 [--json out.json]
     (--group-size -1 = per-channel). Python: quantize_folder(src, dst, method, bits, group_size, **opts).
The packages live in /work/main/.venv-peers (see PEERS.md); if this file is run from another venv
that lacks them, that venv's site-packages directory is appended to sys.path (torch etc. come first
from the running venv).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import types
from pathlib import Path

import torch

PEER_VENV_SITE = Path(__file__).resolve().parents[1] / ".venv-peers" / "lib" / (
    f"python{sys.version_info.major}.{sys.version_info.minor}") / "site-packages"

QUANT_RE = re.compile(r"(^|\.)(q|k|v|o|gate|up|down)_proj\.weight$")
METHODS = ("hqq", "sinq", "nf4")
FP16 = 2
FP32 = 4


def _import_peer(modname: str):
    """Import a peer package; fall back to the .venv-peers site-packages (appended, never prepended)."""
    try:
        return __import__(modname, fromlist=["_"])
    except ImportError:
        if PEER_VENV_SITE.is_dir() and str(PEER_VENV_SITE) not in sys.path:
            sys.path.append(str(PEER_VENV_SITE))
        return __import__(modname, fromlist=["_"])


def _pkg_version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # noqa: BLE001
        try:
            _import_peer(dist)
            from importlib.metadata import version
            return version(dist)
        except Exception:  # noqa: BLE001
            return "unknown"


def is_quantized_name(name: str, tensor_shape) -> bool:
    return len(tensor_shape) == 2 and QUANT_RE.search(name) is not None


def code_bytes(n: int, bits: int) -> int:
    """Codes at exactly `bits` bits per weight (8 3-bit codes in 3 bytes), per tensor."""
    return (n * bits + 7) // 8


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# --------------------------------------------------------------------------------------------- HQQ
def quant_hqq(W: torch.Tensor, bits: int, group_size: int, *, meta_quant: bool = False,
              compute_dtype=torch.float16, **_):
    """HQQ via hqq.core.quantize.HQQLinear on CPU. Returns (W_hat, stored: {name: bytes})."""
    hq = _import_peer("hqq.core.quantize")
    gs = None if group_size in (-1, None, 0) else int(group_size)
    cfg = hq.BaseQuantizeConfig(nbits=bits, group_size=gs, quant_zero=meta_quant,
                                quant_scale=meta_quant, axis=1)
    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=compute_dtype)
    with torch.no_grad():
        lin.weight.copy_(W.to(compute_dtype))
    h = hq.HQQLinear(lin, cfg, compute_dtype=compute_dtype, device="cpu", del_orig=True)
    W_hat = h.dequantize().reshape(W.shape)
    m = h.meta
    stored = {"codes": code_bytes(W.numel(), bits)}
    if meta_quant:
        # scale: 8-bit codes, groups of 128, fp16 scale+zero per group; zero: 8-bit codes, one
        # fp16 scale+zero for the whole zero tensor (HQQ's deprecated quant_scale/quant_zero).
        stored["scale_codes"] = code_bytes(m["meta_scale"]["shape"].numel(), 8)
        stored["scale_meta"] = (m["meta_scale"]["scale"].numel() + m["meta_scale"]["zero"].numel()) * FP16
        stored["zero_codes"] = code_bytes(m["meta_zero"]["shape"].numel(), 8)
        stored["zero_meta"] = (m["meta_zero"]["scale"].numel() + m["meta_zero"]["zero"].numel()) * FP16
    else:
        assert m["scale"].dtype == compute_dtype and m["zero"].dtype == compute_dtype
        stored["scale"] = _nbytes(m["scale"])
        stored["zero"] = _nbytes(m["zero"])
    return W_hat, stored


# -------------------------------------------------------------------------------------------- SINQ
def _sinq_quantizer():
    if "datasets" not in sys.modules:
        try:
            import datasets  # noqa: F401
        except ImportError:  # sinq/awq.py imports it for A-SINQ calibration only; unused here
            stub = types.ModuleType("datasets")

            def _no(*a, **k):
                raise RuntimeError("datasets is not installed (only A-SINQ calibration needs it)")
            stub.load_dataset = _no
            sys.modules["datasets"] = stub
    return _import_peer("sinq.quantizer")


def quant_sinq(W: torch.Tensor, bits: int, group_size: int, *, aux: str = "8bit",
               tiling_mode: str = "1D", **_):
    """SINQ via sinq.quantizer.Quantizer on CPU (method 'sinq' == 'sinq_quantAux' by default)."""
    sq = _sinq_quantizer()
    Q = sq.Quantizer
    gs = W.shape[1] if group_size in (-1, None, 0) else int(group_size)
    method = "sinq_quantAux" if aux == "8bit" else "sinq"
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()) as so:
        W_q, meta = Q.quantize(W.float(), None, nbits=bits, group_size=gs,
                               round_zero=(bits == 4), axis=1, bitpack=True,
                               compute_dtype=torch.float16, device="cpu",
                               tiling_mode=tiling_mode, method=method)
    note = so.getvalue().strip()
    # On CUDA SINQ computes in fp16 and its side arrays are fp16; on CPU it computes in fp32. Store
    # (and count) them as fp16, as on its standard device: round them to fp16 before dequantizing.
    def h(x):
        return x.to(torch.float16).float() if torch.is_tensor(x) and x.is_floating_point() else x
    stored = {"codes": code_bytes(W.numel(), bits)}
    s2 = meta["scale2"]
    meta["scale2"] = h(s2)
    stored["col_scale(mu1)"] = s2.numel() * FP16
    if "quantAux" in method:
        xs, ss, ms, shp = meta["scale"]
        meta["scale"] = (xs, h(ss), h(ms), shp)
        stored["scale_codes"] = xs.numel()  # uint8
        stored["scale_rtn8_meta"] = (ss.numel() + ms.numel()) * FP16
        xz, sz, mz, shz = meta["zero"]
        meta["zero"] = (xz, h(sz), h(mz), shz)
        stored["zero_codes"] = xz.numel()
        stored["zero_rtn8_meta"] = (sz.numel() + mz.numel()) * FP16
        n_groups = xs.numel()
    else:
        meta["scale"], meta["zero"] = h(meta["scale"]), h(meta["zero"])
        stored["scale"] = meta["scale"].numel() * FP16
        stored["zero"] = meta["zero"].numel() * FP16
        n_groups = meta["scale"].numel()
    meta["compute_dtype"] = torch.float32
    W_hat = Q.dequantize(W_q, meta).reshape(W.shape)
    info = {"effective_group_size": W.numel() // n_groups}
    if note:
        info["note"] = note
    return W_hat, stored, info


# --------------------------------------------------------------------------------------------- NF4
def quant_nf4(W: torch.Tensor, bits: int, group_size: int, *, double_quant: bool = True, **_):
    if bits != 4:
        raise ValueError("bitsandbytes NF4 is 4-bit only")
    if group_size in (-1, None, 0):
        raise ValueError("bitsandbytes NF4 has no per-channel mode (blocksize 32..4096)")
    F = _import_peer("bitsandbytes.functional")
    bs = int(group_size)
    q, st = F.quantize_4bit(W.float().contiguous(), blocksize=bs, quant_type="nf4",
                            compress_statistics=double_quant)
    W_hat = F.dequantize_4bit(q, st).reshape(W.shape)
    stored = {"codes": _nbytes(q)}
    assert _nbytes(q) == code_bytes(W.numel(), 4)
    for k, v in st.as_dict(packed=True).items():
        if torch.is_tensor(v):
            stored[k] = _nbytes(v)
    return W_hat, stored


# -------------------------------------------------------------------------------------------- GPTQ
# ----------------------------------------------------------------------------------------- folders
def _copy_aux_files(src: Path, dst: Path):
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors"):
            shutil.copy2(p, dst / p.name)


def quantize_folder(src_dir, dst_dir, method: str, bits: int, group_size: int, *,
                    threads: int | None = 1, progress: bool = True, **opts) -> dict:
    """Fake-quantize every selected tensor of `src_dir` with a peer method into `dst_dir`.

    Returns dict(bits_per_weight, seconds, per_tensor, method, bits, group_size, split, package, ...).
    `seconds` is the quantization time (loading and writing excluded).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    if threads:
        torch.set_num_threads(int(threads))
    src, dst = Path(src_dir), Path(dst_dir)
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _copy_aux_files(src, tmp)
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors in {src}")

    per_tensor = {}
    qsec = 0.0
    fn = {"hqq": quant_hqq, "sinq": quant_sinq, "nf4": quant_nf4}.get(method)
    for shard in shards:
        out = {}
        with safe_open(str(shard), framework="pt") as f:
            meta = f.metadata() or {}
            for name in f.keys():
                t = f.get_tensor(name)
                if not is_quantized_name(name, t.shape):
                    out[name] = t
                    continue
                t0 = time.perf_counter()
                r = fn(t, bits, group_size, **opts)
                qsec += time.perf_counter() - t0
                W_hat, st = r[0], r[1]
                info = r[2] if len(r) > 2 else {}
                W_hat = W_hat.to(t.dtype).contiguous()
                assert W_hat.shape == t.shape and torch.isfinite(W_hat).all(), name
                nb = sum(st.values())
                err = (W_hat.float() - t.float())
                per_tensor[name] = {"shape": list(t.shape), "n": t.numel(), "bytes": st,
                                    "bits_per_weight": 8 * nb / t.numel(),
                                    "rel_fro_err": float(err.norm() / t.float().norm().clamp_min(1e-30)),
                                    **info}
                out[name] = W_hat
        meta.setdefault("format", "pt")
        save_file(out, str(tmp / shard.name), metadata=meta)
    if not per_tensor:
        raise RuntimeError("no tensor matched the quantization selection")
    n = sum(v["n"] for v in per_tensor.values())
    split = {}
    for v in per_tensor.values():
        for k, b in v["bytes"].items():
            split[k] = split.get(k, 0) + b
    total = sum(split.values())
    result = {
        "method": method, "bits": bits, "group_size": group_size, "opts": opts,
        "package": {"hqq": f"hqq {_pkg_version('hqq')}", "sinq": f"sinq {_pkg_version('sinq')}",
                    "nf4": f"bitsandbytes {_pkg_version('bitsandbytes')}"}[method],
        "bits_per_weight": 8 * total / n,
        "bits_split": {k: 8 * b / n for k, b in split.items()},
        "n_weights": n, "n_tensors": len(per_tensor),
        "seconds": qsec, "threads": torch.get_num_threads(),
        "per_tensor": per_tensor,
    }
    (tmp / "peer_quantization.json").write_text(json.dumps(
        {k: v for k, v in result.items() if k != "per_tensor"}, indent=1, default=str))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--group-size", type=int, default=64, help="-1 = per-channel")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the full result (with per-tensor rows) here")
    ap.add_argument("--no-double-quant", action="store_true", help="nf4: absmax in fp32")
    ap.add_argument("--meta-quant", action="store_true", help="hqq: 8-bit scale/zero (deprecated)")
    ap.add_argument("--sinq-aux", default="8bit", choices=["8bit", "fp16"])
    a = ap.parse_args(argv)
    opts = {}
    if a.method == "nf4":
        opts["double_quant"] = not a.no_double_quant
    if a.method == "hqq" and a.meta_quant:
        opts["meta_quant"] = True
    if a.method == "sinq":
        opts["aux"] = a.sinq_aux
    r = quantize_folder(a.src, a.dst, a.method, a.bits, a.group_size, threads=a.threads, **opts)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1, default=str))
    s = {k: v for k, v in r.items() if k != "per_tensor"}
    print(json.dumps(s, indent=1, default=str))


if __name__ == "__main__":
    main()
