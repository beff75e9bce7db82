"""Calibration for checkpoints: the Hessians GPTQ refines AdpQ with, collected layer by layer.

    cal = adpq.calibrate("model_dir", "calib.txt", samples=128, seqlen=2048)
    adpq.quantize_checkpoint("model_dir", "out_dir", calibration=cal)

`calibrate` runs the model on `samples` random windows of `seqlen` tokens of the text, one decoder
layer at a time, as GPTQ does (docs/DESIGN.md 2.7): the inputs of layer l are the outputs of layers
0..l-1 *already quantized*, so each layer's Hessians see the errors before it. Per layer: one pass
with hooks on its linear layers accumulates H = mean over tokens of x x^T per distinct input (q/k/v
share one, gate/up share one), the layer's matrices are quantized with adpq.quantize(w, config,
hessian=H, gptq=...), and a second pass with the quantized weights gives the next layer's inputs.
Memory: the model in float32, one layer's activations for every window (samples x seqlen x hidden
float32) and the Hessians kept for the checkpoint pipeline (in_features^2 float32 per distinct input).
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..core.config import CafeqConfig, GptqConfig, QuantConfig, check_int, check_threads
from ..core.quantize import quantize
from ..io.cafeq_pairs import PairSpec, attention_heads, find_pairs, model_type_of
from ..io.checkpoint import select_tensors
from ..io.folder import CheckpointError, SourceCheckpoint, is_adpq_folder
from ..io.progress import Progress
from ..transforms import apply_transform, learn_transform

# ../shared/assets/wikitext-2-v1/wiki.valid.tokens under an ancestor of the cwd or of this package
WIKITEXT_VALID_REL = Path("shared") / "assets" / "wikitext-2-v1" / "wiki.valid.tokens"
MAX_SAMPLES = 1 << 16
MAX_SEQLEN = 1 << 20


def default_calibration_file() -> Path:
    """WikiText-2 *validation* (word-level tokens; detokenized when read): ADPQ_CALIBRATION, then
    shared/assets/wikitext-2-v1/wiki.valid.tokens under an ancestor of the cwd or of the package."""
    env = os.environ.get("ADPQ_CALIBRATION")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve()):
        for d in (base, *base.parents):
            p = d / WIKITEXT_VALID_REL
            if p.is_file():
                return p
    raise FileNotFoundError(f"WikiText-2 validation not found: set ADPQ_CALIBRATION=/path/to/wiki.valid.tokens "
                            f"or pass a text file; looked for {WIKITEXT_VALID_REL} under the ancestors of the "
                            "current directory and of the adpq package")


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's word-level tokenization (the usual Megatron / lm-eval wikitext detokenizer)."""
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


def read_calibration_text(path: Any) -> Tuple[str, Dict[str, Any]]:
    """(the text, its description for quantization_config). WikiText's word-level files
    (wiki.*.tokens) are detokenized; the WikiText test split is refused (it is what we evaluate on)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the calibration text must be a path to a text file, got {type(path).__name__}")
    p = Path(path)
    if re.fullmatch(r"wiki\.test\.(raw|tokens)", p.name):
        raise ValueError(f"refusing to calibrate on {p.name}: it is the WikiText-2 test split, the evaluation text")
    if not p.is_file():
        raise FileNotFoundError(f"calibration text {str(p)!r} is not a file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"calibration text {p.name!r} is not UTF-8 ({e})") from None
    wikitext = re.fullmatch(r"wiki\.\w+\.tokens", p.name) is not None
    if wikitext:
        text = detokenize_wikitext(text)
    desc = {"file": p.name, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw),
            "detokenized": wikitext}
    return text, desc


@dataclass
class Calibration:
    """What calibrate collected: per checkpoint tensor name, the Hessian (float32, in x in, the mean
    of x x^T over the calibration tokens) its layer's inputs gave; tensors of one input share one array.
    `config` and `gptq` are those the layers before were quantized with: quantize_checkpoint must use
    the same config. `info` is recorded in the output's quantization_config."""

    hessians: Dict[str, np.ndarray]
    config: QuantConfig
    gptq: GptqConfig
    info: Dict[str, Any] = field(default_factory=dict)
    cafeq: Optional[CafeqConfig] = None   # the CafeQ transforms were folded in before the Hessians

    def fingerprint(self) -> str:
        """What the output depends on (text, windows, options), for resuming a run."""
        keep = {k: v for k, v in self.info.items() if k not in ("seconds_forward", "seconds_solve", "threads")}
        return hashlib.sha256(repr(sorted(keep.items())).encode()).hexdigest()[:16]


