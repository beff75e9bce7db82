"""transformers integration: `quant_method: "adpq"` (AdpqConfig + AdpqHfQuantizer).

With these registered (adpq.hf.register does it when transformers is imported after `import adpq`):

    model = AutoModelForCausalLM.from_pretrained(adpq_dir)          # AdpqLinear modules, packed arrays
    model = AutoModelForCausalLM.from_pretrained(plain_dir, quantization_config=adpq.AdpqConfig(bits=3))
    model.save_pretrained(out_dir)                                  # the adpq format (docs/FORMAT.md)

A pre-quantized folder: before transformers loads the weights, every quantized tensor whose module is
an nn.Linear is replaced by an AdpqLinear built from the folder's arrays (read once, kept as they are
stored); transformers then loads the kept tensors (embeddings, norms, biases) into the model and skips
the entries of the stored arrays. Quantize at load: the model is loaded as usual, then the selected linear
layers are quantized one by one (the selection of quantize_checkpoint: include/exclude patterns).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
from typing import Any, Dict, List, Optional

import torch
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..core.config import QuantConfig
from ..io.checkpoint import select_tensors
from ..io.folder import FORMAT_VERSION, QUANT_METHOD, CheckpointError, check_format_version
from ..io.safetensors import TensorInfo
from ..runtime.linear import ACTIVATIONS, AdpqLinear
from .save import save_adpq

__all__ = ["AdpqConfig", "AdpqHfQuantizer"]

_QUANT_FIELDS = tuple(f.name for f in dataclasses.fields(QuantConfig))
_TORCH_DTYPE_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


class AdpqConfig(QuantizationConfigMixin):
    """The quantization_config of an adpq model: every adpq.QuantConfig field (same names, defaults
    and checks), the include/exclude patterns of quantize_checkpoint, and for the runtime the
    activations mode of AdpqLinear (adpq.core.matmul.MODES; not stored in the model's files), and
    the records of a GPTQ calibration (`calibration`: what adpq.calibrate used) and of CafeQ
    (`cafeq`: its options and pairs); provenance only, kept as they are read. Quantizing at load
    does neither: use adpq.calibrate / `adpq quantize --cafeq`, then load the folder.

        AutoModelForCausalLM.from_pretrained(plain_dir, quantization_config=adpq.AdpqConfig(bits=3))
    """

    def __init__(self, include=(), exclude=(), activations: str = "float32", calibration: Optional[dict] = None,
                 cafeq: Optional[dict] = None, **kwargs: Any):
        self.quant_method = QUANT_METHOD
        self.format_version = check_format_version(kwargs.pop("format_version", FORMAT_VERSION),
                                                   "adpq quantization_config")
        kwargs.pop("quant_method", None)
        unknown = sorted(set(kwargs) - set(_QUANT_FIELDS))
        if unknown:
            raise TypeError(f"AdpqConfig got unknown argument(s) {unknown}; it takes {list(_QUANT_FIELDS)}, "
                            "include, exclude, activations, calibration and cafeq")
        if calibration is not None and not isinstance(calibration, dict):
            raise TypeError(f"calibration must be a dict (the record adpq.calibrate wrote), got "
                            f"{type(calibration).__name__}")
        if cafeq is not None and not isinstance(cafeq, dict):
            raise TypeError(f"cafeq must be a dict (the record quantize_checkpoint wrote), got {type(cafeq).__name__}")
        self.calibration, self.cafeq = calibration, cafeq
        if self.format_version < 2:
            kwargs.setdefault("column_scaling", "none")  # format 1 predates column scaling
        self.quant_config = QuantConfig(**kwargs)
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
        self.activations = activations
        self.include = [include] if isinstance(include, str) else list(include or [])
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])

    def to_dict(self) -> Dict[str, Any]:
        """The config.json block of the adpq format (docs/FORMAT.md)."""
        from ..io.report import jsonable

        d = {"quant_method": QUANT_METHOD, "format_version": self.format_version,
             **jsonable(self.quant_config.to_dict()), "include": list(self.include),
             "exclude": list(self.exclude)}
        if self.calibration is not None:
            d["calibration"] = jsonable(self.calibration)
        if self.cafeq is not None:
            d["cafeq"] = jsonable(self.cafeq)
        return d

    def to_diff_dict(self) -> Dict[str, Any]:
        return self.to_dict()

    def __getattr__(self, name: str) -> Any:  # bits, group_size, ...: the QuantConfig's fields
        if name in _QUANT_FIELDS:
            return getattr(self.__dict__["quant_config"], name)
        raise AttributeError(name)


def _folder_of(checkpoint_files: Optional[List[str]]) -> str:
    if not checkpoint_files:
        raise CheckpointError("an adpq model must be loaded from a local folder of safetensors files")
    folders = {os.path.dirname(os.path.abspath(f)) for f in checkpoint_files if f.endswith(".safetensors")}
    if len(folders) != 1:
        raise CheckpointError(f"adpq: expected the safetensors shards of one folder, got {checkpoint_files}")
    return folders.pop()


def _set_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


class AdpqHfQuantizer(HfQuantizer):
    """Loads adpq folders as AdpqLinear modules and quantizes plain models at load (AdpqConfig)."""

    requires_calibration = False
    quantization_config: AdpqConfig

    def __init__(self, quantization_config: AdpqConfig, **kwargs: Any):
        super().__init__(quantization_config, **kwargs)
        self.tensor_order: List[str] = []

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not self.pre_quantized:
            return model
        from ..io.adpq_format import AdpqCheckpoint

        ck = AdpqCheckpoint(_folder_of(checkpoint_files))
        self.tensor_order = ck.names()
        act = self.quantization_config.activations
        for name in ck.names():
            if not ck.is_quantized(name):
                continue
            mod_name = name[: -len(".weight")] if name.endswith(".weight") else None
            try:
                linear = model.get_submodule(mod_name) if mod_name else None
            except AttributeError:
                linear = None
            if not isinstance(linear, torch.nn.Linear):
                raise CheckpointError(
                    f"{ck.path}: quantized tensor {name!r} is not the weight of a linear layer of "
                    f"{type(model).__name__}; the packed runtime runs linear layers only "
                    "(load it with adpq.load(path, dequantize=True))")
            qt = ck.quantized_tensor(name)
            if qt.shape != (linear.out_features, linear.in_features):
                raise CheckpointError(f"{ck.path}: quantized tensor {name!r} has shape {list(qt.shape)}, the model's "
                                      f"layer {[linear.out_features, linear.in_features]}")
            bias = None
            if linear.bias is not None:  # loaded by transformers afterwards, as a kept tensor
                bias = torch.empty(linear.out_features, dtype=linear.bias.dtype, device="meta")
            _set_module(model, mod_name, AdpqLinear(qt, bias, activations=act, config_dict=ck.qmeta[name]["config"]))
        # the arrays are in the modules already: transformers must not report their entries
        ignore = set(model._keys_to_ignore_on_load_unexpected or []) | {r"\.adpq\."}
        ignore |= {f"^{re.escape(ck.entry(n, 'codes'))}$" for n in ck.qmeta}
        model._keys_to_ignore_on_load_unexpected = ignore
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:
            self._quantize_linears(model)
        quantizer = self

        def save_pretrained(save_directory, max_shard_size="2GB", **kw):
            return save_adpq(model, save_directory, max_shard_size=max_shard_size, order=quantizer.tensor_order, **kw)

        save_pretrained.__doc__ = save_adpq.__doc__
        model.save_pretrained = save_pretrained
        return model

    def _quantize_linears(self, model) -> None:
        qc = self.quantization_config
        if qc.calibration is not None or qc.cafeq is not None:
            raise ValueError("quantizing at load is AdpQ alone: for GPTQ calibration or CafeQ, write the folder "
                             "with adpq.calibrate / adpq.quantize_checkpoint(..., cafeq=True) and load it")
        linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        infos = [TensorInfo(name, _TORCH_DTYPE_NAME.get(m.weight.dtype, str(m.weight.dtype)), list(m.weight.shape),
                            0, 0, "") for name, m in linears.items()]
        owners = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        for name in select_tensors(infos, qc.include, qc.exclude):
            linear = linears[name]
            if owners[id(linear.weight)] > 1:
                raise CheckpointError(f"{name!r} is shared with another module (tied weights); exclude it")
            _set_module(model, name[: -len(".weight")],
                        AdpqLinear.from_linear(linear, qc.quant_config, activations=qc.activations))
