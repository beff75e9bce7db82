"""Reading adpq-format folders: their quantized tensors, `inspect`, and dequantizing to an ordinary
HF folder. The format is specified in docs/FORMAT.md; writing it is adpq.io.checkpoint."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from ..core.config import QuantConfig
from ..core import dtypes
from ..core.layout import ARRAY_NAMES
from ..core.quantized import QuantizedTensor
from .folder import (FORMAT_VERSION, CheckpointError, SourceCheckpoint, adpq_quantization_config, array_entry,
                     check_format_version, output_dtype, set_config_dtype)
from .output import OutputRun, parse_size
from .progress import Progress
from .report import CheckpointReport, TensorReport, jsonable, per_layer_type, report_from_dict
from .safetensors import dtype_name, is_float_dtype, parse_json

__all__ = ["AdpqCheckpoint", "dequantize_checkpoint", "inspect_checkpoint"]


# Largest matrix a quantized tensor's metadata may describe (2^48 weights; its codes must also be in
# the file, which bounds it further).
MAX_NUMEL = 2**48


def _check_meta(path: str, name: str, text: str):
    """A shard's "adpq:NAME" metadata (docs/FORMAT.md), validated: (the dict, its QuantConfig). Every
    defect is a CheckpointError naming the file and the tensor."""
    where = f"{path}: quantized tensor {name!r}"
    m = parse_json(text.encode("utf-8", "surrogatepass"), f"{where}: corrupt metadata", CheckpointError)
    if not isinstance(m, dict):
        raise CheckpointError(f"{where}: corrupt metadata (not a JSON object)")
    missing = [k for k in ("shape", "dtype", "arrays", "config") if k not in m]
    if missing:
        raise CheckpointError(f"{where}: corrupt metadata (missing {', '.join(missing)})")
    shape = m["shape"]
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise CheckpointError(f"{where}: corrupt metadata (shape {str(shape)[:100]} is not [rows, cols] of "
                              "integers >= 1)")
    if shape[0] * shape[1] > MAX_NUMEL:
        raise CheckpointError(f"{where}: corrupt metadata (shape {shape} is larger than {MAX_NUMEL} weights)")
    if not isinstance(m["dtype"], str) or m["dtype"] not in dtypes.FLOAT_DTYPES:
        raise CheckpointError(f"{where}: corrupt metadata (dtype {str(m['dtype'])[:50]!r} is not one of "
                              f"{', '.join(dtypes.FLOAT_DTYPES)})")
    arrays = m["arrays"]
    if (not isinstance(arrays, list) or not all(isinstance(a, str) and a in ARRAY_NAMES for a in arrays)
            or len(set(arrays)) != len(arrays) or not {"codes", "scales"} <= set(arrays)):
        raise CheckpointError(f"{where}: corrupt metadata (arrays {str(arrays)[:200]} is not a list of distinct "
                              f"names from {', '.join(ARRAY_NAMES)} with codes and scales)")
    n_out = m.get("num_outliers")
    if n_out is not None and (not isinstance(n_out, int) or isinstance(n_out, bool) or n_out < 0
                              or n_out > shape[0] * shape[1]
                              or (n_out > 0 and "outlier_counts" not in arrays)):
        raise CheckpointError(f"{where}: corrupt metadata (num_outliers {str(n_out)[:50]} does not fit shape "
                              f"{shape} and arrays {arrays})")
    if not isinstance(m["config"], dict):
        raise CheckpointError(f"{where}: corrupt metadata (config is not a JSON object)")
    try:
        # format 1 predates column scaling: its configs have no such field and used none. threads:
        # how the writer ran, nothing to do with reading (and not to be trusted from a file)
        cfg = QuantConfig.from_dict({"column_scaling": "none", **m["config"], "threads": None})
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: corrupt metadata (invalid config: {e})") from None
    return m, cfg


class AdpqCheckpoint:
    """An adpq-format folder: config.json with quantization_config + shards (docs/FORMAT.md)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.src = SourceCheckpoint(self.path)
        qc = adpq_quantization_config(self.src.config)
        if qc is None:
            raise CheckpointError(f"{self.path}: not an adpq-format folder (config.json has no "
                                  "quantization_config with quant_method 'adpq')")
        self.quantization_config = qc
        self.format_version = check_format_version(qc.get("format_version", 1), f"{self.path}/config.json")
        self.qmeta: Dict[str, dict] = {}
        self._configs: Dict[str, QuantConfig] = {}
        for sf in self.src.files.values():
            for k, v in sf.metadata.items():
                if k.startswith("adpq:"):
                    name = k[5:]
                    if name in self.qmeta:
                        raise CheckpointError(f"{sf.path}: quantized tensor {name!r} is described twice")
                    self.qmeta[name], self._configs[name] = _check_meta(sf.path, name, v)
        self._owned = set()
        for name, m in self.qmeta.items():
            where = f"{self.path}: quantized tensor {name!r}"
            for a in m["arrays"]:
                e = self.entry(name, a)
                if e not in self.src.tensors:
                    raise CheckpointError(f"{where} lacks its array {e!r}")
                if e in self._owned:
                    raise CheckpointError(f"{where}: its array {e!r} belongs to another quantized tensor")
                self._owned.add(e)
            if self.format_version < 3 and name in self.src.tensors:
                raise CheckpointError(f"{where} is also stored as a kept tensor")
            rows, cols = m["shape"]
            codes = self.src.tensors[self.entry(name, "codes")]
            need = (rows * cols * self._configs[name].bits + 7) // 8
            if codes.dtype != "U8" or codes.nbytes != need:
                raise CheckpointError(f"{where}: its codes are {codes.numel} x {codes.dtype}, but shape {m['shape']} "
                                      f"at {self._configs[name].bits} bits needs {need} x U8")

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
        arrays = {a: self.src.get(self.entry(name, a), copy=True) for a in m["arrays"]}
        try:
            qt = QuantizedTensor.from_arrays(arrays, tuple(m["shape"]), self._configs[name], dtype=m["dtype"])
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{self.path}: quantized tensor {name!r} is corrupt: {e}") from None
        if m.get("num_outliers") is not None and m["num_outliers"] != qt.num_outliers:
            raise CheckpointError(f"{self.path}: quantized tensor {name!r} is corrupt: its metadata says "
                                  f"{m['num_outliers']} outliers, its outlier_counts {qt.num_outliers}")
        return qt

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
