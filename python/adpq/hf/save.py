"""Writing a model that holds AdpqLinear modules as an adpq folder (docs/FORMAT.md).

The stored arrays are written as they are held (bit for bit what was loaded or quantized), with the
same shard metadata quantize_checkpoint writes, through the same atomic output machinery
(adpq.io.output): a folder that holds the incomplete marker until its last file is in place.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..io.folder import FORMAT_VERSION, QUANT_METHOD, CheckpointError, array_entry
from ..io.output import OutputRun, atomic_write_text, header_estimate, parse_size
from ..io.report import jsonable
from ..runtime.linear import AdpqLinear, to_numpy

__all__ = ["save_adpq"]


def _entries(model: torch.nn.Module) -> Dict[str, Tuple[List[Tuple[str, np.ndarray]], Dict[str, str]]]:
    """Logical tensor name -> (safetensors entries, shard metadata), tied duplicates dropped."""
    out: Dict[str, Tuple[List[Tuple[str, np.ndarray]], Dict[str, str]]] = {}
    for path, m in model.named_modules():
        if getattr(m, "runtime_only", False):
            raise CheckpointError(f"{path} was quantized at load for the runtime (adpq.load(lm_head=..., "
                                  "embeddings=...)); load the model without it to save it")
        if isinstance(m, AdpqLinear):
            name = f"{path}.weight"
            qt = m.quantized_tensor()
            arrays = qt.arrays()
            meta = {f"adpq:{name}": json.dumps({
                "shape": list(qt.shape), "dtype": qt.dtype, "arrays": list(arrays),
                "config": jsonable(m.config_dict), "num_outliers": int(qt.num_outliers)})}
            out[name] = ([(array_entry(name, k), a) for k, a in arrays.items()], meta)
    seen = set()
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            continue  # a tied weight (lm_head = embed_tokens): stored once, as transformers does
        seen.add(key)
        if t.device.type != "cpu":
            t = t.cpu()
        out[name] = ([(name, to_numpy(t.contiguous()))], {})
    return out


def save_adpq(model: torch.nn.Module, save_directory, max_shard_size="2GB", order: Sequence[str] = (),
              **kwargs: Any) -> List[str]:
    """Saves the model in the adpq format: its AdpqLinear weights as their stored arrays, every other
    tensor as it is, config.json with the quantization_config, generation_config.json. Tensors are
    written in `order` first (the order of the folder the model came from), then in the model's.
    Returns the shard file names."""
    unsupported = sorted(k for k, v in kwargs.items()
                         if not (k in ("safe_serialization", "is_main_process") and v is True))
    if unsupported:
        raise ValueError(f"save_pretrained of an adpq model does not support the argument(s) {unsupported}")
    dst = os.fspath(save_directory)
    entries = _entries(model)
    names = [n for n in order if n in entries] + [n for n in entries if n not in set(order)]
    src = getattr(model.config, "_name_or_path", "") or ""
    qc = getattr(model.config, "quantization_config", None)
    if qc is None:
        raise CheckpointError("the model has no quantization_config (not loaded or quantized by adpq)")
    qc_dict = dict(qc.to_dict() if hasattr(qc, "to_dict") else qc, format_version=FORMAT_VERSION)
    if qc_dict.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"the model's quantization_config is {qc_dict.get('quant_method')!r}, not 'adpq'")
    job = {"kind": "save", "format": "adpq", "format_version": FORMAT_VERSION}
    est = header_estimate((n, bool(entries[n][1])) for n in names)
    run = OutputRun(src if os.path.isdir(src) else os.devnull, dst, job, overwrite=True, resume=False,
                    max_shard_bytes=parse_size(max_shard_size), header_estimate=est)
    try:
        for name in names:
            arrays, meta = entries[name]
            run.add(arrays, meta, {"name": name})
        config_json = model.config.to_diff_dict()
        config_json.pop("_name_or_path", None)
        config_json["quantization_config"] = qc_dict
        config_json["architectures"] = [type(model).__name__]
        gen = getattr(model, "generation_config", None)
        if gen is not None and getattr(model, "can_generate", lambda: False)():
            atomic_write_text(os.path.join(run.dst, "generation_config.json"), gen.to_json_string())
        return run.finish(None, config_json)
    except BaseException:
        run.abort()
        raise
