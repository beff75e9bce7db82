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
  gptq  : faithful minimal reimplementation of GPTQ (Frantar et al. 2022, reference gptq.py
          `fasterquant`), no maintained package runs here on CPU (see PEERS.md). Sequential over
          decoder blocks, Hessians of all linears of a block from the block's inputs (inputs come from
          the already-quantized previous blocks), percdamp 0.01, blocksize 128, asymmetric min-max
          (range includes 0, as GPTQ's Quantizer), optional act_order / static_groups.
          Stored: codes, fp16 scale per group, b-bit zero per group (GPTQ's packed qzeros), and an
          int32 g_idx per input channel when act_order (without act_order g_idx = col // g is implied).
          Calibration: random windows of wiki.valid.tokens (WikiText-2 *validation*, word-level
          tokenized variant) detokenized (" @-@ " -> "-", " , " -> ", ", ...; <unk> left as the text
          "<unk>"), tokenized with the model's tokenizer. Never wiki.test.raw (the eval set).

CLI: python benchmarks/peers.py SRC DST --method hqq --bits 3 --group-size 64 [--json out.json]
     (--group-size -1 = per-channel). Python: quantize_folder(src, dst, method, bits, group_size, **opts).
The packages live in /work/main/.venv-peers (see PEERS.md); if this file is run from another venv
that lacks them, that venv's site-packages directory is appended to sys.path (torch etc. come first
from the running venv).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

PEER_VENV_SITE = Path(__file__).resolve().parents[1] / ".venv-peers" / "lib" / (
    f"python{sys.version_info.major}.{sys.version_info.minor}") / "site-packages"

QUANT_RE = re.compile(r"(^|\.)(q|k|v|o|gate|up|down)_proj\.weight$")
METHODS = ("hqq", "sinq", "nf4", "gptq")
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
class _GPTQQuantizer:
    """GPTQ's asymmetric min-max quantizer (range widened to include 0, as the reference does)."""

    def __init__(self, bits, sym=False):
        self.maxq = 2 ** bits - 1
        self.sym = sym

    def find_params(self, x):
        xmin = torch.minimum(x.min(1).values, torch.zeros(1))
        xmax = torch.maximum(x.max(1).values, torch.zeros(1))
        if self.sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = torch.where(xmin < 0, -xmax, xmin)
        both0 = (xmin == 0) & (xmax == 0)
        xmin[both0], xmax[both0] = -1, 1
        scale = (xmax - xmin) / self.maxq
        # scales are stored in fp16 (packed GPTQ format): quantize with the stored value
        self.scale = scale.half().float().unsqueeze(1)
        if self.sym:
            self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = torch.round(-xmin.unsqueeze(1) / self.scale).clamp(0, self.maxq)

    def quantize(self, x):
        q = torch.clamp(torch.round(x / self.scale) + self.zero, 0, self.maxq)
        return self.scale * (q - self.zero)


def gptq_fasterquant(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, *,
                     blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False,
                     static_groups: bool = False, sym: bool = False):
    """GPTQ (reference gptq.py fasterquant), returns (W_hat fp32, n_groups_per_row)."""
    W = W.clone().float()
    H = H.clone()
    rows, cols = W.shape
    quantizer = _GPTQQuantizer(bits, sym)
    if group_size in (-1, None, 0):
        group_size = -1
        quantizer.find_params(W)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    if static_groups and group_size != -1:
        for i in range(0, cols, group_size):
            g = _GPTQQuantizer(bits, sym)
            g.find_params(W[:, i:i + group_size])
            groups.append(g)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    H[torch.arange(cols), torch.arange(cols)] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if group_size != -1:
                if not static_groups:
                    if (i1 + i) % group_size == 0:
                        quantizer.find_params(W[:, (i1 + i):(i1 + i + group_size)])
                else:
                    idx = i1 + i
                    if act_order:
                        idx = perm[idx]
                    quantizer = groups[int(idx) // group_size]
            q = quantizer.quantize(w.unsqueeze(1)).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if act_order:
        Q = Q[:, invperm]
    ng = 1 if group_size == -1 else math.ceil(cols / group_size)
    return Q, ng


def gptq_stored(shape, bits, n_groups_per_row, act_order, static_groups=False):
    rows, cols = shape
    s = {"codes": code_bytes(rows * cols, bits),
         "scale": rows * n_groups_per_row * FP16,
         "zero": code_bytes(rows * n_groups_per_row, bits)}
    if act_order and not static_groups:
        s["g_idx"] = cols * 4  # int32 per input channel
    return s


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's word-level tokenization (the usual Megatron/lm-eval wikitext_detokenizer)."""
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = s.replace(" : ", ": ").replace(" ; ", "; ").replace(" . ", ". ").replace(" ! ", "! ")
    s = s.replace(" ? ", "? ").replace(" , ", ", ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176)).replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ").replace(" 's", "'s")
    return s


# ../shared/assets beside the repository (see docs/DESIGN.md section 4)
DEFAULT_CALIB = Path(__file__).resolve().parents[2] / "shared" / "assets" / "wikitext-2-v1" / "wiki.valid.tokens"


def calibration_windows(tokenizer, n: int, seqlen: int, seed: int = 0,
                        path: Path = DEFAULT_CALIB) -> torch.Tensor:
    if "test" in Path(path).name:
        raise ValueError("refusing to calibrate on a test split")
    text = detokenize_wikitext(Path(path).read_text(encoding="utf-8"))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen - 1, (n,), generator=g)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


def gptq_model(src_dir, bits, group_size, *, nsamples=128, seqlen=2048, seed=0,
               act_order=False, static_groups=False, percdamp=0.01, blocksize=128, sym=False,
               calib_path=DEFAULT_CALIB, progress=True, **_):
    """Sequential GPTQ over decoder blocks on CPU. Returns ({name: W_hat}, {name: stored}, info)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(src_dir)
    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32)
    model.eval()
    model.config.use_cache = False
    calib = calibration_windows(tok, nsamples, seqlen, seed, calib_path)
    layers = model.model.layers
    cache = {"inps": []}

    class Catcher(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, hs, *args, **kw):
            cache["inps"].append(hs.detach())
            raise ValueError("caught")

    layers[0] = Catcher(layers[0])
    with torch.no_grad():
        for j in range(nsamples):
            try:
                model(calib[j:j + 1])
            except ValueError:
                pass
    layers[0] = layers[0].m
    inps = cache["inps"]

    # Each layer's own call arguments (mask, rotary embeddings): layers of one model can differ (Gemma 3:
    # sliding-window layers get a local mask and rope theta 1e4, full-attention layers a causal mask and
    # rope theta 1e6), so layer 0's are not reused for the others. Every calibration window has the same
    # length, so one recording pass (calibration window 0, stopped at the last layer) serves all.
    calls = [None] * len(layers)

    class Recorder(torch.nn.Module):
        def __init__(self, m, i):
            super().__init__()
            self.m, self.i = m, i
            if hasattr(m, "attention_type"):  # read by some models' decoder loops
                self.attention_type = m.attention_type

        def forward(self, hs, *args, **kw):
            calls[self.i] = (args, kw)
            if self.i == len(layers) - 1:
                raise ValueError("caught")
            return self.m(hs, *args, **kw)

    for i in range(len(layers)):
        layers[i] = Recorder(layers[i], i)
    with torch.no_grad():
        try:
            model(calib[0:1])
        except ValueError:
            pass
    for i in range(len(layers)):
        layers[i] = layers[i].m

    def call_args(li):
        args, kw = calls[li]
        kw = dict(kw)
        kw.pop("past_key_values", None)
        kw.pop("past_key_value", None)
        kw["use_cache"] = False
        return args, kw

    def run_block(layer, x, li):
        args, kw = call_args(li)
        out = layer(x, *args, **kw)
        return out[0] if isinstance(out, (tuple, list)) else out

    prefix = "model.layers"
    results, stored = {}, {}
    it = range(len(layers))
    if progress:
        try:
            from tqdm import tqdm
            it = tqdm(it, desc=f"gptq b{bits} g{group_size}", file=sys.stderr)
        except ImportError:
            pass
    for li in it:
        layer = layers[li]
        lins = {n: m for n, m in layer.named_modules()
                if isinstance(m, torch.nn.Linear) and QUANT_RE.search(n + ".weight")}
        # linears fed by the same input share one Hessian (k,v with q; up with gate): same numbers as
        # separate accumulation, computed once
        share = {}
        for n in lins:
            for a, b in (("k_proj", "q_proj"), ("v_proj", "q_proj"), ("up_proj", "gate_proj")):
                if n.endswith(a) and n[: -len(a)] + b in lins:
                    share[n] = n[: -len(a)] + b
        owners = [n for n in lins if n not in share]
        Hs = {n: torch.zeros(lins[n].in_features, lins[n].in_features) for n in owners}
        cnt = {n: 0 for n in owners}

        def mk_hook(n):
            def hook(mod, inp, out):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
                b = inp[0].shape[0] if inp[0].dim() == 3 else 1
                Hs[n] *= cnt[n] / (cnt[n] + b)
                cnt[n] += b
                x = math.sqrt(2 / cnt[n]) * x
                Hs[n] += x.t() @ x
            return hook
        hs = [lins[n].register_forward_hook(mk_hook(n)) for n in owners]
        with torch.no_grad():
            for x in inps:
                run_block(layer, x, li)
        for h in hs:
            h.remove()
        for n, m in lins.items():
            Wq, ng = gptq_fasterquant(m.weight.data, Hs[share.get(n, n)], bits, group_size,
                                      blocksize=blocksize,
                                      percdamp=percdamp, act_order=act_order,
                                      static_groups=static_groups, sym=sym)
            m.weight.data = Wq.to(m.weight.dtype)
            name = f"{prefix}.{li}.{n}.weight"
            results[name] = Wq
            stored[name] = gptq_stored(tuple(Wq.shape), bits, ng, act_order, static_groups)
        del Hs
        with torch.no_grad():
            inps = [run_block(layer, x, li).detach() for x in inps]
    info = {"calibration": f"{Path(calib_path).name} (WikiText-2 validation, word-level tokenized "
                           f"variant, detokenized), {nsamples} random windows x {seqlen} tokens, "
                           f"seed {seed}, model tokenizer",
            "act_order": act_order, "static_groups": static_groups, "percdamp": percdamp,
            "blocksize": blocksize, "sym": sym}
    return results, stored, info


# ----------------------------------------------------------------------------------------- folders
def _copy_aux_files(src: Path, dst: Path):
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors"):
            shutil.copy2(p, dst / p.name)


def quantize_folder(src_dir, dst_dir, method: str, bits: int, group_size: int, *,
                    threads: int | None = 1, progress: bool = True, **opts) -> dict:
    """Fake-quantize every selected tensor of `src_dir` with a peer method into `dst_dir`.

    Returns dict(bits_per_weight, seconds, per_tensor, method, bits, group_size, split, package, ...).
    `seconds` is the quantization time (loading/writing excluded for tensor-wise methods; for GPTQ it
    includes the calibration forward passes, which are part of the method).
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

    per_tensor, extra = {}, {}
    qsec = 0.0
    gptq_res = gptq_st = None
    if method == "gptq":
        t0 = time.perf_counter()
        gptq_res, gptq_st, extra = gptq_model(src, bits, group_size, progress=progress, **opts)
        qsec = time.perf_counter() - t0
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
                if method == "gptq":
                    W_hat, st, info = gptq_res.pop(name), gptq_st[name], {}
                else:
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
    if gptq_res:
        raise RuntimeError(f"GPTQ quantized tensors not found in the checkpoint: {list(gptq_res)[:3]}")
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
                    "nf4": f"bitsandbytes {_pkg_version('bitsandbytes')}",
                    "gptq": "reimplementation (benchmarks/peers.py, GPTQ reference algorithm)"}[method],
        "bits_per_weight": 8 * total / n,
        "bits_split": {k: 8 * b / n for k, b in split.items()},
        "n_weights": n, "n_tensors": len(per_tensor),
        "seconds": qsec, "threads": torch.get_num_threads(),
        "per_tensor": per_tensor, **({"gptq": extra} if extra else {}),
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
    ap.add_argument("--nsamples", type=int, default=128, help="gptq calibration windows")
    ap.add_argument("--seqlen", type=int, default=2048, help="gptq calibration window length")
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--static-groups", action="store_true")
    a = ap.parse_args(argv)
    opts = {}
    if a.method == "nf4":
        opts["double_quant"] = not a.no_double_quant
    if a.method == "hqq" and a.meta_quant:
        opts["meta_quant"] = True
    if a.method == "sinq":
        opts["aux"] = a.sinq_aux
    if a.method == "gptq":
        opts.update(nsamples=a.nsamples, seqlen=a.seqlen, act_order=a.act_order,
                    static_groups=a.static_groups)
    r = quantize_folder(a.src, a.dst, a.method, a.bits, a.group_size, threads=a.threads, **opts)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1, default=str))
    s = {k: v for k, v in r.items() if k != "per_tensor"}
    print(json.dumps(s, indent=1, default=str))


if __name__ == "__main__":
    main()
