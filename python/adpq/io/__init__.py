"""Layer 3, files: safetensors (a validating reader and a streaming writer), model folders, the
checkpoint pipeline (quantize_checkpoint), and the adpq-format reader (inspect, dequantize).

  safetensors    the safetensors file format, memory-mapped one tensor at a time
  folder         a model folder: config.json, shards, the index, what marks an adpq or unfinished output
  output         writing a folder atomically, with resume
  progress       the progress bar
  report         per-tensor reports and the summary table
  checkpoint     quantize_checkpoint: the streaming pipeline
  adpq_format    reading an adpq folder back: AdpqCheckpoint, inspect_checkpoint, dequantize_checkpoint

Nothing here imports torch or transformers.
"""
