"""Layer 2: a slow, plain-NumPy mirror of the C core, bit-exact with it (codes, scales, indices, values).

It exists to be read and to be tested against (tests/test_reference.py): every rule of the quantizer
is written here once more, in the same float32 operations in the same order, module by module as in
csrc/ (outliers, quant, columns, metrics). It imports NumPy, ml_dtypes and the pure modules of
adpq.core only, and works without the C extension.

    arrays = reference.quantize(w, config)         # same names and dtypes as QuantizedTensor.arrays()
    w_hat = reference.dequantize(arrays, shape, config)
    y = reference.matmul(x, arrays, shape, config)  # x @ w_hat.T in float64 (adpq.matmul's target)
"""
from .columns import multipliers, scales_from_means, unscale
from .matmul import matmul
from .metrics import kl_from_histograms
from .outliers import outlier_mask
from .quant import dequantize, group_params, quantize

__all__ = ["quantize", "dequantize", "outlier_mask", "group_params", "scales_from_means", "multipliers",
           "unscale", "kl_from_histograms", "matmul"]
