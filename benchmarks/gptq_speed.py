"""The C GPTQ solver against the torch reimplementation of GPTQ's reference `fasterquant`, on the same
matrices and Hessians, one thread each, in one run (issue 14's target: C at least 10x faster).

    python benchmarks/gptq_speed.py --repeats 5 [--json benchmarks/results/gptq_speed.json]

Shapes: SmolLM2-135M's (576 x 576 attention, 1536 x 576 MLP up, 576 x 1536 MLP down) and Gemma-3-270M's
(640 x 2048, 2048 x 640), with H = X^T X of correlated random inputs. Both sides do the same work: 3-bit
asymmetric group grids of 128 refit as the columns go (GPTQ's default: no act-order), block 128, damp
0.01; the C side is the whole adpq.quantize(w, config, hessian=H, gptq=...) call (the RTN start it
refines included; that start is timed alone beside it).
The proxy loss tr(dW H dW^T) of both is printed too: the two must do the same job, not just run.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

import adpq
from adpq.reference.gptq import proxy_loss


class _GPTQQuantizer:
    """GPTQ's asymmetric min-max quantizer (range widened to include 0, as the reference does)."""

    def __init__(self, bits, sym=False):
        self.maxq = 2 ** bits - 1
        self.sym = sym

    def find_params(self, x):
        xmin = torch.minimum(x.min(1).values, torch.zeros(1))
        xmax = torch.maximum(x.max(1).values, torch.zeros(1))
        if self.sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = torch.where(xmin < 0, -xmax, xmin)
        both0 = (xmin == 0) & (xmax == 0)
        xmin[both0], xmax[both0] = -1, 1
        scale = (xmax - xmin) / self.maxq
        # scales are stored in fp16 (packed GPTQ format): quantize with the stored value
        self.scale = scale.half().float().unsqueeze(1)
        if self.sym:
            self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = torch.round(-xmin.unsqueeze(1) / self.scale).clamp(0, self.maxq)

    def quantize(self, x):
        q = torch.clamp(torch.round(x / self.scale) + self.zero, 0, self.maxq)
        return self.scale * (q - self.zero)


def gptq_fasterquant(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, *,
                     blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False,
                     static_groups: bool = False, sym: bool = False):
    """GPTQ (reference gptq.py fasterquant), returns (W_hat fp32, n_groups_per_row)."""
    W = W.clone().float()
    H = H.clone()
    rows, cols = W.shape
    quantizer = _GPTQQuantizer(bits, sym)
    if group_size in (-1, None, 0):
        group_size = -1
        quantizer.find_params(W)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    if static_groups and group_size != -1:
        for i in range(0, cols, group_size):
            g = _GPTQQuantizer(bits, sym)
            g.find_params(W[:, i:i + group_size])
            groups.append(g)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    H[torch.arange(cols), torch.arange(cols)] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if group_size != -1:
                if not static_groups:
                    if (i1 + i) % group_size == 0:
                        quantizer.find_params(W[:, (i1 + i):(i1 + i + group_size)])
                else:
                    idx = i1 + i
                    if act_order:
                        idx = perm[idx]
                    quantizer = groups[int(idx) // group_size]
            q = quantizer.quantize(w.unsqueeze(1)).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if act_order:
        Q = Q[:, invperm]
    ng = 1 if group_size == -1 else math.ceil(cols / group_size)
    return Q, ng


SHAPES = [(576, 576), (1536, 576), (576, 1536), (640, 2048), (2048, 640)]


def _inputs(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 0.02
    X = torch.randn(4096, cols, generator=g) @ (torch.randn(cols, cols, generator=g) * 0.1 + torch.eye(cols))
    X[:, :8] *= 10
    return W, (X.t() @ X / X.shape[0]).double()


def _median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = adpq.QuantConfig(bits=3, group_size=128, outlier_ratio=0.0, column_scaling="none", symmetric=False,
                           zero_point="integer", threads=1)
    g = adpq.GptqConfig(act_order=False, grids="refit", damp=0.01, block_size=128)
    rows_out = []
    print("| shape | torch fasterquant s | adpq.quantize(hessian=H) s | of which RTN start s | torch / adpq | "
          "proxy loss torch | proxy loss adpq |")
    print("|---|---|---|---|---|---|---|")
    for i, (r, c) in enumerate(SHAPES):
        W, H = _inputs(r, c, i)
        Wn, Hn = W.numpy(), H.numpy()
        t_torch, (Q, _) = _median_time(lambda: gptq_fasterquant(W, H.float(), 3, 128), a.repeats)
        t_adpq, qt = _median_time(lambda: adpq.quantize(Wn, config=cfg, hessian=Hn, gptq=g), a.repeats)
        t_rtn, _ = _median_time(lambda: adpq.quantize(Wn, config=cfg), a.repeats)
        lt, la = proxy_loss(Wn, Q.numpy(), Hn), proxy_loss(Wn, qt.dequantize(), Hn)
        row = {"shape": [r, c], "torch_s": t_torch, "adpq_s": t_adpq, "rtn_start_s": t_rtn,
               "ratio": t_torch / t_adpq, "proxy_torch": lt, "proxy_adpq": la}
        rows_out.append(row)
        print(f"| {r} x {c} | {t_torch:.4f} | {t_adpq:.4f} | {t_rtn:.4f} | {t_torch / t_adpq:.1f}x | "
              f"{lt:.5g} | {la:.5g} |")
    gm = math.exp(sum(math.log(x["ratio"]) for x in rows_out) / len(rows_out))
    print(f"\ngeometric mean torch / adpq: {gm:.1f}x (1 thread each, median of {a.repeats})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                       "repeats": a.repeats, "rows": rows_out, "geomean_ratio": gm}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
