"""Layer 3b: running quantized matrices in torch without a dense copy (docs/DESIGN.md 1.2).

    linear        AdpqLinear: an nn.Module holding the stored arrays of one matrix; on CPU it calls
                  the C kernel on the packed format (adpq.matmul), elsewhere it dequantizes in torch
    torch_format  dequantization of the stored arrays with torch operations, on any device

Imports core (and torch); never io, hf or above.
"""
