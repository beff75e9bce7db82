"""Quantize Hugging Face safetensors checkpoints tensor by tensor.

    report = adpq.quantize_checkpoint("smollm2-135m", "smollm2-adpq", adpq.QuantConfig(bits=3))
    print(report.format_table())

The on-disk adpq format is specified in docs/FORMAT.md. Summary: ordinary safetensors shards in which
a quantized tensor NAME is stored as the arrays of its QuantizedTensor ("NAME" holds its codes,
"NAME.adpq.<array>" the others), described by the shard's __metadata__ key "adpq:NAME"; other tensors are stored unchanged; config.json carries
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
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core.config import CafeqConfig, QuantConfig, default_threads
from ..core.metrics import metrics
from ..core.quantize import quantize
from .cafeq_pairs import PairWork, attention_heads, find_pairs, model_type_of
from .folder import FORMAT_VERSION, QUANT_METHOD, CheckpointError, array_entry, SourceCheckpoint, output_dtype, set_config_dtype
from .output import OutputRun, header_estimate, parse_size
from .progress import Progress
from .report import CheckpointReport, TensorReport, jsonable, report_from_dict
from .safetensors import TensorInfo, is_float_dtype

__all__ = ["quantize_checkpoint", "select_tensors", "is_default_quantized"]

QUANTIZABLE_DTYPES = ("F32", "F16", "BF16")
# Name fragments of tensors that are kept by default even when 2-D.
_DEFAULT_KEEP = re.compile(r"(^|\.)(embed_tokens|embed_positions|embeddings?|lm_head|wte|wpe|[a-z_]*norm[a-z_]*|ln_f|ln_\d+)(\.|$)")


def is_default_quantized(info: TensorInfo) -> bool:
    """2-D '.weight' tensors of linear layers; embeddings, lm_head, norms kept (docs/DESIGN.md 3)."""
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


_REPORT_FIELDS = tuple(f.name for f in dataclasses.fields(TensorReport))


def _process_tensor(src, selected, cfg, run_cfg, cfg_json_dict, format, out_dt, compute_metrics, threads,
                    calibration, pairs, info):
    """One tensor (on a pipeline thread): (entries to write, shard metadata, its report, whose values
    are plain Python: it goes into the run's JSON manifest as it is)."""
    ts = time.perf_counter()
    pair, part = pairs.take(info.name) if pairs is not None and info.name in pairs else (None, None)
    if part == "bias":
        w = pair.bias.astype(info.np_dtype)
    elif pair is not None:  # (the transformed float weight: the quantization's own reference)
        w = pair.wv if part == "v" else pair.wo
    else:
        w = src.get(info.name)
    meta: Dict[str, str] = {}
    if info.name not in selected:
        if format == "fake" and out_dt is not None and is_float_dtype(info.np_dtype):
            w = w.astype(out_dt)  # a fake-quant folder is uniformly in the requested dtype
        rep = TensorReport(info.name, info.shape, info.dtype, False, info.nbytes, int(w.nbytes),
                           8.0 * w.dtype.itemsize)
        rep.seconds = time.perf_counter() - ts
        return [(info.name, w)], meta, rep
    hessian = calibration.hessians.get(info.name) if calibration is not None else None
    try:  # (run_cfg: cfg with the pipeline's threads; same arrays)
        if pair is not None:
            qt = pair.qv if part == "v" else pair.qo
        elif hessian is None:
            qt = quantize(w, config=run_cfg)
        else:
            qt = quantize(w, config=run_cfg, hessian=hessian, gptq=calibration.gptq)
    except (ValueError, TypeError, MemoryError) as e:
        raise CheckpointError(f"tensor {info.name!r} ({os.path.basename(info.path)}): {e}") from e
    rep = TensorReport(info.name, info.shape, info.dtype, True, info.nbytes, 0, float(qt.bits_per_weight),
                       jsonable(dict(qt.bits_breakdown())), int(qt.num_outliers), gptq=hessian is not None,
                       cafeq=jsonable(dict(pair.stats)) if pair is not None else {})
    if format == "adpq":
        arrays = qt.arrays()
        entries = [(array_entry(info.name, k), a) for k, a in arrays.items()]
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
        m = metrics(w, w_hat, threads=threads)
        rep.metrics = jsonable({k: v for k, v in m.items() if k not in ("num_outliers", "bits_per_weight")})
    rep.seconds = time.perf_counter() - ts
    return entries, meta, rep


def _cafeq_record(caf: CafeqConfig, specs, reports) -> dict:
    """quantization_config["cafeq"]: the options, the pairs, their mean pair errors and time."""
    by_name = {r.name: r for r in reports}
    stats = [by_name[p.v].cafeq for p in specs if by_name[p.v].cafeq]
    rec = {**caf.to_dict(), "pairs": len(specs)}
    if stats:
        for k in ("error_plain", "error_transformed", "error"):
            rec[f"mean_{k}"] = float(np.mean([s[k] for s in stats]))
        rec["pairs_untransformed"] = int(sum(s.get("identity", 0) for s in stats))
        rec["seconds"] = float(sum(s["seconds"] for s in stats))
    return jsonable(rec)


def _check_calibration(calibration, cfg: QuantConfig) -> Optional[dict]:
    """The calibration's record for quantization_config, after checking it fits this run."""
    if calibration is None:
        return None
    for attr in ("hessians", "config", "gptq", "info", "fingerprint"):
        if not hasattr(calibration, attr):
            raise TypeError(f"calibration must be an adpq.calibrate(...) result, got {type(calibration).__name__}")
    def core(c):
        return {k: v for k, v in c.to_dict().items() if k != "threads"}
    if core(calibration.config) != core(cfg):
        raise CheckpointError("the calibration was run with another quantization config (its layers were "
                              f"quantized with {core(calibration.config)}); calibrate with this config")
    return jsonable({**calibration.info, "gptq": calibration.gptq.to_dict()})


def _cafeq_config(cafeq) -> Optional[CafeqConfig]:
    if cafeq is None or cafeq is False:
        return None
    if cafeq is True:
        return CafeqConfig()
    if isinstance(cafeq, CafeqConfig):
        return cafeq
    if isinstance(cafeq, dict):
        try:
            return CafeqConfig.from_dict(cafeq)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"invalid cafeq options: {e}") from None
    raise TypeError(f"cafeq must be True/False, a CafeqConfig or a dict of its fields, got {type(cafeq).__name__}")


