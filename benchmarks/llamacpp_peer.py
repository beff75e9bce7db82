#!/usr/bin/env python
"""llama.cpp as the CPU inference-speed peer: its own `llama-bench` on a GGUF, numbers read from
`-o json`.

llama-bench times prefill (test "pp<n>": a batch of n prompt tokens in one decode call) and decode
(test "tg<n>": n single-token steps) on an empty context, each test repeated -r times after a
warm-up run, and reports the mean and standard deviation of tokens/s. Nothing of llama.cpp is
vendored; build it (shared libs, native CPU flags as its default build does) and pass the build
folder:

    cmake -S llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON
    cmake --build build -j2 --target llama-bench llama-quantize
    # a GGUF from an HF folder (llama.cpp's converter; its gguf-py from the same tree), then quantized:
    PYTHONPATH=llama.cpp/gguf-py python llama.cpp/convert_hf_to_gguf.py HF_DIR --outtype bf16 --outfile m-bf16.gguf
    build/bin/llama-quantize m-bf16.gguf m-q4_0.gguf Q4_0
    python benchmarks/llamacpp_peer.py build m-q4_0.gguf -t 2 -p 64,512 -n 64 -r 3

`convert_hf` and `quantize` below run those two steps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def find_binary(build: str, name: str) -> str:
    """build/bin/<name> (or build/<name>, or build itself if it is the binary)."""
    for p in (os.path.join(build, "bin", name), os.path.join(build, name), build):
        if os.path.isfile(p) and os.access(p, os.X_OK) and os.path.basename(p) == name:
            return os.path.abspath(p)
    raise FileNotFoundError(f"no {name} in {build} (or its bin/)")


def source_dir(build: str) -> str:
    """The llama.cpp source tree of a build folder (CMAKE_HOME_DIRECTORY in its CMakeCache.txt)."""
    with open(os.path.join(build, "CMakeCache.txt")) as f:
        for ln in f:
            if ln.startswith("CMAKE_HOME_DIRECTORY"):
                return ln.split("=", 1)[1].strip()
    raise ValueError(f"no CMAKE_HOME_DIRECTORY in {build}/CMakeCache.txt")


def convert_hf(build: str, hf_dir: str, out: str, outtype: str = "bf16") -> str:
    """An HF folder to a GGUF with the build's own convert_hf_to_gguf.py and gguf-py."""
    src = source_dir(build)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(src, "gguf-py"),
                                                                     os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, os.path.join(src, "convert_hf_to_gguf.py"), hf_dir, "--outtype", outtype,
                    "--outfile", out], check=True, env=env)
    return out


def quantize(build: str, src: str, out: str, ftype: str = "Q4_0", allow_requantize: bool = False,
             threads: int | None = None) -> str:
    """llama-quantize src -> out as ftype (llama.cpp's default tensor choices for that ftype)."""
    cmd = [find_binary(build, "llama-quantize")] + (["--allow-requantize"] if allow_requantize else [])
    cmd += [src, out, ftype] + ([str(threads)] if threads else [])
    subprocess.run(cmd, check=True)
    return out


def run_llama_bench(build: str, gguf: str, threads: int = 2, n_prompt=(64,), n_gen=(64,), reps: int = 3,
                    repack: bool | None = None, extra=(), timeout: float | None = None) -> list[dict]:
    """llama-bench's JSON rows (one per test) for `-m gguf -t threads -p n_prompt -n n_gen -r reps
    -o json` (+ `--repack 0|1` when given; llama.cpp's default is 1, + extra args)."""
    join = lambda v: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
    cmd = [find_binary(build, "llama-bench"), "-m", gguf, "-t", join(threads), "-p", join(n_prompt),
           "-n", join(n_gen), "-r", str(reps), "-o", "json"]
    if repack is not None:
        cmd += ["--repack", str(int(repack))]
    cmd += list(extra)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def bench(build: str, gguf: str, threads: int = 2, n_prompt: int = 64, n_gen: int = 64, reps: int = 3,
          repack: bool | None = None, extra=(), timeout: float | None = None) -> dict:
    """Prefill and decode speed of a GGUF with llama-bench: {'pp_tps', 'pp_tps_std', 'pp_tps_median'
    (prefill of n_prompt tokens), 'tg_tps', 'tg_tps_std', 'tg_tps_median' (n_gen decode steps): tokens/s
    mean, std and median over reps, 'ms_per_token' (decode, from the median), 'build_commit',
    'build_number', 'model_type', 'model_size' (bytes), 'model_n_params', 'cpu_info', 'n_threads',
    'repack', 'command' (for the record), 'rows' (the raw JSON)}. n_prompt or n_gen 0 skips that test."""
    rows = run_llama_bench(build, gguf, threads, [n_prompt] if n_prompt else [0], [n_gen] if n_gen else [0],
                           reps, repack, extra, timeout)
    out: dict = {"rows": rows}
    for r in rows:
        kind = "pp" if r["n_gen"] == 0 else "tg" if r["n_prompt"] == 0 else "pg"
        out[f"{kind}_tps"], out[f"{kind}_tps_std"] = r["avg_ts"], r["stddev_ts"]
        if r.get("samples_ts"):  # the median resists a repetition slowed by another process
            out[f"{kind}_tps_median"] = statistics.median(r["samples_ts"])
    if "tg_tps" in out:
        out["ms_per_token"] = 1e3 / out.get("tg_tps_median", out["tg_tps"])
    first = rows[0]
    for k in ("build_commit", "build_number", "model_type", "model_size", "model_n_params", "cpu_info",
              "n_threads", "repack"):
        if k in first:
            out[k] = first[k]
    out["command"] = (f"llama-bench -m {gguf} -t {threads} -p {n_prompt} -n {n_gen} -r {reps} -o json"
                      + (f" --repack {int(repack)}" if repack is not None else "") + "".join(f" {e}" for e in extra))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", help="llama.cpp build folder (with bin/llama-bench)")
    ap.add_argument("gguf", nargs="+")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", default="64", help="comma-separated prefill lengths (0: none)")
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--repack", type=int, choices=[0, 1], default=None, help="default: llama.cpp's (1)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON lines")
    a = ap.parse_args(argv)
    for g in a.gguf:
        for i, p in enumerate(int(v) for v in a.n_prompt.split(",")):
            r = bench(a.build, g, a.threads, p, a.n_gen if i == 0 else 0, a.reps,
                      None if a.repack is None else bool(a.repack))
            if a.json:
                print(json.dumps({k: v for k, v in r.items() if k != "rows"}))
                continue
            s = f"{os.path.basename(g)} [{r['model_type']}, {r['model_size'] / 2**20:.1f} MiB] t={r['n_threads']}"
            if "pp_tps" in r:
                s += f"  pp{p}: {r['pp_tps']:.1f} ± {r['pp_tps_std']:.1f} (median {r['pp_tps_median']:.1f}) tok/s"
            if "tg_tps" in r:
                s += (f"  tg{a.n_gen}: {r['tg_tps']:.1f} ± {r['tg_tps_std']:.1f}"
                      f" (median {r['tg_tps_median']:.1f}) tok/s"
                      f" ({r['ms_per_token']:.2f} ms/token)")
            print(s + f"  (llama.cpp {r.get('build_commit')}, build {r.get('build_number')})")


if __name__ == "__main__":
    main()
