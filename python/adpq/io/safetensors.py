"""A small, validating safetensors reader and a streaming shard writer.

adpq reads checkpoints itself (no `safetensors` or `torch` needed to quantize): the header is parsed
and checked (the checks every reader of adpq shares: SafetensorsFile), and each tensor is read on its
own with pread into a private array, one at a time, so that peak memory stays near the largest tensor
and a file cut short underneath is an error, not SIGBUS. open_regular, read_json_file and parse_json
are the same guards for the other files of a model folder (no FIFO, no deep or duplicate-key JSON).

File layout (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 N, N bytes of
UTF-8 JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the data buffer; offsets are relative to the start of the buffer (byte 8 + N).
"""
from __future__ import annotations

import json
import os
import re
import stat
import struct
from typing import Dict, Iterable, List, Optional, Tuple

import ml_dtypes
import numpy as np

from ..core import dtypes

__all__ = [
    "SafetensorsError",
    "DTYPES",
    "dtype_name",
    "is_float_dtype",
    "TensorInfo",
    "SafetensorsFile",
    "ShardWriter",
    "open_regular",
    "parse_json",
    "read_json_file",
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


# ------------------------------------------------------------------ opening files of a model folder
# Files adpq reads come from strangers: a FIFO, socket or device named like a model file must not block
# open() or read() forever, and JSON must not be able to exhaust the stack.

MAX_JSON_BYTES = 100 * 1024 * 1024  # config.json, index files (the reference header limit)
MAX_JSON_DEPTH = 64                # a safetensors header needs 3 levels; deeper JSON is refused
MAX_DIMS = 32                      # (NumPy 1.x's limit; safetensors files in practice have <= 5)
_INTP_MAX = 2**63 - 1

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str, error=None) -> int:
    """A read-only file descriptor of `path`, which must be a regular file: anything else (a FIFO, a
    socket, a device, a directory) raises `error` (default SafetensorsError) before open() can block.
    (The file is opened with O_NONBLOCK and checked again with fstat, so a swap between the stat and
    the open cannot block either.)"""
    error = error or SafetensorsError
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {_not_regular(st.st_mode)}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise error(f"{path}: cannot open: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {_not_regular(st.st_mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def pread_exact(fd: int, buf, offset: int) -> int:
    """Fills the writable buffer `buf` with the file's bytes from `offset` (os.preadv: no mapping, so a
    file cut short underneath gives a short count, never SIGBUS). Returns the bytes read (fewer than
    len(buf) only at the end of the file)."""
    mv = memoryview(buf).cast("B")
    done, n = 0, len(mv)
    while done < n:
        got = os.preadv(fd, [mv[done:done + (1 << 30)]], offset + done)
        if got <= 0:
            break
        done += got
    return done


class DuplicateKeyError(ValueError):
    pass


def _unique_pairs(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise DuplicateKeyError(f"duplicate key {k!r}")
        d[k] = v
    return d


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(raw: bytes) -> int:
    """The nesting depth of the JSON text `raw` (objects and arrays), without parsing it: brackets
    outside strings, counted with NumPy (a header of megabytes takes milliseconds)."""
    b = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    step = (b == ord("{")).astype(np.int8) + (b == ord("[")) - (b == ord("}")) - (b == ord("]"))
    return int(np.cumsum(step, dtype=np.int64).max(initial=0))


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes, where: str, error=None, unique: bool = True):
    """JSON text -> Python object, as strictly as serde_json (safetensors' reader) reads it: UTF-8, no
    NaN/Infinity, nesting at most MAX_JSON_DEPTH levels (deeper input would exhaust the parser's stack)
    and, with `unique`, no object with a repeated key. Anything else raises `error` (a ValueError)
    naming `where`."""
    error = error or SafetensorsError
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: invalid UTF-8 at byte {e.start}") from None
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{where}: JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH} accepted)")
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs if unique else None,
                          parse_constant=_no_constant)
    except DuplicateKeyError as e:
        raise error(f"{where}: invalid JSON: {e}") from None
    except (ValueError, RecursionError) as e:  # (JSONDecodeError; an integer of > 4300 digits)
        raise error(f"{where}: invalid JSON: {e}") from None


