"""What quantize_checkpoint reports: one TensorReport per tensor and their totals, per-layer-type
summary and the table the `adpq quantize` command prints."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple

import numpy as np

__all__ = ["TensorReport", "CheckpointReport", "per_layer_type", "format_layer_types"]

_LAYER_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass
class TensorReport:
    name: str
    shape: Tuple[int, ...]
    dtype: str                       # safetensors dtype of the source tensor
    quantized: bool
    bytes_in: int
    bytes_out: int                   # bytes stored for it in the output
    bits_per_weight: float           # 8 * bytes_out / numel
    bits_breakdown: Dict[str, float] = dataclasses.field(default_factory=dict)
    num_outliers: int = 0
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False            # done by an earlier, interrupted run
    gptq: bool = False               # refined with a calibration Hessian
    cafeq: Dict[str, float] = dataclasses.field(default_factory=dict)  # its pair's stats (cafeq_pair)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def layer_type(self) -> str:
        base = self.name[:-7] if self.name.endswith(".weight") else self.name
        return base.rsplit(".", 1)[-1]


@dataclasses.dataclass
class CheckpointReport:
    src: str
    dst: str
    format: str
    config: Dict[str, Any]
    tensors: List[TensorReport]
    seconds: float
    input_bytes: int                 # source bytes read by this run (resumed tensors excluded)
    output_files: List[str]

    @property
    def quantized(self) -> List[TensorReport]:
        return [t for t in self.tensors if t.quantized]

    @property
    def kept(self) -> List[TensorReport]:
        return [t for t in self.tensors if not t.quantized]

    @property
    def gb_per_s(self) -> float:
        return self.input_bytes / self.seconds / 1e9 if self.seconds > 0 else float("nan")

    def totals(self) -> Dict[str, Any]:
        q = self.quantized
        nq = sum(t.numel for t in q)
        nall = sum(t.numel for t in self.tensors)
        split = {}
        for t in q:
            for k, v in t.bits_breakdown.items():
                split[k] = split.get(k, 0.0) + v * t.numel
        return {
            "tensors_quantized": len(q),
            "tensors_kept": len(self.tensors) - len(q),
            "params_quantized": nq,
            "params_total": nall,
            "bits_per_weight_quantized": 8 * sum(t.bytes_out for t in q) / nq if nq else float("nan"),
            "bits_per_weight_model": 8 * sum(t.bytes_out for t in self.tensors) / nall if nall else float("nan"),
            "bits_breakdown_quantized": {k: v / nq for k, v in split.items()} if nq else {},
            "num_outliers": sum(t.num_outliers for t in q),
            "input_bytes": self.input_bytes,
            "seconds": self.seconds,
            "gb_per_s": self.gb_per_s,
            "tensors_resumed": sum(t.resumed for t in self.tensors),
        }

    def per_layer_type(self) -> Dict[str, Dict[str, float]]:
        return per_layer_type(self.quantized)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "src": self.src, "dst": self.dst, "format": self.format, "config": self.config,
            "totals": self.totals(), "per_layer_type": self.per_layer_type(),
            "tensors": [dict(dataclasses.asdict(t), shape=list(t.shape)) for t in self.tensors],
            "output_files": self.output_files,
        }

    def format_table(self) -> str:
        tot = self.totals()
        lines = [f"adpq quantize ({self.format} format): {self.src} -> {self.dst}"]
        cfg = ", ".join(f"{k}={v}" for k, v in self.config.items())
        lines.append(f"config: {cfg}")
        lines.append(f"tensors: {tot['tensors_quantized']} quantized ({tot['params_quantized']:,} weights), "
                     f"{tot['tensors_kept']} kept ({tot['params_total'] - tot['params_quantized']:,} weights)"
                     + (f"; {tot['tensors_resumed']} done by an earlier run" if tot["tensors_resumed"] else ""))
        split = " + ".join(f"{k} {v:.3f}" for k, v in tot["bits_breakdown_quantized"].items())
        lines.append(f"bits/weight: {tot['bits_per_weight_quantized']:.3f} over quantized tensors ({split}); "
                     f"{tot['bits_per_weight_model']:.3f} over the whole model")
        lines += format_layer_types(self.per_layer_type())
        out_mb = sum(t.bytes_out for t in self.tensors) / 1e6
        lines += ["", f"time: {self.seconds:.2f} s, input {self.input_bytes / 1e6:.1f} MB, "
                      f"{self.gb_per_s:.3f} GB/s; output {out_mb:.1f} MB of tensors"]
        return "\n".join(lines)


def per_layer_type(tensors: List[TensorReport]) -> Dict[str, Dict[str, float]]:
    """Quantized tensors grouped by layer type (the name before ".weight": q_proj, down_proj, ...):
    count, weights, bits/weight, outlier fraction, and the mean error metrics when every tensor has
    them (max for max_abs_error)."""
    groups: Dict[str, List[TensorReport]] = {}
    for t in tensors:
        if t.quantized:
            groups.setdefault(t.layer_type, []).append(t)
    out = {}
    for k in sorted(groups, key=lambda k: (_LAYER_ORDER.index(k) if k in _LAYER_ORDER else len(_LAYER_ORDER), k)):
        ts = groups[k]
        n = sum(t.numel for t in ts)
        row = {"tensors": len(ts), "params": n, "bits_per_weight": 8 * sum(t.bytes_out for t in ts) / n,
               "outlier_frac": sum(t.num_outliers for t in ts) / n}
        if all(t.metrics for t in ts):
            row["rel_fro_error"] = float(np.mean([t.metrics["rel_fro_error"] for t in ts]))
            row["sqnr_db"] = float(np.mean([t.metrics["sqnr_db"] for t in ts]))
            row["max_abs_error"] = float(max(t.metrics["max_abs_error"] for t in ts))
            row["kl_divergence"] = float(np.mean([t.metrics.get("kl_divergence", float("nan")) for t in ts]))
        out[k] = row
    return out


def format_layer_types(rows: Dict[str, Dict[str, float]]) -> List[str]:
    """per_layer_type's rows as text lines (a blank line, a header, a rule, one line per type)."""
    if not rows:
        return []
    has_m = all("rel_fro_error" in r for r in rows.values())
    hdr = f"{'layer type':<16}{'n':>4}{'weights':>13}{'bits/w':>8}{'outl%':>7}"
    if has_m:
        hdr += f"{'rel_err':>9}{'sqnr_dB':>9}{'max_abs':>10}{'KL':>9}"
    lines = ["", hdr, "-" * len(hdr)]
    for k, r in rows.items():
        s = f"{k:<16}{r['tensors']:>4}{r['params']:>13,}{r['bits_per_weight']:>8.3f}{100 * r['outlier_frac']:>7.2f}"
        if has_m:
            s += (f"{r['rel_fro_error']:>9.4f}{r['sqnr_db']:>9.2f}{r['max_abs_error']:>10.4g}"
                  f"{r['kl_divergence']:>9.2e}")
        lines.append(s)
    return lines


def jsonable(x):
    """x with NumPy scalars made Python numbers and tuples lists, for JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def report_from_dict(d: dict) -> TensorReport:
    """A TensorReport read back from a run manifest (a resumed tensor)."""
    d = dict(d)
    d["shape"] = tuple(d["shape"])
    d["resumed"] = True
    return TensorReport(**d)
