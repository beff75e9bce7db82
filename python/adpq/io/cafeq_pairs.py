"""The (v_proj, o_proj) pairs of a checkpoint as units of work for CafeQ (docs/DESIGN.md 2.8).

quantize_checkpoint quantizes and writes tensors one at a time in the folder's order; a pair is
computed once, by whichever of its tensors comes first, and each member (and v_proj's bias, which
the transform changes too) takes its part when its turn comes. A pair's result is dropped once all
its parts are taken: memory holds the pairs whose members are in flight, not the model.
"""
from __future__ import annotations

import dataclasses
import re
import threading
from typing import Dict, Iterable, List, Optional

import numpy as np

from ..core.config import CafeqConfig, QuantConfig
from ..transforms import Heads, PairResult, cafeq_pair
from .folder import CheckpointError

_V = re.compile(r"^(?P<prefix>.+)\.v_proj\.weight$")


def attention_heads(config: Optional[dict]) -> Heads:
    """Heads from a transformers config.json (text_config for multimodal ones)."""
    if not isinstance(config, dict):
        raise CheckpointError("--cafeq needs the folder's config.json (attention heads)")
    c = config if "num_attention_heads" in config else config.get("text_config")
    if not isinstance(c, dict) or "num_attention_heads" not in c:
        raise CheckpointError("--cafeq: config.json has no num_attention_heads (not an attention model "
                              "transformers describes)")
    n = c.get("num_attention_heads")
    kv = c.get("num_key_value_heads") or n
    hd = c.get("head_dim")
    try:
        if hd is None:
            hd = c["hidden_size"] // n
        return Heads(n, kv, hd)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"--cafeq: config.json's attention geometry (num_attention_heads={n!r}, "
                              f"num_key_value_heads={kv!r}, head_dim={hd!r}) is not usable: {e}") from None


def model_type_of(config: Optional[dict]) -> str:
    """config.json's model_type (its text_config's for multimodal ones)."""
    if not isinstance(config, dict):
        return ""
    t = config.get("text_config")
    return str((t if isinstance(t, dict) and "model_type" in t else config).get("model_type", ""))


@dataclasses.dataclass
class PairSpec:
    prefix: str              # e.g. "model.layers.3.self_attn"
    v: str
    o: str
    bias: Optional[str]      # v_proj.bias, if the folder has one
    key: int                 # seeds M's random start (the layer index)
    norm: Optional[str] = None   # the RMSNorm weight in front of the attention, if found
    norm_offset: float = 0.0     # a norm's scale is |offset + weight| (Gemma's norms scale by 1 + weight)
    out_norm: Optional[str] = None  # a norm applied to the attention's output (Gemma 2/3), if any

    def _scale(self, name: Optional[str], read) -> Optional[np.ndarray]:
        return None if name is None else np.abs(np.asarray(read(name), dtype=np.float64) + self.norm_offset)

    def input_scale(self, read) -> Optional[np.ndarray]:
        """The per-channel scale of v_proj's inputs the norm applies (None without a norm)."""
        return self._scale(self.norm, read)

    def output_scale(self, read) -> Optional[np.ndarray]:
        """The per-channel scale the norm after o_proj applies to its outputs (None without one)."""
        return self._scale(self.out_norm, read)

    @property
    def members(self) -> List[str]:
        return [n for n in (self.v, self.o, self.bias) if n is not None]