def read_json_file(path: str, error=None, unique: bool = True):
    """A small JSON file of a model folder (config.json, an index): a regular file of at most
    MAX_JSON_BYTES, parsed by parse_json. Errors raise `error` naming the file."""
    error = error or SafetensorsError
    fd = open_regular(path, error)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{path}: {size} bytes; a JSON file of a model folder is at most {MAX_JSON_BYTES}")
        buf = bytearray(size + 1)
        try:
            got = pread_exact(fd, buf, 0)
        except OSError as e:
            raise error(f"{path}: cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if got > size:
        raise error(f"{path}: changed while it was read")
    return parse_json(bytes(buf[:got]), path, error, unique)


def _check_entries(path: str, header: dict, data_len: int) -> Dict[str, "TensorInfo"]:
    """The header's tensors, validated as safetensors' reader does, and stricter where noted."""
    tensors: Dict[str, TensorInfo] = {}
    for name, e in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
            raise SafetensorsError(f"{where}: corrupt header entry (needs dtype, shape, data_offsets): {str(e)[:200]}")
        dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dt, str) or dt not in DTYPES:
            raise SafetensorsError(f"{where}: unsupported dtype {dt!r} (supported: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise SafetensorsError(f"{where}: corrupt shape {str(shape)[:200]} (a list of integers >= 0)")
        if len(shape) > MAX_DIMS:
            raise SafetensorsError(f"{where}: {len(shape)} dimensions (at most {MAX_DIMS} supported)")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_uint(o) for o in offs) or offs[0] > offs[1]:
            raise SafetensorsError(f"{where}: corrupt data_offsets {str(offs)[:200]} (needs [begin, end], "
                                   "0 <= begin <= end)")
        numel, nonzero = 1, 1
        for d in shape:
            numel *= d
            nonzero *= max(d, 1)
        if nonzero * DTYPES[dt].itemsize > _INTP_MAX:
            raise SafetensorsError(f"{where}: shape {shape} overflows a 64-bit size")
        nbytes = numel * DTYPES[dt].itemsize
        if nbytes != offs[1] - offs[0]:
            raise SafetensorsError(
                f"{where}: size mismatch: shape {shape} x {dt} is {nbytes} bytes "
                f"but data_offsets span {offs[1] - offs[0]}")
        if offs[1] > data_len:
            raise SafetensorsError(
                f"{where}: truncated file: data ends at byte {8 + offs[1]} after the header "
                f"but the file has {data_len} bytes of data")
        tensors[name] = TensorInfo(name, dt, tuple(shape), offs[0], offs[1], path)
    # safetensors' rule: sorted by offset, the tensors tile the data area exactly (no overlap, no gap,
    # nothing after the last one)
    pos, prev = 0, None
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != pos:
            what = (f"overlaps tensor {prev!r}" if t.begin < pos
                    else f"leaves a gap of {t.begin - pos} bytes after {'tensor ' + repr(prev) if prev else 'the header'}")
            raise SafetensorsError(f"{path}: tensor {t.name!r}: data_offsets [{t.begin}, {t.end}] {what}")
        pos, prev = t.end, t.name
    if pos != data_len:
        raise SafetensorsError(f"{path}: {data_len - pos} bytes after the last tensor's data (the header does not "
                               "cover the file: corrupt, or data appended)")
    return tensors


