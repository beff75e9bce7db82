"""Hostile files (issue 16, part A): every reader answers a corrupt, truncated, mutated, non-regular
or escaping input with a ValueError/OSError subclass naming the file - never another exception, a crash,
a hang or a read outside the model folder - and leaves nothing that looks complete.

Generated broadly: truncation points of real small files, structured mutations of every header field,
random byte flips, adpq metadata mutations, non-finite stored arrays, many shapes and dtypes; the
safetensors library (its Rust reader) is the reference: whatever it refuses, adpq refuses too.
"""
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import struct

import ml_dtypes
import numpy as np
import pytest

import adpq
from adpq.io.adpq_format import AdpqCheckpoint, dequantize_checkpoint, inspect_checkpoint
from adpq.io.checkpoint import quantize_checkpoint
from adpq.io.folder import INCOMPLETE_MARKER, CheckpointError, SourceCheckpoint, read_config
from adpq.io.safetensors import SafetensorsError, SafetensorsFile, write_safetensors

from _ckpt_util import make_llama

CLEAR = (ValueError, OSError)  # (SafetensorsError and CheckpointError are ValueErrors)
CFG = dict(bits=3, group_size=64, outlier_ratio=0.02)
QNAME = "model.layers.0.mlp.up_proj.weight"


@contextlib.contextmanager
def deadline(seconds=20):
    """A hang fails the test instead of stopping the suite."""
    def boom(*_):
        raise TimeoutError(f"hung for {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def outcome(fn, *args, **kw):
    """None if fn succeeds, else its exception, which must be a clear one."""
    try:
        with deadline():
            fn(*args, **kw)
    except CLEAR as e:
        assert not isinstance(e, TimeoutError), e
        return e
    return None


def refused(fn, *args, match=None, **kw):
    e = outcome(fn, *args, **kw)
    assert e is not None, f"{getattr(fn, '__name__', fn)} accepted a hostile input"
    if match:
        assert match in str(e), str(e)
    return e


def nothing_complete(dst):
    """A failed run leaves no folder, an empty one, or one still marked incomplete."""
    return not os.path.exists(dst) or not os.listdir(dst) or os.path.exists(os.path.join(dst, INCOMPLETE_MARKER))


def read_all_source(path):
    src = SourceCheckpoint(path)
    for n in src.names():
        src.get(n)


def read_all_file(path):
    with SafetensorsFile(path) as f:
        for n in f.names():
            f.get(n)


def read_all_adpq(path):
    ck = AdpqCheckpoint(path)
    for n in ck.names():
        ck.tensor(n)


def quantize_into(src, dst):
    e = outcome(quantize_checkpoint, src, dst, adpq.QuantConfig(**CFG), progress=False)
    assert e is not None or not nothing_complete(dst)
    if e is not None:
        assert nothing_complete(dst), os.listdir(dst)
    return e


def dequantize_into(src, dst):
    e = outcome(dequantize_checkpoint, src, dst, progress=False)
    if e is not None:
        assert nothing_complete(dst), os.listdir(dst)
    return e


# ------------------------------------------------------------------ fixtures and file surgery


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    src = make_llama(d / "src", dtype="bfloat16", shards=1)
    src2 = make_llama(d / "src2", dtype="float32", shards=2)
    quantize_checkpoint(src, d / "q", adpq.QuantConfig(**CFG), progress=False)  # fp16 outliers, symmetric
    quantize_checkpoint(src, d / "qg", adpq.QuantConfig(**CFG, symmetric=False, outlier_format="group"),
                        progress=False)
    return {"src": src, "src2": src2, "q": str(d / "q"), "qg": str(d / "qg")}


def clone(base, key, tmp_path, name=None):
    dst = tmp_path / (name or key)
    shutil.copytree(base[key], dst)
    return str(dst)


def split(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header, data, path, raw_header=None):
    b = raw_header if raw_header is not None else json.dumps(header).encode()
    b += b" " * (-len(b) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(b)) + b + data)


def reference_refuses(path):
    st = pytest.importorskip("safetensors.torch")  # (torch: BF16 and F8 too)
    try:
        st.load(open(path, "rb").read())
    except Exception:
        return True
    return False


# ------------------------------------------------------------------ 1. truncation


