#!/usr/bin/env python
"""ggml's CPU mat-vec (llama.cpp's decode kernel) as a speed peer for adpq's matmul.

llama.cpp decodes one token by running GGML_OP_MUL_MAT with a float32 activation vector against each
weight matrix: the vector is quantized to the weight type's vec_dot_type (q8_0 for q4_0 and q8_0
weights), then dot products run over the rows. With llama.cpp's defaults (use_extra_bufts = true,
ggml built with GGML_CPU_REPACK) the weights sit in the CPU backend's CPU_REPACK buffer, which on an
AVX2 machine reorders q4_0 into block_q4_0x8 and runs the interleaved gemv_q4_0_8x8_q8_0; q8_0 has
no x86 repacked layout and runs ggml_vec_dot_q8_0_q8_0. `repack=True` (default) times exactly that;
`repack=False` the plain vec_dot route (what `llama-bench --repack 0` runs).

The timing goes through ggml's own backend API (ggml_backend_cpu_init, ggml_mul_mat, one
ggml_backend_graph_compute per call) in a small C harness, benchmarks/ggml_matvec.c, compiled here at
run time with gcc against the ggml headers and the shared libraries of a llama.cpp build; the clock
is read in C around each graph compute, so Python's call overhead is not in the numbers. Nothing of
ggml is vendored. Build llama.cpp with shared libraries, e.g.

    cmake -S llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON
    cmake --build build -j2 --target ggml-base ggml-cpu
    python benchmarks/ggml_matvec.py build            # or build/bin, where libggml-*.so are

The headers are found through the build's CMakeCache.txt (the source tree's ggml/include) unless
include_dir / --include says where they are.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ggml_peer import GGML_BLOCKS, GGML_TYPES  # noqa: E402

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ggml_matvec.c")
TYPES = {"f32": 0, **GGML_TYPES}
# loose checks that the timed call computed x @ W.T: relative L2 error of y against float64
# (q4_0 on Gaussian weights is ~0.1, q8_0 ~0.005 with the q8_0 activations)
TOLERANCE = {"f32": 1e-4, "q8_0": 0.02, "q4_0": 0.2, "q4_1": 0.2, "iq4_nl": 0.2}


def find_lib_dir(path: str) -> str:
    """The folder holding libggml-base.so and libggml-cpu.so: path itself, or a build's bin/."""
    for d in (path, os.path.join(path, "bin"), os.path.join(path, "lib")):
        if all(os.path.exists(os.path.join(d, f"libggml-{n}.so")) for n in ("base", "cpu")):
            return os.path.abspath(d)
    raise FileNotFoundError(f"no libggml-base.so and libggml-cpu.so in {path} (or its bin/, lib/)")


def find_include_dir(lib_dir: str) -> str:
    """ggml's headers for a build: <source>/ggml/include from the build's CMakeCache.txt (a llama.cpp
    or ggml build), or an installed prefix's include/."""
    for d in (lib_dir, os.path.dirname(lib_dir)):
        cache = os.path.join(d, "CMakeCache.txt")
        if os.path.exists(cache):
            with open(cache) as f:
                src = next((ln.split("=", 1)[1].strip() for ln in f if ln.startswith("CMAKE_HOME_DIRECTORY")), None)
            for inc in ((os.path.join(src, "ggml", "include"), os.path.join(src, "include")) if src else ()):
                if os.path.exists(os.path.join(inc, "ggml-cpu.h")):
                    return inc
    inc = os.path.join(os.path.dirname(lib_dir), "include")
    if os.path.exists(os.path.join(inc, "ggml-cpu.h")):
        return inc
    raise FileNotFoundError(f"no ggml headers found for {lib_dir}: pass include_dir")


_LOADED: dict[tuple[str, str], ctypes.CDLL] = {}


def load_harness(lib_dir: str, include_dir: str | None = None) -> ctypes.CDLL:
    """Compiles benchmarks/ggml_matvec.c against the build (once per source, build and library
    version: cached in the temp folder) and loads it."""
    lib_dir = find_lib_dir(lib_dir)
    include_dir = include_dir or find_include_dir(lib_dir)
    key = (lib_dir, include_dir)
    if key in _LOADED:
        return _LOADED[key]
    h = hashlib.sha256()
    with open(HARNESS, "rb") as f:
        h.update(f.read())
    for p in (lib_dir, include_dir):
        h.update(p.encode())
    for n in ("base", "cpu"):
        h.update(str(os.stat(os.path.realpath(os.path.join(lib_dir, f"libggml-{n}.so"))).st_mtime_ns).encode())
    so = os.path.join(tempfile.gettempdir(), f"adpq-ggml-matvec-{h.hexdigest()[:16]}.so")
    if not os.path.exists(so):
        tmp = f"{so}.{os.getpid()}"
        subprocess.run(["gcc", "-O2", "-std=c11", "-D_POSIX_C_SOURCE=199309L", "-shared", "-fPIC",
                        HARNESS, "-o", tmp, f"-I{include_dir}", f"-L{lib_dir}", "-lggml-cpu", "-lggml-base",
                        f"-Wl,-rpath,{lib_dir}"], check=True)
        os.replace(tmp, so)
    lib = ctypes.CDLL(so)
    f = lib.adpq_ggml_matmul_bench
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                  ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                  ctypes.c_char_p, ctypes.c_int]
    f.restype = ctypes.c_int
    _LOADED[key] = lib
    return lib


