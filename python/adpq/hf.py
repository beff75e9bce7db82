"""Reading adpq-format folders: inspect, dequantize to an ordinary HF folder, load into transformers.

The format is specified in docs/FORMAT.md; writing it is adpq.checkpoint.quantize_checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from .checkpoint import (FORMAT_VERSION, INCOMPLETE_MARKER, CheckpointError, CheckpointReport, SourceCheckpoint,
                         TensorReport, _core, _is_float, _jsonable, _np_dtype_of, _Progress, _report_from_dict,
                         _Run, _set_config_dtype, _parse_size)
from .report import per_layer_type
from .safetensors_io import dtype_name

__all__ = ["AdpqCheckpoint", "dequantize_checkpoint", "inspect_checkpoint", "load", "load_state_dict"]


# --------------------------------------------------------------------------------------------------
# Reading the adpq format


class AdpqCheckpoint:
    """An adpq-format folder: config.json with quantization_config + shards (docs/FORMAT.md)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise CheckpointError(f"{self.path}: no such folder")
        if os.path.exists(os.path.join(self.path, INCOMPLETE_MARKER)):
            raise CheckpointError(
                f"{self.path}: incomplete adpq output (interrupted run; re-run the quantize command to resume)")
        self.src = SourceCheckpoint(self.path)
        qc = (self.src.config or {}).get("quantization_config")
        if not isinstance(qc, dict) or qc.get("quant_method") != "adpq":
            raise CheckpointError(f"{self.path}: not an adpq-format folder (config.json has no "
                                  "quantization_config with quant_method 'adpq')")
        if int(qc.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{self.path}: adpq format version {qc.get('format_version')} is newer than "
                                  f"this adpq supports ({FORMAT_VERSION}); upgrade adpq")
        self.quantization_config = qc
        self.qmeta: Dict[str, dict] = {}
        for sf in self.src.files.values():
            for k, v in sf.metadata.items():
                if k.startswith("adpq:"):
                    try:
                        self.qmeta[k[5:]] = json.loads(v)
                    except ValueError:
                        raise CheckpointError(f"{sf.path}: corrupt metadata for {k[5:]!r}") from None
        self._owned = set()
        for name, m in self.qmeta.items():
            for a in m["arrays"]:
                e = f"{name}.adpq.{a}"
                if e not in self.src.tensors:
                    raise CheckpointError(f"{self.path}: quantized tensor {name!r} lacks its array {e!r}")
                self._owned.add(e)

    def names(self) -> List[str]:
        """Logical tensor names (quantized and kept), in file order."""
        out, seen = [], set()
        for e in self.src.names():
            if e in self._owned:
                name = e.rsplit(".adpq.", 1)[0]
                if name not in seen:
                    seen.add(name)
                    out.append(name)
            else:
                out.append(e)
        return out

    def is_quantized(self, name: str) -> bool:
        return name in self.qmeta

    def quantized_tensor(self, name: str):
        core = _core()
        m = self.qmeta[name]
        arrays = {a: np.array(self.src.get(f"{name}.adpq.{a}")) for a in m["arrays"]}
        try:
            # format 1 predates column scaling: its configs have no such field and used none
            cfg = core.QuantConfig.from_dict({"column_scaling": "none", **m["config"]})
            return core.QuantizedTensor.from_arrays(arrays, tuple(m["shape"]), cfg, dtype=m["dtype"])
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{self.path}: quantized tensor {name!r} is corrupt: {e}") from None

    def stored_bytes(self, name: str) -> int:
        if name in self.qmeta:
            return sum(self.src.tensors[f"{name}.adpq.{a}"].nbytes for a in self.qmeta[name]["arrays"])
        return self.src.tensors[name].nbytes

    def tensor(self, name: str, dtype=None) -> np.ndarray:
        """The tensor as an array: quantized ones dequantized (to dtype, default their input dtype)."""
        if name in self.qmeta:
            return self.quantized_tensor(name).dequantize(dtype=dtype if dtype is not None else "input")
        return self.src.get(name)


def dequantize_checkpoint(src_dir, dst_dir, dtype: Optional[str] = None, progress: bool = True,
                          overwrite: bool = False, resume: bool = True, max_shard_size="2GB") -> CheckpointReport:
    """adpq folder -> ordinary HF folder (dequantized weights in dtype, default each tensor's input dtype)."""
    ck = AdpqCheckpoint(src_dir)
    out_dt = _np_dtype_of(dtype)
    job = {"kind": "dequantize", "format": "fake", "dtype": dtype, "source": ck.src.fingerprint(),
           "format_version": FORMAT_VERSION, "max_shard_bytes": _parse_size(max_shard_size)}
    est = 256 + sum(len(n) + 120 for n in ck.names())
    run = _Run(ck.path, dst_dir, job, overwrite, resume, job["max_shard_bytes"], header_estimate=est)
    names = ck.names()
    bar = _Progress(sum(ck.stored_bytes(n) for n in names if not run.is_done(n)), progress, "dequantizing")
    t0 = time.perf_counter()
    reports, nread = [], 0
    try:
        for name in names:
            if run.is_done(name):
                reports.append(_report_from_dict(run.done_reports[name]))
                continue
            ts = time.perf_counter()
            q = ck.is_quantized(name)
            a = ck.tensor(name, dtype=out_dt)
            if not q and out_dt is not None and _is_float(a.dtype):
                a = a.astype(out_dt)
            nb = ck.stored_bytes(name)
            rep = TensorReport(name, tuple(a.shape), dtype_name(a.dtype), q, nb,
                               int(a.nbytes), 8.0 * a.dtype.itemsize, seconds=0.0)
            rep.seconds = time.perf_counter() - ts
            run.add([(name, a)], {}, _jsonable(dict(dataclasses.asdict(rep), shape=list(a.shape))))
            reports.append(rep)
            nread += nb
            bar.update(nb, name)
            del a
        cfg_json = dict(ck.src.config)
        qc = cfg_json.pop("quantization_config")
        cfg_json["adpq_fake_quant"] = qc
        if out_dt is not None:
            _set_config_dtype(cfg_json, str(out_dt))
        files = run.finish(ck.src, cfg_json)
    except BaseException:
        run.abort()
        raise
    finally:
        bar.close()
    return CheckpointReport(ck.path, run.dst, "fake", {"dtype": dtype}, reports, time.perf_counter() - t0,
                            nread, files)


