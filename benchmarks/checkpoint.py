"""Checkpoint throughput and memory: quantizing a warm checkpoint vs plainly reading it; peak RSS.

    python benchmarks/checkpoint.py                       # SmolLM2 folder + synthetic 4x-layers checkpoint
    python benchmarks/checkpoint.py --src DIR --runs 5 --no-synthetic
    python benchmarks/checkpoint.py --no-synthetic --ggml-lib PATH/libggml-base.so --ggml-type q4_0 iq4_nl

For each checkpoint, in one run (ratios, since the machine is shared):
  * read:       every byte of the safetensors files read with readinto() into a reused 16 MiB buffer
                (warm page cache; one untimed read first); median of --runs;
  * read-mmap:  every page of every file touched through np.memmap (the access pattern quantize uses);
  * read+write: the read above, then as many bytes as adpq's output folder holds written to a new file
                next to it (16 MiB write() calls, no fsync, as adpq writes): the floor for any tool that
                reads this checkpoint and writes an output of that size;
  * quantize:   adpq.quantize_checkpoint(..., format="adpq") at the default QuantConfig into a temporary
                folder, with and without the per-tensor error metrics; median of --runs;
  * ggml <type> (with --ggml-lib): a peer in the same loop, shaped like llama-quantize: one tensor at a
                time, the selected ones converted to float32 and quantized by ggml_quantize_chunk with
                the rows split over every core, each written to one safetensors file with the kept
                tensors (see benchmarks/ggml_peer.py for building libggml-base). llama-quantize's
                Q3_K turns rows that are not a multiple of 256 (576 on SmolLM2) into iq4_nl; q4_0 is
                ggml's fastest quantizer. Both are 4.5 bits/weight with no outliers.

Every writing mode (read+write, quantize, ggml) starts from the same state: the parent deletes the
previous output and flushes dirty pages with sync() (untimed), and the child writes and deletes a file
the size of the output before it starts the clock. On a VM, guest memory not touched lately is backed
by the host on first use, and that first touch, not the copy, dominates writes into new page-cache
pages: on the 2-core VM here a 106 MB write() took ~0.19 s into never-used pages and ~0.03 s into pages
just freed, and which one a run gets depends on what ran before it. Writing the output's size first
makes every writing run get reused pages, so the timings compare the software rather than the
hypervisor's history. The modes are interleaved: each of --runs rounds runs every mode once, so drift on
a shared machine affects them alike.
Every measurement runs in its own subprocess; the child reports its own peak RSS
(getrusage(RUSAGE_SELF).ru_maxrss), compared with an idle child that only imports adpq, with the
largest tensor and with the model size. (Linux keeps ru_maxrss across fork+exec, so the parent does
nothing big itself: even the synthetic checkpoint is written by a child.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_SRC = "/work/models/smollm2-135m"
MACHINE = "2-core AMD EPYC (Zen 1) KVM VM, shared"


# ------------------------------------------------------------------ child side


def _child(argv):
    mode, src = argv[0], argv[1]
    import numpy as np

    import adpq
    from adpq.io.folder import SourceCheckpoint

    out = {"mode": mode}
    if len(argv) > 2 and argv[-2] == "--warm":
        # write and delete a file the size of the output: the timed writes then reuse its pages
        tmp_dir = argv[2] if mode == "read+write" else os.path.dirname(os.path.abspath(argv[2]))
        blob = os.path.join(tmp_dir, "warm.blob")
        buf, left = bytearray(1 << 20), int(argv[-1])  # (small: it counts in the peak RSS)
        with open(blob, "wb", buffering=0) as f:
            while left > 0:
                left -= f.write(memoryview(buf)[:min(left, len(buf))])
        os.unlink(blob)
        argv = argv[:-2]
    if mode == "make-synthetic":
        make_synthetic(argv[2], src, int(argv[3]))
        print(json.dumps({"dst": argv[2]}))
        return
    if mode == "idle":
        pass
    elif mode in ("read", "read+write"):
        files = [sf.path for sf in SourceCheckpoint(src).files.values()]
        buf = bytearray(16 << 20)
        mv = memoryview(buf)
        t0 = time.perf_counter()
        n = 0
        for p in files:
            with open(p, "rb", buffering=0) as f:
                while True:
                    k = f.readinto(mv)
                    if not k:
                        break
                    n += k
        if mode == "read+write":
            left = int(argv[3])
            with open(os.path.join(argv[2], "blob"), "wb", buffering=0) as f:
                while left > 0:
                    left -= f.write(mv[:min(left, len(mv))])
        out.update(seconds=time.perf_counter() - t0, bytes=n)
        if mode == "read+write":
            os.unlink(os.path.join(argv[2], "blob"))
    elif mode == "read-mmap":
        files = [sf.path for sf in SourceCheckpoint(src).files.values()]
        t0 = time.perf_counter()
        n, s = 0, 0
        for p in files:
            m = np.memmap(p, dtype=np.uint8, mode="r")
            s += int(m[::4096].sum())  # touch every page
            n += m.size
            del m
        out.update(seconds=time.perf_counter() - t0, bytes=n)
    elif mode.startswith("ggml "):
        out.update(_ggml_pipeline(src, argv[2], mode.split()[1], argv[3]))
    elif mode in ("quantize", "quantize-nometrics"):
        from adpq.io.checkpoint import quantize_checkpoint  # (imports are not what is timed)

        dst = argv[2]
        cfg = adpq.QuantConfig()
        t0 = time.perf_counter()
        rep = quantize_checkpoint(src, dst, cfg, progress=False, overwrite=True,
                                       compute_metrics=(mode == "quantize"))
        out.update(seconds=time.perf_counter() - t0, bytes=rep.input_bytes,
                   bits_per_weight=rep.totals()["bits_per_weight_quantized"],
                   output_bytes=sum(os.path.getsize(os.path.join(dst, f)) for f in os.listdir(dst)),
                   config=rep.config)
    else:
        raise SystemExit(f"unknown mode {mode}")
    out["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


def _ggml_pipeline(src, dst, qtype, lib):
    """llama-quantize's loop with ggml's kernels: tensor by tensor, rows split over the cores."""
    import concurrent.futures

    import numpy as np

    from adpq.io.checkpoint import select_tensors
    from adpq.io.folder import SourceCheckpoint
    from adpq.io.safetensors import ShardWriter

    sys.path.insert(0, HERE)
    from ggml_peer import GGML_BLOCKS, GGML_TYPES, Ggml

    g = Ggml(lib)
    threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    ck = SourceCheckpoint(src)
    selected = set(select_tensors(list(ck.tensors.values())))
    os.makedirs(dst, exist_ok=True)
    writer = ShardWriter(os.path.join(dst, "model.safetensors"), {"format": "ggml-peer"}, reserve=1 << 20)
    n_q = n_bytes_q = 0
    def chunk(a, out, r0, r1):
        # each thread converts its own rows (integer casts release the GIL), then ggml quantizes them
        if a.dtype.itemsize == 2 and a.dtype != np.float16:  # bfloat16: the high half of a float32
            w = (a[r0:r1].view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            w = np.ascontiguousarray(a[r0:r1], dtype=np.float32)
        g.quantize_rows_into(qtype, w, out, r0)

    with concurrent.futures.ThreadPoolExecutor(threads) as ex:  # ctypes releases the GIL
        for name in ck.names():
            a = ck.get(name)
            if name in selected and a.shape[1] % GGML_BLOCKS[qtype][0] == 0:
                rows, cols = a.shape
                out = np.empty(rows * g.lib.ggml_row_size(GGML_TYPES[qtype], cols), np.uint8)
                cuts = np.linspace(0, rows, threads + 1).astype(int)
                list(ex.map(lambda i: chunk(a, out, cuts[i], cuts[i + 1]), range(threads)))
                writer.add(name, out)
                n_q += a.size
                n_bytes_q += out.nbytes
            else:
                writer.add(name, a)
    writer.close()
    seconds = time.perf_counter() - t0
    size = os.path.getsize(os.path.join(dst, "model.safetensors"))
    return {"seconds": seconds, "bytes": ck.nbytes, "bits_per_weight": 8 * n_bytes_q / max(n_q, 1),
            "output_bytes": size, "weights_quantized": n_q, "config": {"ggml_type": qtype, "threads": threads}}


# ------------------------------------------------------------------ parent side


def _run_child(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = env.get("PYTHONPATH", "") + os.pathsep + os.path.join(ROOT, "python")
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def make_synthetic(dst, like, layer_mult):
    """A checkpoint with `layer_mult` x the layers of `like` (same tensor shapes/dtypes; random values).

    Each distinct tensor shape gets its own random data; the layers reuse it (values do not matter
    for throughput and memory)."""
    import numpy as np

    from adpq.io.folder import SourceCheckpoint
    from adpq.io.safetensors import ShardWriter

    src = SourceCheckpoint(like)
    cfg = dict(src.config)
    n_layers = int(cfg["num_hidden_layers"])
    rng = np.random.default_rng(0)
    cache = {}
    os.makedirs(dst, exist_ok=True)
    names = []
    for name in src.names():
        if ".layers." in name:
            pre, rest = name.split(".layers.", 1)
            i, tail = rest.split(".", 1)
            if int(i) == 0:
                names += [(f"{pre}.layers.{j}.{tail}", name) for j in range(n_layers * layer_mult)]
        else:
            names.append((name, name))
    w = ShardWriter(os.path.join(dst, "model.safetensors"), {"format": "pt"})
    for new, old in names:
        info = src.tensors[old]
        key = (info.shape, info.dtype)
        if key not in cache:
            a = (rng.standard_normal(info.shape, dtype=np.float32) * 0.02)
            cache[key] = a.astype(info.np_dtype)
        w.add(new, cache[key])
    w.close()
    cfg["num_hidden_layers"] = n_layers * layer_mult
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return dst


MODES = ("read", "read-mmap", "read+write", "quantize", "quantize-nometrics")


def bench(src, runs, label, ggml_modes=(), ggml_lib=None):
    from adpq.io.folder import SourceCheckpoint

    ck = SourceCheckpoint(src)
    largest = max(ck.tensors.values(), key=lambda t: t.nbytes)
    model_bytes = sum(os.path.getsize(sf.path) for sf in ck.files.values())
    tmp = tempfile.mkdtemp(prefix="adpq-bench-")
    res = {"label": label, "src": src, "model_bytes": model_bytes, "tensor_bytes": ck.nbytes,
           "largest_tensor": {"name": largest.name, "bytes": largest.nbytes}, "runs": runs,
           "num_tensors": len(ck.tensors)}
    try:
        _run_child("read", src)  # warm the page cache
        idle = _run_child("idle", src)
        res["idle_maxrss_bytes"] = idle["maxrss_bytes"]
        out_dir = os.path.join(tmp, "out")
        out_bytes = _run_child("quantize-nometrics", src, out_dir)["output_bytes"]  # untimed: the output size
        modes = MODES + tuple(ggml_modes)
        rs = {mode: [] for mode in modes}
        for rnd in range(runs):
            for mode in modes:
                args = [mode, src]
                if mode.startswith("ggml "):
                    shutil.rmtree(out_dir, ignore_errors=True)
                    args += [out_dir, ggml_lib]
                if mode.startswith("quantize"):
                    shutil.rmtree(out_dir, ignore_errors=True)
                    args.append(out_dir)
                if mode == "read+write":
                    args += [tmp, str(out_bytes)]
                if mode in ("read+write", "quantize", "quantize-nometrics") or mode.startswith("ggml "):
                    args += ["--warm", str(out_bytes)]
                    os.sync()  # no writeback of earlier runs' output during this one
                rs[mode].append(_run_child(*args))
                print(f"  {label} round {rnd + 1} {mode}: {rs[mode][-1]['seconds']:.3f} s, "
                      f"peak RSS {rs[mode][-1]['maxrss_bytes'] / 2**20:.0f} MiB", file=sys.stderr)
        for mode in modes:
            r = rs[mode]
            res[mode] = {"seconds_median": statistics.median(x["seconds"] for x in r),
                         "seconds_all": [x["seconds"] for x in r],
                         "maxrss_bytes": max(x["maxrss_bytes"] for x in r), "bytes": r[0]["bytes"]}
            if "bits_per_weight" in r[0]:
                res[mode]["bits_per_weight"] = r[0]["bits_per_weight"]
                res[mode]["output_bytes"] = r[0]["output_bytes"]
                if mode.startswith("ggml "):
                    res[mode]["config"] = r[0]["config"]
                else:
                    res["config"] = r[0]["config"]
        rd = res["read"]["seconds_median"]
        for mode in modes[1:]:
            res[mode]["ratio_vs_read"] = res[mode]["seconds_median"] / rd
            res[mode]["ratio_vs_read_write"] = res[mode]["seconds_median"] / res["read+write"]["seconds_median"]
            res[mode]["gb_per_s"] = res[mode]["bytes"] / res[mode]["seconds_median"] / 1e9
        res["read"]["gb_per_s"] = res["read"]["bytes"] / rd / 1e9
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def table(results):
    lines = []
    hdr = ("| checkpoint | model MB | largest tensor MB | mode | bits/weight | median s | GB/s | x read | "
           "x read+write | peak RSS MiB | RSS - idle MiB |")
    lines += [hdr, "|" + "---|" * 11]
    for r in results:
        idle = r["idle_maxrss_bytes"]
        for mode in [m for m in r if m in MODES or m.startswith("ggml ")]:
            m = r[mode]
            rw = f"{m['ratio_vs_read_write']:.2f}" if "ratio_vs_read_write" in m else ""
            bpw = f"{m['bits_per_weight']:.3f}" if "bits_per_weight" in m else ""
            lines.append(f"| {r['label']} | {r['model_bytes'] / 1e6:.0f} | {r['largest_tensor']['bytes'] / 1e6:.1f} | "
                         f"{mode} | {bpw} | {m['seconds_median']:.3f} | {m['gb_per_s']:.3f} | "
                         f"{m.get('ratio_vs_read', 1.0):.2f} | {rw} | {m['maxrss_bytes'] / 2**20:.0f} | "
                         f"{(m['maxrss_bytes'] - idle) / 2**20:.0f} |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=DEFAULT_SRC, help="HF checkpoint folder (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--layer-mult", type=int, default=4, help="synthetic checkpoint: this many times the layers")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "checkpoint.json"))
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--ggml-lib", metavar="PATH", help="libggml-base.so: add ggml's quantizers as a peer pipeline")
    ap.add_argument("--ggml-type", nargs="+", default=["q4_0", "iq4_nl"], metavar="TYPE",
                    help="ggml types for the peer pipeline (default: %(default)s)")
    args = ap.parse_args()
    sys.path.append(os.path.join(ROOT, "python"))

    results = []
    work = tempfile.mkdtemp(prefix="adpq-bench-src-")
    try:
        src = args.src
        if not os.path.exists(os.path.join(src, "config.json")):
            print(f"{src} not found; using a synthetic checkpoint "
                  "(run `adpq models prepare smollm2-135m /work/models/smollm2-135m` for the real one)",
                  file=sys.stderr)
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            from _ckpt_util import make_llama

            src = make_llama(os.path.join(work, "tiny"), dtype="bfloat16", shards=1, layers=8)
            label = "synthetic-tiny"
        else:
            label = os.path.basename(os.path.normpath(src))
        ggml_modes = [f"ggml {t}" for t in args.ggml_type] if args.ggml_lib else []
        results.append(bench(src, args.runs, label, ggml_modes, args.ggml_lib))
        if not args.no_synthetic:
            # in a child: ru_maxrss survives fork+exec, so the parent must stay small
            syn = _run_child("make-synthetic", src, os.path.join(work, "syn"), str(args.layer_mult))["dst"]
            results.append(bench(syn, args.runs, f"{label} x{args.layer_mult} layers (synthetic)", ggml_modes,
                                 args.ggml_lib))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    tab = table(results)
    print(tab)
    meta = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
            "machine": MACHINE, "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
            "python": platform.python_version(), "cpus": os.cpu_count()}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print(f"wrote {args.json}", file=sys.stderr)
    if args.record:
        path = os.path.join(HERE, "RESULTS.md")
        head = "## Checkpoint throughput and memory"
        text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
        block = (f"\n### {meta['date']}\n\nCommand: `{meta['command']}`  \nMachine: {meta['machine']}  \n"
                 f"Config: {json.dumps(results[0].get('config'))}  \n"
                 f"read = readinto() of every file byte from a warm page cache; x read = median time / median read "
                 f"time; peak RSS = the child's ru_maxrss; idle = a child that only imports adpq "
                 f"({results[0]['idle_maxrss_bytes'] / 2**20:.0f} MiB).\n\n{tab}\n")
        if head not in text:
            text = text.rstrip("\n") + f"\n\n{head}\n"
            text += block
        else:
            i = text.index(head) + len(head)
            j = text.find("\n## ", i)
            j = len(text) if j < 0 else j
            text = text[:j].rstrip("\n") + "\n" + block + text[j:]
        with open(path, "w") as f:
            f.write(text)
        print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
