"""A small, validating safetensors reader and a streaming shard writer.

adpq reads checkpoints itself (no `safetensors` or `torch` needed to quantize): the header is parsed
and checked, and each tensor is memory-mapped on its own, one at a time, so that peak memory stays
near the largest tensor and the mapped pages are released when the tensor is dropped.

File layout (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 N, N bytes of
UTF-8 JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the data buffer; offsets are relative to the start of the buffer (byte 8 + N).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Iterable, List, Optional, Tuple

import ml_dtypes
import numpy as np

from .. import _core
from ..core import dtypes

__all__ = [
    "SafetensorsError",
    "DTYPES",
    "dtype_name",
    "is_float_dtype",
    "TensorInfo",
    "SafetensorsFile",
    "ShardWriter",
    "write_safetensors",
]

# Largest header accepted (the reference implementation uses the same 100 MB limit).
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": dtypes.NUMPY["float32"],
    "F16": dtypes.NUMPY["float16"],
    "BF16": dtypes.NUMPY["bfloat16"],
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAME_OF = {v: k for k, v in DTYPES.items()}


def is_float_dtype(dt) -> bool:
    """True for the floating-point dtypes a safetensors file can hold (bfloat16 and float8 included)."""
    return np.dtype(dt).kind == "f" or np.dtype(dt) in (DTYPES["BF16"], DTYPES["F8_E4M3"], DTYPES["F8_E5M2"])


class SafetensorsError(ValueError):
    """A safetensors file is missing, corrupt, truncated or uses an unsupported dtype."""


def dtype_name(dt) -> str:
    """The safetensors dtype string of a NumPy dtype (F32, BF16, U8, ...)."""
    dt = np.dtype(dt)
    try:
        return _NAME_OF[dt.newbyteorder("=") if dt.byteorder == "<" else dt]
    except KeyError:
        raise SafetensorsError(f"dtype {dt} cannot be stored in safetensors") from None


class TensorInfo:
    __slots__ = ("name", "dtype", "shape", "begin", "end", "path")

    def __init__(self, name, dtype, shape, begin, end, path):
        self.name, self.dtype, self.shape, self.begin, self.end, self.path = name, dtype, shape, begin, end, path

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    def __repr__(self):
        return f"TensorInfo({self.name!r}, {self.dtype}, {list(self.shape)}, {os.path.basename(self.path)})"


def _is_uint(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class SafetensorsFile:
    """Parses and validates the header of one .safetensors file; tensors are read on demand.

    Every check names the file and the tensor: header length, JSON, entry fields, known dtype,
    byte size == prod(shape) * itemsize, offsets inside the file.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        try:
            self.file_size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise SafetensorsError(f"{self.path}: not a safetensors file (only {len(head)} bytes)")
                (n,) = struct.unpack("<Q", head)
                if n == 0 or n > MAX_HEADER_BYTES or 8 + n > self.file_size:
                    raise SafetensorsError(
                        f"{self.path}: corrupt or truncated safetensors file (header length {n}, "
                        f"file size {self.file_size})")
                raw = f.read(n)
        except OSError as e:
            raise SafetensorsError(f"{self.path}: cannot read: {e}") from e
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{self.path}: corrupt safetensors header (invalid JSON: {e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.data_start = 8 + n
        data_len = self.file_size - self.data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise SafetensorsError(f"{self.path}: corrupt safetensors header (__metadata__ must map str to str)")
        self.metadata: Dict[str, str] = meta
        self.tensors: Dict[str, TensorInfo] = {}
        for name, e in header.items():
            where = f"{self.path}: tensor {name!r}"
            if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
                raise SafetensorsError(f"{where}: corrupt header entry {e!r}")
            dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
            if dt not in DTYPES:
                raise SafetensorsError(
                    f"{where}: unsupported dtype {dt!r} (supported: {', '.join(DTYPES)})")
            if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
                raise SafetensorsError(f"{where}: corrupt shape {shape!r}")
            if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_uint(o) for o in offs)
                    or offs[0] > offs[1]):
                raise SafetensorsError(f"{where}: corrupt data_offsets {offs!r}")
            numel = 1
            for d in shape:
                numel *= d
            if numel * DTYPES[dt].itemsize != offs[1] - offs[0]:
                raise SafetensorsError(
                    f"{where}: size mismatch: shape {shape} x {dt} is {numel * DTYPES[dt].itemsize} bytes "
                    f"but data_offsets span {offs[1] - offs[0]}")
            if offs[1] > data_len:
                raise SafetensorsError(
                    f"{where}: truncated file: data ends at byte {self.data_start + offs[1]} "
                    f"but the file has {self.file_size} bytes")
            self.tensors[name] = TensorInfo(name, dt, tuple(shape), offs[0], offs[1], self.path)

    def names(self) -> List[str]:
        """Tensor names in file order (by data offset)."""
        return sorted(self.tensors, key=lambda k: (self.tensors[k].begin, k))

    def get(self, name: str, copy: bool = False) -> np.ndarray:
        """The tensor as a read-only memory-mapped array (or a private copy with copy=True).

        The mapping covers this tensor only and is released when the array is garbage collected.
        """
        return read_tensor(self.tensors[name], self.data_start, copy=copy)


