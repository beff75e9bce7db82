"""The C core's own tests (tests/c/test_core.c, built by tests/c/Makefile without Python), and the shape
of the core: the files of csrc/ call each other in the order csrc/internal.h documents, with no
cycle, and only the entry points (api.c) read the process-default kernel set.

A machine without make, a C compiler or nm fails here rather than skipping: the C tests are part
of the suite."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")


def _require(tool):
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: the C core's tests need make, a C compiler (cc) and nm")


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    for tool in ("make", "cc", "nm"):
        _require(tool)
    return tmp_path_factory.mktemp("ctest")


@pytest.fixture(scope="module")
def c_run(build_dir):
    return subprocess.run(["make", "-C", os.path.join(ROOT, "tests", "c"), "run", f"BUILD={build_dir}"],
                          capture_output=True, text=True, timeout=900)


def test_c_core_passes(c_run):
    out = c_run.stdout + c_run.stderr
    assert c_run.returncode == 0, out[-6000:]
    assert re.search(r"^test_core: all \d+ checks passed in \d+ groups$", c_run.stdout, re.M), out[-6000:]
    assert "FAIL" not in c_run.stdout


def _documented_order():
    """The files of the dependency order in csrc/internal.h, bottom first."""
    with open(os.path.join(CSRC, "internal.h")) as f:
        head = f.read().split("#ifndef", 1)[0]
    return re.findall(r"^ \*   (\w+)\.c\s", head, re.M)


def _symbols(obj):
    out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TDRBC":
            defined.add(parts[2])
        elif len(parts) == 2 and parts[0] == "U":
            undefined.add(parts[1])
    return defined, undefined


def test_csrc_files_are_acyclic_in_the_documented_order(c_run, build_dir):
    assert c_run.returncode == 0, (c_run.stdout + c_run.stderr)[-3000:]
    order = _documented_order()
    sources = sorted(f[:-2] for f in os.listdir(CSRC) if f.endswith(".c"))
    assert sorted(order) == sources, f"csrc/internal.h lists {order}, csrc/ has {sources}"
    objdir = os.path.join(build_dir, "release", "obj")
    syms = {name: _symbols(os.path.join(objdir, name + ".o")) for name in order if not name.startswith("adpqmodule")}
    owner = {s: name for name, (defined, _) in syms.items() for s in defined}
    rank = {name: i for i, name in enumerate(order)}
    for name, (_, undefined) in syms.items():
        for s in sorted(undefined):
            if s in owner and owner[s] != name:
                assert rank[owner[s]] < rank[name], f"{name}.c calls {s} of {owner[s]}.c, listed after it"
    readers = sorted(name for name, (_, undefined) in syms.items() if "adpq_active_kernels" in undefined)
    assert readers == ["api"], f"adpq_active_kernels is called from {readers}; only the entry points (api.c) may"



def test_csrc_reads_no_environment():
    for f in sorted(os.listdir(CSRC)):
        if f.endswith((".c", ".h")):
            with open(os.path.join(CSRC, f)) as fh:
                assert "getenv" not in fh.read(), f"csrc/{f} reads the environment; pass a parameter instead"


def test_constants_shared_with_python():
    """ADPQ_MIN_GROUP_SIZE and ADPQ_VERSION (csrc/adpq.h, set from python/adpq/_version.py) are the
    Python layer's values."""
    import adpq
    from adpq import _core
    from adpq.core.config import MIN_GROUP_SIZE

    assert _core.MIN_GROUP_SIZE == MIN_GROUP_SIZE
    assert _core.VERSION == adpq.__version__
