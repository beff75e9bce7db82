"""How CafeqConfig's defaults were chosen: the mean relative pair error || W_o W_v - Ŵ_o Ŵ_v ||_F / || W_o W_v ||_F
over every attention layer of a model, per option set, at 3 and 4 bits, RTN and AdpQ (no data, no
perplexity: seconds per option set), with the time of the pass.

    python benchmarks/cafeq_options.py --model /work/models/smollm2-135m --name smollm2-135m
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import adpq
from adpq.io.cafeq_pairs import attention_heads, find_pairs
from adpq.io.checkpoint import select_tensors
from adpq.io.folder import SourceCheckpoint
from adpq.transforms import cafeq_pair

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration import ADPQ3, ADPQ4, RTN3, RTN4  # noqa: E402

CONFIGS = {"rtn b3": RTN3, "adpq b3": ADPQ3, "rtn b4": RTN4, "adpq b4": ADPQ4}
OPTIONS = [  # CafeqConfig fields over the defaults
    {"steps": 0, "init": "identity", "rounds": 0},
    {"steps": 0, "init": "identity"},
    {"steps": 0, "rounds": 0},
    {"steps": 0},
    {"rounds": 0},
    {},
    {"rounds": 1},
    {"rounds": 4},
    {"steps": 30},
    {"steps": 300},
    {"lr": 1e-3},
    {"lr": 1e-2},
    {"lr": 2e-2},
    {"proxy": "range"},
    {"init": "identity"},
    {"damp": 0.1},
    {"damp": 0.001},
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--configs", default="rtn b3;adpq b3", help="';'-separated keys of CONFIGS")
    ap.add_argument("--options", default=None, help="JSON list of option dicts (default: OPTIONS)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=None)
    a = ap.parse_args(argv)
    out = Path(a.results or Path(__file__).resolve().parent / "results" / f"cafeq_options_{a.name}.json")
    res = json.loads(out.read_text()) if out.exists() else {"rows": []}
    src = SourceCheckpoint(a.model)
    infos = list(src.tensors.values())
    heads = attention_heads(src.config)
    pairs = find_pairs([i.name for i in infos], select_tensors(infos), heads, {i.name: tuple(i.shape) for i in infos})
    weights = [(p, src.get(p.v), src.get(p.o)) for p in pairs]
    res["setup"] = {"model": a.model, "pairs": len(pairs), "threads": a.threads, "command": " ".join(sys.argv),
                    "machine": f"{platform.node()} {os.cpu_count()} cores"}
    options = json.loads(a.options) if a.options else OPTIONS
    for ckey in a.configs.split(";"):
        cfg = adpq.QuantConfig(**CONFIGS[ckey])
        for opt in options:
            caf = adpq.CafeqConfig(**opt)
            t0 = time.perf_counter()
            st = [cafeq_pair(v, o, heads, cfg, caf, key=p.key, threads=a.threads).stats for p, v, o in weights]
            row = {"config": ckey, "options": opt, "seconds": round(time.perf_counter() - t0, 2),
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            for k in ("error_plain", "error_transformed", "error", "proxy"):
                row[f"mean_{k}"] = float(np.mean([s[k] for s in st]))
            res["rows"].append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=1))
            print(f"{ckey:8s} {json.dumps(opt):45s} plain {row['mean_error_plain']:.4f} transformed "
                  f"{row['mean_error_transformed']:.4f} paired {row['mean_error']:.4f} proxy {row['mean_proxy']:.3f} "
                  f"{row['seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