def time_matmul(lib_dir: str, W: np.ndarray, X: np.ndarray, type: str = "q4_0", threads: int = 1,
                repeats: int = 20, warmup: int = 3, repack: bool = True, include_dir: str | None = None,
                check: bool = True, info: dict | None = None) -> tuple[float, np.ndarray]:
    """Median seconds of ggml's mul_mat of W (rows x cols float32, quantized to `type` by
    ggml_quantize_chunk, untimed) with X (n x cols float32), and Y = X @ W.T (n x rows) as ggml
    computed it. n = 1 is llama.cpp's decode mat-vec, n > 1 its prefill matmul (same graph op).
    repack: weights in CPU_REPACK as llama.cpp does by default (falls back to the plain buffer where
    ggml has no repacked layout). check: raise if Y is off float64 X @ W.T by more than TOLERANCE.
    info (a dict, optional) receives buffer (the buffer type), repacked (bool), weight_bytes, times."""
    if type not in TYPES:
        raise ValueError(f"type {type!r}: one of {sorted(TYPES)}")
    W = np.ascontiguousarray(W, np.float32)
    X = np.ascontiguousarray(np.atleast_2d(X), np.float32)
    rows, cols = W.shape
    if X.shape[1] != cols:
        raise ValueError(f"X has {X.shape[1]} columns, W {cols}")
    if type != "f32" and cols % GGML_BLOCKS[type][0]:
        raise ValueError(f"{type} needs a multiple of {GGML_BLOCKS[type][0]} columns, got {cols}")
    lib = load_harness(lib_dir, include_dir)
    Y = np.empty((X.shape[0], rows), np.float32)
    times = np.empty(max(1, repeats), np.float64)
    msg = ctypes.create_string_buffer(256)
    rc = lib.adpq_ggml_matmul_bench(TYPES[type], W.ctypes.data, rows, cols, X.ctypes.data, X.shape[0], threads,
                                    int(repack), warmup, len(times), times.ctypes.data, Y.ctypes.data, msg, 256)
    if rc:
        raise RuntimeError(f"ggml harness failed ({rc}): {msg.value.decode()}")
    buffer, repacked, nbytes = msg.value.decode().split()
    if check:
        ref = X.astype(np.float64) @ W.astype(np.float64).T
        err = np.linalg.norm(Y - ref) / max(np.linalg.norm(ref), 1e-30)
        if not err <= TOLERANCE.get(type, 0.5):
            raise AssertionError(f"ggml {type} mul_mat: relative error {err:.3g} > {TOLERANCE.get(type, 0.5)}")
    if info is not None:
        info.update(buffer=buffer, repacked=repacked == "1", weight_bytes=int(nbytes), times=times)
    return float(np.median(times)), Y


def time_matvec(lib_dir: str, W: np.ndarray, x: np.ndarray, type: str = "q4_0", threads: int = 1,
                repeats: int = 20, **kw) -> tuple[float, np.ndarray]:
    """time_matmul for one vector x (cols,): (median seconds, y of shape (rows,))."""
    t, Y = time_matmul(lib_dir, W, np.asarray(x).reshape(1, -1), type, threads, repeats, **kw)
    return t, Y[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", help="llama.cpp/ggml build folder (or the folder holding libggml-*.so)")
    ap.add_argument("--include", default=None, help="ggml's include folder (default: from CMakeCache.txt)")
    ap.add_argument("--shapes", default="4096x4096,11008x4096", help="rows x cols, comma-separated")
    ap.add_argument("--types", default="q4_0,q8_0,f32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("-n", type=int, default=1, help="columns of X (1: decode mat-vec)")
    ap.add_argument("--no-repack", action="store_true", help="only the plain vec_dot route")
    ap.add_argument("--both", action="store_true", help="repacked (llama.cpp default) and plain routes")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    routes = [True, False] if a.both else [not a.no_repack]
    print(f"ggml mul_mat, {a.threads} thread(s), n={a.n}, median of {a.repeats} "
          f"(libs: {find_lib_dir(a.build)})")
    print(f"{'shape':>12} {'type':>5} {'buffer':>10} {'repacked':>8} {'ms':>9} {'GB/s':>7} {'rel.err':>8}")
    for shape in a.shapes.split(","):
        rows, cols = map(int, shape.lower().split("x"))
        W = rng.standard_normal((rows, cols), np.float32)
        X = rng.standard_normal((a.n, cols), np.float32)
        ref = X.astype(np.float64) @ W.astype(np.float64).T
        for type in a.types.split(","):
            repacked = True
            for repack in routes:
                if not repack and not repacked:
                    continue  # the repack route fell back to the plain one: already timed
                info: dict = {}
                t, Y = time_matmul(a.build, W, X, type, a.threads, a.repeats, repack=repack,
                                   include_dir=a.include, info=info)
                err, repacked = np.linalg.norm(Y - ref) / np.linalg.norm(ref), info["repacked"]
                print(f"{shape:>12} {type:>5} {info['buffer']:>10} {str(info['repacked']):>8} {1e3 * t:9.3f} "
                      f"{info['weight_bytes'] / t / 1e9:7.2f} {err:8.2g}")


if __name__ == "__main__":
    main()
