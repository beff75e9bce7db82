"""Layer 5, the perplexity harness (docs/DESIGN.md section 4): WikiText-2, GPTQ-style, so numbers compare with published tables.

Protocol, exactly (what :func:`perplexity` does):

1. **Text.** The rows of WikiText-2-raw-v1 *test* as Hugging Face ``datasets`` gives them, rebuilt from
   the canonical ``wiki.test.raw`` (4,358 lines): each line of the file is one row, **keeping its
   trailing "\\n"**; a blank line (the file's single-space line ``" "``) becomes the empty row ``""``.
   (That is what HF's ``wikitext`` builder yields: ``{"text": row}`` if ``row.strip()`` else
   ``{"text": ""}``; e.g. row 1 is ``" = Robert Boulter = \\n"``.) The rows are joined with
   ``"\\n\\n"``: ``text = "\\n\\n".join(rows)``, exactly GPTQ's ``"\\n\\n".join(testdata["text"])``.
2. **Tokens.** ``tokenizer(text, return_tensors="pt")`` once over the whole text with the model's own
   tokenizer and its default ``add_special_tokens=True``, as GPTQ / HF do: a tokenizer that adds a
   BOS (Llama-2, Gemma) puts one BOS at the very start of the stream only; GPT-2-style tokenizers
   (SmolLM2) add nothing. ``add_special_tokens=False`` is available and recorded in the result.
3. **Windows.** The token stream is cut into ``n = len(ids) // ctx`` non-overlapping windows of ``ctx``
   tokens; the incomplete tail is dropped. ``max_windows`` keeps only the first ``max_windows``.
   Each window is run on its own (no state carried across windows, batch size 1, no padding,
   ``use_cache=False``).
4. **Score.** In each window the logits at positions ``0..ctx-2`` predict tokens ``1..ctx-1``
   (``ctx - 1`` predicted tokens per window; the first token of each window is never predicted).
   Log-softmax is taken in float32, the negative log-likelihoods are summed in float64, and
   ``PPL = exp(sum NLL / (windows * (ctx - 1)))``. (GPTQ multiplies each window's mean loss by
   ``ctx`` rather than ``ctx - 1``; since every window has the same count the PPL is identical.)

Option ``bos_each_window=True`` (not the default, not GPTQ's protocol) replaces the first token of
every window with the tokenizer's BOS, as llama.cpp's ``llama-perplexity`` does; the predicted tokens
and their count are unchanged. Models trained to always see a BOS (Gemma) score far worse on windows
that start mid-text without one: on Gemma-3-270M (Q4_K_M-derived) windows 1-3 at ctx 512 gave PPL
85/97/58 as they are and 26/28/28 with a BOS in front. Report which setting a number used.

Defaults: ``ctx=2048`` (the GPTQ/AWQ-table figure); ``ctx=512`` is the second, llama.cpp-style
figure (note llama.cpp itself scores only the second half of each window, so its numbers differ).
Models given as a folder are run in float32 unless ``dtype`` is given (bf16 checkpoints are upcast
exactly). The result records ctx, windows, predicted tokens, dtype, device, tokenizer and text file.

The default text file is found, in order: the ``ADPQ_WIKITEXT`` environment variable; then
``shared/assets/wikitext-2-raw-v1/wiki.test.raw`` under any ancestor of the current directory or of
this package's directory. torch/transformers are imported only when a function runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .hf.loading import load, torch_dtype
from .io.folder import is_adpq_folder

__all__ = [
    "PerplexityResult",
    "perplexity",
    "default_text_file",
    "wikitext_rows",
    "wikitext_text",
    "tokenize_text",
]

WIKITEXT_REL = Path("shared") / "assets" / "wikitext-2-raw-v1" / "wiki.test.raw"
WIKITEXT_ENV = "ADPQ_WIKITEXT"


@dataclass
class PerplexityResult:
    ppl: float
    nll_mean: float  # mean NLL (nats) over every predicted token
    tokens: int  # predicted tokens = windows * (ctx - 1)
    windows: int
    ctx: int
    seconds: float
    dtype: str
    device: str
    tokenizer: str
    text_file: str
    text_tokens: int = 0  # tokens in the whole tokenized text (before windowing)
    windows_available: int = 0  # len(ids) // ctx, before max_windows
    add_special_tokens: bool = True
    bos_each_window: bool = False
    model: str = ""
    protocol: str = "wikitext2-gptq: hf rows joined by \\n\\n, one tokenization, non-overlapping ctx windows"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:  # one line, for logs and the CLI
        full = "" if self.windows == self.windows_available else f" of {self.windows_available}"
        return (f"PPL {self.ppl:.4f} (ctx {self.ctx}, {self.windows}{full} windows, {self.tokens} predicted "
                f"tokens, {self.dtype} on {self.device}, {self.seconds:.1f}s)")


# --------------------------------------------------------------------------------------------
# Text


def default_text_file() -> Path:
    """Locate wiki.test.raw (see module docstring); FileNotFoundError with a clear message if absent."""
    env = os.environ.get(WIKITEXT_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{WIKITEXT_ENV}={env} does not name a file")
        return p
    tried = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for anc in (start, *start.parents):
            cand = anc / WIKITEXT_REL
            if cand.is_file():
                return cand
            tried.append(str(anc))
    raise FileNotFoundError(
        "WikiText-2 test file not found: set ADPQ_WIKITEXT=/path/to/wikitext-2-raw-v1/wiki.test.raw "
        f"or pass text_file=...; looked for {WIKITEXT_REL} under the ancestors of the current "
        "directory and of the adpq package"
    )


def wikitext_rows(path) -> list[str]:
    """The rows HF ``datasets`` gives for this raw file: each line keeps its "\\n"; blank lines -> ""."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:  # keep line endings as they are
        for line in f:
            rows.append(line if line.strip() else "")
    return rows


