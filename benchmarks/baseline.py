"""Baseline (unquantized) WikiText-2 perplexity of a prepared model, at one or more ctx values.

    PYTHONPATH=python python benchmarks/baseline.py /work/models/smollm2-135m \
        --ctx 2048 512 --max-tokens 32768 --threads 2 \
        --json benchmarks/results/baseline_smollm2-135m.json

--max-tokens N evaluates the first N // ctx windows at every ctx (the same text prefix for every ctx),
so a slow CPU can give comparable partial figures; without it the full test set is used.
The protocol is adpq.eval's (GPTQ-style, see its docstring).
"""

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]




def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ctx", type=int, nargs="+", default=[2048, 512])
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bos-each-window", action="store_true", help="llama.cpp-style BOS per window (not GPTQ)")
    ap.add_argument("--machine", default=None, help="free-text machine description for the record")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import torch
    import transformers

    if a.threads:
        torch.set_num_threads(a.threads)
    from adpq import eval as E
    prov = {}
    pf = Path(a.model_dir) / "ADPQ_PROVENANCE.json"
    if pf.is_file():
        prov = json.loads(pf.read_text())
    runs = []
    for ctx in a.ctx:
        mw = None if a.max_tokens is None else max(1, a.max_tokens // ctx)
        r = E.perplexity(a.model_dir, ctx=ctx, max_windows=mw, device=a.device, dtype=a.dtype,
                         bos_each_window=a.bos_each_window)
        print(r, flush=True)
        runs.append(r.to_dict())
    out = {
        "model_dir": str(a.model_dir),
        "provenance": prov,
        "runs": runs,
        "command": "python " + " ".join([os.path.relpath(__file__, REPO)] + (argv or sys.argv[1:])),
        "machine": a.machine or f"{platform.node()} {_cpu_name()}, {os.cpu_count()} cpus",
        "threads": torch.get_num_threads(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(a.json).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