def _windows(tok, text: str, samples: int, seqlen: int, seed: int):
    import torch

    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    bos = getattr(tok, "bos_token_id", None)
    adds_bos = bos is not None and tok("a", add_special_tokens=True).input_ids[:1] == [bos]
    body = seqlen - 1 if adds_bos else seqlen  # a model whose tokenizer starts text with BOS sees one
    if ids.numel() < body + 1:
        raise ValueError(f"the calibration text has {ids.numel()} tokens, fewer than seqlen={seqlen}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.numel() - body + 1, size=samples)
    rows = [ids[s:s + body] for s in starts.tolist()]
    if adds_bos:
        rows = [torch.cat([torch.tensor([bos], dtype=ids.dtype), r]) for r in rows]
    return torch.stack(rows), int(ids.numel()), adds_bos


def _decoder_layers(model):
    import torch

    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    text_cfg = getattr(model.config, "text_config", None) if n is None else None
    if text_cfg is not None:
        n = getattr(text_cfg, "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and n is not None and len(mod) == n:
            return name, mod
    raise ValueError("cannot find the model's decoder layers (a ModuleList of num_hidden_layers blocks)")


class _Stop(Exception):
    pass


def _record_calls(model, layers, windows) -> Tuple[List[Any], List[Tuple[tuple, dict]]]:
    """(the first layer's input of every window, each layer's call arguments). Layers of one model
    can be called differently (Gemma 3: sliding-window and global layers get different masks and
    rotary tables), so each layer's own arguments are recorded, from window 0 (every window has the
    same length)."""
    import torch

    inputs: List[Any] = []
    calls: List[Any] = [None] * len(layers)

    def pre(i):
        def hook(mod, args, kwargs):
            if i == 0:
                inputs.append(args[0].detach() if args else kwargs["hidden_states"].detach())
            if calls[i] is None:
                a = args[1:] if args else ()
                kw = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values", "past_key_value")}
                kw["use_cache"] = False
                calls[i] = (a, kw)
            if i == len(layers) - 1 or calls[-1] is not None:
                raise _Stop
        return hook

    hooks = [m.register_forward_pre_hook(pre(i), with_kwargs=True) for i, m in enumerate(layers)]
    try:
        with torch.no_grad():
            for j in range(windows.shape[0]):
                try:
                    model(windows[j:j + 1], use_cache=False)
                except _Stop:
                    pass
    finally:
        for h in hooks:
            h.remove()
    return inputs, calls


def _run_layer(layer, x, call):
    args, kw = call
    out = layer(x, *args, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out


def calibrate(model_dir: Any, text: Any = None, samples: int = 128, seqlen: int = 2048,
              config: Optional[QuantConfig] = None, gptq: Optional[GptqConfig] = None, include=None,
              exclude=None, seed: int = 0, threads: Optional[int] = None, progress: bool = True,
              cafeq: Optional[CafeqConfig] = None) -> Calibration:
    """Collect the Hessians of a Hugging Face checkpoint's linear layers, sequentially (module docstring).

    model_dir: a float checkpoint folder (not an adpq one). text: a UTF-8 text file (None: WikiText-2
    validation, default_calibration_file()). samples windows of seqlen tokens start at random
    positions (seeded; they may overlap on a short text); a model whose tokenizer starts a text with
    BOS gets BOS + seqlen - 1 tokens per window. config/gptq: how every layer is quantized (the
    defaults: QuantConfig(), GptqConfig()); include/exclude: quantize_checkpoint's tensor selection.
    threads: torch's and the quantizer's threads (None: as they are).
    cafeq: a CafeqConfig (True: the default one): each layer's (v_proj, o_proj) is transformed as
    CafeQ transforms it (adpq.transforms.learn_transform) before its Hessians are collected, so
    o_proj's Hessian is that of the transformed inputs; quantize_checkpoint then folds in the same
    transform and rounds each member by GPTQ (docs/DESIGN.md 2.8).
    """
    samples = check_int(samples, "samples", 1, MAX_SAMPLES)
    seqlen = check_int(seqlen, "seqlen", 2, MAX_SEQLEN)
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    threads = check_threads(threads)
    cfg = config if config is not None else QuantConfig()
    g = gptq if gptq is not None else GptqConfig()
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(cfg).__name__}")
    if not isinstance(g, GptqConfig):
        raise TypeError(f"gptq must be a GptqConfig, got {type(g).__name__}")
    if is_adpq_folder(os.fspath(model_dir)):
        raise CheckpointError(f"{os.fspath(model_dir)!r} is already quantized: calibrate a float checkpoint")
    src = SourceCheckpoint(os.fspath(model_dir))
    selected = set(select_tensors(list(src.tensors.values()), include, exclude))
    caf = CafeqConfig() if cafeq is True else cafeq
    pairs: Dict[str, PairSpec] = {}
    if caf is not None:
        if not isinstance(caf, CafeqConfig):
            raise TypeError(f"cafeq must be a CafeqConfig (or True), got {type(cafeq).__name__}")
        heads = attention_heads(src.config)
        infos = list(src.tensors.values())
        pairs = {p.prefix: p for p in find_pairs([i.name for i in infos], selected, heads,
                                                  {i.name: tuple(i.shape) for i in infos}, model_type_of(src.config))}
    text_str, text_desc = read_calibration_text(text if text is not None else default_calibration_file())

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads is not None:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(src.path, local_files_only=True)
    windows, text_tokens, with_bos = _windows(tok, text_str, samples, seqlen, seed)
    model = AutoModelForCausalLM.from_pretrained(src.path, dtype=torch.float32, local_files_only=True)
    model.eval()
    prefix, layers = _decoder_layers(model)
    t0 = time.perf_counter()
    inputs, calls = _record_calls(model, layers, windows)
    t_forward = time.perf_counter() - t0
    t_solve = 0.0
    hessians: Dict[str, np.ndarray] = {}
    run_cfg = cfg if threads is None else cfg.replace(threads=threads)
    bar = Progress(len(layers), progress, "calibrating")
    try:
        for li, layer in enumerate(layers):
            lins = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)
                    and f"{prefix}.{li}.{n}.weight" in selected}
            ts = time.perf_counter()
            for p in (p for pre, p in pairs.items() if pre.startswith(f"{prefix}.{li}.")):
                scales = (p.input_scale(src.get), p.output_scale(src.get)) if caf.norm_weights else (None, None)
                _fold_transform(layer, f"{prefix}.{li}.", p, heads, run_cfg, caf, *scales)
            t_solve += time.perf_counter() - ts
            ts = time.perf_counter()
            sums, tokens, owner = _collect(layer, lins, inputs, calls[li])
            t_forward += time.perf_counter() - ts
            ts = time.perf_counter()
            shared: Dict[str, np.ndarray] = {}
            for n, m in lins.items():
                o = owner[n]
                if o not in shared:
                    shared[o] = (sums[o] / tokens[o]).to(torch.float32).numpy()
                h = shared[o]
                qt = quantize(m.weight.detach(), config=run_cfg, hessian=h, gptq=g)
                m.weight.data = torch.from_numpy(qt.dequantize()).reshape(m.weight.shape)
                hessians[f"{prefix}.{li}.{n}.weight"] = h
            t_solve += time.perf_counter() - ts
            ts = time.perf_counter()
            with torch.no_grad():
                inputs = [_run_layer(layer, x, calls[li]).detach() for x in inputs]
            t_forward += time.perf_counter() - ts
            bar.update(1, f"layer {li}")
    finally:
        bar.close()
    info = {"text": text_desc, "text_tokens": text_tokens, "samples": samples, "seqlen": seqlen,
            "tokens": samples * seqlen, "seed": seed, "bos": with_bos, "sequential": True,
            "gptq": g.to_dict(), "tensors": len(hessians), "cafeq": caf.to_dict() if caf is not None else None,
            "seconds_forward": round(t_forward, 3), "seconds_solve": round(t_solve, 3)}
    return Calibration(hessians, cfg, g, info, caf)