def _cuts(size, header_end, k):
    pts = set(range(0, 17)) | {header_end - 1, header_end, header_end + 1, size - 1}
    rng = random.Random(size)
    pts |= {rng.randrange(17, size) for _ in range(k)}
    return sorted(p for p in pts if 0 <= p < size)


@pytest.mark.parametrize("k", range(40))
def test_truncated_source_is_refused_everywhere(base, tmp_path, k):
    src = clone(base, "src", tmp_path)
    p = os.path.join(src, "model.safetensors")
    size = os.path.getsize(p)
    cuts = _cuts(size, 8 + struct.unpack("<Q", open(p, "rb").read(8))[0], 40)
    os.truncate(p, cuts[k * len(cuts) // 40])
    e = refused(SafetensorsFile, p)
    assert "model.safetensors" in str(e)
    refused(read_all_source, src)
    if k % 4 == 0:
        e = quantize_into(src, str(tmp_path / "out"))
        assert e is not None and "model.safetensors" in str(e)


@pytest.mark.parametrize("which", ["q", "qg"])
@pytest.mark.parametrize("k", range(12))
def test_truncated_adpq_folder_is_refused_everywhere(base, tmp_path, which, k):
    q = clone(base, which, tmp_path)
    p = os.path.join(q, "model.safetensors")
    size = os.path.getsize(p)
    cut = _cuts(size, 8 + struct.unpack("<Q", open(p, "rb").read(8))[0], 12)[k * 3 % 12 + (k // 4)]
    os.truncate(p, cut)
    for fn in (AdpqCheckpoint, inspect_checkpoint, read_all_adpq):
        refused(fn, q)
    assert dequantize_into(q, str(tmp_path / "deq")) is not None


@pytest.mark.parametrize("frac", [0.05, 0.3, 0.6, 0.95])
def test_file_cut_short_underneath_is_an_error_not_sigbus(base, tmp_path, frac):
    src = clone(base, "src", tmp_path)
    p = os.path.join(src, "model.safetensors")
    s = SourceCheckpoint(src)
    f = SafetensorsFile(p)
    os.truncate(p, int(os.path.getsize(p) * frac))
    for reader in (s, f):
        with pytest.raises(SafetensorsError, match="changed size|truncated"):
            for n in reader.names():
                reader.get(n)


def test_quantize_survives_its_source_shrinking_mid_run(base, tmp_path, monkeypatch):
    src = clone(base, "src2", tmp_path)
    shard = os.path.join(src, "model-00002-of-00002.safetensors")
    import adpq.io.checkpoint as ckpt

    real, calls = ckpt.quantize, []

    def shrinking(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.truncate(shard, os.path.getsize(shard) // 2)
        return real(*a, **kw)

    monkeypatch.setattr(ckpt, "quantize", shrinking)
    e = quantize_into(src, str(tmp_path / "out"))
    assert isinstance(e, SafetensorsError) and "model-00002-of-00002.safetensors" in str(e)


# ------------------------------------------------------------------ 2. structured header mutations

E = "model.layers.0.mlp.up_proj.weight"


def _header_mutations():
    """(id, function(header, data) -> (header or None, data, raw_header or None))."""
    m = {}

    def entry(field, value):
        def f(h, d):
            h[E][field] = value
            return h, d, None
        return f

    for v in [None, 1, "f32", "Q7", "F4", "", ["F32"], {"a": 1}, "F32 ", True]:
        m[f"dtype={v!r}"] = entry("dtype", v)
    for v in [None, 5, "x", [-1, 96], [160.0, 96], [True, 96], [160, 96, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
              1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [2**63, 2**63], [0, 2**64], [160],
              [160, 97], [2**70], ["160", 96], [[160], 96], {"0": 160}]:
        m[f"shape={str(v)[:30]}"] = entry("shape", v)

    def offs(f_):
        def f(h, d):
            b, e = h[E]["data_offsets"]
            h[E]["data_offsets"] = f_(b, e)
            return h, d, None
        return f

    for name, f_ in {"swap": lambda b, e: [e, b], "neg": lambda b, e: [-1, e - b - 1],
                     "three": lambda b, e: [b, e, e], "one": lambda b, e: [b], "none": lambda b, e: None,
                     "str": lambda b, e: [str(b), str(e)], "float": lambda b, e: [float(b), float(e)],
                     "shift+1": lambda b, e: [b + 1, e + 1], "shift-2": lambda b, e: [b - 2, e - 2],
                     "huge": lambda b, e: [2**64, 2**64 + e - b], "past_end": lambda b, e: [b + 10**9, e + 10**9],
                     "bool": lambda b, e: [False, True], "empty": lambda b, e: []}.items():
        m[f"data_offsets:{name}"] = offs(f_)

    def drop(field):
        def f(h, d):
            del h[E][field]
            return h, d, None
        return f

    for field in ("dtype", "shape", "data_offsets"):
        m[f"missing:{field}"] = drop(field)

    def whole(fn):
        def f(h, d):
            return fn(h, d)
        return f

    m["entry=list"] = whole(lambda h, d: ({**h, E: [1, 2]}, d, None))
    m["entry=null"] = whole(lambda h, d: ({**h, E: None}, d, None))
    m["root=list"] = whole(lambda h, d: (None, d, b"[1, 2, 3]"))
    m["root=null"] = whole(lambda h, d: (None, d, b"null"))
    m["root=number"] = whole(lambda h, d: (None, d, b"12345678"))
    m["root=string"] = whole(lambda h, d: (None, d, b'"abc"'))
    m["deep_nesting"] = whole(lambda h, d: (None, d, b'{"__metadata__": {"a": ' + b"[" * 100000 + b"]" * 100000 + b"}}"))
    m["deep_nesting_in_extra_field"] = whole(
        lambda h, d: (None, d, json.dumps(h).encode()[:-1] + b', "x": {"dtype": "U8", "shape": [0], '
                      b'"data_offsets": [0, 0], "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}}"))
    m["nan_constant"] = whole(lambda h, d: (None, d, json.dumps(h).encode()[:-1] + b', "__metadata__": {"a": NaN}}'))
    m["invalid_utf8"] = whole(lambda h, d: (None, d, json.dumps(h).encode()[:-1] + b', "\xff\xfe": 1}'))
    m["huge_int"] = whole(lambda h, d: (None, d, json.dumps(h).encode().replace(b'"shape": [', b'"shape": [' + b"9" * 5000 + b", ", 1)))

    def dup_entry(h, d):
        raw = json.dumps(h).encode()
        first = json.dumps({E: h[E]}).encode()[1:-1]
        return None, d, raw[:-1] + b", " + first + b"}"
    m["duplicate_tensor_name"] = dup_entry
    m["duplicate_metadata_key"] = whole(lambda h, d: (None, d, json.dumps(h).encode().replace(
        b'"__metadata__": {', b'"__metadata__": {"format": "np", ', 1)))
    for v in [[], "pt", 1, {"a": 1}, {"a": None}, {"a": ["x"]}]:
        m[f"__metadata__={v!r}"] = (lambda v: whole(lambda h, d: ({**h, "__metadata__": v}, d, None)))(v)

    def overlap(h, d):
        names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
        a, b = names[3], names[4]
        h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + h[b]["data_offsets"][1]
                                - h[b]["data_offsets"][0]]
        return h, d, None
    m["overlapping_offsets"] = overlap

    def alias(h, d):  # two entries on the very same bytes
        names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
        h[names[2]] = dict(h[names[1]])
        return h, d, None
    m["two_names_one_range"] = alias

    def gap(h, d):
        for k, v in h.items():
            if k != "__metadata__":
                b, e = v["data_offsets"]
                if b > 0:
                    v["data_offsets"] = [b + 8, e + 8]
        return h, b"\0" * 8 + d, None
    m["gap_after_header"] = gap
    m["trailing_bytes"] = whole(lambda h, d: (h, d + b"\0" * 16, None))
    m["data_cut_by_one"] = whole(lambda h, d: (h, d[:-1], None))
    return m


MUTATIONS = _header_mutations()


@pytest.mark.parametrize("mid", sorted(MUTATIONS))
def test_mutated_header_is_refused_like_the_reference(base, tmp_path, mid):
    src = clone(base, "src", tmp_path)
    p = os.path.join(src, "model.safetensors")
    h, d = split(p)
    h2, d2, raw = MUTATIONS[mid](h, d)
    join(h2, d2, p, raw)
    e = refused(SafetensorsFile, p)
    assert "model.safetensors" in str(e)
    if mid not in ("deep_nesting", "deep_nesting_in_extra_field", "huge_int"):
        assert reference_refuses(p) or mid.startswith(("duplicate", "dtype='F4'", "two_names", "shape=[160, 96, 1, 1")), \
            "adpq refuses a file the reference reads: a deliberate difference must be listed here"
    refused(read_all_source, src)
    if mid in ("overlapping_offsets", "duplicate_tensor_name", "two_names_one_range", "shape=[160, 97]"):
        assert quantize_into(src, str(tmp_path / "out")) is not None


@pytest.mark.parametrize("seed", range(120))
def test_random_byte_flips_in_the_header(base, tmp_path, seed):
    """Whatever a flip does, the reader refuses the file or reads every tensor of it; never more than the
    reference accepts."""
    rng = random.Random(seed)
    src = clone(base, "src" if seed % 2 else "q", tmp_path)
    p = os.path.join(src, "model.safetensors")
    raw = bytearray(open(p, "rb").read())
    n = struct.unpack("<Q", raw[:8])[0]
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(0, 8 + n) if rng.random() < 0.9 else rng.randrange(0, 8)
        raw[i] = rng.randrange(256) if rng.random() < 0.5 else raw[i] ^ (1 << rng.randrange(8))
    open(p, "wb").write(bytes(raw))
    e = outcome(read_all_file, p)
    if e is None:
        assert not reference_refuses(p) or _has_duplicates(p)
    if seed % 2:
        outcome(read_all_source, src)
    else:
        outcome(read_all_adpq, src)
        outcome(inspect_checkpoint, src)
        dequantize_into(src, str(tmp_path / "deq"))


def _has_duplicates(p):
    n = struct.unpack("<Q", open(p, "rb").read(8))[0]
    try:
        json.loads(open(p, "rb").read()[8:8 + n], object_pairs_hook=lambda kv: (
            (_ for _ in ()).throw(ValueError()) if len({k for k, _ in kv}) < len(kv) else dict(kv)))
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("header_len", [0, 1, 2**63, 2**64 - 1, 100 * 1024 * 1024 + 1, "size", "size-7"])
def test_header_length_field(base, tmp_path, header_len):
    src = clone(base, "src", tmp_path)
    p = os.path.join(src, "model.safetensors")
    raw = bytearray(open(p, "rb").read())
    n = {"size": len(raw), "size-7": len(raw) - 7}.get(header_len, header_len)
    raw[:8] = struct.pack("<Q", n)
    open(p, "wb").write(bytes(raw))
    refused(SafetensorsFile, p, match="model.safetensors")


DTYPE_CASES = [np.float32, np.float16, ml_dtypes.bfloat16, np.float64, np.int8, np.uint8, np.int16, np.uint16,
               np.int32, np.uint32, np.int64, np.uint64, np.bool_, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]
SHAPES = [(), (0,), (1,), (7,), (3, 5), (0, 4), (4, 0), (2, 3, 4), (1, 1, 1, 1, 9)]


@pytest.mark.parametrize("dt", DTYPE_CASES, ids=lambda d: np.dtype(d).name)
def test_every_dtype_and_shape_reads_back_and_every_cut_is_refused(tmp_path, dt):
    rng = np.random.default_rng(0)
    arrays = [(f"t{i}", (rng.standard_normal(s) * 10).astype(dt)) for i, s in enumerate(SHAPES)]
    p = str(tmp_path / "m.safetensors")
    write_safetensors(p, arrays)
    with SafetensorsFile(p) as f:
        for name, a in arrays:
            assert f.get(name).tobytes() == a.tobytes() and f.get(name).shape == a.shape
    raw = open(p, "rb").read()
    for cut in sorted({1, 7, 8, 9, len(raw) // 2, len(raw) - 1} | set(range(len(raw) - 40, len(raw), 3))):
        open(p, "wb").write(raw[:cut])
        refused(SafetensorsFile, p)


# ------------------------------------------------------------------ 3. non-regular files


def _make_special(path, kind):
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        return s
    elif kind == "chardev":
        os.symlink("/dev/zero", path)  # (outside the folder as well: refused either way)
    return None


@pytest.mark.parametrize("kind", ["fifo", "dir", "socket", "chardev"])
@pytest.mark.parametrize("fname", ["model.safetensors", "config.json", "model.safetensors.index.json",
                                   "model-00001-of-00002.safetensors"])
def test_non_regular_files_are_refused_without_blocking(base, tmp_path, kind, fname):
    src = clone(base, "src2" if fname.startswith("model-") or fname.endswith("index.json") else "src", tmp_path)
    p = os.path.join(src, fname)
    os.unlink(p)
    sock = _make_special(p, kind)
    try:
        e = refused(SourceCheckpoint, src)
        assert fname in str(e)
        assert quantize_into(src, str(tmp_path / "out")) is not None
        if fname == "config.json":
            refused(read_config, src)
            refused(adpq.load, src, dequantize=True)
    finally:
        if sock is not None:
            sock.close()


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_non_regular_file_in_adpq_folder(base, tmp_path, kind):
    q = clone(base, "q", tmp_path)
    os.unlink(os.path.join(q, "model.safetensors"))
    _make_special(os.path.join(q, "model.safetensors"), kind)
    for fn in (AdpqCheckpoint, inspect_checkpoint):
        refused(fn, q)
    assert dequantize_into(q, str(tmp_path / "deq")) is not None
    refused(adpq.load, q, dequantize=True)


# ------------------------------------------------------------------ 4. nothing outside the folder


@pytest.mark.parametrize("target", ["../other/model.safetensors", "ABS", "sub/model.safetensors", "..", ".", "",
                                    "a\\b.safetensors", "model.safetensors\0x", "config.json",
                                    "../src2/model-00001-of-00002.safetensors"])
def test_index_naming_files_outside_is_refused(base, tmp_path, target):
    src = clone(base, "src2", tmp_path, "m")
    os.makedirs(tmp_path / "other")
    os.makedirs(os.path.join(src, "sub"))
    shutil.copy(os.path.join(src, "model-00001-of-00002.safetensors"), tmp_path / "other" / "model.safetensors")
    shutil.copy(os.path.join(src, "model-00001-of-00002.safetensors"), os.path.join(src, "sub", "model.safetensors"))
    clone(base, "src2", tmp_path, "src2")
    if target == "ABS":
        target = str(tmp_path / "other" / "model.safetensors")
    ip = os.path.join(src, "model.safetensors.index.json")
    index = json.load(open(ip))
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = target
    json.dump(index, open(ip, "w"))
    refused(SourceCheckpoint, src)
    assert quantize_into(src, str(tmp_path / "out")) is not None


@pytest.mark.parametrize("fname", ["model-00001-of-00002.safetensors", "config.json", "model.safetensors.index.json"])
def test_symlink_escaping_the_folder_is_refused(base, tmp_path, fname):
    src = clone(base, "src2", tmp_path, "m")
    outside = tmp_path / "elsewhere"
    os.makedirs(outside)
    p = os.path.join(src, fname)
    shutil.move(p, outside / fname)
    os.symlink(outside / fname, p)
    e = refused(SourceCheckpoint, src, match="outside the model folder")
    assert fname in str(e)


def test_copied_files_escaping_the_folder_are_refused(base, tmp_path):
    """The files copied beside the weights (tokenizer, chat template) are read from the folder only: a
    symlink to a file elsewhere is refused, and nothing complete is left."""
    src = clone(base, "src2", tmp_path, "m")
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    os.symlink(secret, os.path.join(src, "tokenizer.json"))
    e = quantize_into(src, str(tmp_path / "out"))
    assert e is not None and "outside the model folder" in str(e)
    assert not os.path.exists(tmp_path / "out" / "tokenizer.json")


def test_symlinks_inside_the_folder_and_the_hub_cache_layout_are_read(base, tmp_path):
    """A symlink within the folder is fine, and so is the Hugging Face hub cache, whose snapshot files
    are symlinks into the repository's blobs/ folder."""
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    os.makedirs(repo / "blobs")
    shutil.copytree(base["src2"], snap)
    for fn in os.listdir(snap):
        shutil.move(snap / fn, repo / "blobs" / ("blob-" + fn))
        os.symlink(os.path.join("..", "..", "blobs", "blob-" + fn), snap / fn)
    assert len(SourceCheckpoint(str(snap)).names()) == len(SourceCheckpoint(base["src2"]).names())
    inner = clone(base, "src", tmp_path, "inner")
    os.rename(os.path.join(inner, "model.safetensors"), os.path.join(inner, "real.bin"))
    os.symlink("real.bin", os.path.join(inner, "model.safetensors"))
    read_all_source(inner)
    # ...but the same blobs link from a folder that is not a hub snapshot is refused
    fake = tmp_path / "x" / "notsnapshots" / "abc"
    os.makedirs(fake)
    for fn in os.listdir(snap):
        os.symlink(os.path.realpath(snap / fn), fake / fn)
    refused(SourceCheckpoint, str(fake), match="outside the model folder")


# ------------------------------------------------------------------ 5. config.json


@pytest.mark.parametrize("text", ["null", "[]", "[1, 2]", "3", '"llama"', "true", "", "{", "{\"a\": NaN",
                                  "[" * 50000 + "]" * 50000, "\xff"])
def test_non_object_config_is_refused_before_any_work(base, tmp_path, text, monkeypatch):
    src = clone(base, "src", tmp_path)
    open(os.path.join(src, "config.json"), "wb").write(text.encode("latin-1"))
    import adpq.io.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "quantize", lambda *a, **k: pytest.fail("quantized before refusing config.json"))
    e = refused(SourceCheckpoint, src, match="config.json")
    assert isinstance(e, CheckpointError)
    assert quantize_into(src, str(tmp_path / "out")) is not None
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("version", [True, False, "3", "1", None, 0, -1, 4, 10**100, 3.0, [3], {"v": 3}])
def test_format_version_must_be_an_int_in_range(base, tmp_path, version):
    q = clone(base, "q", tmp_path)
    cp = os.path.join(q, "config.json")
    cfg = json.load(open(cp))
    cfg["quantization_config"]["format_version"] = version
    json.dump(cfg, open(cp, "w"))
    for fn in (AdpqCheckpoint, inspect_checkpoint):
        refused(fn, q, match="format")
    assert dequantize_into(q, str(tmp_path / "deq")) is not None


# ------------------------------------------------------------------ 6. adpq metadata


def _meta_mutations():
    m = {}

    def set_(k, v):
        return lambda d: {**d, k: v}

    def drop(k):
        return lambda d: {x: y for x, y in d.items() if x != k}

    for k in ("shape", "dtype", "arrays", "config"):
        m[f"missing:{k}"] = drop(k)
    for v in [None, [], [160], [160, 96, 1], [0, 96], [160, 0], [-160, 96], [2**40, 2**40], [2**62, 4],
              ["160", 96], [160.0, 96], [True, 96], [96, 160], [161, 96], "160x96", {"rows": 160}]:
        m[f"shape={str(v)[:24]}"] = set_("shape", v)
    for v in [None, "int8", "float64", "", 3, ["float32"]]:
        m[f"dtype={v!r}"] = set_("dtype", v)
    for v in [None, "codes", [], ["codes"], ["scales"], ["codes", "codes", "scales"], ["codes", "scales", "bogus"],
              ["codes", "scales", 3], ["codes", "scales", "outlier_counts"]]:
        m[f"arrays={v!r}"] = set_("arrays", v)
    for v in [-1, "12", 1.5, True, 10**9, 0, 1]:
        m[f"num_outliers={v!r}"] = set_("num_outliers", v)
    for v in [None, [], "bits=3", 3]:
        m[f"config={v!r}"] = set_("config", v)
    for k, v in [("bits", 5), ("bits", None), ("bits", "3"), ("group_size", 2**63), ("group_size", 0),
                 ("group_size", 32), ("outlier_ratio", float("nan")), ("gamma", -1), ("scale_dtype", "int8"),
                 ("outlier_format", "zip"), ("symmetric", False), ("unknown_field", 1), ("zero_point", None),
                 ("column_scaling", "none")]:
        m[f"config.{k}={v!r}"] = (lambda k, v: lambda d: {**d, "config": {**d["config"], k: v}})(k, v)
    return m


META = _meta_mutations()


def _set_meta(q, fn):
    p = os.path.join(q, "model.safetensors")
    h, d = split(p)
    key = f"adpq:{QNAME}"
    meta = json.loads(h["__metadata__"][key])
    h["__metadata__"][key] = json.dumps(fn(meta), allow_nan=True) if callable(fn) else fn
    join(h, d, p)


@pytest.mark.parametrize("mid", sorted(META))
def test_malformed_adpq_metadata_is_a_checkpoint_error(base, tmp_path, mid):
    q = clone(base, "q", tmp_path)
    _set_meta(q, META[mid])
    e = outcome(read_all_adpq, q)
    assert isinstance(e, CheckpointError), (mid, e)
    assert QNAME in str(e) and "model.safetensors" in str(e) or "adpq" in str(e), str(e)
    outcome(inspect_checkpoint, q)
    assert dequantize_into(q, str(tmp_path / "deq")) is not None


@pytest.mark.parametrize("threads", [10**7, -1, 0, "2", None])
def test_a_files_threads_is_ignored_when_reading(base, tmp_path, threads):
    """`threads` in a tensor's config is how the writer ran, not part of the format: any value reads
    the same tensor (and never sizes a thread pool)."""
    q = clone(base, "q", tmp_path)
    ref = AdpqCheckpoint(q).quantized_tensor(QNAME).dequantize()
    _set_meta(q, lambda d: {**d, "config": {**d["config"], "threads": threads}})
    assert np.array_equal(AdpqCheckpoint(q).quantized_tensor(QNAME).dequantize(), ref)
    assert outcome(read_all_adpq, q) is None  # every tensor of the folder reads


@pytest.mark.parametrize("text", ["", "{", "null", "[]", "3", '"x"', "{\"shape\": NaN}", "[" * 10000 + "]" * 10000,
                                  '{"shape": [160, 96], "shape": [160, 96]}'])
def test_metadata_that_is_not_json_object(base, tmp_path, text):
    q = clone(base, "q", tmp_path)
    _set_meta(q, text)
    e = refused(AdpqCheckpoint, q)
    assert isinstance(e, CheckpointError) and QNAME in str(e)


def test_metadata_described_twice_or_array_shared(base, tmp_path):
    q = clone(base, "q", tmp_path)
    p = os.path.join(q, "model.safetensors")
    h, d = split(p)
    other = "model.layers.0.self_attn.o_proj.weight"
    meta = json.loads(h["__metadata__"][f"adpq:{QNAME}"])
    h["__metadata__"][f"adpq:{QNAME}.adpq"] = json.dumps(meta)  # claims arrays of a name that owns none
    join(h, d, p)
    refused(AdpqCheckpoint, q)
    h["__metadata__"].pop(f"adpq:{QNAME}.adpq")
    h["__metadata__"][f"adpq:{other}"] = h["__metadata__"][f"adpq:{QNAME}"]
    join(h, d, p)
    refused(read_all_adpq, q)


# ------------------------------------------------------------------ 7. stored arrays


@pytest.mark.parametrize("which,array", [("q", "scales"), ("q", "outlier_values"), ("q", "column_scales"),
                                         ("qg", "scales"), ("qg", "zeros"), ("qg", "outlier_scales"),
                                         ("qg", "outlier_zeros")])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_stored_arrays_are_refused(base, tmp_path, which, array, value):
    q = clone(base, which, tmp_path)
    p = os.path.join(q, "model.safetensors")
    raw = bytearray(open(p, "rb").read())
    with SafetensorsFile(p) as f:
        t = f.tensors[f"{QNAME}.adpq.{array}"]
        start = f.data_start + t.begin
    a = np.frombuffer(raw, dtype=t.np_dtype, count=t.numel, offset=start).copy()
    a[len(a) // 2] = value
    raw[start:start + t.nbytes] = a.tobytes()
    open(p, "wb").write(bytes(raw))
    e = refused(read_all_adpq, q)
    assert isinstance(e, CheckpointError) and array in str(e) and QNAME in str(e)
    assert dequantize_into(q, str(tmp_path / "deq")) is not None
    refused(adpq.load, q, dequantize=True)


ARRAY_CASES = [(r, c, g, bits, fmt, sym) for (r, c) in [(1, 8), (3, 100), (17, 64), (64, 130)]
               for g in (8, 64, -1) for bits in (2, 4) for fmt, sym in (("fp16", True), ("group", False))]


@pytest.mark.parametrize("r,c,g,bits,fmt,sym", ARRAY_CASES)
def test_from_arrays_refuses_every_corruption(r, c, g, bits, fmt, sym):
    rng = np.random.default_rng(r * c + g)
    w = rng.standard_normal((r, c)).astype(np.float32)
    cfg = adpq.QuantConfig(bits=bits, group_size=g, outlier_ratio=0.1, outlier_format=fmt, symmetric=sym)
    qt = adpq.quantize(w, config=cfg)
    arrays = qt.arrays()
    adpq.QuantizedTensor.from_arrays(arrays, qt.shape, qt.config).dequantize()
    for k, a in arrays.items():
        if a.dtype.kind == "f" or a.dtype == ml_dtypes.bfloat16:
            for v in (np.nan, np.inf):
                bad = a.copy()
                bad.reshape(-1)[rng.integers(a.size)] = v
                with pytest.raises(ValueError, match=k):
                    adpq.QuantizedTensor.from_arrays({**arrays, k: bad}, qt.shape, qt.config)
        for bad in (a[:-1], np.concatenate([a.reshape(-1), a.reshape(-1)[:1]]), a.astype(np.float64)):
            with pytest.raises((ValueError, TypeError)):
                adpq.QuantizedTensor.from_arrays({**arrays, k: bad}, qt.shape, qt.config)
    if qt.num_outliers:
        counts = arrays["outlier_counts"].copy()
        counts[int(np.flatnonzero(counts)[0])] = min(np.iinfo(counts.dtype).max, c + 1)
        with pytest.raises(ValueError):
            adpq.QuantizedTensor.from_arrays({**arrays, "outlier_counts": counts}, qt.shape, qt.config)
        if arrays["outlier_counts"].max() >= 2:  # (then equal positions are not ascending)
            for fill in (0, 0xFF):
                idx = np.full_like(arrays["outlier_indices"], fill)
                with pytest.raises(ValueError, match="outlier_indices"):
                    adpq.QuantizedTensor.from_arrays({**arrays, "outlier_indices": idx}, qt.shape, qt.config)


# ------------------------------------------------------------------ 8. transformers


@pytest.mark.parametrize("case", ["truncated", "meta:shape", "meta:arrays", "nan_scale", "config_null",
                                  "overlap", "format_version"])
def test_from_pretrained_and_load_refuse_hostile_adpq_folders(base, tmp_path, case):
    transformers = pytest.importorskip("transformers")
    q = clone(base, "q", tmp_path)
    p = os.path.join(q, "model.safetensors")
    if case == "truncated":
        os.truncate(p, os.path.getsize(p) - 1000)
    elif case.startswith("meta:"):
        _set_meta(q, META["shape=[0, 96]" if case == "meta:shape" else "arrays=['codes']"])
    elif case == "nan_scale":
        raw = bytearray(open(p, "rb").read())
        with SafetensorsFile(p) as f:
            t = f.tensors[f"{QNAME}.adpq.scales"]
            raw[f.data_start + t.begin:f.data_start + t.begin + 2] = np.array([np.nan], np.float16).tobytes()
        open(p, "wb").write(bytes(raw))
    elif case == "config_null":
        open(os.path.join(q, "config.json"), "w").write("null")
    elif case == "overlap":
        join(*MUTATIONS["overlapping_offsets"](*split(p))[:2], p)
    elif case == "format_version":
        cfg = json.load(open(os.path.join(q, "config.json")))
        cfg["quantization_config"]["format_version"] = "3"
        json.dump(cfg, open(os.path.join(q, "config.json"), "w"))
    refused(adpq.load, q, dequantize=True)
    refused(adpq.load, q)
    if case != "config_null":  # (transformers reads config.json itself first; null is no adpq folder then)
        refused(transformers.AutoModelForCausalLM.from_pretrained, q)
