"""Layer 4: adpq folders into transformers: packed (AdpqLinear modules) or dequantized at load.

The format is specified in docs/FORMAT.md; adpq.io reads it (adpq.io.adpq_format).
"""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np

from ..core import dtypes
from ..io.adpq_format import AdpqCheckpoint
from ..io.folder import CheckpointError, adpq_quantization_config, check_complete, read_config

__all__ = ["load", "load_state_dict", "torch_dtype"]


def _to_torch(a: np.ndarray):
    import ml_dtypes
    import torch

    a = np.asarray(a)
    if a.dtype == dtypes.NUMPY["bfloat16"]:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16).copy()).view(torch.bfloat16)
    if a.dtype.kind == "V" or a.dtype in (np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2)):
        t = torch.from_numpy(np.ascontiguousarray(a).view(np.uint8).copy())
        return t.view(torch.float8_e4m3fn if a.dtype == np.dtype(ml_dtypes.float8_e4m3fn) else torch.float8_e5m2)
    return torch.from_numpy(np.array(a))


def torch_dtype(dtype):
    """The torch dtype of a float dtype name (any spelling adpq.core.dtypes.canonical takes); None stays None."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, dtypes.canonical(dtype))


def load_state_dict(path, dtype=None) -> Dict[str, Any]:
    """A torch state dict of an adpq folder: quantized tensors dequantized; floating tensors cast to dtype."""
    tdt = torch_dtype(dtype)
    ck = AdpqCheckpoint(path)
    sd = {}
    for name in ck.names():
        t = _to_torch(ck.tensor(name))
        if tdt is not None and t.is_floating_point():
            t = t.to(tdt)
        sd[name] = t
    return sd


def _runtime_config(config, what: str):
    from ..core.config import QuantConfig

    if isinstance(config, int) and not isinstance(config, bool):
        return QuantConfig(bits=config)
    if not isinstance(config, QuantConfig):
        raise TypeError(f"{what} must be None, a QuantConfig or a number of bits, got {type(config).__name__}")
    return config


def _quantize_io(model, lm_head, embeddings) -> None:
    """The output projection and/or the input embedding quantized now, for the runtime. A tied pair is
    quantized once and shared when both use the same config (embeddings alone on a tied model takes
    the output projection too: otherwise the dense matrix stays held by it)."""
    import torch

    from ..core.quantize import quantize
    from ..runtime.embedding import AdpqEmbedding
    from ..runtime.linear import AdpqLinear

    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = (isinstance(head, torch.nn.Linear) and isinstance(emb, torch.nn.Embedding)
            and head.weight is emb.weight)
    head_cfg = _runtime_config(lm_head, "lm_head") if lm_head is not None else None
    emb_cfg = _runtime_config(embeddings, "embeddings") if embeddings is not None else None
    if emb_cfg is not None and tied and head_cfg is None:
        head_cfg = emb_cfg
    shared = None
    if emb_cfg is not None:
        if type(emb) is not torch.nn.Embedding:  # e.g. Gemma's scaled embedding: its forward does more
            raise CheckpointError(f"the input embedding of {type(model).__name__} is a {type(emb).__name__}, "
                                  "not a plain nn.Embedding; adpq cannot quantize it")
        qt = quantize(emb.weight.detach(), config=emb_cfg)
        new = AdpqEmbedding(qt, dtype=emb.weight.dtype, padding_idx=emb.padding_idx)
        new.runtime_only = True
        if tied and head_cfg == emb_cfg:
            shared = qt
        model.set_input_embeddings(new)
    if head_cfg is not None and not isinstance(head, AdpqLinear):
        if not isinstance(head, torch.nn.Linear):
            raise CheckpointError(f"the output projection of {type(model).__name__} is not a linear layer")
        q = AdpqLinear(shared, head.bias) if shared is not None else AdpqLinear.from_linear(head, head_cfg)
        q.runtime_only = True  # (adpq.hf.save refuses to write it)
        model.set_output_embeddings(q)
    if tied and (head_cfg is not None or emb_cfg is not None):
        model.config.tie_word_embeddings = False  # nothing to re-tie: both sides are replaced or kept apart


def load(path, device="cpu", dtype=None, dequantize: bool = False, activations: str = "float32",
         threads=None, lm_head=None, embeddings=None):
    """A transformers model from an adpq-format folder (an ordinary HF folder is loaded as it is).

    By default the quantized linear layers are adpq.AdpqLinear modules holding the packed arrays (the
    C kernel runs them on CPU); dequantize=True instead returns an ordinary model with the weights
    dequantized at load. dtype (of everything else, and of the activations) defaults to the
    checkpoint's (config.json). activations and threads: AdpqLinear's (adpq.core.matmul.MODES; None:
    torch's thread count).

    lm_head, embeddings: None, or a QuantConfig (or its bits) with which the output projection / the
    input embedding is quantized now, for the runtime only: decoding reads the LM head once per token,
    and on small models with a large vocabulary it is as many bytes as every other layer together; the
    embedding (adpq.AdpqEmbedding) decodes only the rows it looks up. A tied pair with one config is
    held once. Such a model cannot be saved (the folder's format has no place for it).
    """
    import torch
    import transformers

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such folder")
    check_complete(path)
    cfg = read_config(path)
    if cfg is None:
        raise CheckpointError(f"{path}: no config.json (not a Hugging Face model folder)")
    tdt = torch_dtype(dtype)
    if adpq_quantization_config(cfg) is None:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=tdt if tdt is not None else "auto",
                                                                  local_files_only=True)
        return model.to(device).eval()
    if not dequantize:
        from ..runtime.linear import ACTIVATIONS, AdpqLinear
        from .register import register

        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
        register()
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=tdt if tdt is not None else "auto", local_files_only=True)
        if lm_head is not None or embeddings is not None:
            _quantize_io(model, lm_head, embeddings)
        for m in model.modules():
            if isinstance(m, AdpqLinear):
                m.activations, m.threads = activations, threads
        return model.to(device).eval()
    cfg.pop("quantization_config")
    if tdt is None:
        tdt = torch_dtype(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    sd = load_state_dict(path, dtype=tdt)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise CheckpointError(f"{path}/config.json has no model_type")
    hf_config = transformers.AutoConfig.for_model(model_type, **cfg)
    cls = None
    for arch in cfg.get("architectures") or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            break
    prev = torch.get_default_dtype()
    torch.set_default_dtype(tdt)
    try:
        model = cls(hf_config) if cls is not None else transformers.AutoModelForCausalLM.from_config(hf_config)
    finally:
        torch.set_default_dtype(prev)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    if tied:
        model.tie_weights()
    real_missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if real_missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not fit {type(model).__name__}: "
                              f"missing {real_missing[:5]}, unexpected {list(unexpected)[:5]}")
    return model.to(device=device).eval()
