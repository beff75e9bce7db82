"""Writing an output folder safely: atomic files, the run manifest, resume, shards.

Every file is written under a temporary name and renamed; the folder holds INCOMPLETE_MARKER (the
run's manifest: job, finished shards, their reports) until the last file is in place, so a crash
leaves nothing that looks complete, and a re-run with the same job resumes after the last intact shard.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .folder import FORMAT_VERSION, INCOMPLETE_MARKER, INDEX_NAME, SINGLE_NAME, CheckpointError, SourceCheckpoint
from .safetensors import ShardWriter

# Files never copied from the source folder (weights in other formats, our own bookkeeping).
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".tmp")
_SKIP_NAMES = {INDEX_NAME, "pytorch_model.bin.index.json", "config.json", INCOMPLETE_MARKER}


def atomic_write_text(path: str, text: str) -> None:
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


def header_estimate(tensors: Iterable[Tuple[str, bool]]) -> int:
    """Bytes to reserve for a shard header, from the run's (name, quantized) tensors. The reserve is
    part of the file (the header is padded to it), so equal runs must estimate it equally: a model
    saved by adpq.hf.save_adpq is byte-identical to the folder it was loaded from."""
    return 256 + sum(9 * len(n) + 8 * 120 + 800 if q else len(n) + 120 for n, q in tensors)


def parse_size(s) -> int:
    if isinstance(s, (int, float)):
        return int(s)
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)\s*", str(s), re.I)
    if not m:
        raise CheckpointError(f"bad size {s!r} (examples: 2GB, 500MB, 1073741824)")
    unit = m.group(2).upper().rstrip("B")
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(float(m.group(1)) * mult)


class OutputRun:
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
        atomic_write_text(os.path.join(self.dst, INCOMPLETE_MARKER), json.dumps(self.manifest))

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
            atomic_write_text(os.path.join(self.dst, INDEX_NAME), json.dumps(index, indent=2))
        elif os.path.exists(os.path.join(self.dst, INDEX_NAME)):
            os.unlink(os.path.join(self.dst, INDEX_NAME))
        if src is not None:
            for fn in sorted(os.listdir(src.path)):
                p = os.path.join(src.path, fn)
                if fn in _SKIP_NAMES or fn.endswith(_SKIP_SUFFIXES) or not os.path.isfile(p):
                    continue
                _atomic_copy(p, os.path.join(self.dst, fn))
        if config_json is not None:
            atomic_write_text(os.path.join(self.dst, "config.json"), json.dumps(config_json, indent=2) + "\n")
        os.unlink(os.path.join(self.dst, INCOMPLETE_MARKER))  # last: the folder is now complete
        return [sh["final"] for sh in shards]
