"""Layer 1, the quantizer's API over the C core (adpq._core).

  dtypes, config, layout, thresholds, arrays   pure NumPy: the format and its rules (adpq.reference
                                               builds on these, so they never import the C extension)
  quantize, quantized, metrics                 quantize / QuantizedTensor / metrics, calling the C core

This package's __init__ imports nothing, so that importing one pure module does not load the C core;
the public names are re-exported by adpq/__init__.py.
"""