def quantize_checkpoint(src_dir, dst_dir, config=None, include=None, exclude=None, format: str = "adpq",
                        progress: bool = True, overwrite: bool = False, resume: bool = True,
                        fake_dtype: Optional[str] = None, max_shard_size="2GB",
                        compute_metrics: bool = True, calibration=None, cafeq=None) -> CheckpointReport:
    """Quantize a Hugging Face safetensors folder into dst_dir, tensor by tensor (two workers on half
    the cores each, up to six tensors in flight, unless config.threads is set).

    calibration: an adpq.calibrate(...) result for this folder and config: each tensor it holds a
    Hessian for is refined with GPTQ (docs/DESIGN.md 2.7); the calibration is recorded in
    quantization_config. config=None then takes the calibration's config.

    cafeq: True (CafeqConfig()), a CafeqConfig or a dict of its fields: each attention layer's
    (v_proj, o_proj) is transformed and rounded as a pair (docs/DESIGN.md 2.8; the heads come from
    config.json); v_proj's bias, if any, is transformed with it. Recorded in quantization_config.
    With a calibration, it must be the calibration's (None takes it): the pair is transformed as
    calibrate transformed it and each member rounded by GPTQ with its Hessian.

    format="adpq": packed arrays (docs/FORMAT.md); format="fake": an ordinary HF folder holding the
    dequantized weights in the source dtype (or fake_dtype: float16/bfloat16/float32).
    A re-run into the same dst_dir with the same settings resumes an interrupted run.
    """
    cfg = config if config is not None else calibration.config if calibration is not None else QuantConfig()
    cal_json = _check_calibration(calibration, cfg)
    caf = _cafeq_config(cafeq)
    if calibration is not None:
        cal_caf = getattr(calibration, "cafeq", None)
        if caf is None:
            caf = cal_caf
        elif cal_caf is None or cal_caf != caf:
            raise CheckpointError("the calibration was run " + ("without CafeQ" if cal_caf is None else
                                  f"with other CafeQ options ({cal_caf.to_dict()})") + ": its Hessians are those of "
                                  "another model; calibrate with the same cafeq")
    if format not in ("adpq", "fake"):
        raise CheckpointError(f"unknown format {format!r} (use 'adpq' or 'fake')")
    out_dt = output_dtype(fake_dtype)
    if fake_dtype is not None and format != "fake":
        raise CheckpointError("fake_dtype/--dtype applies to --format fake only")
    src = SourceCheckpoint(src_dir)
    try:  # reject a bad configuration before anything is written
        quantize(np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16), config=cfg)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"invalid quantization config: {e}") from None
    infos = list(src.tensors.values())
    selected = set(select_tensors(infos, include, exclude))
    inc, exc = _patterns(include), _patterns(exclude)
    cfg_json_dict = jsonable(cfg.to_dict())  # every tensor's metadata (qt.config is cfg)
    job_cfg = {k: v for k, v in cfg_json_dict.items() if k != "threads"}  # threads: same output
    job = {"kind": "quantize", "format": format, "config": job_cfg, "include": inc,
           "exclude": exc, "fake_dtype": fake_dtype, "source": src.fingerprint(),
           "format_version": FORMAT_VERSION, "max_shard_bytes": parse_size(max_shard_size)}
    if calibration is not None:
        job["calibration"] = calibration.fingerprint()
    pairs = None
    if caf is not None:
        job["cafeq"] = caf.to_dict()
        heads = attention_heads(src.config)
        pair_specs = find_pairs([i.name for i in infos], selected, heads, {i.name: tuple(i.shape) for i in infos},
                                model_type_of(src.config))
    est = header_estimate((i.name, i.name in selected) for i in infos)
    run = OutputRun(src.path, dst_dir, job, overwrite, resume, job["max_shard_bytes"], header_estimate=est)
    todo = [i for i in infos if not run.is_done(i.name)]
    if caf is not None:
        pairs = PairWork(pair_specs, [i.name for i in todo], src.get, heads, cfg, caf, None, calibration)
    bar = Progress(sum(i.nbytes for i in todo), progress, "quantizing")
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
                             cfg_json_dict, format, out_dt, compute_metrics, per_tensor_threads, calibration, pairs)
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
        reports = [new_reports[i.name] if i.name in new_reports else report_from_dict(run.done_reports[i.name])
                   for i in infos]
        cfg_json = dict(src.config)
        cfg_json.pop("quantization_config", None)
        if format == "adpq":
            cfg_json["quantization_config"] = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION,
                                               **jsonable(cfg.to_dict()), "include": inc, "exclude": exc}
            if cal_json is not None:
                cfg_json["quantization_config"]["calibration"] = cal_json
            if caf is not None:
                cfg_json["quantization_config"]["cafeq"] = _cafeq_record(caf, pair_specs, reports)
        else:
            if out_dt is not None:
                set_config_dtype(cfg_json, str(out_dt))
            cfg_json["adpq_fake_quant"] = {"format_version": FORMAT_VERSION, **jsonable(cfg.to_dict()),
                                           "include": inc, "exclude": exc}
            if cal_json is not None:
                cfg_json["adpq_fake_quant"]["calibration"] = cal_json
            if caf is not None:
                cfg_json["adpq_fake_quant"]["cafeq"] = _cafeq_record(caf, pair_specs, reports)
        files = run.finish(src, cfg_json)
    except BaseException:
        run.abort()
        raise
    finally:
        bar.close()
    return CheckpointReport(src.path, run.dst, format, jsonable(cfg.to_dict()), reports,
                            time.perf_counter() - t0, bytes_read, files)
