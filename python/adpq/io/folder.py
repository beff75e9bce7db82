"""Model folders: the Hugging Face layout adpq reads and writes, and what marks an adpq output.

A folder holds config.json and one .safetensors file, or several listed by
model.safetensors.index.json. An adpq-format folder is one whose config.json has a
quantization_config with quant_method "adpq" (docs/FORMAT.md). A folder being written holds
INCOMPLETE_MARKER (the run's JSON manifest) until its last file is in place.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from ..core import dtypes
from .safetensors import SafetensorsFile, TensorInfo, read_tensor

# 2: adds the optional per-tensor array "column_scales" (column_scaling); 3: a quantized tensor's
# codes are stored under its own name (docs/FORMAT.md)
FORMAT_VERSION = 3
INCOMPLETE_MARKER = ".adpq-incomplete"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
QUANT_METHOD = "adpq"


def array_entry(name: str, array: str, format_version: int = FORMAT_VERSION) -> str:
    """The safetensors entry of one stored array of quantized tensor `name`. From version 3 the codes
    are stored under the tensor's own name: a loader that does not know the format then finds a
    uint8 vector where it expects a float matrix and refuses it (transformers raises a size mismatch)
    instead of leaving that layer randomly initialized."""
    if array == "codes" and format_version >= 3:
        return name
    return f"{name}.adpq.{array}"


class CheckpointError(ValueError):
    """A user-facing error about a checkpoint folder (message is meant for the command line)."""


def check_complete(path: str) -> None:
    """CheckpointError if path is an adpq output that an interrupted run left unfinished."""
    if os.path.exists(os.path.join(path, INCOMPLETE_MARKER)):
        raise CheckpointError(
            f"{path}: incomplete adpq output (an interrupted run left {INCOMPLETE_MARKER}); "
            "re-run the command that wrote it to resume")


def adpq_quantization_config(config: Any) -> Optional[dict]:
    """The quantization_config of a config.json dict if it describes the adpq format, else None."""
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return qc if isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD else None


def read_config(path: str) -> Optional[dict]:
    """config.json of a folder, or None when there is none; CheckpointError when it cannot be read."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        return None
    try:
        with open(cfg_path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: cannot read: {e}") from None


def is_adpq_folder(path: str) -> bool:
    """True for a folder whose config.json declares the adpq format (complete or not)."""
    try:
        return os.path.isdir(path) and adpq_quantization_config(read_config(path)) is not None
    except CheckpointError:
        return False


def output_dtype(name: Optional[str]) -> Optional[np.dtype]:
    """The NumPy dtype of a requested output dtype (None: keep each tensor's)."""
    if name is None:
        return None
    try:
        return dtypes.np_dtype(name)
    except ValueError:
        raise CheckpointError(f"unsupported output dtype {name!r} (use float32, float16 or bfloat16)") from None


def set_config_dtype(cfg: dict, dtype_str: str) -> None:
    """Records the weights' dtype in a config.json dict, under the key(s) it already uses."""
    keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]
    for k in keys:
        cfg[k] = dtype_str


class SourceCheckpoint:
    """A Hugging Face folder: config.json + one or more .safetensors files (index json optional)."""

    def __init__(self, path: str, require_config: bool = True):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise CheckpointError(f"{self.path}: no such folder")
        if not os.path.isdir(self.path):
            raise CheckpointError(f"{self.path}: not a folder")
        check_complete(self.path)
        self.config: Optional[dict] = read_config(self.path)
        if self.config is None and require_config:
            raise CheckpointError(f"{self.path}: no config.json (not a Hugging Face model folder)")
        index_path = os.path.join(self.path, INDEX_NAME)
        files: List[str]
        weight_map: Optional[Dict[str, str]] = None
        if os.path.exists(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                assert isinstance(weight_map, dict)
            except Exception as e:
                raise CheckpointError(f"{index_path}: invalid index file ({e})") from None
            files = sorted(set(weight_map.values()))
            for fn in files:
                if not os.path.exists(os.path.join(self.path, fn)):
                    raise CheckpointError(f"{index_path}: lists {fn}, which is missing")
        else:
            files = sorted(fn for fn in os.listdir(self.path) if fn.endswith(".safetensors"))
        if not files:
            other = [fn for fn in os.listdir(self.path) if fn.endswith((".bin", ".pt", ".pth", ".gguf"))]
            hint = f" (found {', '.join(sorted(other))}; only safetensors is supported)" if other else ""
            raise CheckpointError(f"{self.path}: no .safetensors files{hint}")
        self.files: Dict[str, SafetensorsFile] = {}
        self.tensors: Dict[str, TensorInfo] = {}
        self.data_start: Dict[str, int] = {}
        for fn in files:
            sf = SafetensorsFile(os.path.join(self.path, fn))
            self.files[fn] = sf
            for name in sf.names():
                if weight_map is not None and weight_map.get(name) != fn:
                    if name not in weight_map:
                        continue  # a stray tensor that the index does not list: ignore like HF does
                if name in self.tensors:
                    raise CheckpointError(f"{self.path}: tensor {name!r} appears in two files")
                self.tensors[name] = sf.tensors[name]
                self.data_start[name] = sf.data_start
        if weight_map is not None:
            missing = [n for n, fn in weight_map.items() if n not in self.tensors]
            if missing:
                raise CheckpointError(f"{index_path}: tensor {missing[0]!r} is not in {weight_map[missing[0]]}")

    def names(self) -> List[str]:
        return list(self.tensors)

    def get(self, name: str) -> np.ndarray:
        return read_tensor(self.tensors[name], self.data_start[name])

    def fingerprint(self) -> List[list]:
        out = []
        for fn, sf in self.files.items():
            st = os.stat(sf.path)
            out.append([fn, st.st_size, st.st_mtime_ns])
        return out

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
