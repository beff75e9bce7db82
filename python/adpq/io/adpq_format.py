"""Reading adpq-format folders: their quantized tensors, `inspect`, and dequantizing to an ordinary
HF folder. The format is specified in docs/FORMAT.md; writing it is adpq.io.checkpoint."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from ..core.config import QuantConfig
from ..core.quantized import QuantizedTensor
from .folder import (FORMAT_VERSION, CheckpointError, SourceCheckpoint, adpq_quantization_config, array_entry,
                     output_dtype, set_config_dtype)
from .output import OutputRun, parse_size
from .progress import Progress
from .report import CheckpointReport, TensorReport, jsonable, per_layer_type, report_from_dict
from .safetensors import dtype_name, is_float_dtype

__all__ = ["AdpqCheckpoint", "dequantize_checkpoint", "inspect_checkpoint"]


class AdpqCheckpoint:
    """An adpq-format folder: config.json with quantization_config + shards (docs/FORMAT.md)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.src = SourceCheckpoint(self.path)
        qc = adpq_quantization_config(self.src.config)
        if qc is None:
            raise CheckpointError(f"{self.path}: not an adpq-format folder (config.json has no "
                                  "quantization_config with quant_method 'adpq')")
        if int(qc.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{self.path}: adpq format version {qc.get('format_version')} is newer than "
                                  f"this adpq supports ({FORMAT_VERSION}); upgrade adpq")
        self.quantization_config = qc
        self.format_version = int(qc.get("format_version", 1))
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
                e = self.entry(name, a)
                if e not in self.src.tensors:
                    raise CheckpointError(f"{self.path}: quantized tensor {name!r} lacks its array {e!r}")
                self._owned.add(e)

    def entry(self, name: str, array: str) -> str:
        """The safetensors entry holding one array of quantized tensor `name`."""
        return array_entry(name, array, self.format_version)

    def names(self) -> List[str]:
        """Logical tensor names (quantized and kept), in file order."""
        out, seen = [], set()
        for e in self.src.names():
            if e in self._owned:
                name = e.rsplit(".adpq.", 1)[0]  # (the codes entry is the name itself)
                if name not in seen:
                    seen.add(name)
                    out.append(name)
            else:
                out.append(e)
        return out

    def is_quantized(self, name: str) -> bool:
        return name in self.qmeta

    def quantized_tensor(self, name: str):
        m = self.qmeta[name]
        arrays = {a: np.array(self.src.get(self.entry(name, a))) for a in m["arrays"]}
        try:
            # format 1 predates column scaling: its configs have no such field and used none
            cfg = QuantConfig.from_dict({"column_scaling": "none", **m["config"]})
            return QuantizedTensor.from_arrays(arrays, tuple(m["shape"]), cfg, dtype=m["dtype"])
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{self.path}: quantized tensor {name!r} is corrupt: {e}") from None

    def stored_bytes(self, name: str) -> int:
        if name in self.qmeta:
            return sum(self.src.tensors[self.entry(name, a)].nbytes for a in self.qmeta[name]["arrays"])
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
    out_dt = output_dtype(dtype)
    job = {"kind": "dequantize", "format": "fake", "dtype": dtype, "source": ck.src.fingerprint(),
           "format_version": FORMAT_VERSION, "max_shard_bytes": parse_size(max_shard_size)}
    est = 256 + sum(len(n) + 120 for n in ck.names())
    run = OutputRun(ck.path, dst_dir, job, overwrite, resume, job["max_shard_bytes"], header_estimate=est)
    names = ck.names()
    bar = Progress(sum(ck.stored_bytes(n) for n in names if not run.is_done(n)), progress, "dequantizing")
    t0 = time.perf_counter()
    reports, nread = [], 0
    try:
        for name in names:
            if run.is_done(name):
                reports.append(report_from_dict(run.done_reports[name]))
                continue
            ts = time.perf_counter()
            q = ck.is_quantized(name)
            a = ck.tensor(name, dtype=out_dt)
            if not q and out_dt is not None and is_float_dtype(a.dtype):
                a = a.astype(out_dt)
            nb = ck.stored_bytes(name)
            rep = TensorReport(name, tuple(a.shape), dtype_name(a.dtype), q, nb,
                               int(a.nbytes), 8.0 * a.dtype.itemsize, seconds=0.0)
            rep.seconds = time.perf_counter() - ts
            run.add([(name, a)], {}, jsonable(dict(dataclasses.asdict(rep), shape=list(a.shape))))
            reports.append(rep)
            nread += nb
            bar.update(nb, name)
            del a
        cfg_json = dict(ck.src.config)
        qc = cfg_json.pop("quantization_config")
        cfg_json["adpq_fake_quant"] = qc
        if out_dt is not None:
            set_config_dtype(cfg_json, str(out_dt))
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
            split = {a: 8 * ck.src.tensors[ck.entry(name, a)].nbytes / numel for a in m["arrays"]}
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
