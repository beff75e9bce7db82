"""Model folders: the Hugging Face layout adpq reads and writes, and what marks an adpq output.

A folder holds config.json and one .safetensors file, or several listed by
model.safetensors.index.json. An adpq-format folder is one whose config.json has a
quantization_config with quant_method "adpq" (docs/FORMAT.md). A folder being written holds
INCOMPLETE_MARKER (the run's JSON manifest) until its last file is in place.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np

from ..core import dtypes
from .safetensors import SafetensorsFile, TensorInfo, read_json_file

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


def check_format_version(v: Any, where: str) -> int:
    """The format_version of an adpq quantization_config: an int (not a bool or a string) in
    1..FORMAT_VERSION; anything else is a CheckpointError naming `where`."""
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise CheckpointError(f"{where}: invalid adpq format_version {str(v)[:50]!r} (an integer from 1 to "
                              f"{FORMAT_VERSION})")
    if v > FORMAT_VERSION:
        raise CheckpointError(f"{where}: adpq format version {v} is newer than this adpq supports "
                              f"({FORMAT_VERSION}); upgrade adpq")
    return v


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
    """config.json of a folder (a JSON object), or None when there is none; CheckpointError when it
    cannot be read, is not a regular file inside the folder, or is not a JSON object."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.lexists(cfg_path):
        return None
    check_inside(path, "config.json")
    # (repeated keys: the last wins, as transformers reads it)
    cfg = read_json_file(cfg_path, CheckpointError, unique=False)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object (got {type(cfg).__name__}); "
                              "a Hugging Face config.json is an object")
    return cfg


def _hub_repo_root(real_folder: str) -> Optional[str]:
    """The repository folder of a Hugging Face hub cache snapshot (.../models--ORG--NAME/snapshots/REV),
    whose files are symlinks into the repository's blobs/ folder; None for any other folder."""
    snapshots, _rev = os.path.split(real_folder)
    repo, leaf = os.path.split(snapshots)
    if leaf == "snapshots" and os.path.basename(repo).startswith(("models--", "datasets--")):
        return repo
    return None


def check_inside(folder: str, name: str) -> str:
    """The path of file `name` of a model folder, refused (CheckpointError) unless it stays inside it.

    `name` must be a plain file name (no path separator, not absolute, not '.'/'..', no NUL), and the
    file's real path (symlinks resolved with os.path.realpath) must lie in the folder's real path; a
    symlink out of the folder is refused, except, for a Hugging Face hub cache snapshot
    (.../models--*/snapshots/REV), into that repository's blobs/ folder, where the hub keeps them."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "\0" in name or "/" in name
            or "\\" in name or os.sep in name or (os.altsep and os.altsep in name) or os.path.isabs(name)):
        raise CheckpointError(f"{folder}: file name {str(name)[:200]!r} is not a plain file name of the folder; "
                              "adpq reads nothing outside the model folder")
    p = os.path.join(folder, name)
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(p)
    allowed = [real_folder]
    root = _hub_repo_root(real_folder)
    if root is not None:
        allowed.append(os.path.join(root, "blobs"))
    if not any(real.startswith(a.rstrip(os.sep) + os.sep) for a in allowed):
        raise CheckpointError(f"{p}: resolves to {real}, outside the model folder; adpq reads nothing outside it")
    return p


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
        if os.path.lexists(index_path):
            check_inside(self.path, INDEX_NAME)
            index = read_json_file(index_path, CheckpointError)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index_path}: invalid index file (needs a \"weight_map\" object of "
                                      "tensor name -> file name)")
            files = sorted(set(weight_map.values()))
            for fn in files:
                check_inside(self.path, fn)
                if not fn.endswith(".safetensors"):
                    raise CheckpointError(f"{index_path}: lists {fn!r}, not a .safetensors file")
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
        self._file_of: Dict[str, SafetensorsFile] = {}
        for fn in files:
            sf = SafetensorsFile(check_inside(self.path, fn))
            self.files[fn] = sf
            for name in sf.names():
                if weight_map is not None and weight_map.get(name) != fn:
                    if name not in weight_map:
                        continue  # a stray tensor that the index does not list: ignore like HF does
                if name in self.tensors:
                    raise CheckpointError(f"{self.path}: tensor {name!r} appears in two files")
                self.tensors[name] = sf.tensors[name]
                self.data_start[name] = sf.data_start
                self._file_of[name] = sf
        if weight_map is not None:
            missing = [n for n, fn in weight_map.items() if n not in self.tensors]
            if missing:
                raise CheckpointError(f"{index_path}: tensor {missing[0]!r} is not in {weight_map[missing[0]]}")

    def names(self) -> List[str]:
        return list(self.tensors)

    def get(self, name: str, copy: bool = False) -> np.ndarray:
        """The tensor as a private array, read-only unless copy=True (SafetensorsFile.get: pread, never
        a mapping)."""
        return self._file_of[name].get(name, copy=copy)

    def close(self) -> None:
        for sf in self.files.values():
            sf.close()

    def fingerprint(self) -> List[list]:
        out = []
        for fn, sf in self.files.items():
            st = os.stat(sf.path)
            out.append([fn, st.st_size, st.st_mtime_ns])
        return out

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
