"""CafeQ's value/output transform: an invertible M per KV head, learned without data (docs/DESIGN.md 2.8).

Attention reads the values of KV head g through every query head h of its group, and o_proj mixes
the heads' outputs, so per head h (g = g(h)):

    out_h = W_o[:, h] (A_h X W_v[g]^T)^T  and  W_o[:, h] M_g^-1 . M_g W_v[g] = W_o[:, h] W_v[g]

W_v[g] <- M_g W_v[g] and W_o[:, h] <- W_o[:, h] M_g^-1 for every h of g leave the model's function
unchanged (the attention weights A_h act on positions, not on the head's channels). With grouped-query
attention one M_g serves all the query heads of its KV head; the proxy sums over all of them.

The proxy (config.proxy) is minimized with Adam on M's entries, all KV heads of a layer at once
(a quantization group of W_o may span several heads):
    "product": the expected || W_o W_v - Ŵ_o Ŵ_v ||_F^2 when each weight's rounding error is uniform
               noise of its group's step (the step is the group's range / levels, or its absmax
               when symmetric): sum_ij step_o(ij)^2 |V_j|^2 + sum_k |O_k|^2 sum_l step_v(kl)^2, up
               to a constant. It is invariant to M -> a M, so only M's shape is learned.
    "range":   tau * LogSumExp over the groups of both matrices of range / tau, each matrix's ranges
               relative to its untransformed mean range (tau = RANGE_TEMPERATURE).
Ranges use max/min, whose gradient is +1/-1 at the extreme weights (a subgradient); the best M seen
is kept.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

from ..core.config import CafeqConfig, check_int

F64 = np.float64
RANGE_TEMPERATURE = 0.5
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class Heads:
    """Attention geometry of one layer: query heads, KV heads (n_heads a multiple of it), head_dim."""

    n_heads: int
    n_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for f in ("n_heads", "n_kv_heads", "head_dim"):
            object.__setattr__(self, f, check_int(getattr(self, f), f, 1, 1 << 20))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def check(self, v_shape: Tuple[int, ...], o_shape: Tuple[int, ...]) -> None:
        """ValueError unless W_v is (n_kv_heads * head_dim, in) and W_o is (out, n_heads * head_dim)."""
        if len(v_shape) != 2 or v_shape[0] != self.n_kv_heads * self.head_dim:
            raise ValueError(f"v_proj must have {self.n_kv_heads} KV heads x head_dim {self.head_dim} = "
                             f"{self.n_kv_heads * self.head_dim} rows, got shape {tuple(v_shape)}")
        if len(o_shape) != 2 or o_shape[1] != self.n_heads * self.head_dim:
            raise ValueError(f"o_proj must have {self.n_heads} heads x head_dim {self.head_dim} = "
                             f"{self.n_heads * self.head_dim} columns, got shape {tuple(o_shape)}")

    def kv_row_of_column(self) -> np.ndarray:
        """For each column of W_o, the row of W_v (KV head, channel) it multiplies."""
        j = np.arange(self.n_heads * self.head_dim)
        return (j // self.head_dim) // self.group * self.head_dim + j % self.head_dim


def initial_transform(heads: Heads, init: str, seed: int, key: int = 0) -> np.ndarray:
    """(n_kv_heads, head_dim, head_dim) float64: identity, or an orthogonal matrix per KV head (a
    Hadamard matrix with random column signs when head_dim is a power of two, else a random rotation),
    seeded by (seed, key)."""
    n, d = heads.n_kv_heads, heads.head_dim
    if init == "identity":
        return np.broadcast_to(np.eye(d), (n, d, d)).copy()
    rng = np.random.default_rng([seed, key])
    if d & (d - 1) == 0:
        h = np.ones((1, 1))
        while h.shape[0] < d:
            h = np.block([[h, h], [h, -h]])
        signs = rng.choice([-1.0, 1.0], size=(n, 1, d))
        return h[None] * signs / np.sqrt(d)
    q, r = np.linalg.qr(rng.standard_normal((n, d, d)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


class _Groups:
    """Group ranges of a (rows, cols) matrix along its rows, and their gradient scattered back."""

    def __init__(self, cols: int, group_size: int, symmetric: bool):
        self.cols, self.symmetric = cols, symmetric
        self.gs = cols if group_size == -1 or group_size > cols else group_size
        self.ng = -(-cols // self.gs)
        self.pad = self.ng * self.gs - cols  # padded with copies of the last column: extrema unchanged
        self.of_column = np.arange(cols) // self.gs

    def ranges(self, a: np.ndarray):
        """(rows, groups) ranges (absmax when symmetric) and the state grad() needs."""
        if self.pad:
            a = np.concatenate([a, np.repeat(a[:, -1:], self.pad, axis=1)], axis=1)
        g = a.reshape(a.shape[0], self.ng, self.gs)
        if self.symmetric:
            i = np.abs(g).argmax(axis=2)[..., None]
            x = np.take_along_axis(g, i, axis=2)[..., 0]
            return np.abs(x), (i, np.sign(x))
        imax, imin = g.argmax(axis=2)[..., None], g.argmin(axis=2)[..., None]
        r = np.take_along_axis(g, imax, axis=2)[..., 0] - np.take_along_axis(g, imin, axis=2)[..., 0]
        return r, (imax, imin)

    def grad(self, dr: np.ndarray, state) -> np.ndarray:
        """d(loss)/d(matrix) from d(loss)/d(ranges)."""
        rows = dr.shape[0]
        out = np.zeros((rows, self.ng, self.gs))
        if self.symmetric:
            i, sign = state
            np.put_along_axis(out, i, (dr * sign)[..., None], axis=2)
        else:
            imax, imin = state
            np.put_along_axis(out, imax, dr[..., None], axis=2)
            # (imax == imin only for a constant group: its range is 0 whatever the sign)
            np.put_along_axis(out, imin, np.take_along_axis(out, imin, axis=2) - dr[..., None], axis=2)
        out = out.reshape(rows, self.ng * self.gs)
        if self.pad:
            out[:, self.cols - 1] += out[:, self.cols:].sum(axis=1)
        return out[:, :self.cols]


class PairProxy:
    """The proxy of one layer's (W_v, W_o) as a function of M, with its gradient."""

    def __init__(self, wv: np.ndarray, wo: np.ndarray, heads: Heads, group_size: int, symmetric: bool, proxy: str,
                 input_scale: Optional[np.ndarray] = None, output_scale: Optional[np.ndarray] = None):
        heads.check(wv.shape, wo.shape)
        self.heads, self.proxy = heads, proxy
        n, d = heads.n_kv_heads, heads.head_dim
        self.n_out = wo.shape[0]
        self.wv = np.asarray(wv, F64).reshape(n, d, wv.shape[1])
        # W_o's columns grouped by KV head: (n_kv, out * group, head_dim), rows (o, query head of g)
        self.wo = np.ascontiguousarray(np.asarray(wo, F64).reshape(self.n_out, n, heads.group, d)
                                       .transpose(1, 0, 2, 3).reshape(n, self.n_out * heads.group, d))
        self.gv = _Groups(wv.shape[1], group_size, symmetric)
        self.go = _Groups(wo.shape[1], group_size, symmetric)
        self.kvrow = heads.kv_row_of_column()
        # the inputs' scale per W_v column (1: plain Frobenius): the product error is || (P - P̂) diag(s) ||
        s2 = np.ones(wv.shape[1]) if input_scale is None else np.asarray(input_scale, F64) ** 2
        self.in_sq = s2[None, :]
        self.group_in_sq = np.bincount(self.gv.of_column, weights=s2, minlength=self.gv.ng)
        # and W_o's output rows by the scale the norm after it gives them (Gemma's post-attention norm)
        r2 = np.ones(wo.shape[0]) if output_scale is None else np.asarray(output_scale, F64) ** 2
        self.out_sq = r2[:, None]
        self.scale = 1.0
        eye = initial_transform(heads, "identity", 0)
        if proxy == "range":
            v, o, _ = self.transformed(eye)
            self.ref = (max(self.gv.ranges(v)[0].mean(), 1e-30), max(self.go.ranges(o)[0].mean(), 1e-30))
        self.scale = 1.0 / max(self.value_and_grad(eye, grad=False)[0], 1e-300)

    def transformed(self, m: np.ndarray):
        """(M W_v, W_o M^-1) as (rows, cols) float64 matrices, and M^-1."""
        inv = np.linalg.inv(m)
        v = (m @ self.wv).reshape(-1, self.wv.shape[2])
        o = self._o_natural(self.wo @ inv)
        return v, o, inv

    def _o_natural(self, ok: np.ndarray) -> np.ndarray:
        h = self.heads
        return ok.reshape(h.n_kv_heads, self.n_out, h.group, h.head_dim).transpose(1, 0, 2, 3).reshape(self.n_out, -1)

    def _o_grouped(self, o: np.ndarray) -> np.ndarray:
        h = self.heads
        return o.reshape(self.n_out, h.n_kv_heads, h.group, h.head_dim).transpose(1, 0, 2, 3).reshape(
            h.n_kv_heads, self.n_out * h.group, h.head_dim)

    def value_and_grad(self, m: np.ndarray, grad: bool = True):
        """(proxy relative to M = I, d proxy / d M or None)."""
        v, o, inv = self.transformed(m)
        rv, sv = self.gv.ranges(v)
        ro, so = self.go.ranges(o)
        if self.proxy == "product":
            a = (v * v * self.in_sq).sum(axis=1)             # |V_k diag(s)|^2 per W_v row
            c = (ro * ro * self.out_sq).sum(axis=0)[self.go.of_column]  # sum_i r_i^2 step_o(i, j)^2 per column
            s = (rv * rv) @ self.group_in_sq                 # sum_l step_v(k, l)^2 s_l^2 per W_v row
            b = np.bincount(self.kvrow, weights=(o * o * self.out_sq).sum(axis=0), minlength=v.shape[0])
            value = float(c @ a[self.kvrow] + b @ s)
            if not grad:
                return value * self.scale, None
            dv = 2.0 * v * self.in_sq * np.bincount(self.kvrow, weights=c, minlength=v.shape[0])[:, None]
            dv += self.gv.grad(2.0 * rv * b[:, None] * self.group_in_sq[None, :], sv)
            do = 2.0 * o * self.out_sq * s[self.kvrow][None, :]
            wg = np.bincount(self.go.of_column, weights=a[self.kvrow], minlength=self.go.ng)
            do += self.go.grad(2.0 * ro * self.out_sq * wg[None, :], so)
        else:
            t = RANGE_TEMPERATURE
            x = np.concatenate([(rv / self.ref[0]).ravel(), (ro / self.ref[1]).ravel()]) / t
            mx = x.max()
            e = np.exp(x - mx)
            value = float(t * (mx + np.log(e.sum())))
            if not grad:
                return value * self.scale, None
            p = e / e.sum()
            dv = self.gv.grad(p[:rv.size].reshape(rv.shape) / self.ref[0], sv)
            do = self.go.grad(p[rv.size:].reshape(ro.shape) / self.ref[1], so)
        # chain rule: V_g = M_g W_v[g]; O_h = W_o[h] N_g with N = M^-1, dN -> dM = -N^T dN N^T
        n, d = self.heads.n_kv_heads, self.heads.head_dim
        dm = dv.reshape(n, d, -1) @ self.wv.transpose(0, 2, 1)
        dn = self.wo.transpose(0, 2, 1) @ self._o_grouped(do)
        inv_t = inv.transpose(0, 2, 1)
        dm -= inv_t @ dn @ inv_t
        return value * self.scale, dm * self.scale