def read_tensor(info: TensorInfo, data_start: int, copy: bool = False) -> np.ndarray:
    dt = info.np_dtype
    if info.nbytes == 0:
        return np.zeros(info.shape, dtype=dt)
    off = data_start + info.begin
    if copy:
        out = np.empty(info.shape, dtype=dt)
        with open(info.path, "rb") as f:
            f.seek(off)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != info.nbytes:
            raise SafetensorsError(f"{info.path}: tensor {info.name!r}: truncated read ({got} of {info.nbytes} bytes)")
        return out
    # mapped (and unmapped when the array is freed) by the C core without the GIL: the mmap module and
    # np.memmap hold it, and a pipeline of threads then waits on every unmap's TLB shootdown
    try:
        raw = _core.map_range(info.path, off, info.nbytes)
    except (OSError, ValueError) as e:
        raise SafetensorsError(f"{info.path}: tensor {info.name!r}: cannot map: {e}") from e
    return raw.view(dt).reshape(info.shape)


def _header_bytes(entries: Dict[str, dict], metadata: Optional[Dict[str, str]]) -> bytes:
    h = {}
    if metadata:
        h["__metadata__"] = metadata
    h.update(entries)
    b = json.dumps(h, separators=(",", ":")).encode("utf-8")
    b += b" " * (-len(b) % 8)  # pad with spaces so that the data buffer starts 8-byte aligned
    return struct.pack("<Q", len(b)) + b


def _copy_file(src_f, dst_f, nbytes: int, start: int = 0) -> None:
    """Append nbytes of src_f from offset `start` to dst_f, in the kernel where possible."""
    src_f.flush()
    dst_f.flush()
    fin, fout = src_f.fileno(), dst_f.fileno()
    left, pos = nbytes, start
    try:
        while left > 0:
            n = os.copy_file_range(fin, fout, left, pos)
            if n <= 0:
                raise OSError("copy_file_range made no progress")
            left -= n
            pos += n
        return
    except (AttributeError, OSError):
        pass
    src_f.seek(pos)
    dst_f.seek(0, os.SEEK_END)
    while left > 0:
        chunk = src_f.read(min(left, 1 << 24))
        if not chunk:
            raise OSError("short read while copying shard data")
        dst_f.write(chunk)
        left -= len(chunk)


class ShardWriter:
    """Streams tensors into one safetensors file without holding them in memory.

    With `reserve` > 0, data is written straight into `.<name>.tmp` after `8 + reserve` bytes kept
    for the header; if the final header fits, it is written there, padded with spaces (valid JSON
    whitespace, as the reference writer pads too). Otherwise (or with reserve=0) the data is copied
    behind the header into a second temporary (kernel copy). `close()` then renames the temporary to
    `path` (atomic on POSIX); `abort()` removes the temporaries.
    """

    def __init__(self, path: str, metadata: Optional[Dict[str, str]] = None, reserve: int = 0):
        self.path = os.fspath(path)
        d, b = os.path.split(self.path)
        self._data_path = os.path.join(d, f".{b}.data.tmp")
        self._tmp_path = os.path.join(d, f".{b}.tmp")
        self._reserve = (int(reserve) + 7) // 8 * 8
        self._base = 8 + self._reserve if self._reserve else 0
        self._f = open(self._data_path, "wb")
        if self._base:
            self._f.seek(self._base)
        self.entries: Dict[str, dict] = {}
        self.metadata: Dict[str, str] = dict(metadata or {})
        self.size = 0

    def add(self, name: str, arr: np.ndarray) -> None:
        if name in self.entries:
            raise ValueError(f"duplicate tensor name {name!r} in {self.path}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is not a valid tensor name")
        a = np.asarray(arr)
        dt = dtype_name(a.dtype)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        a = np.ascontiguousarray(a)
        n = a.nbytes
        if n:
            self._f.write(memoryview(a.reshape(-1).view(np.uint8)))
        self.entries[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [self.size, self.size + n]}
        self.size += n

    def close(self) -> int:
        """Finish the file atomically; returns the file size."""
        hdr = _header_bytes(self.entries, self.metadata)
        if self._reserve and len(hdr) - 8 <= self._reserve:
            body = hdr[8:] + b" " * (self._reserve - (len(hdr) - 8))
            self._f.seek(0)
            self._f.write(struct.pack("<Q", self._reserve) + body)
            self._f.close()
            os.replace(self._data_path, self.path)
            return self._base + self.size
        self._f.close()
        with open(self._data_path, "rb") as src, open(self._tmp_path, "wb") as dst:
            dst.write(hdr)
            src.seek(self._base)
            _copy_file(src, dst, self.size, self._base)
        os.replace(self._tmp_path, self.path)
        os.unlink(self._data_path)
        return len(hdr) + self.size

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            for p in (self._data_path, self._tmp_path):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass


def write_safetensors(path: str, tensors: Iterable[Tuple[str, np.ndarray]],
                      metadata: Optional[Dict[str, str]] = None) -> int:
    """Write (name, array) pairs to one safetensors file atomically; returns the file size."""
    w = ShardWriter(path, metadata)
    try:
        for name, a in tensors:
            w.add(name, a)
        return w.close()
    except BaseException:
        w.abort()
        raise