class SafetensorsFile:
    """Parses and validates the header of one .safetensors file; tensors are read on demand.

    The checks (safetensors' own reader is the reference, docs/FORMAT.md "Inputs"): a regular file;
    header length <= 100 MB and inside the file; UTF-8 JSON object, nesting <= 64 levels, no repeated
    key; __metadata__ absent, null or str -> str; each entry a known dtype, a shape of integers >= 0
    whose size fits 64 bits, data_offsets [begin, end] with end - begin == numel * itemsize; the
    tensors tile the data area exactly (no overlap, no gap, nothing after). Every failure is a
    SafetensorsError naming the file and the tensor.

    The file stays open (close() or garbage collection closes it) and tensors are read with pread
    into private arrays: a file cut short or rewritten underneath gives an error, never SIGBUS.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._fd = -1
        fd = open_regular(self.path)
        try:
            st = os.fstat(fd)
            self.file_size = st.st_size
            head = bytearray(8)
            got = pread_exact(fd, head, 0)
            if got < 8:
                raise SafetensorsError(f"{self.path}: not a safetensors file (only {got} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > self.file_size:
                raise SafetensorsError(
                    f"{self.path}: corrupt or truncated safetensors file (header length {n}, "
                    f"file size {self.file_size})")
            raw = bytearray(n)
            if pread_exact(fd, raw, 8) != n:
                raise SafetensorsError(f"{self.path}: truncated while its header was read")
        except OSError as e:
            os.close(fd)
            raise SafetensorsError(f"{self.path}: cannot read: {e.strerror or e}") from e
        except BaseException:
            os.close(fd)
            raise
        try:
            self._parse(raw, n)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _parse(self, raw: bytearray, n: int) -> None:
        header = parse_json(bytes(raw), f"{self.path}: corrupt safetensors header")
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.data_start = 8 + n
        meta = header.pop("__metadata__", None)
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise SafetensorsError(f"{self.path}: corrupt safetensors header (__metadata__ must map str to str)")
        self.metadata: Dict[str, str] = meta
        self.tensors: Dict[str, TensorInfo] = _check_entries(self.path, header, self.file_size - self.data_start)

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def names(self) -> List[str]:
        """Tensor names in file order (by data offset)."""
        return sorted(self.tensors, key=lambda k: (self.tensors[k].begin, k))

    def get(self, name: str, copy: bool = False) -> np.ndarray:
        """The tensor as a private array read from the file (read-only unless copy=True)."""
        info = self.tensors[name]
        if self._fd < 0:
            raise SafetensorsError(f"{self.path}: tensor {name!r}: the file is closed")
        return _read(self._fd, info, self.data_start, self.file_size, copy)


def _read(fd: int, info: TensorInfo, data_start: int, file_size: int, copy: bool) -> np.ndarray:
    dt = info.np_dtype
    if info.nbytes == 0:
        out = np.zeros(info.shape, dtype=dt)
    else:
        where = f"{info.path}: tensor {info.name!r}"
        try:
            size = os.fstat(fd).st_size
            if size != file_size:
                raise SafetensorsError(f"{where}: the file changed size since its header was read "
                                       f"({file_size} -> {size} bytes)")
            out = np.empty(info.shape, dtype=dt)
            got = pread_exact(fd, out.reshape(-1).view(np.uint8), data_start + info.begin)
        except OSError as e:
            raise SafetensorsError(f"{where}: cannot read: {e.strerror or e}") from e
        if got != info.nbytes:
            raise SafetensorsError(f"{where}: truncated read ({got} of {info.nbytes} bytes): the file was cut "
                                   "short since its header was read")
    if not copy:
        out.flags.writeable = False
    return out


def read_tensor(info: TensorInfo, data_start: int, copy: bool = False) -> np.ndarray:
    """One tensor of a file whose header was validated (opens info.path; SafetensorsFile.get reads
    through the descriptor it holds)."""
    fd = open_regular(info.path)
    try:
        return _read(fd, info, data_start, os.fstat(fd).st_size, copy)
    finally:
        os.close(fd)


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
        a = np.ascontiguousarray(a).reshape(a.shape)  # (ascontiguousarray makes a 0-d array 1-d)
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