def find_pairs(names: Iterable[str], selected: Iterable[str], heads: Heads, shapes: Dict[str, tuple],
               model_type: str = "") -> List[PairSpec]:
    """Every attention layer's (v_proj, o_proj); CheckpointError where CafeQ cannot be applied.
    The norm before the attention is the layer's input_layernorm (Llama, Qwen, Gemma, ...) when it
    is a vector of the inputs' size; a norm after it, post_attention_layernorm where the layer also
    has a pre_feedforward_layernorm (Gemma 2/3's sandwich; in Llama that name is the MLP's input norm)."""
    names, selected = list(names), set(selected)
    present = set(names)
    pairs = []
    for name in names:
        m = _V.match(name)
        if m is None:
            continue
        p = m.group("prefix")
        o = f"{p}.o_proj.weight"
        if name not in selected and o not in selected:
            continue  # (not quantized at all: e.g. an excluded vision tower)
        if o not in present:
            raise CheckpointError(f"--cafeq: {name} has no {o} beside it (fused or unusual attention)")
        if any(n.startswith(f"{p}.v_norm") or n.startswith(f"{p}.v_layernorm") for n in present):
            raise CheckpointError(f"--cafeq: {p} normalizes its values (v_norm): the V/O transform would "
                                  "change the model")
        missing = [n for n in (name, o) if n not in selected]
        if missing:
            raise CheckpointError(f"--cafeq quantizes v_proj and o_proj together: {missing[0]} is not selected "
                                  "(check --include/--exclude)")
        try:
            heads.check(shapes[name], shapes[o])
        except ValueError as e:
            raise CheckpointError(f"--cafeq: {p}: {e} (from config.json's attention heads)") from None
        digits = re.findall(r"\.(\d+)\.", f".{p}.")
        bias = f"{p}.v_proj.bias" if f"{p}.v_proj.bias" in present else None
        layer = p.rsplit(".", 1)[0] if "." in p else ""
        norm, out_norm = f"{layer}.input_layernorm.weight", f"{layer}.post_attention_layernorm.weight"
        if norm not in present or shapes.get(norm) != (shapes[name][1],):
            norm = None
        if (f"{layer}.pre_feedforward_layernorm.weight" not in present or out_norm not in present
                or shapes.get(out_norm) != (shapes[o][0],)):
            out_norm = None
        pairs.append(PairSpec(p, name, o, bias, int(digits[-1]) if digits else len(pairs), norm,
                              1.0 if str(model_type).startswith("gemma") else 0.0, out_norm))
    if not pairs:
        raise CheckpointError("--cafeq: no (v_proj, o_proj) pair in the checkpoint")
    return pairs


class PairWork:
    """Computes each pair once (thread-safe) and hands out its parts; a pair is freed when all its
    remaining parts are taken."""

    def __init__(self, pairs: List[PairSpec], todo: Iterable[str], read, heads: Heads, config: QuantConfig,
                 cafeq: CafeqConfig, threads: Optional[int], calibration=None):
        todo = set(todo)
        self.calibration = calibration
        self._read, self.heads, self.config, self.cafeq, self.threads = read, heads, config, cafeq, threads
        self._spec: Dict[str, PairSpec] = {}
        self._left: Dict[str, set] = {}
        self._lock: Dict[str, threading.Lock] = {}
        self._result: Dict[str, PairResult] = {}
        for p in pairs:
            left = {n for n in p.members if n in todo}
            if left:
                self._left[p.prefix] = left
                self._lock[p.prefix] = threading.Lock()
                for n in p.members:
                    self._spec[n] = p

    def __contains__(self, name: str) -> bool:
        return name in self._spec

    def take(self, name: str):
        """(the pair's result, which part name is: "v", "o" or "bias")."""
        p = self._spec[name]
        with self._lock[p.prefix]:
            res = self._result.get(p.prefix)
            if res is None:
                bias = self._read(p.bias) if p.bias is not None else None
                hs, gptq = None, None
                if self.calibration is not None:
                    hs = tuple(self.calibration.hessians.get(n) for n in (p.v, p.o))
                    if hs[0] is None and hs[1] is None:
                        hs = None
                    elif hs[0] is None or hs[1] is None:
                        raise CheckpointError(f"--cafeq: the calibration holds a Hessian for one of {p.v}, {p.o} "
                                              "only; calibrate with the same --include/--exclude")
                    gptq = self.calibration.gptq
                try:
                    res = cafeq_pair(self._read(p.v), self._read(p.o), self.heads, self.config, self.cafeq,
                                     bias=bias, key=p.key, threads=self.threads, hessians=hs, gptq=gptq,
                                     input_scale=p.input_scale(self._read) if self.cafeq.norm_weights else None,
                                     output_scale=p.output_scale(self._read) if self.cafeq.norm_weights else None)
                except (ValueError, TypeError, np.linalg.LinAlgError) as e:
                    raise CheckpointError(f"--cafeq: {p.prefix}: {e}") from e
                self._result[p.prefix] = res
            self._left[p.prefix].discard(name)
            if not self._left[p.prefix]:
                del self._result[p.prefix]
        return res, "v" if name == p.v else "o" if name == p.o else "bias"
