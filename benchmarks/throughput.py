"""Quantizer throughput: adpq against a plain memory pass over the same array, in the same run.

    python benchmarks/throughput.py                 # full table (issue 3), ~2 minutes on 2 cores
    python benchmarks/throughput.py --quick         # one shape, fewer runs
    python benchmarks/throughput.py --out r1.json; ... r3.json; python benchmarks/throughput.py --merge r1.json r2.json r3.json
    python benchmarks/throughput.py --ggml-lib PATH/libggml-base.so    # + ggml's quantizers, same run
    python benchmarks/throughput.py --ggml-only --ggml-lib PATH/libggml-base.so --out results/throughput_ggml.json

With --ggml-lib, ggml's quantizers (llama-quantize's ggml_quantize_chunk: q3_K, q4_K, q4_0; see
benchmarks/ggml_peer.py for how to build the library) are timed on the same float32 matrices, one
thread, interleaved with adpq's 1-thread runs, and the ratio ggml time / adpq time is printed.

For each case it prints the median of --repeats runs: weights/s per core, input GB/s and the ratio
of adpq's time to a plain NumPy read of the same array (np.bitwise_xor.reduce over its bytes, which
touches every byte once at memory speed). Machines are shared and noisy: the ratio is measured in
one run, each timing a median. Results go to benchmarks/results/throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

import adpq
from adpq import _core, reference
from adpq.core.config import default_threads
from adpq.core.quantize import quantize_diagnostics

SHAPES = [(4096, 4096), (4096, 11008)]


def median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def plain_read(w):
    flat = w.reshape(-1).view(np.uint64)
    return np.bitwise_xor.reduce(flat)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def merge_runs(paths, out):
    """The median, per case, of several whole runs (each a JSON written by this script): the
    machine's speed drifts between runs by more than the spread within one."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    def key(r):
        return (tuple(r["shape"]), r["dtype"], r["bits"], r["outlier_ratio"], r["column_scaling"], r["threads"])
    cases = {}
    for run in runs:
        for r in run["rows"]:
            cases.setdefault(key(r), []).append(r)
    rows = []
    print("| shape | dtype | bits | outlier_ratio | column_scaling | threads | ms | G weights/s per core | input GB/s "
          "| x read | passes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k, rs in cases.items():
        t = statistics.median(r["seconds"] for r in rs)
        x = statistics.median(r["ratio_to_read"] for r in rs)
        r0 = rs[0]
        n = int(np.prod(r0["shape"]))
        bytes_per = 4 if r0["dtype"] == "float32" else 2
        row = dict(r0, seconds=t, ratio_to_read=x, weights_per_s_per_core=n / t / r0["threads"],
                   input_gb_per_s=n * bytes_per / t / 1e9, runs=len(rs))
        rows.append(row)
        print(f"| {'x'.join(map(str, r0['shape']))} | {r0['dtype']} | {r0['bits']} | {r0['outlier_ratio']} | "
              f"{r0['column_scaling']} | {r0['threads']} | {t * 1e3:.1f} | {row['weights_per_s_per_core'] / 1e9:.3f} | "
              f"{row['input_gb_per_s']:.2f} | {x:.2f} | {r0.get('passes', '')} |")
    routes = {}
    for run in runs:
        for r in run.get("one_pass_vs_two", []):
            routes.setdefault((tuple(r["shape"]), r["dtype"], r["column_scaling"]), []).append(r)
    print("\n| shape | dtype | column_scaling | two passes ms | one pass ms | one/two |\n|---|---|---|---|---|---|")
    route_rows = []
    for k, rs in routes.items():
        two = statistics.median(r["two_pass_seconds"] for r in rs)
        one = statistics.median(r["one_pass_seconds"] for r in rs)
        route_rows.append(dict(rs[0], two_pass_seconds=two, one_pass_seconds=one, runs=len(rs)))
        print(f"| {'x'.join(map(str, k[0]))} | {k[1]} | {k[2]} | {two * 1e3:.1f} | {one * 1e3:.1f} | {one / two:.3f} |")
    merged = dict(runs[0], rows=rows, one_pass_vs_two=route_rows,
                  dates=[r["date"] for r in runs], command="python benchmarks/throughput.py --merge " + " ".join(paths))
    Path(out).write_text(json.dumps(merged, indent=1))
    print(f"wrote {out}")


def ggml_vs_adpq(lib_paths, shapes, rng, repeats, default_ratio):
    """ggml's quantizers against adpq's on the same float32 matrix, 1 thread each, interleaved (each
    time a median of `repeats`, then the median of 3 rounds); x = ggml's time / adpq's. Several
    library builds (e.g. ggml's default flags and -march=native) are labelled by their build folder."""
    from ggml_peer import Ggml, decode_q4_0
    libs = {os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(p)))) or p: Ggml(p) for p in lib_paths}
    g = next(iter(libs.values()))
    adpq_cases = {"adpq b3 g128 RTN": dict(bits=3, outlier_ratio=0.0, column_scaling="none"),
                  "adpq b3 g128 outliers": dict(bits=3, outlier_ratio=default_ratio, column_scaling="none"),
                  "adpq default (b3 g128 outliers + cs)": {},
                  "adpq b4 g128 outliers + cs": dict(bits=4)}
    ggml_types = [(lib, t) for lib in libs for t in ("q3_K", "q4_K", "q4_0")]
    ggml_names = [f"ggml {t} [{lib}]" for lib, t in ggml_types]
    out = dict(libraries={lib: g.path for lib, g in libs.items()}, rows=[])
    print("\nggml's quantizers, 1 thread, float32 input; x = its time / this row's")
    for shape in shapes:
        w = (rng.standard_t(5, size=shape) * 0.02).astype(np.float32)
        packed = g.quantize("q4_0", w)  # warm, and a check that the call did the work
        rel = float(np.linalg.norm(decode_q4_0(packed, w.shape) - w) / np.linalg.norm(w))
        times = {name: [] for name in list(adpq_cases) + ggml_names}
        bpw = {}
        bufs = {}
        for _ in range(3):
            for name, kw in adpq_cases.items():
                cfg = adpq.QuantConfig(group_size=128, threads=1, **kw)
                qt = adpq.quantize(w, config=cfg)
                bpw[name] = qt.bits_per_weight
                times[name].append(median_time(lambda: adpq.quantize(w, config=cfg), repeats))
            for name, (lib, t) in zip(ggml_names, ggml_types):  # (slow: one timing per round, warm once)
                if name not in bufs:
                    bufs[name] = libs[lib].quantize(t, w)
                bpw[name] = libs[lib].bits_per_weight(t)
                times[name].append(median_time(lambda: libs[lib].quantize(t, w, bufs[name]), 1))
        t = {k: statistics.median(v) for k, v in times.items()}
        print(f"{'x'.join(map(str, shape))} (q4_0 decoded: relative error {rel:.3f})")
        q3 = [n for n in ggml_names if " q3_K " in n]  # the anchor; the JSON has every ratio
        print(f"{'quantizer':>38} {'bits/w':>6} {'ms':>8} {'Gw/s':>7}  " + " ".join(f"{'x ' + n:>22}" for n in q3))
        for name in t:
            xs = " ".join(f"{t[n] / t[name]:22.2f}" for n in q3)
            print(f"{name:>38} {bpw[name]:6.3f} {t[name] * 1e3:8.1f} {w.size / t[name] / 1e9:7.3f}  {xs}")
            out["rows"].append(dict(shape=list(shape), quantizer=name, bits_per_weight=bpw[name], seconds=t[name],
                                    weights_per_s=w.size / t[name],
                                    ggml_time_over_this={n: t[n] / t[name] for n in ggml_names}))
        out.setdefault("q4_0_relative_error", {})["x".join(map(str, shape))] = rel
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    ap.add_argument("--ggml-lib", metavar="PATH", nargs="+",
                    help="libggml-base.so (one or more builds): also time ggml's quantizers (a peer)")
    ap.add_argument("--ggml-only", action="store_true", help="only the comparison with ggml (needs --ggml-lib)")
    ap.add_argument("--merge", nargs="+", metavar="RUN_JSON",
                    help="no measurement: the per-case medians of these runs' JSON files, to --out")
    args = ap.parse_args(argv)
    if args.merge:
        return merge_runs(args.merge, args.out)
    if args.ggml_only and not args.ggml_lib:
        ap.error("--ggml-only needs --ggml-lib")
    shapes = SHAPES[:1] if args.quick else SHAPES
    repeats = 3 if args.quick else args.repeats
    default_ratio = adpq.QuantConfig().outlier_ratio
    all_cores = default_threads()
    rng = np.random.default_rng(0)
    rows = []
    print(f"adpq {adpq.__version__}, kernels {_core.kernels()}, {all_cores} cores: {cpu_name()}")
    if args.ggml_only:
        return save(args, argv, dict(ggml=ggml_vs_adpq(args.ggml_lib, shapes, rng, repeats, default_ratio)))
    hdr = (f"{'shape':>12} {'dtype':>8} {'bits':>4} {'ratio':>6} {'cols':>8} {'thr':>3} {'ms':>8} {'Gw/s/core':>9} "
           f"{'GB/s':>6} {'read ms':>8} {'x read':>6} {'passes':>6} {'fixed%':>6}")
    print(hdr)
    print("-" * len(hdr))
    for shape in shapes:
        w32 = (rng.standard_t(5, size=shape) * 0.02).astype(np.float32)
        for dtype in ("float32", "bfloat16"):
            w = w32 if dtype == "float32" else w32.astype(ml_dtypes.bfloat16)
            plain_read(w)  # warm
            for bits, ratio, cs in [(b, r, c) for b in (3, 4) for r in (0.0, default_ratio)
                                    for c in ("none", "mean_abs")]:
                for threads in sorted({1, all_cores}):
                    cfg = adpq.QuantConfig(bits=bits, group_size=128, outlier_ratio=ratio, threads=threads,
                                           column_scaling=cs)
                    adpq.quantize(w, config=cfg)  # warm
                    # interleave: the read and the quantizer see the same machine state
                    t_q = median_time(lambda: adpq.quantize(w, config=cfg), repeats)
                    t_r = median_time(lambda: plain_read(w), repeats)
                    n = w.size
                    diag = quantize_diagnostics(w, cfg)  # (untimed) one pass or two, groups redone
                    row = dict(shape=list(shape), dtype=dtype, bits=bits, outlier_ratio=ratio, column_scaling=cs,
                               threads=threads,
                               seconds=t_q, weights_per_s_per_core=n / t_q / threads,
                               input_gb_per_s=w.nbytes / t_q / 1e9, read_seconds=t_r,
                               ratio_to_read=t_q / t_r, passes=diag["passes"],
                               fixed_group_fraction=diag["fixed_groups"] / diag["groups"])
                    rows.append(row)
                    print(f"{'x'.join(map(str, shape)):>12} {dtype:>8} {bits:>4} {ratio:>6} {cs:>8} {threads:>3} "
                          f"{t_q * 1e3:8.1f} {row['weights_per_s_per_core'] / 1e9:9.3f} "
                          f"{row['input_gb_per_s']:6.2f} {t_r * 1e3:8.1f} {row['ratio_to_read']:6.2f} "
                          f"{row['passes']:>6} {100 * row['fixed_group_fraction']:6.2f}")
    # one pass against two (csrc/threshold.c picks one pass for column-scaled matrices >= 24 MiB):
    # both forced with quantize's one_pass, interleaved, 1 thread, outliers at the default ratio
    routes = []
    print(f"\n{'shape':>12} {'dtype':>8} {'cols':>8} {'two passes ms':>14} {'one pass ms':>12} {'one/two':>8}")
    for shape in shapes:
        w32 = (rng.standard_t(5, size=shape) * 0.02).astype(np.float32)
        for dtype in ("float32", "bfloat16"):
            w = w32 if dtype == "float32" else w32.astype(ml_dtypes.bfloat16)
            for cs in ("none", "mean_abs"):
                cfg = adpq.QuantConfig(bits=3, group_size=128, outlier_ratio=default_ratio, threads=1,
                                       column_scaling=cs)
                times = {"never": [], "always": []}
                for _ in range(3):
                    for mode in times:
                        adpq.quantize(w, config=cfg, one_pass=mode)
                        times[mode].append(median_time(lambda: adpq.quantize(w, config=cfg, one_pass=mode), repeats))
                two, one = statistics.median(times["never"]), statistics.median(times["always"])
                routes.append(dict(shape=list(shape), dtype=dtype, column_scaling=cs, two_pass_seconds=two,
                                   one_pass_seconds=one))
                print(f"{'x'.join(map(str, shape)):>12} {dtype:>8} {cs:>8} {two * 1e3:14.1f} {one * 1e3:12.1f} "
                      f"{one / two:8.3f}")
    peer = ggml_vs_adpq(args.ggml_lib, shapes, rng, repeats, default_ratio) if args.ggml_lib else None
    # the NumPy reference, on a slice (it is slow on purpose: it is written to be read)
    ws = w32[:256]
    cfg = adpq.QuantConfig(bits=3, group_size=128, outlier_ratio=default_ratio)
    t_ref = median_time(lambda: reference.quantize(ws, cfg), 1 if args.quick else 3)
    t_c = median_time(lambda: adpq.quantize(ws, config=cfg.replace(threads=1)), 5)
    print(f"\nreference.quantize on {ws.shape}: {ws.size / t_ref / 1e6:.2f} Mw/s; "
          f"C core on 1 thread: {ws.size / t_c / 1e6:.1f} Mw/s ({t_ref / t_c:.0f}x faster)")
    save(args, argv, dict(rows=rows, one_pass_vs_two=routes, ggml=peer,
                          reference=dict(shape=list(ws.shape), weights_per_s=ws.size / t_ref,
                                         c_weights_per_s=ws.size / t_c)))


def save(args, argv, parts):
    result = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine=f"{cpu_name()}, {default_threads()} cores",
        python=sys.version.split()[0], numpy=np.__version__, kernels=_core.kernels(), command="python "
        + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])), **parts)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