def wikitext_text(path) -> str:
    return "\n\n".join(wikitext_rows(path))


def _load_tokenizer(tokenizer):
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)  # (never the network)
    return tokenizer


def tokenize_text(tokenizer, text: str, add_special_tokens: bool = True):
    """One tokenization of the whole text -> 1-D LongTensor (the GPTQ/HF call)."""
    import logging

    # transformers warns that the sequence is longer than the model's maximum: expected here.
    log = logging.getLogger("transformers.tokenization_utils_base")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens)
    finally:
        log.setLevel(old)
    return enc["input_ids"][0]


def _tokenizer_name(tok) -> str:
    name = getattr(tok, "name_or_path", "") or ""
    return f"{type(tok).__name__}({name}, vocab={len(tok)})"


# --------------------------------------------------------------------------------------------
# Model


def _check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")


def _load_model(path: Path, device: str, dtype, loader: Optional[Callable], dequantize: bool = False,
                lm_head_bits: Optional[int] = None):
    _check_model_folder(path)
    if loader is not None:
        model = loader(str(path))
    elif is_adpq_folder(str(path)):
        model = load(str(path), device=device, dtype=dtype, dequantize=dequantize, lm_head=lm_head_bits)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    model = model.to(device=device, dtype=dtype)
    return model


# --------------------------------------------------------------------------------------------


