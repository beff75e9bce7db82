"""ggml's quantizers (llama.cpp's `llama-quantize` path) as a speed peer, through ctypes.

`llama-quantize` calls `ggml_quantize_chunk` (libggml-base), which runs ggml's plain C quantizers
(quantize_q3_K, quantize_q4_0, ...: without an importance matrix these are the *_ref functions), one
thread per call. Timing it on the same float32 array in the same run as adpq gives a speed ratio that
does not depend on the machine. Nothing of ggml is vendored: build its base library from a ggml (or
llama.cpp) checkout and pass the path, e.g.

    git clone https://github.com/ggml-org/ggml && cd ggml      # measured at commit d99724f
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \\
          -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF
    cmake --build build --target ggml-base
    python benchmarks/throughput.py --ggml-lib ggml/build/src/libggml-base.so

(ggml's own CMake builds the base library without -march: that is what llama-quantize users run.
Add -DCMAKE_C_FLAGS=-march=native for a build tuned to the machine.)
"""
from __future__ import annotations

import ctypes

import numpy as np

# enum ggml_type (ggml.h)
GGML_TYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 8, "q2_K": 10, "q3_K": 11, "q4_K": 12, "q5_K": 13, "q6_K": 14,
              "iq4_nl": 20}
# weights per block and bytes per block (ggml-common.h): bits/weight = 8 * bytes / weights
GGML_BLOCKS = {"q4_0": (32, 18), "q4_1": (32, 20), "q8_0": (32, 34), "q2_K": (256, 84), "q3_K": (256, 110),
               "q4_K": (256, 144), "q5_K": (256, 176), "q6_K": (256, 210), "iq4_nl": (32, 18)}


class Ggml:
    """libggml-base loaded with ctypes: `quantize(name, w)` runs ggml_quantize_chunk on a C-contiguous
    float32 matrix (one thread, as llama-quantize gives each chunk) and returns the packed bytes."""

    def __init__(self, path: str):
        self.path = path
        self.lib = ctypes.CDLL(path)
        f = self.lib.ggml_quantize_chunk
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_void_p]
        f.restype = ctypes.c_size_t
        self.lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        self.lib.ggml_row_size.restype = ctypes.c_size_t
        self.lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        self.lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool

    def bits_per_weight(self, name: str) -> float:
        per_block, nbytes = GGML_BLOCKS[name]
        assert self.lib.ggml_row_size(GGML_TYPES[name], per_block) == nbytes, name
        return 8.0 * nbytes / per_block

    def quantize(self, name: str, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        t = GGML_TYPES[name]
        if w.dtype != np.float32 or w.ndim != 2 or not w.flags.c_contiguous:
            raise TypeError("ggml_quantize_chunk takes a C-contiguous 2-D float32 array")
        rows, cols = w.shape
        if cols % GGML_BLOCKS[name][0]:
            raise ValueError(f"{name} needs rows of a multiple of {GGML_BLOCKS[name][0]} weights, got {cols}")
        if self.lib.ggml_quantize_requires_imatrix(t):
            raise ValueError(f"{name} needs an importance matrix")
        size = rows * self.lib.ggml_row_size(t, cols)
        if out is None or out.nbytes != size:
            out = np.empty(size, np.uint8)
        got = self.lib.ggml_quantize_chunk(t, w.ctypes.data, out.ctypes.data, 0, rows, cols, None)
        if got != size:
            raise RuntimeError(f"ggml_quantize_chunk wrote {got} bytes, expected {size}")
        return out


    def quantize_rows_into(self, name: str, w: np.ndarray, out: np.ndarray, first_row: int) -> None:
        """Rows first_row.. of a matrix (w: those rows, C-contiguous float32) into their place in out,
        the packed bytes of the whole matrix: what llama-quantize's threads each do with a chunk."""
        t, first_row = GGML_TYPES[name], int(first_row)
        if w.dtype != np.float32 or w.ndim != 2 or not w.flags.c_contiguous:
            raise TypeError("ggml_quantize_chunk takes a C-contiguous 2-D float32 array")
        rows, cols = w.shape
        row_size = self.lib.ggml_row_size(t, cols)
        if cols % GGML_BLOCKS[name][0] or out.nbytes < (first_row + rows) * row_size:
            raise ValueError(f"{name}: bad shape {w.shape} or output size for rows from {first_row}")
        # ggml writes at dst + start / cols * row_size and reads src + start: shift src back to match
        src = w.ctypes.data - first_row * cols * 4
        got = self.lib.ggml_quantize_chunk(t, src, out.ctypes.data, first_row * cols, rows, cols, None)
        if got != rows * row_size:
            raise RuntimeError(f"ggml_quantize_chunk wrote {got} bytes, expected {rows * row_size}")


def decode_q4_0(packed: np.ndarray, shape) -> np.ndarray:
    """Dequantizes ggml's q4_0 bytes (blocks of 32: float16 d, 16 bytes of 4-bit q; x = (q - 8) * d,
    low nibbles first): a check that the timed call did the work."""
    b = packed.reshape(-1, 18)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 2:] & 15, b[:, 2:] >> 4], axis=1).astype(np.float32) - 8
    return (q * d).reshape(shape)
