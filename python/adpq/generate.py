"""Layer 5: text generation with a packed adpq model, timed (`adpq generate`).

    stats = adpq.generate.generate("smollm2-adpq", "The capital of France is", max_new_tokens=64)

Loads the folder with adpq.load (AdpqLinear modules, no dense copy), streams the new text as it is
decoded, and reports what a user of a runtime wants to know: load time, resident memory after load
and its peak during load, prefill and decode tokens per second (greedy decoding, so that runs are
comparable).
"""
from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import IO, List, Optional

from .hf.loading import load

__all__ = ["GenerationStats", "generate", "peak_rss_bytes", "reset_peak_rss", "rss_bytes"]


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_peak_rss() -> None:
    """Starts a new peak (Linux: clear_refs 5 resets VmHWM); silently nothing where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """The peak resident set size since the process started or since reset_peak_rss() (VmHWM: unlike
    getrusage's ru_maxrss, not inherited from the parent across fork and exec)."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class GenerationStats:
    text: str
    prompt_tokens: int
    new_tokens: int
    load_seconds: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    rss_before_load: int
    rss_after_load: int
    peak_rss_during_load: int
    threads: int
    token_times: List[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("token_times")
        return d

    def summary(self) -> str:
        mb = 1 / 2**20
        return (f"{self.new_tokens} tokens; prefill {self.prompt_tokens} tokens at {self.prefill_tokens_per_s:.1f} "
                f"tokens/s, decode {self.decode_tokens_per_s:.1f} tokens/s ({self.threads} threads); "
                f"load {self.load_seconds:.2f} s, resident {self.rss_after_load * mb:.0f} MiB, of which the model "
                f"{(self.rss_after_load - self.rss_before_load) * mb:.0f} MiB (its peak during load "
                f"{(self.peak_rss_during_load - self.rss_before_load) * mb:.0f} MiB)")


class _TimedStreamer:
    """A transformers streamer: prints the new text as it is decoded and records when each token came."""

    def __init__(self, tokenizer, out: Optional[IO[str]]):
        self.tok, self.out = tokenizer, out
        self.ids: List[int] = []
        self.times: List[float] = []
        self.printed = 0
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.ids.extend(int(v) for v in value.reshape(-1).tolist())
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if self.out is not None and not text.endswith("\ufffd"):  # wait for a whole character
            self.out.write(text[self.printed:])
            self.out.flush()
            self.printed = len(text)

    def end(self) -> None:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if self.out is not None:
            self.out.write(text[self.printed:] + "\n")
            self.out.flush()
        self.printed = len(text)


def generate(path, prompt: str, max_new_tokens: int = 64, threads: Optional[int] = None, dtype=None,
             activations: str = "float32", dequantize: bool = False, out: Optional[IO[str]] = sys.stdout,
             model=None, lm_head_bits: Optional[int] = None) -> GenerationStats:
    """Greedy generation from a model folder (adpq: packed; or an ordinary HF folder), streamed to
    `out` (None: silent). threads: torch's and the C kernel's thread count (default: torch's).
    lm_head_bits: quantize the output projection at load (adpq.load(lm_head=...))."""
    import torch
    from transformers import AutoTokenizer

    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path} does not exist")
    reset_peak_rss()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    if model is None:
        model = load(path, dtype=dtype, dequantize=dequantize, activations=activations, threads=threads,
                     lm_head=lm_head_bits)
    load_s = time.perf_counter() - t0
    rss1, peak = rss_bytes(), peak_rss_bytes()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tok(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty after tokenization")
    streamer = _TimedStreamer(tok, out)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                       streamer=streamer, pad_token_id=pad)
    streamer.end()
    times = streamer.times
    n = len(times)
    prefill = ids.shape[1] / (times[0] - start) if n else float("nan")
    decode = (n - 1) / (times[-1] - times[0]) if n > 1 else float("nan")
    return GenerationStats(tok.decode(streamer.ids, skip_special_tokens=True), int(ids.shape[1]), n, load_s,
                           prefill, decode, rss0, rss1, peak, torch.get_num_threads(),
                           [t - start for t in times])
