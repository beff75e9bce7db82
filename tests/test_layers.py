"""The package's architecture, checked: layers import one way, `import adpq` stays light, and the
NumPy reference runs without the C extension (docs/DESIGN.md 1)."""
import ast
import os
import subprocess
import sys

import pytest

import adpq

PKG = os.path.dirname(adpq.__file__)

# layer of each top-level part of the package; a module may import only parts of its layer or lower
LAYERS = {"_version": 0, "_core": 0, "core": 1, "reference": 2, "transforms": 2, "io": 3, "runtime": 3.5, "hf": 4, "eval": 5, "generate": 5, "cli": 6, "__main__": 6}
# the modules of adpq.core that the reference builds on: they must not load the C extension
PURE_CORE = {"dtypes", "config", "layout", "thresholds", "arrays", "__init__"}


def _modules():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, PKG)[:-3].split(os.sep)
                yield path, rel


def _imports(path, rel):
    """Absolute dotted names under adpq that a module imports (relative imports resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    pkg = ["adpq"] + (rel[:-1] if rel[-1] != "__init__" else rel[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "adpq" or a.name.startswith("adpq."):
                    yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "adpq" or mod.startswith("adpq."):
                if mod == "adpq" or mod.count(".") == 1 and mod.split(".")[1] in ("core", "reference", "io", "hf"):
                    for a in node.names:
                        yield f"{mod}.{a.name}", node.lineno
                else:
                    yield mod, node.lineno


def _part(dotted):
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def test_layers_import_one_way():
    bad = []
    for path, rel in _modules():
        if rel == ["__init__"]:
            continue  # adpq/__init__.py maps public names to their modules, lazily
        mine = LAYERS[rel[0]]
        for target, line in _imports(path, rel):
            part = _part(target)
            if part is None:
                bad.append(f"{'/'.join(rel)}.py:{line} imports the adpq package itself")
            elif part in LAYERS and LAYERS[part] > mine:
                bad.append(f"{'/'.join(rel)}.py:{line} ({rel[0]}, layer {mine}) imports {target} (layer {LAYERS[part]})")
            elif part not in LAYERS and part != "__init__" and not target.startswith("adpq.__"):
                bad.append(f"{'/'.join(rel)}.py:{line} imports {target}, in no layer")
            if rel[0] == "core" and rel[-1] in PURE_CORE:
                sub = target.split(".")
                if part == "_core" or (part == "core" and len(sub) > 2 and sub[2] not in PURE_CORE):
                    bad.append(f"{'/'.join(rel)}.py:{line}: a pure module of adpq.core imports {target}")
    assert not bad, "\n".join(bad)


def test_every_module_is_in_a_layer():
    assert {rel[0] for _, rel in _modules()} - {"__init__"} <= set(LAYERS)


def _run(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_import_adpq_is_light():
    out = _run("import sys, adpq\n"
               "print(sorted(m for m in ('torch', 'transformers', 'safetensors', 'adpq._core') if m in sys.modules))\n"
               "import numpy as np\n"
               "adpq.metrics(np.ones((4, 16), np.float32), adpq.quantize(np.ones((4, 16), np.float32)))\n"
               "adpq.quantize_checkpoint, adpq.inspect_checkpoint, adpq.load\n"
               "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))\n")
    assert out.split("\n")[:2] == ["[]", "[]"]


def test_reference_runs_without_the_c_extension():
    out = _run("import sys\n"
               "sys.modules['adpq._core'] = None  # as if it were not built\n"
               "import numpy as np, adpq\n"
               "from adpq import reference\n"
               "from adpq.core.config import QuantConfig\n"
               "w = np.linspace(-1, 1, 64 * 96, dtype=np.float32).reshape(64, 96) ** 3\n"
               "cfg = QuantConfig(bits=3, group_size=32)\n"
               "a = reference.quantize(w, cfg)\n"
               "print(float(np.abs(reference.dequantize(a, w.shape, cfg) - w).max()) < 0.1)\n"
               "try:\n"
               "    adpq.quantize\n"
               "except ImportError:\n"
               "    print('no C core')\n")
    assert out.split("\n")[:2] == ["True", "no C core"]


PINNED = ["quantize", "dequantize", "QuantConfig", "QuantizedTensor", "metrics", "kl_divergence", "soft_threshold",
          "outlier_mask", "quantize_checkpoint", "CheckpointReport", "CheckpointError", "load", "load_state_dict",
          "dequantize_checkpoint", "inspect_checkpoint", "kernels", "__version__"]


@pytest.mark.parametrize("name", PINNED)
def test_public_names(name):
    assert getattr(adpq, name) is not None
    assert name in dir(adpq) and name in adpq.__all__


def test_unknown_name():
    with pytest.raises(AttributeError, match="no attribute 'quantise'"):
        adpq.quantise


def test_one_version():
    from adpq import _core

    import importlib.metadata

    assert adpq.__version__ == importlib.metadata.version("adpq")
    out = subprocess.run([sys.executable, "-m", "adpq", "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"adpq {adpq.__version__}"
    assert _core.VERSION == adpq.__version__
