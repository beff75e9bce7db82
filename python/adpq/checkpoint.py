"""Quantize Hugging Face safetensors checkpoints tensor by tensor, and read the results back.

    report = adpq.quantize_checkpoint("smollm2-135m", "smollm2-adpq", adpq.QuantConfig(bits=3))
    print(report.format_table())
    model = adpq.load("smollm2-adpq")            # a transformers model (weights dequantized at load)

The on-disk adpq format is specified in docs/FORMAT.md. Summary: ordinary safetensors shards in which
a quantized tensor NAME is stored as the arrays "NAME.adpq.<array>" of its QuantizedTensor, described by
the shard's __metadata__ key "adpq:NAME"; other tensors are stored unchanged; config.json carries
quantization_config = {"quant_method": "adpq", "format_version": 2, ...}.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import fnmatch
import functools
import itertools
import json
import os
import re
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import default_threads
from .report import CheckpointReport, TensorReport
from .safetensors_io import DTYPES, SafetensorsFile, ShardWriter, TensorInfo

__all__ = [
    "CheckpointError", "FORMAT_VERSION", "INCOMPLETE_MARKER", "CheckpointReport", "TensorReport",
    "SourceCheckpoint", "quantize_checkpoint", "select_tensors", "is_default_quantized",
]

FORMAT_VERSION = 2  # 2: adds the optional per-tensor array "column_scales" (column_scaling)
INCOMPLETE_MARKER = ".adpq-incomplete"  # JSON run manifest; its presence means "not finished"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
QUANTIZABLE_DTYPES = ("F32", "F16", "BF16")
# Files never copied from the source folder (weights in other formats, our own bookkeeping).
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".tmp")
_SKIP_NAMES = {INDEX_NAME, "pytorch_model.bin.index.json", "config.json", INCOMPLETE_MARKER}
# Name fragments of tensors that are kept by default even when 2-D.
_DEFAULT_KEEP = re.compile(r"(^|\.)(embed_tokens|embed_positions|embeddings?|lm_head|wte|wpe|[a-z_]*norm[a-z_]*|ln_f|ln_\d+)(\.|$)")


class CheckpointError(ValueError):
    """A user-facing error about a checkpoint folder (message is meant for the command line)."""


def _core():
    import adpq  # lazy: adpq/__init__.py imports this module

    return adpq


# --------------------------------------------------------------------------------------------------
# Source checkpoints


class SourceCheckpoint:
    """A Hugging Face folder: config.json + one or more .safetensors files (index json optional)."""

    def __init__(self, path: str, require_config: bool = True):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise CheckpointError(f"{self.path}: no such folder")
        if not os.path.isdir(self.path):
            raise CheckpointError(f"{self.path}: not a folder")
        if os.path.exists(os.path.join(self.path, INCOMPLETE_MARKER)):
            raise CheckpointError(
                f"{self.path}: incomplete adpq output (an interrupted run left {INCOMPLETE_MARKER}); "
                "re-run the command that wrote it to resume")
        cfg_path = os.path.join(self.path, "config.json")
        self.config: Optional[dict] = None
        if os.path.exists(cfg_path):
            try:
                with open(cfg_path, encoding="utf-8") as f:
                    self.config = json.load(f)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{cfg_path}: cannot read: {e}") from None
        elif require_config:
            raise CheckpointError(f"{self.path}: no config.json (not a Hugging Face model folder)")
        index_path = os.path.join(self.path, INDEX_NAME)
        files: List[str]
        weight_map: Optional[Dict[str, str]] = None
        if os.path.exists(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                assert isinstance(weight_map, dict)
            except Exception as e:
                raise CheckpointError(f"{index_path}: invalid index file ({e})") from None
            files = sorted(set(weight_map.values()))
            for fn in files:
                if not os.path.exists(os.path.join(self.path, fn)):
                    raise CheckpointError(f"{index_path}: lists {fn}, which is missing")
        else:
            files = sorted(fn for fn in os.listdir(self.path) if fn.endswith(".safetensors"))
        if not files:
            other = [fn for fn in os.listdir(self.path) if fn.endswith((".bin", ".pt", ".pth", ".gguf"))]
            hint = f" (found {', '.join(sorted(other))}; only safetensors is supported)" if other else ""
            raise CheckpointError(f"{self.path}: no .safetensors files{hint}")
        self.files: Dict[str, SafetensorsFile] = {}
        self.tensors: Dict[str, TensorInfo] = {}
        self.data_start: Dict[str, int] = {}
        for fn in files:
            sf = SafetensorsFile(os.path.join(self.path, fn))
            self.files[fn] = sf
            for name in sf.names():
                if weight_map is not None and weight_map.get(name) != fn:
                    if name not in weight_map:
                        continue  # a stray tensor that the index does not list: ignore like HF does
                if name in self.tensors:
                    raise CheckpointError(f"{self.path}: tensor {name!r} appears in two files")
                self.tensors[name] = sf.tensors[name]
                self.data_start[name] = sf.data_start
        if weight_map is not None:
            missing = [n for n, fn in weight_map.items() if n not in self.tensors]
            if missing:
                raise CheckpointError(f"{index_path}: tensor {missing[0]!r} is not in {weight_map[missing[0]]}")

    def names(self) -> List[str]:
        return list(self.tensors)

    def get(self, name: str) -> np.ndarray:
        from .safetensors_io import read_tensor

        return read_tensor(self.tensors[name], self.data_start[name])

    def fingerprint(self) -> List[list]:
        out = []
        for fn, sf in self.files.items():
            st = os.stat(sf.path)
            out.append([fn, st.st_size, st.st_mtime_ns])
        return out

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def is_default_quantized(info: TensorInfo) -> bool:
    """DESIGN.md section 3: 2-D '.weight' tensors of linear layers; embeddings, lm_head, norms kept."""
    return info.name.endswith(".weight") and len(info.shape) == 2 and not _DEFAULT_KEEP.search(info.name[:-7])


def select_tensors(infos: Sequence[TensorInfo], include=None, exclude=None) -> List[str]:
    """Names to quantize. include replaces the default selection; exclude removes from it.

    Patterns are fnmatch globs on full tensor names ('*' matches dots too). A pattern matching no
    tensor is an error (it is almost always a typo).
    """
    include, exclude = _patterns(include), _patterns(exclude)
    names = [i.name for i in infos]
    for kind, pats in (("include", include), ("exclude", exclude)):
        for p in pats:
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                raise CheckpointError(f"--{kind} pattern {p!r} matches no tensor in the checkpoint")
    if include:
        chosen = [i for i in infos if any(fnmatch.fnmatchcase(i.name, p) for p in include)]
    else:
        chosen = [i for i in infos if is_default_quantized(i)]
    chosen = [i for i in chosen if not any(fnmatch.fnmatchcase(i.name, p) for p in exclude)]
    for i in chosen:
        if len(i.shape) != 2:
            raise CheckpointError(f"tensor {i.name!r} has shape {list(i.shape)}; only 2-D tensors can be quantized")
        if i.dtype not in QUANTIZABLE_DTYPES:
            raise CheckpointError(
                f"tensor {i.name!r} ({os.path.basename(i.path)}) has unsupported dtype {i.dtype}; adpq quantizes "
                f"{'/'.join(QUANTIZABLE_DTYPES)} weights (use --exclude to keep it as it is)")
    if not chosen:
        raise CheckpointError("no tensor selected for quantization (check --include/--exclude)")
    return [i.name for i in chosen]


def _patterns(p) -> List[str]:
    if p is None:
        return []
    if isinstance(p, str):
        p = [p]
    out = []
    for x in p:
        out += [s.strip() for s in str(x).split(",") if s.strip()]
    return out


# --------------------------------------------------------------------------------------------------
# Destination handling: marker/manifest, resume, shards


def _atomic_write_text(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _atomic_copy(src: str, dst: str) -> None:
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _looks_disposable(path: str) -> bool:
    """True if an existing folder can be deleted by --overwrite (a model folder or empty)."""
    names = os.listdir(path)
    return (not names or INCOMPLETE_MARKER in names or "config.json" in names
            or any(n.endswith(".safetensors") for n in names))


def _parse_size(s) -> int:
    if isinstance(s, (int, float)):
        return int(s)
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)\s*", str(s), re.I)
    if not m:
        raise CheckpointError(f"bad size {s!r} (examples: 2GB, 500MB, 1073741824)")
    unit = m.group(2).upper().rstrip("B")
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(float(m.group(1)) * mult)


class _Run:
    """One conversion run into dst: the manifest, the shard being written, resume bookkeeping."""

    def __init__(self, src: str, dst: str, job: dict, overwrite: bool, resume: bool, max_shard_bytes: int,
                 header_estimate: int = 0):
        self.dst = os.path.abspath(dst)
        self.job = job
        self.max_shard_bytes = max_shard_bytes
        # Header space reserved at the start of each shard so that data is written once, in place
        # (ShardWriter falls back to a copy if the header turns out larger).
        self.reserve = min(header_estimate, max_shard_bytes // 64)
        src_abs = os.path.abspath(src)
        if self.dst == src_abs or self.dst.startswith(src_abs + os.sep) or src_abs.startswith(self.dst + os.sep):
            raise CheckpointError(f"destination {dst} and source {src} must be separate folders")
        marker = os.path.join(self.dst, INCOMPLETE_MARKER)
        self.manifest = None
        if os.path.exists(self.dst):
            if not os.path.isdir(self.dst):
                raise CheckpointError(f"destination {dst} exists and is not a folder")
            has_marker = os.path.exists(marker)
            if has_marker and resume and not overwrite:
                try:
                    with open(marker, encoding="utf-8") as f:
                        m = json.load(f)
                except (OSError, ValueError):
                    m = None
                if m is not None and m.get("job") == job:
                    self.manifest = m
                elif m is not None:
                    raise CheckpointError(
                        f"destination {dst} holds an interrupted run with different settings or source; "
                        "use --overwrite to start over")
            if self.manifest is None:
                if os.listdir(self.dst) and not has_marker and not overwrite:
                    raise CheckpointError(f"destination {dst} already exists (use --overwrite to replace it)")
                if os.listdir(self.dst):
                    if not _looks_disposable(self.dst):
                        raise CheckpointError(
                            f"destination {dst} is not empty and does not look like a model folder; "
                            "refusing to delete it")
                    shutil.rmtree(self.dst)
        os.makedirs(self.dst, exist_ok=True)
        if self.manifest is None:
            self.manifest = {"job": job, "shards": [], "finishing": False}
            self._save()
        else:
            self._validate_resumed()
        self.done_reports: Dict[str, dict] = {}
        for sh in self.manifest["shards"]:
            for r in sh["reports"]:
                self.done_reports[r["name"]] = r
        self.writer: Optional[ShardWriter] = None
        self._pending: List[dict] = []

    def _save(self) -> None:
        _atomic_write_text(os.path.join(self.dst, INCOMPLETE_MARKER), json.dumps(self.manifest))

    def _validate_resumed(self) -> None:
        # Drop temporaries and keep the longest prefix of shards whose files are intact.
        for fn in os.listdir(self.dst):
            if fn.endswith(".tmp"):
                os.unlink(os.path.join(self.dst, fn))
        good = []
        for sh in self.manifest["shards"]:
            ok = False
            for fn in (sh["part"], sh.get("final")):
                p = os.path.join(self.dst, fn) if fn else None
                if p and os.path.exists(p) and os.path.getsize(p) == sh["file_size"]:
                    ok = True
            if not ok:
                break
            good.append(sh)
        if len(good) != len(self.manifest["shards"]):
            self.manifest["shards"] = good
            self.manifest["finishing"] = False
            self._save()

    def is_done(self, name: str) -> bool:
        return name in self.done_reports

    def add(self, entries: List[Tuple[str, np.ndarray]], metadata: Dict[str, str], report: dict) -> None:
        size = sum(int(np.asarray(a).nbytes) for _, a in entries)
        if self.writer is not None and self.writer.size > 0 and self.writer.size + size > self.max_shard_bytes:
            self.close_shard()
        if self.writer is None:
            k = len(self.manifest["shards"]) + 1
            self.writer = ShardWriter(os.path.join(self.dst, f"model-part-{k:05d}.safetensors"),
                                      {"format": "pt", "adpq.format_version": str(FORMAT_VERSION)},
                                      reserve=self.reserve)
        for n, a in entries:
            self.writer.add(n, a)
        self.writer.metadata.update(metadata)
        self._pending.append(report)

    def close_shard(self) -> None:
        if self.writer is None:
            return
        w, self.writer = self.writer, None
        fsize = w.close()
        self.manifest["shards"].append({
            "part": os.path.basename(w.path), "file_size": fsize, "entries": list(w.entries),
            "reports": self._pending})
        self._pending = []
        self._save()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def finish(self, src: Optional[SourceCheckpoint], config_json: Optional[dict]) -> List[str]:
        """Rename parts to final shard names, write the index, config.json, copied files; drop the marker."""
        self.close_shard()
        shards = self.manifest["shards"]
        n = len(shards)
        for i, sh in enumerate(shards):
            sh["final"] = SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        self.manifest["finishing"] = True
        self._save()
        for sh in shards:
            p = os.path.join(self.dst, sh["part"])
            if os.path.exists(p):
                os.replace(p, os.path.join(self.dst, sh["final"]))
        if n > 1:
            index = {"metadata": {"total_size": 0, "format": self.job["format"]}, "weight_map": {}}
            total = 0
            for sh in shards:
                total += sh["file_size"]
                for e in sh["entries"]:
                    index["weight_map"][e] = sh["final"]
            index["metadata"]["total_size"] = total
            _atomic_write_text(os.path.join(self.dst, INDEX_NAME), json.dumps(index, indent=2))
        elif os.path.exists(os.path.join(self.dst, INDEX_NAME)):
            os.unlink(os.path.join(self.dst, INDEX_NAME))
        if src is not None:
            for fn in sorted(os.listdir(src.path)):
                p = os.path.join(src.path, fn)
                if fn in _SKIP_NAMES or fn.endswith(_SKIP_SUFFIXES) or not os.path.isfile(p):
                    continue
                _atomic_copy(p, os.path.join(self.dst, fn))
        if config_json is not None:
            _atomic_write_text(os.path.join(self.dst, "config.json"), json.dumps(config_json, indent=2) + "\n")
        os.unlink(os.path.join(self.dst, INCOMPLETE_MARKER))  # last: the folder is now complete
        return [sh["final"] for sh in shards]


class _Progress:
    def __init__(self, total_bytes: int, enabled: bool, desc: str):
        self.bar = None
        self.enabled = enabled
        self.total = max(total_bytes, 1)
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                            dynamic_ncols=True, leave=True)
        except ImportError:
            self.desc = desc

    def update(self, nbytes: int, name: str) -> None:
        if not self.enabled:
            return
        self.done += nbytes
        if self.bar is not None:
            self.bar.set_postfix_str(name[-40:], refresh=False)
            self.bar.update(nbytes)
            return
        now = time.perf_counter()
        if now - self._last < 0.2 and self.done < self.total:
            return
        self._last = now
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{self.desc} [{bar:<30}] {100 * frac:5.1f}% {name[-40:]:<40}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _report_from_dict(d: dict) -> TensorReport:
    d = dict(d)
    d["shape"] = tuple(d["shape"])
    d["resumed"] = True
    return TensorReport(**d)


def _np_dtype_of(name: Optional[str]):
    if name is None:
        return None
    import ml_dtypes

    table = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
             "fp32": np.float32, "fp16": np.float16, "bf16": ml_dtypes.bfloat16}
    try:
        return np.dtype(table[str(name).lower()])
    except KeyError:
        raise CheckpointError(f"unsupported output dtype {name!r} (use float32, float16 or bfloat16)") from None


def _is_float(dt) -> bool:
    return np.dtype(dt).kind == "f" or np.dtype(dt) in (DTYPES["BF16"], DTYPES["F8_E4M3"], DTYPES["F8_E5M2"])


def _set_config_dtype(cfg: dict, dtype_str: str) -> None:
    keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]
    for k in keys:
        cfg[k] = dtype_str


# --------------------------------------------------------------------------------------------------
# quantize_checkpoint


_REPORT_FIELDS = tuple(f.name for f in dataclasses.fields(TensorReport))


def _process_tensor(src, selected, cfg, run_cfg, cfg_json_dict, format, out_dt, compute_metrics, threads, info):
    """One tensor (on a pipeline thread): (entries to write, shard metadata, its report, whose values
    are plain Python: it goes into the run's JSON manifest as it is)."""
    core = _core()
    ts = time.perf_counter()
    w = src.get(info.name)
    meta: Dict[str, str] = {}
    if info.name not in selected:
        if format == "fake" and out_dt is not None and _is_float(info.np_dtype):
            w = w.astype(out_dt)  # a fake-quant folder is uniformly in the requested dtype
        rep = TensorReport(info.name, info.shape, info.dtype, False, info.nbytes, int(w.nbytes),
                           8.0 * w.dtype.itemsize)
        rep.seconds = time.perf_counter() - ts
        return [(info.name, w)], meta, rep
    try:
        qt = core.quantize(w, config=run_cfg)  # (run_cfg: cfg with the pipeline's threads; same arrays)
    except (ValueError, TypeError, MemoryError) as e:
        raise CheckpointError(f"tensor {info.name!r} ({os.path.basename(info.path)}): {e}") from e
    rep = TensorReport(info.name, info.shape, info.dtype, True, info.nbytes, 0, float(qt.bits_per_weight),
                       _jsonable(dict(qt.bits_breakdown())), int(qt.num_outliers))
    if format == "adpq":
        arrays = qt.arrays()
        entries = [(f"{info.name}.adpq.{k}", a) for k, a in arrays.items()]
        rep.bytes_out = sum(int(a.nbytes) for a in arrays.values())
        meta[f"adpq:{info.name}"] = json.dumps({
            "shape": list(info.shape), "dtype": qt.dtype, "arrays": list(arrays),
            "config": cfg_json_dict, "num_outliers": int(qt.num_outliers)})
        w_hat = qt  # (metrics dequantize it row by row in C, never whole)
    else:
        w_out = qt.dequantize(dtype=out_dt if out_dt is not None else "input", threads=threads)
        entries = [(info.name, w_out)]
        rep.bytes_out = int(w_out.nbytes)
        w_hat = w_out if compute_metrics else None
    if compute_metrics:
        m = core.metrics(w, w_hat, threads=threads)
        rep.metrics = _jsonable({k: v for k, v in m.items() if k not in ("num_outliers", "bits_per_weight")})
    rep.seconds = time.perf_counter() - ts
    return entries, meta, rep


def quantize_checkpoint(src_dir, dst_dir, config=None, include=None, exclude=None, format: str = "adpq",
                        progress: bool = True, overwrite: bool = False, resume: bool = True,
                        fake_dtype: Optional[str] = None, max_shard_size="2GB",
                        compute_metrics: bool = True) -> CheckpointReport:
    """Quantize a Hugging Face safetensors folder into dst_dir, tensor by tensor (two workers on half
    the cores each, up to six tensors in flight, unless config.threads is set).

    format="adpq": packed arrays (docs/FORMAT.md); format="fake": an ordinary HF folder holding the
    dequantized weights in the source dtype (or fake_dtype: float16/bfloat16/float32).
    A re-run into the same dst_dir with the same settings resumes an interrupted run.
    """
    core = _core()
    cfg = config if config is not None else core.QuantConfig()
    if format not in ("adpq", "fake"):
        raise CheckpointError(f"unknown format {format!r} (use 'adpq' or 'fake')")
    out_dt = _np_dtype_of(fake_dtype)
    if fake_dtype is not None and format != "fake":
        raise CheckpointError("fake_dtype/--dtype applies to --format fake only")
    src = SourceCheckpoint(src_dir)
    try:  # reject a bad configuration before anything is written
        core.quantize(np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16), config=cfg)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"invalid quantization config: {e}") from None
    infos = list(src.tensors.values())
    selected = set(select_tensors(infos, include, exclude))
    inc, exc = _patterns(include), _patterns(exclude)
    cfg_json_dict = _jsonable(cfg.to_dict())  # every tensor's metadata (qt.config is cfg)
    job_cfg = {k: v for k, v in cfg_json_dict.items() if k != "threads"}  # threads: same output
    job = {"kind": "quantize", "format": format, "config": job_cfg, "include": inc,
           "exclude": exc, "fake_dtype": fake_dtype, "source": src.fingerprint(),
           "format_version": FORMAT_VERSION, "max_shard_bytes": _parse_size(max_shard_size)}
    est = 256 + sum(9 * len(i.name) + 8 * 120 + 800 if i.name in selected else len(i.name) + 120 for i in infos)
    run = _Run(src.path, dst_dir, job, overwrite, resume, job["max_shard_bytes"], header_estimate=est)
    todo = [i for i in infos if not run.is_done(i.name)]
    bar = _Progress(sum(i.nbytes for i in todo), progress, "quantizing")
    # Tensors are quantized by a small pipeline (the C core releases the GIL) and written in order
    # by this thread: on a model of small matrices, two at a time on half the cores each scale
    # better than one at a time on every core. Up to three tensors per worker are in flight, so that
    # a large tensor at the head of the queue does not leave the other worker idle behind it (depth 2
    # -> 6 took SmolLM2 with metrics from ~0.89 s to ~0.69 s on 2 cores). Memory stays bounded by the
    # largest tensors, not the model. An explicit config.threads: one tensor at a time on that many
    # threads, the next one quantized while this one is written.
    cores = default_threads()
    workers = 2 if cfg.threads is None and cores >= 2 else 1
    depth = 3 * workers
    per_tensor_threads = cfg.threads or max(1, cores // workers)
    work = functools.partial(_process_tensor, src, selected, cfg, cfg.replace(threads=per_tensor_threads),
                             cfg_json_dict, format, out_dt, compute_metrics, per_tensor_threads)
    new_reports: Dict[str, TensorReport] = {}
    t0 = time.perf_counter()
    bytes_read = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
            pending: collections.deque = collections.deque()
            ahead = iter(todo)
            try:
                for info in itertools.islice(ahead, depth):
                    pending.append((info, ex.submit(work, info)))
                while pending:
                    info, fut = pending.popleft()
                    entries, meta, rep = fut.result()
                    nxt = next(ahead, None)
                    if nxt is not None:
                        pending.append((nxt, ex.submit(work, nxt)))
                    # (a shallow dict of plain values, as _process_tensor makes them: dataclasses.asdict
                    # deep-copies, a cost per tensor on small models)
                    run.add(entries, meta, {k: getattr(rep, k) for k in _REPORT_FIELDS} | {"shape": list(info.shape)})
                    del entries
                    new_reports[info.name] = rep
                    bytes_read += info.nbytes
                    bar.update(info.nbytes, info.name)
            finally:
                for _, fut in pending:
                    fut.cancel()
        reports = [new_reports[i.name] if i.name in new_reports else _report_from_dict(run.done_reports[i.name])
                   for i in infos]
        cfg_json = dict(src.config)
        cfg_json.pop("quantization_config", None)
        if format == "adpq":
            cfg_json["quantization_config"] = {"quant_method": "adpq", "format_version": FORMAT_VERSION,
                                               **_jsonable(cfg.to_dict()), "include": inc, "exclude": exc}
        else:
            if out_dt is not None:
                _set_config_dtype(cfg_json, str(out_dt))
            cfg_json["adpq_fake_quant"] = {"format_version": FORMAT_VERSION, **_jsonable(cfg.to_dict()),
                                           "include": inc, "exclude": exc}
        files = run.finish(src, cfg_json)
    except BaseException:
        run.abort()
        raise
    finally:
        bar.close()
    return CheckpointReport(src.path, run.dst, format, _jsonable(cfg.to_dict()), reports,
                            time.perf_counter() - t0, bytes_read, files)