def inspect_checkpoint(path) -> Dict[str, Any]:
    """What is in a quantized folder: quantization_config, per-tensor storage, totals (headers only)."""
    ck = AdpqCheckpoint(path)
    rows, nq, bq, nall, ball, nout = [], 0, 0, 0, 0, 0
    for name in ck.names():
        if ck.is_quantized(name):
            m = ck.qmeta[name]
            numel = int(np.prod(m["shape"]))
            split = {a: 8 * ck.src.tensors[f"{name}.adpq.{a}"].nbytes / numel for a in m["arrays"]}
            b = ck.stored_bytes(name)
            rows.append({"name": name, "quantized": True, "shape": m["shape"], "dtype": m["dtype"],
                         "bytes": b, "bits_per_weight": 8 * b / numel, "arrays": split,
                         "num_outliers": m.get("num_outliers")})
            nq += numel
            bq += b
            nout += m.get("num_outliers") or 0
        else:
            t = ck.src.tensors[name]
            numel, b = t.numel, t.nbytes
            rows.append({"name": name, "quantized": False, "shape": list(t.shape), "dtype": str(t.np_dtype),
                         "bytes": b, "bits_per_weight": 8.0 * t.np_dtype.itemsize})
        nall += numel
        ball += b
    layers = per_layer_type([TensorReport(r["name"], tuple(r["shape"]), r["dtype"], True, 0, r["bytes"],
                                          r["bits_per_weight"], num_outliers=r["num_outliers"] or 0)
                             for r in rows if r["quantized"]])
    return {"path": ck.path, "quantization_config": ck.quantization_config, "files": list(ck.src.files),
            "tensors": rows, "per_layer_type": layers,
            "totals": {"tensors_quantized": sum(r["quantized"] for r in rows),
                       "tensors_kept": sum(not r["quantized"] for r in rows),
                       "params_quantized": nq, "params_total": nall,
                       "bits_per_weight_quantized": 8 * bq / nq if nq else float("nan"),
                       "bits_per_weight_model": 8 * ball / nall if nall else float("nan"),
                       "num_outliers": nout, "bytes_total": ball}}


# --------------------------------------------------------------------------------------------------
# Loading into transformers


def _to_torch(a: np.ndarray):
    import torch
    import ml_dtypes

    a = np.asarray(a)
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16).copy()).view(torch.bfloat16)
    if a.dtype.kind == "V" or a.dtype in (np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2)):
        t = torch.from_numpy(np.ascontiguousarray(a).view(np.uint8).copy())
        return t.view(torch.float8_e4m3fn if a.dtype == np.dtype(ml_dtypes.float8_e4m3fn) else torch.float8_e5m2)
    return torch.from_numpy(np.array(a))


def _torch_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    s = str(dtype).replace("torch.", "")
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if s not in table:
        raise CheckpointError(f"unsupported dtype {dtype!r} (use float32, float16 or bfloat16)")
    return table[s]


def load_state_dict(path, dtype=None) -> Dict[str, Any]:
    """A torch state dict of an adpq folder: quantized tensors dequantized; floating tensors cast to dtype."""
    tdt = _torch_dtype(dtype)
    ck = AdpqCheckpoint(path)
    sd = {}
    for name in ck.names():
        t = _to_torch(ck.tensor(name))
        if tdt is not None and t.is_floating_point():
            t = t.to(tdt)
        sd[name] = t
    return sd


def load(path, device="cpu", dtype=None):
    """A transformers model from an adpq-format folder (an ordinary HF folder is loaded as it is).

    Weights are dequantized at load; dtype defaults to the checkpoint's dtype (config.json).
    """
    import torch
    import transformers

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such folder")
    if os.path.exists(os.path.join(path, INCOMPLETE_MARKER)):
        raise CheckpointError(f"{path}: incomplete adpq output (interrupted run; re-run quantize to resume)")
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    tdt = _torch_dtype(dtype)
    qc = cfg.get("quantization_config")
    if not (isinstance(qc, dict) and qc.get("quant_method") == "adpq"):
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=tdt if tdt is not None else "auto")
        return model.to(device).eval()
    cfg.pop("quantization_config")
    if tdt is None:
        tdt = _torch_dtype(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
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
