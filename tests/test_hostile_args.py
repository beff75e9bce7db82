"""Hostile arguments at the API boundary (issue 16, part B): integers too large for C, NumPy scalars,
bools, floats and strings where ints are taken, thread counts far beyond the cores, outlier_mask /
soft_threshold corner cases, unaligned views, and file-system faults while an output folder is written
(full disk, read-only, permission, another run writing to it).

Every bad value must give a ValueError or TypeError naming it, before any C call or allocation: never
OverflowError, SystemError, MemoryError or a crash."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
import pytest

import adpq
from adpq import _core
from adpq.core import config as config_mod
from adpq.io import output as output_mod
from adpq.io.checkpoint import quantize_checkpoint
from adpq.io.folder import INCOMPLETE_MARKER, CheckpointError

from _ckpt_util import GROUP, make_llama

RNG = np.random.default_rng(16)
W = RNG.standard_normal((24, 80)).astype(np.float32)  # (rows end in a short group for group_size 64)

INT_TYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.intc, np.uintc, np.longlong, np.ulonglong)
FLOAT_TYPES = (np.float16, np.float32, np.float64, np.longdouble)
HUGE_INTS = (2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30, 10**400, -2**31 - 1, -2**63 - 1, -10**400)
NOT_INTS = (True, False, np.bool_(True), 3.0, np.float32(64), "64", b"64", [64], None, 1 + 0j, object())
NOT_REALS = (True, np.bool_(False), "0.01", b"1", [0.1], 1j, object())
def _id(v):
    r = repr(v)
    return r if len(r) <= 24 else f"{r[:10]}..{len(r)}chars"


BAD_KINDS = (OverflowError, SystemError, MemoryError, IndexError, KeyError, AttributeError)


def _refused(fn, *exc):
    """fn() raises one of exc (ValueError or TypeError by default), not one of BAD_KINDS."""
    exc = exc or (ValueError, TypeError)
    with pytest.raises(Exception) as ei:
        fn()
    assert isinstance(ei.value, exc) and not isinstance(ei.value, BAD_KINDS), repr(ei.value)
    assert len(str(ei.value)) < 400, str(ei.value)  # one readable line, even for a 400-digit int
    return ei.value


# ---------------------------------------------------------------------------- QuantConfig fields

INT_FIELDS = {"bits": 4, "group_size": 32, "threads": 2}
REAL_FIELDS = {"outlier_ratio": 0.02, "gamma": 0.5, "lam": 1.5}


@pytest.mark.parametrize("field", sorted(INT_FIELDS))
@pytest.mark.parametrize("value", HUGE_INTS + (-1, 0) + NOT_INTS, ids=_id)
def test_config_int_fields_refuse_hostile_values(field, value):
    if field == "threads" and value is None:
        return  # (None: every core)
    if field == "group_size" and type(value) is int and (value == -1 or 8 <= value < 2**63):
        adpq.QuantConfig(group_size=value)  # an int64_t: valid (a group as long as the row)
        return
    e = _refused(lambda: adpq.QuantConfig(**{field: value}))
    assert field in str(e)
    _refused(lambda: adpq.quantize(W, **{field: value}))
    _refused(lambda: adpq.QuantConfig.from_dict({field: value}))


@pytest.mark.parametrize("field", sorted(INT_FIELDS))
@pytest.mark.parametrize("np_type", INT_TYPES, ids=lambda t: t.__name__)
def test_config_int_fields_take_numpy_integers(field, np_type):
    v = INT_FIELDS[field]
    cfg = adpq.QuantConfig(**{field: np_type(v)})
    got = getattr(cfg, field)
    assert type(got) is int and got == v  # stored as a Python int: JSON and the C core take it
    json.dumps(cfg.to_dict())
    a = adpq.quantize(W, **{field: np_type(v)}).arrays()
    b = adpq.quantize(W, **{field: v}).arrays()
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.parametrize("field", sorted(REAL_FIELDS))
@pytest.mark.parametrize("np_type", FLOAT_TYPES + INT_TYPES, ids=lambda t: t.__name__)
def test_config_real_fields_take_numpy_scalars(field, np_type):
    v = REAL_FIELDS[field] if np_type in FLOAT_TYPES else 1
    if field == "outlier_ratio" and np_type not in FLOAT_TYPES:
        v = 0
    cfg = adpq.QuantConfig(**{field: np_type(v)})
    got = getattr(cfg, field)
    assert type(got) is float and got == float(np_type(v))
    json.dumps(cfg.to_dict())
    adpq.quantize(W, config=cfg)


@pytest.mark.parametrize("field", sorted(REAL_FIELDS))
@pytest.mark.parametrize("value", (10**400, -10**400, float("nan"), float("inf"), -1.0, np.float32("nan"),
                                   np.float64("inf")) + NOT_REALS, ids=_id)
def test_config_real_fields_refuse_hostile_values(field, value):
    e = _refused(lambda: adpq.QuantConfig(**{field: value}))
    assert field in str(e)
    _refused(lambda: adpq.soft_threshold(W, **{field: value}))


@pytest.mark.parametrize("value", (np.bool_(True), np.bool_(False), 1, 0, np.int8(1), np.uint64(0)), ids=_id)
def test_symmetric_takes_numpy_bools_and_0_1(value):
    cfg = adpq.QuantConfig(symmetric=value)
    assert cfg.symmetric is bool(value)


@pytest.mark.parametrize("field", ["outlier_scope", "outlier_format", "scale_dtype", "zero_point",
                                   "column_scaling"])
@pytest.mark.parametrize("value", [None, 1, b"group", ["group"], {"a": 1}, np.array(["group"]), "x" * 10**5],
                         ids=lambda v: type(v).__name__)
def test_config_choice_fields_refuse_non_strings(field, value):
    e = _refused(lambda: adpq.QuantConfig(**{field: value}))
    assert field in str(e)


@pytest.mark.parametrize("d", [None, [], "bits", 3, [("bits", 3)], {1: 2}, {"bits": 3, None: 1}], ids=_id)
def test_config_from_dict_refuses_non_dicts_and_bad_keys(d):
    _refused(lambda: adpq.QuantConfig.from_dict(d))


def test_numpy_strings_are_taken_as_strings():
    cfg = adpq.QuantConfig(outlier_scope=np.str_("group"), scale_dtype=np.str_("float32"))
    assert type(cfg.outlier_scope) is str and cfg.outlier_scope == "group"


# ---------------------------------------------------------------------------- other entry points

def _qt():
    return adpq.quantize(W, group_size=GROUP, outlier_ratio=0.05)


THREADS_BAD = HUGE_INTS + (0, -1) + tuple(v for v in NOT_INTS if v is not None)


@pytest.mark.parametrize("value", THREADS_BAD, ids=_id)
def test_threads_of_every_entry_point(value):
    qt = _qt()
    for fn in (lambda: adpq.quantize(W, threads=value),
               lambda: adpq.outlier_mask(W, threads=value),
               lambda: adpq.dequantize(qt, threads=value),
               lambda: qt.dequantize(threads=value),
               lambda: adpq.metrics(W, qt, threads=value),
               lambda: adpq.metrics(W, qt.dequantize(), threads=value)):
        assert "threads" in str(_refused(fn))


@pytest.mark.parametrize("np_type", INT_TYPES, ids=lambda t: t.__name__)
def test_numpy_thread_counts_everywhere(np_type):
    qt = _qt()
    t = np_type(3)
    ref = qt.dequantize()
    assert qt.dequantize(threads=t).tobytes() == ref.tobytes()
    assert adpq.dequantize(qt, threads=t).tobytes() == ref.tobytes()
    assert adpq.metrics(W, qt, threads=t) == adpq.metrics(W, qt, threads=3)
    assert adpq.metrics(W, qt, kl_bins=np_type(100)) == adpq.metrics(W, qt, kl_bins=100)
    assert adpq.kl_divergence(W, ref, bins=np_type(64)) == adpq.kl_divergence(W, ref, bins=64)
    assert (adpq.outlier_mask(W, threads=t) == adpq.outlier_mask(W)).all()


@pytest.mark.parametrize("value", HUGE_INTS + (0, -5, 2**16 + 1) + tuple(v for v in NOT_INTS if v is not None),
                         ids=_id)
def test_kl_bins(value):
    qt = _qt()
    assert "kl_bins" in str(_refused(lambda: adpq.metrics(W, qt, kl_bins=value)))
    _refused(lambda: adpq.kl_divergence(W, qt.dequantize(), bins=value))


@pytest.mark.parametrize("kw", [dict(one_pass=1), dict(one_pass=None), dict(one_pass="sometimes"),
                                dict(config={"bits": 3}), dict(config=3)], ids=_id)
def test_other_keywords(kw):
    _refused(lambda: adpq.quantize(W, **kw))


# ---------------------------------------------------------------------------- the C boundary

def _core_cfg(**over):
    d = adpq.QuantConfig().core_config()
    d.update(over)
    return d


@pytest.mark.parametrize("key", ["bits", "group_size", "scope", "use_lam", "outlier_format", "scale_dtype",
                                 "threads", "integer_zero", "symmetric"])
@pytest.mark.parametrize("value", HUGE_INTS + (3.0, "3", None, [1]), ids=_id)
def test_c_config_refuses_out_of_range_values(key, value):
    if key == "group_size" and type(value) is int and 8 <= value < 2**63:
        return  # (an int64: valid, one group per row)
    e = _refused(lambda: _core.quantize(W, 0, _core_cfg(**{key: value})))
    assert key in str(e)


@pytest.mark.parametrize("key", ["outlier_ratio", "lam", "gamma"])
@pytest.mark.parametrize("value", (10**400, -10**400, "0.1", None, True), ids=_id)
def test_c_config_refuses_bad_doubles(key, value):
    assert key in str(_refused(lambda: _core.quantize(W, 0, _core_cfg(**{key: value}))))


@pytest.mark.parametrize("np_type", INT_TYPES, ids=lambda t: t.__name__)
def test_c_config_takes_numpy_scalars(np_type):
    cfg = _core_cfg(bits=np_type(4), group_size=np_type(32), threads=np_type(2), symmetric=np.bool_(True),
                    gamma=np.float32(1.0), outlier_ratio=np.float16(0.01))
    a = _core.quantize(W, 0, cfg)
    b = _core.quantize(W, 0, _core_cfg(bits=4, group_size=32, threads=2, gamma=1.0, outlier_ratio=float(np.float16(0.01))))
    assert a["codes"].tobytes() == b["codes"].tobytes()


@pytest.mark.parametrize("value", HUGE_INTS + (0, -1, 1.0, "2", None), ids=_id)
def test_c_thread_and_bin_arguments(value):
    _refused(lambda: _core.column_scales(W, 0, value))
    _refused(lambda: _core.error_stats(W, 0, W, value, 1))
    _refused(lambda: _core.error_stats(W, 0, W, 16, value))


# ---------------------------------------------------------------------------- threads capped

@pytest.mark.parametrize("threads", [10**7, 2**31 - 1])
def test_huge_thread_counts_are_capped_not_allocated(threads):
    """threads=10**7 once allocated scratch for every thread (GBs, then MemoryError): now capped to
    what is useful, at the Python boundary and again in the C core."""
    t0 = time.perf_counter()
    a = adpq.quantize(W, threads=threads, outlier_scope="group", group_size=GROUP)
    b = adpq.quantize(W, threads=1, outlier_scope="group", group_size=GROUP)
    assert all(a.arrays()[k].tobytes() == b.arrays()[k].tobytes() for k in a.arrays())
    assert a.dequantize(threads=threads).tobytes() == b.dequantize().tobytes()
    assert (adpq.outlier_mask(W, threads=threads) == adpq.outlier_mask(W, threads=1)).all()
    assert adpq.metrics(W, a, threads=threads)["mse"] == pytest.approx(adpq.metrics(W, a, threads=1)["mse"])
    # the C core itself, handed the count directly (no Python cap)
    cfg = _core_cfg(threads=threads)
    r = _core.quantize(W, 0, cfg)
    assert r["codes"].tobytes() == _core.quantize(W, 0, _core_cfg(threads=1))["codes"].tobytes()
    _core.outlier_mask(W, 0, cfg)
    _core.column_scales(W, 0, threads)
    _core.error_stats(W, 0, W, 256, threads)
    assert time.perf_counter() - t0 < 10


def test_useful_threads():
    cores = config_mod.default_threads()
    cap = max(config_mod.MIN_THREADS_CAP, config_mod.THREADS_PER_CORE_CAP * cores)
    assert config_mod.useful_threads(None) == cores
    assert config_mod.useful_threads(1) == 1
    assert config_mod.useful_threads(np.int64(10**9)) == cap
    assert adpq.QuantConfig(threads=10**7).core_config()["threads"] == cap
    for bad in (0, -1, 2**31, True, 2.0):
        _refused(lambda: config_mod.useful_threads(bad))


# ---------------------------------------------------------------------------- outlier_mask / soft_threshold

def _corrupt(qt, which, rng):
    a = qt.arrays()
    if which == "index_past_group":
        idx = a["outlier_indices"].copy()
        idx[:] = 0xFF
        a["outlier_indices"] = idx
    elif which == "index_order":
        # two outliers of one group swapped: positions not ascending
        counts = a["outlier_counts"].reshape(-1)
        lay = qt.layout
        pos = adpq.core.layout.unpack_bits(a["outlier_indices"], qt.num_outliers, lay.index_bits)
        g = int(np.flatnonzero(counts >= 2)[0])
        o = int(counts[:g].sum())
        pos[o], pos[o + 1] = pos[o + 1], pos[o]
        a["outlier_indices"] = adpq.core.layout.pack_bits(pos, lay.index_bits)
    elif which == "count_past_group":
        c = a["outlier_counts"].copy()
        c.reshape(-1)[int(rng.integers(c.size))] = np.iinfo(c.dtype).max
        a["outlier_counts"] = c
    elif which == "count_moved":
        c = a["outlier_counts"].copy().reshape(-1)
        nz = np.flatnonzero(c)
        c[nz[0]] -= 1
        c[(nz[0] + 1) % c.size] += 1
        a["outlier_counts"] = c.reshape(a["outlier_counts"].shape)
    return a


@pytest.mark.parametrize("which", ["index_past_group", "index_order", "count_past_group", "count_moved"])
@pytest.mark.parametrize("seed", range(3))
def test_outlier_mask_of_corrupt_arrays_is_refused(which, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 80)).astype(np.float32)
    qt = adpq.quantize(w, group_size=16, outlier_ratio=0.2, outlier_scope="group")
    a = _corrupt(qt, which, rng)

    def use():
        t = adpq.QuantizedTensor.from_arrays(a, qt.shape, qt.config)
        m = t.outlier_mask()
        t.dequantize()
        return m

    if which == "count_moved":  # a consistent layout that is just different: a valid tensor
        try:
            use()
        except ValueError:
            pass
        return
    _refused(use, ValueError)


@pytest.mark.parametrize("shape", [(4, 64), (64, 64), (3, 40), (1, 8), (16,), (130, 24)])
@pytest.mark.parametrize("scope", ["tensor", "group"])
@pytest.mark.parametrize("lam", [0.0, 1.0, 1e6])
def test_soft_threshold_with_lam_on_all_zero_groups(shape, scope, lam):
    w = np.zeros(shape, np.float32)
    for gs in (8, -1):
        b, m = adpq.soft_threshold(w, lam=lam, outlier_scope=scope, group_size=gs, return_mask=True)
        assert not b.any() and not m.any()
        # some groups zero, others not
        w2 = RNG.standard_normal(shape).astype(np.float32)
        w2.reshape(-1)[: w2.size // 2] = 0
        b, m = adpq.soft_threshold(w2, lam=lam, outlier_scope=scope, group_size=gs, return_mask=True)
        assert np.isfinite(b).all() and not b[w2 == 0].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kw", [dict(outlier_scope="group"), dict(outlier_scope="group", lam=1.0),
                                dict(outlier_scope="tensor"), dict(outlier_ratio=0),
                                dict(outlier_scope="group", outlier_ratio=0)], ids=_id)
def test_outlier_mask_refuses_non_finite_like_quantize(dtype, value, kw):
    w = RNG.standard_normal((16, 80)).astype(np.float32)
    w[3, 41] = value
    w = w.astype(dtype)
    for fn in (adpq.quantize, adpq.outlier_mask, adpq.soft_threshold):
        e = _refused(lambda: fn(w, group_size=GROUP, **kw), ValueError)
        assert "non-finite" in str(e)


@pytest.mark.parametrize("offset", [1, 2, 3])
@pytest.mark.parametrize("shape", [(16, 80), (80,), (3, 5)])
def test_unaligned_float32_views_are_copied_not_refused(offset, shape):
    n = int(np.prod(shape))
    buf = np.zeros(n * 4 + offset, np.uint8)
    v = np.frombuffer(buf.data, dtype=np.float32, offset=offset, count=n).reshape(shape)
    assert not v.flags.aligned
    w = RNG.standard_normal(shape).astype(np.float32)
    buf[offset:] = w.view(np.uint8).reshape(-1)
    ref = adpq.quantize(w, group_size=8).arrays()
    got = adpq.quantize(v, group_size=8).arrays()
    assert all(got[k].tobytes() == ref[k].tobytes() for k in ref)
    assert (adpq.outlier_mask(v, group_size=8) == adpq.outlier_mask(w, group_size=8)).all()
    assert adpq.soft_threshold(v, group_size=8).tobytes() == adpq.soft_threshold(w, group_size=8).tobytes()
    qt = adpq.quantize(w, group_size=8)
    assert adpq.metrics(v, qt) == adpq.metrics(w, qt)


# ---------------------------------------------------------------------------- file-system faults

@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("hostile") / "src")


def _cfg():
    return adpq.QuantConfig(group_size=GROUP, threads=1)


def _run(src, dst, **kw):
    kw.setdefault("max_shard_size", "60KB")
    return quantize_checkpoint(src, dst, _cfg(), progress=False, compute_metrics=False, **kw)


def _leftovers(dst):
    return sorted(n for n in os.listdir(dst) if n.endswith(".tmp") or n == output_mod.LOCK_NAME) \
        if os.path.isdir(dst) else []


def _looks_complete(dst):
    return os.path.isdir(dst) and os.path.exists(os.path.join(dst, "config.json")) \
        and not os.path.exists(os.path.join(dst, INCOMPLETE_MARKER))


@pytest.fixture(scope="module")
def clean(src, tmp_path_factory):
    d = tmp_path_factory.mktemp("clean") / "q"
    _run(src, d)
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


def _same_as_clean(dst, clean):
    got = {n: open(os.path.join(dst, n), "rb").read() for n in sorted(os.listdir(dst))}
    assert got.keys() == clean.keys() and all(got[k] == clean[k] for k in got)


class _Faults:
    """Raises OSError(code) from the `nth` call of one file-system function (0: every call)."""

    def __init__(self, code, nth):
        self.code, self.nth, self.calls = code, nth, 0

    def wrap(self, fn):
        def f(*a, **k):
            self.calls += 1
            if self.calls == self.nth:
                raise OSError(self.code, os.strerror(self.code), a[0] if a and isinstance(a[0], str) else None)
            return fn(*a, **k)
        return f


def _shard_write(monkeypatch, faults):
    from adpq.io import safetensors as st
    monkeypatch.setattr(st.ShardWriter, "add", faults.wrap(st.ShardWriter.add))


def _replace(monkeypatch, faults):
    monkeypatch.setattr(os, "replace", faults.wrap(os.replace))


def _open_in_output(monkeypatch, faults):
    import builtins
    monkeypatch.setattr(output_mod, "open", faults.wrap(builtins.open), raising=False)


def _shard_close(monkeypatch, faults):
    from adpq.io import safetensors as st
    monkeypatch.setattr(st.ShardWriter, "close", faults.wrap(st.ShardWriter.close))


INJECT = {"shard_write": _shard_write, "replace": _replace, "open_manifest": _open_in_output,
          "shard_close": _shard_close}
CODES = {errno.ENOSPC: "disk is full", errno.EROFS: "read-only", errno.EACCES: "permission denied",
         errno.EDQUOT: "quota", errno.EIO: "Input/output error"}


@pytest.mark.parametrize("where", sorted(INJECT))
@pytest.mark.parametrize("code", sorted(CODES), ids=lambda c: errno.errorcode[c])
@pytest.mark.parametrize("nth", [1, 2, 4])
def test_file_system_faults_say_what_and_where_and_clean_up(src, clean, tmp_path, monkeypatch, where, code, nth):
    dst = tmp_path / "q"
    faults = _Faults(code, nth)
    with monkeypatch.context() as mp:
        INJECT[where](mp, faults)
        try:
            _run(src, dst)
            failed = None
        except Exception as e:  # noqa: BLE001 - checked below
            failed = e
    if faults.calls < nth:  # (that call never came: the run is complete)
        assert failed is None
        _same_as_clean(dst, clean)
        return
    assert isinstance(failed, CheckpointError) and isinstance(failed, OSError), repr(failed)
    assert failed.errno == code
    assert CODES[code].lower() in str(failed).lower() and str(dst) in str(failed), str(failed)
    assert "\n" not in str(failed)
    assert _leftovers(dst) == [], _leftovers(dst)  # this run's temporaries and its lock removed
    assert not _looks_complete(dst)
    _run(src, dst)  # a re-run resumes (or starts over) to the clean result
    _same_as_clean(dst, clean)


def _unwritable_destinations(src, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o555)
    try:
        e = _refused(lambda: _run(src, parent / "q"), CheckpointError)
        assert isinstance(e, OSError) and e.errno == errno.EACCES and "permission denied" in str(e)
        assert "ro" in str(e)
    finally:
        os.chmod(parent, 0o755)
    dst = tmp_path / "q"
    _run(src, dst, max_shard_size="2GB")
    os.chmod(dst, 0o555)
    try:
        e = _refused(lambda: _run(src, dst, overwrite=True), CheckpointError)
        assert isinstance(e, OSError) and "permission denied" in str(e)
    finally:
        os.chmod(dst, 0o755)


def test_read_only_and_unwritable_destinations(src, clean, tmp_path):
    if os.geteuid() != 0:
        _unwritable_destinations(src, tmp_path)
        return
    # root ignores permissions: a forked child drops to an unprivileged user (the modules it needs are
    # loaded already, by `clean`) and works in a folder that user can enter
    work = tempfile.mkdtemp(prefix="adpq-perm-", dir="/tmp")
    try:
        shutil.copytree(src, os.path.join(work, "src"))
        os.mkdir(os.path.join(work, "child"))
        for root, dirs, files in os.walk(work):
            for n in dirs + files + ["."]:
                os.chmod(os.path.join(root, n), 0o777 if n in dirs + ["."] else 0o644)
        os.chmod(work, 0o777)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                import pathlib

                _unwritable_destinations(os.path.join(work, "src"), pathlib.Path(work) / "child")
                code = 0
            except BaseException as e:  # noqa: BLE001
                print(f"child: {e!r}", file=sys.stderr)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        shutil.rmtree(work, ignore_errors=True)


_HOLD = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".adpq-lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
open(os.path.join(sys.argv[1], ".model-part-00001.safetensors.data.tmp"), "w").write("theirs")
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_run_into_the_same_destination_is_refused(src, clean, tmp_path):
    dst = tmp_path / "q"
    dst.mkdir()
    other = subprocess.Popen([sys.executable, "-c", _HOLD, str(dst)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        for kw in ({}, {"overwrite": True}, {"resume": False}):
            e = _refused(lambda: _run(src, dst, **kw), CheckpointError)
            assert isinstance(e, OSError) and "another adpq run is writing to" in str(e) and str(dst) in str(e)
            # nothing of the other run's was touched
            assert open(dst / ".model-part-00001.safetensors.data.tmp").read() == "theirs"
            assert os.path.exists(dst / output_mod.LOCK_NAME)
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    # the other run is gone (killed, say): its lock is free, and this run takes the folder over
    os.unlink(dst / ".model-part-00001.safetensors.data.tmp")
    _run(src, dst)
    _same_as_clean(dst, clean)


def test_two_concurrent_command_runs(src, clean, tmp_path):
    """Two `adpq quantize` into one folder at once: one writes it, the other fails with one clear line
    (or, if the first had finished, says the folder exists); the result is the clean one."""
    from _ckpt_util import adpq_env
    dst = tmp_path / "q"
    cmd = [sys.executable, "-m", "adpq", "quantize", str(src), str(dst), "--group-size", str(GROUP), "--threads", "1",
           "--no-progress", "--no-metrics", "--max-shard-size", "60KB"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=adpq_env())
             for _ in range(2)]
    outs = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(rc for rc, _ in outs)[0] == 0, outs
    for rc, err in outs:
        if rc:
            assert rc == 2 and "Traceback" not in err and err.startswith("adpq: error:"), err
            assert "another adpq run is writing to" in err or "already exists" in err, err
    _same_as_clean(dst, clean)


@pytest.mark.parametrize("size", ["1e400GB", "-1GB", "1.5.5MB", "GB", "", "10**9", "x" * 1000, 2**70, -1,
                                  float("inf"), float("nan"), True, None, "99999999999999999999999TB"], ids=_id)
def test_bad_shard_sizes(size):
    _refused(lambda: output_mod.parse_size(size), CheckpointError)


@pytest.mark.parametrize("size,n", [("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)), (np.int64(100), 100),
                                    (np.uint8(7), 7), ("0", 0), (" 40 kb ", 40000), (".5MB", 500000)], ids=_id)
def test_good_shard_sizes(size, n):
    assert output_mod.parse_size(size) == n


def test_lock_file_is_never_left_in_a_finished_folder(src, tmp_path):
    dst = tmp_path / "q"
    _run(src, dst)
    assert output_mod.LOCK_NAME not in os.listdir(dst)
    with pytest.raises(CheckpointError, match="already exists"):
        _run(src, dst)
    assert output_mod.LOCK_NAME not in os.listdir(dst)
    # a lock file a killed run left behind (no process holds it) does not stop a re-run
    (dst / INCOMPLETE_MARKER).write_text("{}")
    fd = os.open(dst / output_mod.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(fd)
    _run(src, dst, overwrite=True)
    assert output_mod.LOCK_NAME not in os.listdir(dst) and INCOMPLETE_MARKER not in os.listdir(dst)