def _fold_transform(layer, layer_prefix: str, p: PairSpec, heads, cfg: QuantConfig, caf: CafeqConfig,
                    input_scale, output_scale) -> None:
    """The pair's CafeQ transform folded into the layer's float weights (and v_proj's bias), as
    quantize_checkpoint will fold it (the same weights, key and options give the same M)."""
    import torch

    def module(name):
        return layer.get_submodule(name[len(layer_prefix):-len(".weight")])

    v, o = module(p.v), module(p.o)
    wv, wo = v.weight.detach().double().numpy(), o.weight.detach().double().numpy()
    m, _ = learn_transform(wv, wo, heads, cfg, caf, p.key, cfg.threads, input_scale, output_scale)
    bias = v.bias.detach().double().numpy() if v.bias is not None else None
    wv_t, wo_t, b_t = apply_transform(m, wv, wo, heads, bias)
    v.weight.data = torch.from_numpy(wv_t.astype(np.float32))
    o.weight.data = torch.from_numpy(wo_t.astype(np.float32))
    if b_t is not None:
        v.bias.data = torch.from_numpy(b_t.astype(np.float32))


def _collect(layer, lins, inputs, call):
    """Run the layer on every window with hooks: (sum of x^T x per owner, tokens per owner, the
    owner of each linear). Linears reading the same input tensor share its owner's sum."""
    import torch

    sums: Dict[str, Any] = {}
    tokens: Dict[str, int] = {}
    owner: Dict[str, str] = {}
    seen: List[Tuple[Any, str]] = []  # this window: (input tensor, the linear that summed it); held, so alive

    def hook(name):
        def f(mod, inp, out):
            x = inp[0]  # (the object itself: linears fed the same tensor share a Hessian)
            if name not in owner:
                owner[name] = next((n for t, n in seen if t is x), name)
            if owner[name] != name:
                return
            seen.append((x, name))
            x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
            if name not in sums:
                sums[name] = torch.zeros(x2.shape[1], x2.shape[1], dtype=torch.float64)
                tokens[name] = 0
            sums[name] += (x2.T @ x2).to(torch.float64)  # (float32 per window, float64 across windows)
            tokens[name] += x2.shape[0]
        return f

    hooks = [m.register_forward_hook(hook(n)) for n, m in lins.items()]
    try:
        with torch.no_grad():
            for x in inputs:
                seen.clear()
                _run_layer(layer, x, call)
    finally:
        for h in hooks:
            h.remove()
    return sums, tokens, owner


__all__ = ["Calibration", "calibrate", "default_calibration_file", "detokenize_wikitext", "read_calibration_text"]
