"""Inference speed and memory of the packed runtime (issue 13), as ratios measured in one run.

    python benchmarks/inference.py                                   # kernel + SmolLM2 model rows
    python benchmarks/inference.py --kernel-only --repeats 9
    python benchmarks/inference.py --model-dir models/smollm2-135m --ggml-build /work/llama.cpp-build \\
        --gguf-q4_0 smollm2-q4_0.gguf --gguf-q8_0 smollm2-q8_0.gguf

Kernel (one thread; OPENBLAS_NUM_THREADS=1 is set before NumPy loads): y = x @ W_hat.T for W of
4096x4096 and 11008x4096 (gaussian), batch 1 and a prefill batch, adpq at 4 and 3 bits (the default
QuantConfig otherwise: g128, 1% fp16 outliers, column scaling) in each activations mode, against NumPy's
float32 x @ W.T on the dense matrix, ggml's Q4_0 x Q8_0 mat-vec on the same matrix (with --ggml-build:
benchmarks/ggml_matvec.py) and the machine's read bandwidth (NumPy sum over a 512 MiB array, one
thread). Each time is the median of --repeats runs, after a warm-up; GB/s = bytes of stored arrays / time.

Model (2 threads unless --threads): each configuration in its own process, so that resident memory is
its own: torch float32 and bfloat16 models of --model-dir, and adpq folders quantized from it (default
config at 3 bits, and 4 bits). Decode: greedy generation of 64 tokens from a 16-token prompt, tokens/s
between the first and the last new token (median of 3); prefill: one forward pass of 256 tokens (median
of 3, after one warm-up); resident memory after load and peak during load (RSS, minus the process's RSS
before load). With --ggml-build and GGUF files, llama.cpp's llama-bench (benchmarks/llamacpp_peer.py)
is the peer row. A per-token profile of the adpq decode splits the time into the C kernel, the rest of
AdpqLinear (conversions, Python) and everything else (torch ops and Python of the model).

Results: printed as tables and written to benchmarks/results/inference.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # NumPy's float32 peer runs on one thread

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SHAPES = ((4096, 4096), (11008, 4096))


def _median_time(fn, repeats: int, min_seconds: float = 0.05) -> float:
    """Median over `repeats` of the mean time of fn() in a loop of at least min_seconds."""
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    loops = max(1, int(min_seconds / one))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t) / loops)
    return statistics.median(times)


def read_bandwidth(repeats: int) -> float:
    a = np.ones(128 * 2**20, dtype=np.float32)  # 512 MiB
    return a.nbytes / _median_time(lambda: a.sum(), repeats, min_seconds=0.0) / 1e9


def kernel_rows(repeats: int, ggml_build, batch: int):
    import adpq
    from adpq import _core
    from adpq.core.matmul import MODES

    rows = []
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        w = (rng.standard_normal(shape, dtype=np.float32) * 0.02)
        for n in (1, batch):
            x = rng.standard_normal((n, shape[1]), dtype=np.float32)
            t_f32 = _median_time(lambda: x @ w.T, repeats)
            row = {"shape": list(shape), "batch": n, "numpy_f32_ms": t_f32 * 1e3,
                   "numpy_f32_gbs": w.nbytes / t_f32 / 1e9}
            if ggml_build and n == 1:
                sys.path.insert(0, str(HERE))
                import ggml_matvec

                for typ in ("q4_0", "q8_0"):
                    t_g, _ = ggml_matvec.time_matvec(ggml_build, w, x[0], type=typ, threads=1, repeats=repeats)
                    row[f"ggml_{typ}_ms"] = t_g * 1e3
            for bits in (4, 3):
                qt = adpq.quantize(w, bits=bits)
                plan = qt.matmul_plan()
                out = np.empty((n, shape[0]), dtype=np.float32)
                ref = (x.astype(np.float64) @ qt.dequantize().astype(np.float64).T)
                for act, mode in MODES.items():
                    t = _median_time(lambda: _core.matmul(plan, x, out, mode, 1), repeats)
                    err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
                    row[f"adpq{bits}_{act}_ms"] = t * 1e3
                    row[f"adpq{bits}_{act}_relerr"] = err
                row[f"adpq{bits}_bits_per_weight"] = qt.bits_per_weight
                row[f"adpq{bits}_gbs"] = qt.nbytes / (row[f"adpq{bits}_float32_ms"] / 1e3) / 1e9
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def print_kernel(rows, bw):
    print(f"\nkernel, 1 thread; read bandwidth (NumPy sum, 512 MiB) {bw:.1f} GB/s")
    acts = sorted({k.split("_")[1] for r in rows for k in r if k.startswith("adpq4_") and k.endswith("_ms")})
    head = ["shape", "n", "f32 ms"] + [f"a{b}/{a} ms" for b in (4, 3) for a in acts] + \
        ["f32/a4", "f32/a3", "q4_0 ms", "q4_0/a4", "a4 GB/s", "a3 GB/s"]
    print("  ".join(f"{h:>12}" for h in head))
    for r in rows:
        cells = ["x".join(map(str, r["shape"])), r["batch"], f"{r['numpy_f32_ms']:.3f}"]
        cells += [f"{r[f'adpq{b}_{a}_ms']:.3f}" for b in (4, 3) for a in acts]
        cells += [f"{r['numpy_f32_ms'] / r['adpq4_float32_ms']:.2f}", f"{r['numpy_f32_ms'] / r['adpq3_float32_ms']:.2f}"]
        q4 = r.get("ggml_q4_0_ms")
        best4 = min(r[f"adpq4_{a}_ms"] for a in acts)
        cells += [f"{q4:.3f}" if q4 else "-", f"{q4 / best4:.2f}" if q4 else "-",
                  f"{r['adpq4_gbs']:.1f}", f"{r['adpq3_gbs']:.1f}"]
        print("  ".join(f"{str(c):>12}" for c in cells))


# ------------------------------------------------------------------ model (child processes)

def _child(spec: dict) -> dict:
    """One configuration in this process: load, memory, prefill, decode, profile."""
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers

    import adpq
    from adpq import _core
    from adpq.generate import generate, peak_rss_bytes, reset_peak_rss, rss_bytes
    from adpq.runtime.linear import AdpqLinear

    transformers.logging.set_verbosity_error()
    tok = transformers.AutoTokenizer.from_pretrained(spec["tokenizer"], local_files_only=True)
    reset_peak_rss()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    if spec["kind"] == "torch":
        model = transformers.AutoModelForCausalLM.from_pretrained(spec["dir"], dtype=getattr(torch, spec["dtype"]),
                                                                  local_files_only=True).eval()
    else:
        model = adpq.load(spec["dir"], dtype=spec["dtype"], activations=spec["activations"],
                          lm_head=spec.get("lm_head_bits"))
    load_s = time.perf_counter() - t0
    rss1, peak = rss_bytes(), peak_rss_bytes()
    text = Path(spec["text"]).read_text()[:20000]
    ids = tok(text, return_tensors="pt").input_ids[:, :256]
    with torch.inference_mode():
        model(ids)
        pre = []
        for _ in range(3):
            t = time.perf_counter()
            model(ids)
            pre.append(time.perf_counter() - t)
    decode = []
    for _ in range(3):
        st = generate(spec["dir"], text[:80], max_new_tokens=64, out=None, model=model)
        decode.append(st.decode_tokens_per_s)
    res = {"load_s": load_s, "rss_model_mib": (rss1 - rss0) / 2**20, "rss_after_load_mib": rss1 / 2**20,
           "rss_model_after_runs_mib": (rss_bytes() - rss0) / 2**20,
           "peak_load_mib": (peak - rss0) / 2**20, "prefill_tps": ids.shape[1] / statistics.median(pre),
           "decode_tps": statistics.median(decode), "decode_runs": decode}
    if spec["kind"] == "adpq":  # per-token profile of decode
        acc = {"kernel": 0.0, "linear": 0.0}
        core_mm, fwd = _core.matmul, AdpqLinear.forward

        def mm(*a):
            t = time.perf_counter()
            r = core_mm(*a)
            acc["kernel"] += time.perf_counter() - t
            return r

        def lin(self, x):
            t = time.perf_counter()
            r = fwd(self, x)
            acc["linear"] += time.perf_counter() - t
            return r

        import adpq.runtime.linear as rl

        rl._core.matmul, AdpqLinear.forward = mm, lin
        try:
            st = generate(spec["dir"], text[:80], max_new_tokens=64, out=None, model=model)
        finally:
            rl._core.matmul, AdpqLinear.forward = core_mm, fwd
        total = st.token_times[-1] - st.token_times[0]
        n = st.new_tokens - 1
        res["profile_ms_per_token"] = {"total": 1e3 * total / n, "c_kernel": 1e3 * acc["kernel"] / (n + 1),
                                       "adpq_linear_other": 1e3 * (acc["linear"] - acc["kernel"]) / (n + 1),
                                       "rest_torch_python": 1e3 * (total - acc["linear"] * n / (n + 1)) / n}
    return res


def model_rows(args):
    import adpq

    work = Path(tempfile.mkdtemp(prefix="adpq-inference-"))
    specs = [{"name": "torch float32", "kind": "torch", "dir": args.model_dir, "dtype": "float32"},
             {"name": "torch bfloat16", "kind": "torch", "dir": args.model_dir, "dtype": "bfloat16"}]
    for bits in (3, 4):
        dst = work / f"adpq{bits}"
        adpq.quantize_checkpoint(args.model_dir, dst, adpq.QuantConfig(bits=bits), progress=False,
                                 compute_metrics=False)
        for act in args.activations:
            for dt in args.dtypes:
                specs.append({"name": f"adpq {bits}-bit {act} ({dt})", "kind": "adpq", "dir": str(dst), "dtype": dt,
                              "activations": act})
                if args.lm_head_bits:
                    specs.append({"name": f"adpq {bits}-bit {act} ({dt}) head {args.lm_head_bits}-bit", "kind": "adpq",
                                  "dir": str(dst), "dtype": dt, "activations": act,
                                  "lm_head_bits": args.lm_head_bits})
    rows = []
    for spec in specs:
        spec.update(threads=args.threads, tokenizer=args.model_dir, text=args.text)
        r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            rows.append({"name": spec["name"], "error": r.stderr.strip().splitlines()[-1:]})
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["name"] = spec["name"]
        rows.append(res)
        print(json.dumps(res), file=sys.stderr)
    if args.ggml_build:
        sys.path.insert(0, str(HERE))
        import llamacpp_peer

        for typ in ("q4_0", "q8_0"):
            gguf = getattr(args, f"gguf_{typ}")
            if gguf:
                res = llamacpp_peer.bench(args.ggml_build, gguf, threads=args.threads, n_prompt=256, n_gen=64)
                rows.append({"name": f"llama.cpp {typ.upper()} (llama-bench pp256/tg64)",
                             "decode_tps": res["tg_tps_median"], "prefill_tps": res["pp_tps_median"],
                             "build_commit": res["build_commit"]})
    return rows


def print_models(rows):
    print("\nmodel, decode and prefill tokens/s, memory (MiB; model = RSS after load - RSS before load; model* = the "
          "same after the runs: a loader that maps the file lazily is resident only once its weights are read)")
    print(f"{'':<36}{'decode':>9}{'prefill':>9}{'model':>8}{'peak':>8}{'RSS':>8}{'load s':>8}{'model*':>8}")
    best = max((r.get("decode_tps", 0) for r in rows if r["name"].startswith("torch")), default=0)
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<36} failed: {r['error']}")
            continue
        g = lambda k, f="{:.1f}": f.format(r[k]) if r.get(k) is not None else "-"  # noqa: E731
        print(f"{r['name']:<36}{g('decode_tps'):>9}{g('prefill_tps'):>9}{g('rss_model_mib', '{:.0f}'):>8}"
              f"{g('peak_load_mib', '{:.0f}'):>8}{g('rss_after_load_mib', '{:.0f}'):>8}{g('load_s', '{:.2f}'):>8}"
              f"{g('rss_model_after_runs_mib', '{:.0f}'):>8}"
              + (f"   decode x{r['decode_tps'] / best:.2f} of the faster torch" if best and r.get("decode_tps")
                 and not r["name"].startswith("torch") else ""))
        if "profile_ms_per_token" in r:
            p = r["profile_ms_per_token"]
            print(f"{'':<36}per token {p['total']:.2f} ms: C kernel {p['c_kernel']:.2f}, rest of AdpqLinear "
                  f"{p['adpq_linear_other']:.2f}, torch ops + Python {p['rest_torch_python']:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64, help="the prefill batch of the kernel rows")
    ap.add_argument("--kernel-only", action="store_true")
    ap.add_argument("--model-only", action="store_true")
    ap.add_argument("--model-dir", default=str(HERE.parent.parent / "models" / "smollm2-135m"))
    ap.add_argument("--text", default=None, help="prompt text (default: WikiText-2 test, adpq.eval.default_text_file)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--activations", nargs="+", default=["float32"])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16"], help="dtype of the model's unquantized parts")
    ap.add_argument("--lm-head-bits", type=int, default=8, help="also rows with the LM head quantized at load (0: no)")
    ap.add_argument("--ggml-build", help="llama.cpp build folder (benchmarks/ggml_matvec.py, llamacpp_peer.py)")
    ap.add_argument("--gguf-q4_0")
    ap.add_argument("--gguf-q8_0")
    ap.add_argument("--out", default=str(HERE / "results" / "inference.json"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if args.text is None:
        from adpq.eval import default_text_file

        args.text = str(default_text_file())
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "command": " ".join(sys.argv)}
    if not args.model_only:
        bw = read_bandwidth(args.repeats)
        rows = kernel_rows(args.repeats, args.ggml_build, args.batch)
        result.update(read_bandwidth_gbs=bw, kernel=rows)
        print_kernel(rows, bw)
    if not args.kernel_only:
        rows = model_rows(args)
        result["model"] = rows
        print_models(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
