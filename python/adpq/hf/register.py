"""Registers adpq with transformers as quant_method "adpq", without importing transformers.

`import adpq` calls install(): if transformers is already imported, adpq registers now; otherwise a
one-shot import hook registers it right after transformers itself is imported. So

    import adpq
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(adpq_folder)

gives AdpqLinear modules, while `import adpq` alone stays light (no torch, no transformers).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["install", "register"]


def register() -> None:
    """Registers AdpqConfig and AdpqHfQuantizer with transformers (idempotent)."""
    from transformers.quantizers import auto

    from .quantizer import AdpqConfig, AdpqHfQuantizer

    if auto.AUTO_QUANTIZATION_CONFIG_MAPPING.get("adpq") is not AdpqConfig:
        auto.AUTO_QUANTIZATION_CONFIG_MAPPING.pop("adpq", None)
        auto.register_quantization_config("adpq")(AdpqConfig)
    if auto.AUTO_QUANTIZER_MAPPING.get("adpq") is not AdpqHfQuantizer:
        auto.AUTO_QUANTIZER_MAPPING.pop("adpq", None)
        auto.register_quantizer("adpq")(AdpqHfQuantizer)


def _register_or_warn() -> None:
    try:
        register()
    except Exception as e:  # an unusable transformers must not break `import transformers`
        warnings.warn(f"adpq could not register its quantizer with transformers ({type(e).__name__}: {e}); "
                      "load adpq folders with adpq.load", RuntimeWarning, stacklevel=2)


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of `transformers` so that registration follows its import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        _uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_or_warn()

        spec.loader.exec_module = exec_then_register
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterTransformersImport)]


def install() -> None:
    """Registers now if transformers is imported, else when it is."""
    if "transformers" in sys.modules:
        _register_or_warn()
        return
    if not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformersImport())
