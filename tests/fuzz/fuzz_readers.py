"""Fuzzing adpq's readers with atheris (libFuzzer, coverage-guided over adpq's Python code).

    python tests/fuzz/fuzz_readers.py --seconds 60          # seeds from tests/fuzz/corpus, 60 s
    python tests/fuzz/fuzz_readers.py --make-corpus         # (re)write the seed corpus from valid files

Three targets, chosen by the first byte of each input:
  0  the safetensors reader: the rest is a .safetensors file -> SafetensorsFile, every tensor read;
  1  the adpq-format reader: the rest is model.safetensors of an adpq folder -> AdpqCheckpoint, every
     tensor dequantized, inspect_checkpoint;
  2  QuantizedTensor.from_arrays: the rest drives a FuzzedDataProvider: a small matrix and config are
     quantized, then the arrays are mutated (bytes, lengths, dtypes, shape) and rebuilt, dequantized,
     and its outlier mask decoded.
Allowed outcomes: success or a ValueError/OSError (TypeError too for from_arrays). Anything else -
another exception, a crash, a hang (-timeout) - is a finding: libFuzzer stops and writes the input
to --artifacts. The working corpus grows in a temporary folder; the seeds in tests/fuzz/corpus stay.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "corpus")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["adpq"]):
    import adpq  # noqa: E402
    from adpq.core.quantized import QuantizedTensor  # noqa: E402
    from adpq.io.adpq_format import AdpqCheckpoint, inspect_checkpoint  # noqa: E402
    from adpq.io.safetensors import SafetensorsFile, write_safetensors  # noqa: E402

import numpy as np  # noqa: E402

WORK = tempfile.mkdtemp(prefix="adpq-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
ST_PATH = os.path.join(WORK, "one.safetensors")
ADPQ_DIR = os.path.join(WORK, "adpq")
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
          "quantization_config": {"quant_method": "adpq", "format_version": 3}}
SCALE_DTYPES = ("float16", "bfloat16", "float32")


def _write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def target_safetensors(data: bytes) -> None:
    _write(ST_PATH, data)
    try:
        with SafetensorsFile(ST_PATH) as f:
            for n in f.names():
                f.get(n)
    except (ValueError, OSError):
        pass


def target_adpq(data: bytes) -> None:
    _write(os.path.join(ADPQ_DIR, "model.safetensors"), data)
    try:
        ck = AdpqCheckpoint(ADPQ_DIR)
        for n in ck.names():
            ck.tensor(n)
        inspect_checkpoint(ADPQ_DIR)
    except (ValueError, OSError):
        pass


def target_from_arrays(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    rows, cols = fdp.ConsumeIntInRange(1, 24), fdp.ConsumeIntInRange(1, 160)
    cfg = adpq.QuantConfig(bits=fdp.PickValueInList([2, 3, 4, 8]),
                           group_size=fdp.PickValueInList([8, 16, 64, 128, -1]),
                           outlier_ratio=fdp.PickValueInList([0.0, 0.01, 0.1, 0.5]),
                           outlier_format=fdp.PickValueInList(["fp16", "group"]),
                           symmetric=fdp.ConsumeBool(), scale_dtype=fdp.PickValueInList(list(SCALE_DTYPES)),
                           column_scaling=fdp.PickValueInList(["none", "mean_abs"]), threads=1)
    w = np.frombuffer(fdp.ConsumeBytes(4 * rows * cols).ljust(4 * rows * cols, b"\0"), dtype=np.float32)
    w = np.nan_to_num(w.reshape(rows, cols), nan=0.0, posinf=1.0, neginf=-1.0).clip(-1e4, 1e4)
    try:
        qt = adpq.quantize(w, config=cfg)
    except (ValueError, TypeError):
        return
    arrays = qt.arrays()
    shape = qt.shape
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        op = fdp.ConsumeIntInRange(0, 6)
        name = fdp.PickValueInList(sorted(arrays)) if arrays else None
        if name is None:
            break
        a = arrays[name]
        if op == 0 and a.size:  # overwrite bytes
            b = bytearray(a.tobytes())
            for _ in range(fdp.ConsumeIntInRange(1, 8)):
                b[fdp.ConsumeIntInRange(0, len(b) - 1)] = fdp.ConsumeIntInRange(0, 255)
            arrays[name] = np.frombuffer(bytes(b), dtype=a.dtype).reshape(a.shape)
        elif op == 1:  # shorter or longer
            k = fdp.ConsumeIntInRange(-3, 3)
            arrays[name] = a.reshape(-1)[:max(0, a.size + k)] if k < 0 else np.concatenate([a.reshape(-1), a.reshape(-1)[:k]])
        elif op == 2:  # dropped
            del arrays[name]
        elif op == 3:  # another dtype
            arrays[name] = a.view(np.uint8) if a.dtype != np.uint8 else a.astype(np.uint16)
        elif op == 4:  # another shape
            shape = (fdp.ConsumeIntInRange(0, 40), fdp.ConsumeIntInRange(0, 200))
        elif op == 5:  # another config
            cfg = cfg.replace(bits=fdp.PickValueInList([2, 3, 4, 8]), symmetric=fdp.ConsumeBool())
        else:  # an unknown or empty entry
            arrays[fdp.PickValueInList(["bogus", "zeros", "outlier_values", "column_scales"])] = np.zeros(
                fdp.ConsumeIntInRange(0, 4), dtype=np.float16)
    try:
        q2 = QuantizedTensor.from_arrays(arrays, shape, cfg, dtype=fdp.PickValueInList(["float32", "bfloat16"]))
    except (ValueError, TypeError):
        return
    q2.dequantize()
    q2.outlier_mask()


TARGETS = (target_safetensors, target_adpq, target_from_arrays)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


# ------------------------------------------------------------------ the seed corpus


def make_corpus() -> None:
    """A few KB of valid inputs: small safetensors files, a small adpq shard, from_arrays seeds."""
    os.makedirs(SEEDS, exist_ok=True)
    for fn in os.listdir(SEEDS):
        os.unlink(os.path.join(SEEDS, fn))
    rng = np.random.default_rng(0)
    import ml_dtypes

    def st_bytes(tensors, metadata=None):
        p = os.path.join(WORK, "seed.safetensors")
        write_safetensors(p, tensors, metadata)
        return open(p, "rb").read()

    seeds = {
        "st_mixed": b"\0" + st_bytes([("a", rng.standard_normal((3, 4)).astype(np.float32)),
                                      ("b", np.arange(5, dtype=np.int64)), ("c", np.zeros((0, 2), np.float16)),
                                      ("d", np.array([1.5, -2], dtype=ml_dtypes.bfloat16)),
                                      ("e", np.array([True, False]))], {"format": "pt"}),
        "st_empty": b"\0" + st_bytes([]),
    }
    for i, (sym, fmt, sd) in enumerate([(True, "fp16", "float16"), (False, "group", "bfloat16")]):
        cfg = adpq.QuantConfig(bits=3, group_size=16, outlier_ratio=0.05, symmetric=sym, outlier_format=fmt,
                               scale_dtype=sd, column_scaling="none")
        qt = adpq.quantize(rng.standard_normal((4, 40)).astype(np.float32), config=cfg)
        arrays = qt.arrays()
        meta = {"format": "pt", "adpq.format_version": "3",
                "adpq:w": json.dumps({"shape": [4, 40], "dtype": "float32", "arrays": list(arrays),
                                      "config": cfg.to_dict(), "num_outliers": int(qt.num_outliers)})}
        entries = [("w" if k == "codes" else f"w.adpq.{k}", a) for k, a in arrays.items()]
        seeds[f"adpq_{i}"] = b"\1" + st_bytes(entries + [("norm", np.ones(4, np.float32))], meta)
    for i in range(4):
        seeds[f"from_arrays_{i}"] = b"\2" + rng.integers(0, 256, 200 + 100 * i, dtype=np.uint8).tobytes()
    for k, v in seeds.items():
        _write(os.path.join(SEEDS, k), v)
    print(f"wrote {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes, to {SEEDS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60, help="fuzzing time (libFuzzer -max_total_time)")
    ap.add_argument("--make-corpus", action="store_true", help="rewrite the seed corpus and exit")
    ap.add_argument("--artifacts", default=None, help="folder for crashing inputs (default: a temporary one)")
    ap.add_argument("--jobs", type=int, default=1, help="libFuzzer -jobs/-workers")
    ap.add_argument("libfuzzer_args", nargs="*", help="extra libFuzzer arguments (after --)")
    args = ap.parse_args()
    os.makedirs(ADPQ_DIR, exist_ok=True)
    _write(os.path.join(ADPQ_DIR, "config.json"), json.dumps(CONFIG).encode())
    if args.make_corpus:
        make_corpus()
        return
    work_corpus = os.path.join(WORK, "corpus")
    os.makedirs(work_corpus)
    artifacts = args.artifacts or os.path.join(tempfile.gettempdir(), "adpq-fuzz-artifacts")
    os.makedirs(artifacts, exist_ok=True)
    argv = [sys.argv[0], work_corpus, SEEDS, f"-max_total_time={args.seconds}", "-timeout=20",
            "-rss_limit_mb=4096", "-max_len=65536", "-print_final_stats=1",
            f"-artifact_prefix={artifacts}{os.sep}", *args.libfuzzer_args]
    if args.jobs > 1:
        argv += [f"-jobs={args.jobs}", f"-workers={args.jobs}"]
    atexit.register(shutil.rmtree, WORK, ignore_errors=True)
    print(f"fuzzing for {args.seconds} s; crashing inputs go to {artifacts}", flush=True)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