def optimize_transform(wv: np.ndarray, wo: np.ndarray, heads: Heads, group_size: int, symmetric: bool,
                       config: CafeqConfig, key: int = 0, input_scale: Optional[np.ndarray] = None,
                       output_scale: Optional[np.ndarray] = None) -> Tuple[np.ndarray, dict]:
    """M (n_kv_heads, head_dim, head_dim) minimizing config.proxy from config.init by config.steps
    Adam steps, and {"proxy_initial", "proxy"}: the proxy at M's start and at the M returned, each
    relative to the untransformed pair (1.0)."""
    pp = PairProxy(wv, wo, heads, group_size, symmetric, config.proxy, input_scale, output_scale)
    m = initial_transform(heads, config.init, config.seed, key)
    best_m, (best, _) = m, pp.value_and_grad(m, grad=False)
    start = best
    mom, var = np.zeros_like(m), np.zeros_like(m)
    b1, b2 = ADAM_BETAS
    for step in range(1, config.steps + 1):
        value, g = pp.value_and_grad(m)
        if value < best and np.isfinite(value):
            best, best_m = value, m.copy()
        mom = b1 * mom + (1 - b1) * g
        var = b2 * var + (1 - b2) * g * g
        m = m - config.lr * (mom / (1 - b1 ** step)) / (np.sqrt(var / (1 - b2 ** step)) + ADAM_EPS)
        if not np.isfinite(m).all() or np.linalg.cond(m).max() > 1e8:
            break  # (a diverged or singular M: keep the best seen)
    if config.steps:
        value, _ = pp.value_and_grad(m, grad=False)
        if value < best and np.isfinite(value):
            best, best_m = value, m
    return best_m, {"proxy_initial": float(start), "proxy": float(best)}


def heads_times(wo: np.ndarray, k: np.ndarray, heads: Heads) -> np.ndarray:
    """W_o with each query head's columns multiplied by its KV head's d x d matrix:
    W_o[:, h] K_{g(h)} for every h (k: (n_kv_heads, d, d)), float64."""
    n, d = heads.n_kv_heads, heads.head_dim
    o = np.asarray(wo, F64).reshape(wo.shape[0], n, heads.group, d)
    return np.einsum("okgd,kde->okge", o, k, optimize=True).reshape(wo.shape)


def apply_transform(m: np.ndarray, wv: np.ndarray, wo: np.ndarray, heads: Heads,
                    bias: Optional[np.ndarray] = None):
    """(M W_v, W_o M^-1, M b_v) in float64; bias None stays None."""
    heads.check(wv.shape, wo.shape)
    n, d = heads.n_kv_heads, heads.head_dim
    wv_t = (m @ np.asarray(wv, F64).reshape(n, d, -1)).reshape(wv.shape)
    wo_t = heads_times(wo, np.linalg.inv(m), heads)
    b_t = None if bias is None else (m @ np.asarray(bias, F64).reshape(n, d, 1)).reshape(-1)
    return wv_t, wo_t, b_t
