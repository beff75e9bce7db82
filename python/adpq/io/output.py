"""Writing an output folder safely: atomic files, the run manifest, resume, shards.

Every file is written under a temporary name and renamed; the folder holds INCOMPLETE_MARKER (the
run's manifest: job, finished shards, their reports) until the last file is in place, so a crash
leaves nothing that looks complete, and a re-run with the same job resumes after the last intact shard.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .folder import (FORMAT_VERSION, INCOMPLETE_MARKER, INDEX_NAME, SINGLE_NAME, CheckpointError, SourceCheckpoint,
                     check_inside)
from .safetensors import ShardWriter

# Files never copied from the source folder (weights in other formats, our own bookkeeping).
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".tmp")
# Held (flock) by the run writing a folder, for as long as it writes: a second run into the same
# destination is refused instead of deleting the first one's temporaries. Removed when the run ends;
# one left by a killed run is free (the kernel drops the lock with the process) and taken over.
LOCK_NAME = ".adpq-lock"
_SKIP_NAMES = {INDEX_NAME, "pytorch_model.bin.index.json", "config.json", INCOMPLETE_MARKER, LOCK_NAME}

_ERRNO_TEXT = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class OutputError(CheckpointError, OSError):
    """Writing an output folder failed in the file system (full disk, read-only, permission, another
    run writing to it...): what happened and where, for the command line. A CheckpointError and an
    OSError (errno and filename set as the OSError's)."""

    def __init__(self, message: str, errno_: Optional[int] = None, filename: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.errno = errno_
        self.filename = filename

    def __str__(self) -> str:
        return self.message


def describe_os_error(e: OSError, doing: str) -> OutputError:
    """An OutputError saying what failed (`doing`, e.g. "writing model.safetensors"), where, and why."""
    if isinstance(e, OutputError):
        return e
    why = _ERRNO_TEXT.get(e.errno) or e.strerror or str(e) or type(e).__name__
    code = errno.errorcode.get(e.errno) if e.errno else None
    where = os.fsdecode(e.filename) if e.filename is not None else None
    msg = f"{doing} failed: {why}" + (f" ({code})" if code else "") + (f" at {where}" if where else "")
    return OutputError(msg, e.errno, where)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_text(path: str, text: str) -> None:
    """path holds text, or (an OSError: a full disk...) is as it was, the temporary removed."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _atomic_copy(src: str, dst: str) -> None:
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.tmp")
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _entries(path: str) -> List[str]:
    """The folder's names, but the lock of the run writing it."""
    return [n for n in os.listdir(path) if n != LOCK_NAME]


def _looks_disposable(path: str) -> bool:
    """True if an existing folder can be deleted by --overwrite (a model folder or empty)."""
    names = _entries(path)
    return (not names or INCOMPLETE_MARKER in names or "config.json" in names
            or any(n.endswith(".safetensors") for n in names))


def _empty_folder(path: str) -> None:
    """Deletes what path holds but the lock (kept, and held: the folder stays this run's)."""
    for n in _entries(path):
        p = os.path.join(path, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


class _FolderLock:
    """An exclusive flock on dst/LOCK_NAME, taken without waiting."""

    def __init__(self, folder: str, shown: str):
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            self.fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"another adpq run is writing to {shown}; wait for it to finish (or stop it "
                                  "and re-run this command to resume)", errno.EBUSY, folder) from None
            raise

    def release(self, remove: bool = True) -> None:
        """Drops the lock; remove: its file too (while still held, so no other run holds a lock on a
        file that is gone)."""
        if self.fd is None:
            return
        if remove:
            _unlink_quietly(self.path)
        os.close(self.fd)
        self.fd = None

    def __del__(self) -> None:  # (a run dropped without finish/abort: the lock goes with it)
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def header_estimate(tensors: Iterable[Tuple[str, bool]]) -> int:
    """Bytes to reserve for a shard header, from the run's (name, quantized) tensors. The reserve is
    part of the file (the header is padded to it), so equal runs must estimate it equally: a model
    saved by adpq.hf.save_adpq is byte-identical to the folder it was loaded from."""
    return 256 + sum(9 * len(n) + 8 * 120 + 800 if q else len(n) + 120 for n, q in tensors)


MAX_SIZE = 2**62  # (larger sizes would not fit the int64 offsets of a file)


def parse_size(s) -> int:
    """A size in bytes from 2GB, 500MB, 1.5GiB, 1073741824 (NumPy integers too); CheckpointError for
    anything else, or one that is not in [0, 2**62] (0: one tensor per shard)."""
    if isinstance(s, (int, float, np.integer, np.floating)) and not isinstance(s, (bool, np.bool_)):
        v = float(s) if isinstance(s, (float, np.floating)) else int(s)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?i?B?)\s*", str(s)[:100], re.I)
        if not m:
            raise CheckpointError(f"bad size {str(s)[:40]!r} (examples: 2GB, 500MB, 1073741824)")
        unit = m.group(2).upper().rstrip("B")
        mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
        v = float(m.group(1)) * mult if "." in m.group(1) else int(m.group(1)) * mult
    if isinstance(v, float) and not math.isfinite(v):
        raise CheckpointError(f"bad size {str(s)[:40]!r}: not a finite number")
    if not 0 <= v <= MAX_SIZE:
        raise CheckpointError(f"bad size {str(s)[:40]!r}: must be between 0 and {MAX_SIZE} bytes")
    return int(v)


class OutputRun:
    """One conversion run into dst: the manifest, the shard being written, resume bookkeeping.

    The run holds dst's lock (LOCK_NAME) from its start to finish() or abort(). An OSError of the file
    system (full disk, read-only, permission...) becomes an OutputError saying what and where, after
    this run's temporary files are removed (the manifest stays: a re-run resumes)."""

    def __init__(self, src: str, dst: str, job: dict, overwrite: bool, resume: bool, max_shard_bytes: int,
                 header_estimate: int = 0):
        self.dst = os.path.abspath(dst)
        self.shown = dst
        self.job = job
        self.max_shard_bytes = max_shard_bytes
        # Header space reserved at the start of each shard so that data is written once, in place
        # (ShardWriter falls back to a copy if the header turns out larger).
        self.reserve = min(header_estimate, max_shard_bytes // 64)
        self.writer: Optional[ShardWriter] = None
        self._pending: List[dict] = []
        self._lock: Optional[_FolderLock] = None
        src_abs = os.path.abspath(src)
        if self.dst == src_abs or self.dst.startswith(src_abs + os.sep) or src_abs.startswith(self.dst + os.sep):
            raise CheckpointError(f"destination {dst} and source {src} must be separate folders")
        if os.path.lexists(self.dst) and not os.path.isdir(self.dst):
            raise CheckpointError(f"destination {dst} exists and is not a folder")
        created = not os.path.exists(self.dst)
        try:
            with self._os_errors(f"creating the output folder {dst}"):
                os.makedirs(self.dst, exist_ok=True)
                self._lock = _FolderLock(self.dst, dst)
            self._open(overwrite, resume)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            if created:  # (a folder this run made and left empty)
                with contextlib.suppress(OSError):
                    os.rmdir(self.dst)
            raise
        self.done_reports: Dict[str, dict] = {}
        for sh in self.manifest["shards"]:
            for r in sh["reports"]:
                self.done_reports[r["name"]] = r

    def _open(self, overwrite: bool, resume: bool) -> None:
        """The manifest: a resumed run's, or a new one in an emptied dst."""
        dst = self.shown
        marker = os.path.join(self.dst, INCOMPLETE_MARKER)
        self.manifest = None
        has_marker = os.path.exists(marker)
        if has_marker and resume and not overwrite:
            try:
                with open(marker, encoding="utf-8") as f:
                    m = json.load(f)
            except (OSError, ValueError, RecursionError):
                m = None
            if not isinstance(m, dict) or not isinstance(m.get("shards"), list):
                m = None  # (a corrupt manifest: started over below)
            if m is not None and m.get("job") == self.job:
                self.manifest = m
            elif m is not None:
                raise CheckpointError(
                    f"destination {dst} holds an interrupted run with different settings or source; "
                    "use --overwrite to start over")
        with self._os_errors(f"preparing the output folder {dst}"):
            if self.manifest is None:
                if _entries(self.dst) and not has_marker and not overwrite:
                    raise CheckpointError(f"destination {dst} already exists (use --overwrite to replace it)")
                if _entries(self.dst):
                    if not _looks_disposable(self.dst):
                        raise CheckpointError(
                            f"destination {dst} is not empty and does not look like a model folder; "
                            "refusing to delete it")
                    _empty_folder(self.dst)
                self.manifest = {"job": self.job, "shards": [], "finishing": False}
                self._save()
            else:
                self._validate_resumed()

    @contextlib.contextmanager
    def _os_errors(self, doing: str) -> Iterator[None]:
        """An OSError in the block: this run's temporaries removed, then an OutputError."""
        try:
            yield
        except OSError as e:
            if isinstance(e, OutputError):
                raise
            self._drop_temporaries()
            raise describe_os_error(e, doing) from e

    def _drop_temporaries(self) -> None:
        """Removes the shard being written and any temporary of this run (it holds the lock: every
        `.tmp` in dst is its own). Never raises."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.abort()
            self.writer = None
        if self._lock is None:  # (not this run's folder yet: its temporaries may be another run's)
            return
        with contextlib.suppress(OSError):
            for fn in os.listdir(self.dst):
                if fn.endswith(".tmp"):
                    _unlink_quietly(os.path.join(self.dst, fn))

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
            for fn in (sh.get("part"), sh.get("final")) if isinstance(sh, dict) else ():
                if not isinstance(fn, str) or os.path.basename(fn) != fn or fn in ("", ".", ".."):
                    continue  # (a corrupt manifest names only files of this folder)
                p = os.path.join(self.dst, fn)
                if os.path.isfile(p) and os.path.getsize(p) == sh.get("file_size"):
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
        with self._os_errors(f"writing a shard of {self.shown}"):
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
        with self._os_errors(f"writing {os.path.join(self.shown, os.path.basename(self.writer.path))}"):
            w, self.writer = self.writer, None
            try:
                fsize = w.close()
            except BaseException:
                self.writer = w  # (removed by _drop_temporaries / abort)
                raise
            self.manifest["shards"].append({
                "part": os.path.basename(w.path), "file_size": fsize, "entries": list(w.entries),
                "reports": self._pending})
            self._pending = []
            self._save()

    def abort(self) -> None:
        """Ends a failed run: its temporaries removed, the lock released (the manifest and the finished
        shards stay: a re-run resumes). Never raises."""
        self._drop_temporaries()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def finish(self, src: Optional[SourceCheckpoint], config_json: Optional[dict]) -> List[str]:
        """Rename parts to final shard names, write the index, config.json, copied files; drop the marker."""
        self.close_shard()
        with self._os_errors(f"finishing {self.shown}"):
            files = self._finish(src, config_json)
        if self._lock is not None:  # (the folder is complete: no run is writing it now)
            self._lock.release()
            self._lock = None
        return files

    def _finish(self, src: Optional[SourceCheckpoint], config_json: Optional[dict]) -> List[str]:
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
                _atomic_copy(check_inside(src.path, fn), os.path.join(self.dst, fn))  # (a symlink out: refused)
        if config_json is not None:
            atomic_write_text(os.path.join(self.dst, "config.json"), json.dumps(config_json, indent=2) + "\n")
        os.unlink(os.path.join(self.dst, INCOMPLETE_MARKER))  # last: the folder is now complete
        return [sh["final"] for sh in shards]
