"""Build the adpq C extension (adpq._core) against the CPython and NumPy C APIs.

Environment knobs:
  ADPQ_SANITIZE=1   build with -fsanitize=address,undefined (CI runs the tests this way too)
  ADPQ_DEBUG=1      -O0 -g
"""
import os
import re
import sys

import numpy as np
from setuptools import Extension, setup

# in dependency order, bottom first (csrc/internal.h)
sources = [
    "csrc/halfcvt.c",
    "csrc/layout.c",
    "csrc/threads.c",
    "csrc/outliers.c",
    "csrc/pack.c",
    "csrc/quant.c",
    "csrc/matmul_scalar.c",
    "csrc/matmul_avx2.c",
    "csrc/kernels_scalar.c",
    "csrc/kernels_avx2.c",
    "csrc/kernels.c",
    "csrc/dequant.c",
    "csrc/matmul.c",
    "csrc/metrics.c",
    "csrc/columns.c",
    "csrc/rows.c",
    "csrc/threshold.c",
    "csrc/gptq.c",
    "csrc/api.c",
    "csrc/adpqmodule_args.c",
    "csrc/adpqmodule_matmul.c",
    "csrc/adpqmodule_gptq.c",
    "csrc/adpqmodule.c",
]


def package_version():
    """The version in python/adpq/_version.py, the one place it is written (the C core gets it as
    -DADPQ_VERSION, the package metadata through pyproject.toml)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "python", "adpq", "_version.py")
    with open(path, encoding="utf-8") as f:
        m = re.fullmatch(r'__version__ = "([0-9A-Za-z.+-]+)"\n?', f.read())
    if not m:
        raise SystemExit(f"adpq: {path} must be one line: __version__ = \"X.Y.Z\"")
    return m.group(1)


# -ffp-contract=off: no fused multiply-add, so the C core and the NumPy reference
# round identically (bit-exactness is a tested property).
extra_compile_args = ["-std=c11", "-Wall", "-Wextra", "-ffp-contract=off", "-fno-strict-aliasing"]
extra_link_args = ["-pthread"]
if os.environ.get("ADPQ_DEBUG"):
    extra_compile_args += ["-O0", "-g"]
else:
    extra_compile_args += ["-O3"]
if os.environ.get("ADPQ_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    extra_compile_args += san + ["-g"]
    extra_link_args += san
if os.environ.get("ADPQ_WERROR"):
    extra_compile_args += ["-Werror"]

if sys.platform == "win32":  # pragma: no cover - not a supported build target yet
    raise SystemExit("adpq: Windows builds are not supported yet (the core uses pthreads)")

setup(
    ext_modules=[
        Extension(
            "adpq._core",
            sources=sources,
            include_dirs=["csrc", np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION"),
                           ("ADPQ_VERSION", f'"{package_version()}"')],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ],
)