def perplexity(
    model_or_dir: Any,
    text_file=None,
    ctx: int = 2048,
    max_windows: Optional[int] = None,
    device: str = "cpu",
    dtype=None,
    progress: bool = True,
    tokenizer=None,
    add_special_tokens: bool = True,
    loader: Optional[Callable[[str], Any]] = None,
    bos_each_window: bool = False,
    dequantize: bool = False,
    lm_head_bits: Optional[int] = None,
    plain_text: bool = False,
) -> PerplexityResult:
    """WikiText-2 perplexity by the protocol in this module's docstring.

    Args:
        model_or_dir: a model folder (an HF folder, or an adpq-format folder -- then ``adpq.load`` is
            used -- or anything ``loader`` opens), or an already-loaded causal-LM ``torch.nn.Module``
            whose forward takes ``input_ids`` and returns ``.logits`` (or a logits tensor).
        text_file: the raw text; default: :func:`default_text_file` (WikiText-2 raw test).
        ctx: window length in tokens (each window predicts ``ctx - 1`` tokens).
        max_windows: evaluate only the first ``max_windows`` windows (``None``: all).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: compute dtype. ``None``: float32 for a folder; a loaded model is left as it is.
        progress: a tqdm bar (if tqdm is installed).
        tokenizer: tokenizer object or folder; default: the model folder, or the loaded model's
            ``name_or_path``.
        add_special_tokens: passed to the single tokenizer call (GPTQ/HF default: True).
        loader: optional ``loader(path) -> model`` hook used instead of transformers / adpq.load.
        bos_each_window: replace each window's first token with BOS (llama.cpp-style; default off).
        dequantize: an adpq folder is loaded dequantized (the fake-quant model) instead of packed
            (AdpqLinear modules running the C kernel).
        lm_head_bits: an adpq folder's output projection quantized at load to this many bits
            (adpq.load(lm_head=...)), to measure what it costs.
        plain_text: tokenize the file as it is (UTF-8) instead of as WikiText rows joined by blank
            lines (for another text than WikiText: source code, a document).
    """
    import torch

    if not isinstance(ctx, int) or ctx < 2:
        raise ValueError(f"ctx must be an integer >= 2, got {ctx!r}")
    if max_windows is not None and (not isinstance(max_windows, int) or max_windows < 1):
        raise ValueError(f"max_windows must be a positive integer or None, got {max_windows!r}")
    tdtype = torch_dtype(dtype)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")

    text_path = Path(text_file) if text_file is not None else default_text_file()
    if not text_path.is_file():
        raise FileNotFoundError(f"text file {text_path} not found")

    # ---- model and tokenizer
    if isinstance(model_or_dir, (str, os.PathLike)):
        path = Path(model_or_dir).expanduser()
        model_name = str(path)
        _check_model_folder(path)  # (before the tokenizer: a missing folder fails at once)
        tok = _load_tokenizer(tokenizer if tokenizer is not None else path)
        model = _load_model(path, device=str(dev), dtype=tdtype or torch.float32, loader=loader,
                             dequantize=dequantize, lm_head_bits=lm_head_bits)
    elif isinstance(model_or_dir, torch.nn.Module):
        model = model_or_dir
        model_name = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None),
                                                                   "_name_or_path", "") or type(model).__name__
        if tokenizer is None:
            src = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None),
                                                                  "_name_or_path", None)
            if not src or not Path(str(src)).exists():
                raise ValueError("a loaded model needs tokenizer=...: its name_or_path is not a local folder")
            tokenizer = src
        tok = _load_tokenizer(tokenizer)
        model = model.to(device=dev) if tdtype is None else model.to(device=dev, dtype=tdtype)
    else:
        raise TypeError(f"model_or_dir must be a folder path or a torch.nn.Module, not {type(model_or_dir)}")
    model.eval()
    try:
        used_dtype = next(model.parameters()).dtype
    except StopIteration:
        used_dtype = tdtype or torch.float32

    # ---- tokens and windows
    text = text_path.read_text(encoding="utf-8") if plain_text else wikitext_text(text_path)
    ids = tokenize_text(tok, text, add_special_tokens=add_special_tokens)
    n_avail = ids.numel() // ctx
    if n_avail == 0:
        raise ValueError(f"ctx={ctx} is larger than the text: {text_path} has only {ids.numel()} tokens")
    n_win = n_avail if max_windows is None else min(max_windows, n_avail)
    bos_id = None
    if bos_each_window:
        bos_id = getattr(tok, "bos_token_id", None)
        if bos_id is None:
            raise ValueError("bos_each_window=True but the tokenizer has no BOS token")
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(max_pos, int) and ctx > max_pos:
        import warnings

        warnings.warn(f"ctx={ctx} exceeds the model's max_position_embeddings={max_pos}")

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_win, desc=f"ppl ctx={ctx}", unit="win")
        except ImportError:
            bar = None

    nll_sum = 0.0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for w in range(n_win):
            x = ids[w * ctx:(w + 1) * ctx].unsqueeze(0).to(dev)
            if bos_id is not None:
                x = x.clone()
                x[0, 0] = bos_id
            try:
                out = model(input_ids=x, use_cache=False)
            except TypeError:  # a plain module without use_cache
                out = model(input_ids=x)
            logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
            logits = logits[0, :-1, :].float()
            target = x[0, 1:]
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            nll_sum += float(nll.double().item())
            del out, logits
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ppl=f"{math.exp(nll_sum / ((w + 1) * (ctx - 1))):.3f}")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()

    n_tok = n_win * (ctx - 1)
    nll_mean = nll_sum / n_tok
    return PerplexityResult(
        ppl=math.exp(nll_mean),
        nll_mean=nll_mean,
        tokens=n_tok,
        windows=n_win,
        ctx=ctx,
        seconds=seconds,
        dtype=str(used_dtype).replace("torch.", ""),
        device=str(dev),
        tokenizer=_tokenizer_name(tok),
        text_file=str(text_path),
        text_tokens=int(ids.numel()),
        windows_available=n_avail,
        add_special_tokens=add_special_tokens,
        bos_each_window=bos_each_window,
        model=model_name,
        **({"protocol": "plain text: the file as it is, one tokenization, non-overlapping ctx windows"}
           if plain_text else {}),
    )


def main(argv=None) -> int:
    """``python -m adpq.eval DIR [--ctx N] [--max-windows N] [--device D] [--dtype T] [--json]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m adpq.eval", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--text-file", default=None)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--bos-each-window", action="store_true", help="llama.cpp-style BOS at each window start")
    ap.add_argument("--dequantize", action="store_true", help="adpq folder: load it dequantized, not packed")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    r = perplexity(a.model_dir, text_file=a.text_file, ctx=a.ctx, max_windows=a.max_windows,
                   device=a.device, dtype=a.dtype, progress=not a.no_progress,
                   bos_each_window=a.bos_each_window, dequantize=a.dequantize)
    print(r.to_json(indent=2) if a.json else str(r))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
