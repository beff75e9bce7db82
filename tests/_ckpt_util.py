"""Helpers for the checkpoint and CLI tests: tiny random Llama checkpoints written without torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np

from adpq.io.safetensors import write_safetensors

HIDDEN = 96          # not a multiple of GROUP: every row ends in a short group
INTER = 160
GROUP = 64
VOCAB = 128
LAYERS = 2


def llama_config(tied: bool, dtype: str, layers: int = LAYERS) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "hidden_act": "silu",
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": tied,
        "bos_token_id": 1, "eos_token_id": 2, "dtype": dtype, "attention_bias": False, "mlp_bias": False,
        "rope_theta": 10000.0,
    }


def llama_tensors(tied: bool, np_dtype, seed: int = 0, layers: int = LAYERS):
    rng = np.random.default_rng(seed)
    kv = 2 * 24

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(np_dtype)

    t = {"model.embed_tokens.weight": w(VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + w(HIDDEN)).astype(np_dtype)
        t[p + "self_attn.q_proj.weight"] = w(HIDDEN, HIDDEN)
        t[p + "self_attn.k_proj.weight"] = w(kv, HIDDEN)
        t[p + "self_attn.v_proj.weight"] = w(kv, HIDDEN)
        t[p + "self_attn.o_proj.weight"] = w(HIDDEN, HIDDEN)
        t[p + "post_attention_layernorm.weight"] = (1 + w(HIDDEN)).astype(np_dtype)
        t[p + "mlp.gate_proj.weight"] = w(INTER, HIDDEN)
        t[p + "mlp.up_proj.weight"] = w(INTER, HIDDEN)
        t[p + "mlp.down_proj.weight"] = w(HIDDEN, INTER)
    t["model.norm.weight"] = (1 + w(HIDDEN)).astype(np_dtype)
    if not tied:
        t["lm_head.weight"] = w(VOCAB, HIDDEN)
    return t


def write_checkpoint(path, tensors: dict, config: dict, shards: int = 2, extra_files=True) -> str:
    """An HF-style folder: config.json, `shards` safetensors files (+ index when > 1), tokenizer files."""
    os.makedirs(path, exist_ok=True)
    names = list(tensors)
    parts = np.array_split(np.arange(len(names)), shards)
    weight_map = {}
    for k, idx in enumerate(parts):
        fn = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(path, fn), [(names[i], tensors[names[i]]) for i in idx], {"format": "pt"})
        for i in idx:
            weight_map[names[i]] = fn
    if shards > 1:
        total = sum(int(a.nbytes) for a in tensors.values())
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if extra_files:
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": 64}, f)
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
    return str(path)


def make_llama(path, tied=False, dtype="float32", shards=2, seed=0, layers=LAYERS) -> str:
    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    return write_checkpoint(path, llama_tensors(tied, np_dtype, seed, layers), llama_config(tied, dtype, layers),
                            shards=shards)


def adpq_env() -> dict:
    """Environment in which `python -m adpq` imports the same adpq package as the tests."""
    import adpq

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(adpq.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args, check=None):
    r = subprocess.run([sys.executable, "-m", "adpq", *map(str, args)], capture_output=True, text=True,
                       env=adpq_env(), timeout=300)
    if check is not None and r.returncode != check:
        raise AssertionError(f"adpq {' '.join(map(str, args))}: rc={r.returncode}\n{r.stdout}\n{r.stderr}")
    return r
