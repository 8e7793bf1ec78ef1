"""Head routers: which attention heads each token uses, and with what gate.

Every router maps the block's normed input x (B, T, C) to a `Routing`:
- `gates` (B, T, H): the factor each head's output is multiplied by (None = all ones);
- `hard` (B, T, H) bool: the heads the token actually uses; head counts are measured from
  this mask only, never from a prediction (the reference trainer's "heads used" restated its
  complexity prediction, so it measured nothing).

Routers:
- `dense`: every head, gate 1 (the baseline).
- `moh` (Jin et al. 2024): `moh_shared` (Hs) heads always on, the other Hr routed top-k,
  [a1, a2] = softmax(W_h x) weighting the two types (two-stage head-type balancing).
  `moh_gates = "paper"`: shared a1 * softmax(W_s x), routed a2 * softmax(W_r x) (0 outside the
  top-k). `"released"` (the authors' code, the default): shared 2 a1 * Hs * softmax(W_s x)
  (1 without W_s when Hs = 1), routed 2 a2 * k * p_i / sum_topk p (renormalised over the top-k);
  without shared heads no type weights. So a near-uniform router gives gates near 1 on the
  chosen heads, and the block keeps the dense model's scale (docs/routing.md).
- `adaptive` (ROUTING.md, "fully adaptive"): router probabilities pi (float32), complexity
  c in [0, 1] -> budget kappa = k_min + (H - k_min) c, threshold tau in [tau_min, tau_max];
  heads are taken in descending pi while the EXCLUSIVE cumulative probability is < tau and the
  rank is < kappa (the first head always). The forward pass uses the hard 0/1 mask; the
  backward pass sees the soft surrogate
      s_j = sigmoid((tau - C_j) / T1) * sigmoid((kappa - j - 0.5) / T2)
  (C_j exclusive cumsum, j rank from 0) through m = h + (s - stopgrad(s)), so the LM loss
  alone reaches the router (via C_j), the threshold (tau) and the complexity (kappa)
  predictors. The surrogate follows the top-p order: the most probable head gets the
  largest weight (the reference trainer's gate ran the other way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import Config
from .route_fast import _AdaptiveRoute, row_softmax, zeros_block


@dataclass
class Routing:
    hard: torch.Tensor  # (B, T, H) bool, heads selected per token
    gates: torch.Tensor | None = None  # (B, T, H) float multiplying head outputs; None = 1
    probs: torch.Tensor | None = None  # (B, T, H') float32 router probabilities (moh: routed H')
    logits: torch.Tensor | None = None  # (B, T, H') float32 router logits (for the z-loss)
    count: torch.Tensor | None = None  # (B, T) heads used: hard value forward, soft grad backward
    tau: torch.Tensor | None = None  # (B, T) threshold (adaptive)
    complexity: torch.Tensor | None = None  # (B, T) complexity c in [0, 1] (adaptive)
    kappa: torch.Tensor | None = None  # (B, T) head budget (adaptive)
    balance_heads: slice | None = None  # which heads the load-balance term covers (moh: routed)
    # load balance divided by the mean head count (Switch form, = 1 when balanced); False for
    # the released MoH arithmetic, H_b sum f_i P_i (= k when balanced)
    balance_per_k: bool = True
    pred_norm: torch.Tensor | None = None  # () mean L2 norm of predictor weight vectors
    # (B, T) rank quantile in [0, 1] of the difficulty of the token's prediction, NaN where it
    # has no target; set by LM.forward only under a difficulty complexity_target (moh/difficulty.py)
    difficulty: torch.Tensor | None = None
    # (2H' + 3,) the layer's token sums over the real tokens `sums_valid` for the aux objective,
    # [f numerators (H'), P numerators (H'), z, head count, entropy] (losses._layer_sums' sums
    # that need no complexity target), with their gradients to the router; made by the router's
    # C kernel when the forward pass was given the mask (the adaptive router on CPU). The
    # objective uses them for that very mask object, else computes them from the fields above.
    sums: torch.Tensor | None = None
    sums_valid: torch.Tensor | None = None


class DenseRouter(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads = cfg.n_heads

    def forward(self, x: torch.Tensor, proj: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> Routing:
        B, T, _ = x.shape
        ones = torch.ones(1, 1, self.n_heads, dtype=torch.bool, device=x.device)
        return Routing(hard=ones.expand(B, T, self.n_heads))  # a view: no (B, T, H) allocation


class MoHRouter(nn.Module):
    """Shared heads + top-k routed heads with two-stage head-type balancing (Jin et al.)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads, self.n_shared, self.k = cfg.n_heads, cfg.moh_shared, cfg.moh_topk
        self.n_routed = cfg.n_heads - cfg.moh_shared
        self.released = cfg.moh_gates == "released"
        C = cfg.d_model
        self.router = nn.Linear(C, self.n_routed, bias=False)  # W_r
        # W_s only for two or more shared heads: a softmax over one logit is identically 1 (its
        # gradient is 0), so a single shared head has gate 1 (times its type weight) in both variants
        self.shared = nn.Linear(C, self.n_shared, bias=False) if self.n_shared > 1 else None  # W_s
        self.mix = nn.Linear(C, 2, bias=False) if self.n_shared else None  # W_h -> [a1, a2]

    def proj_params(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The router's projections of x, in the order forward() reads: the weights W_r (Hr
        columns), W_s (Hs, when present), W_h (2, when shared heads exist), and their bias in
        parts (zeros: none has one), for one concatenated linear map."""
        ws = [m.weight for m in (self.router, self.shared, self.mix) if m is not None]
        rows = sum(w.shape[0] for w in ws)
        return ws, [zeros_block((rows,), ws[0].dtype, ws[0].device)]

    def forward(self, x: torch.Tensor, proj: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> Routing:
        """`proj`: the float32 projections of x by `proj_params()` when the caller already
        computed them (the attention fuses them into its qkv matmul); None = compute here.
        `valid` (B, T) real tokens: unused (no sums made here)."""
        Hr, Hs, k = self.n_routed, self.n_shared, self.k
        if proj is None:  # routers in float32 whatever the model dtype; one matmul for all
            proj = fused_linear(x.float(), self.proj_params()[0])
        logits = proj[..., :Hr]  # (B, T, Hr)
        probs = row_softmax(logits)
        top = probs.topk(k, dim=-1).indices
        chosen = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top, True)  # (B, T, Hr)
        routed_gates = probs * chosen
        if self.released:  # renormalised over the top-k, then x k: gates sum to k
            routed_gates = routed_gates / routed_gates.sum(-1, keepdim=True).clamp_min(
                torch.finfo(routed_gates.dtype).eps) * k
        if not Hs:  # no shared heads: no head-type weights in either variant
            gates, hard = routed_gates, chosen
        else:
            n_s = Hs if self.shared is not None else 0  # columns of W_s in proj
            shared_gates = (row_softmax(proj[..., Hr:Hr + n_s]) if n_s
                            else proj.new_ones(*proj.shape[:-1], 1))  # (B, T, Hs)
            a = row_softmax(proj[..., Hr + n_s:Hr + n_s + 2])  # (B, T, 2): [a1, a2]
            if self.released:  # shared gates sum to Hs; both type weights x 2 (they sum to 2)
                shared_gates, a = shared_gates * Hs, a * 2
            gates = torch.cat([a[..., :1] * shared_gates, a[..., 1:] * routed_gates], dim=-1)
            hard = torch.cat([torch.ones_like(shared_gates, dtype=torch.bool), chosen], dim=-1)
        return Routing(hard=hard, gates=gates.to(x.dtype), probs=probs, logits=logits,
                       balance_heads=slice(Hs, self.n_heads), balance_per_k=not self.released)


class AdaptiveRouter(nn.Module):
    """Per-token top-p selection capped by a predicted budget; straight-through gradients."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads, self.k_min = cfg.n_heads, cfg.k_min
        self.tau_min, self.tau_max = cfg.tau_min, cfg.tau_max
        self.t1, self.t2 = cfg.st_temp_threshold, cfg.st_temp_budget
        self.straight_through = cfg.straight_through
        # float32 bounds inside [tau_min, tau_max]: float32(0.8) is 0.80000001, which would put
        # a saturated threshold just outside its documented range.
        self.tau_lo, self.tau_hi = _f32_inside(cfg.tau_min, up=True), _f32_inside(cfg.tau_max, up=False)
        C, H = cfg.d_model, cfg.n_heads
        # W_r (H rows: the heads' logits), w_c and w_t (the complexity and threshold predictors)
        # as ONE matrix, and b_c, b_t as one vector: every parameter tensor costs a few us of
        # bookkeeping in each step (AccumulateGrad, the grad-norm and optimizer lists, the qkv
        # concatenation), and three Linear layers were five tensors (docs/benchmarks.md,
        # "Seventh session"). Init: N(0, 0.02) rows and zero biases, as model._init gives a Linear.
        self.weight = nn.Parameter(torch.empty(H + 2, C).normal_(0.0, 0.02))  # [W_r; w_c; w_t]
        self.bias = nn.Parameter(torch.zeros(2))  # [b_c, b_t]; W_r has none
        # which rows are which telemetry group (moh/row_blocks.py)
        self.grad_rows = {"weight": {"router": (0, H), "complexity": (H, H + 1), "threshold": (H + 1, H + 2)},
                          "bias": {"complexity": (0, 1), "threshold": (1, 2)}}

    @property
    def w_r(self) -> torch.Tensor:
        """W_r (H, C), a view of `weight`."""
        return self.weight[:self.n_heads]

    @property
    def w_c(self) -> torch.Tensor:
        """w_c (C,), a view of `weight`."""
        return self.weight[self.n_heads]

    @property
    def w_t(self) -> torch.Tensor:
        """w_t (C,), a view of `weight`."""
        return self.weight[self.n_heads + 1]

    @property
    def b_c(self) -> torch.Tensor:
        """b_c (), a view of `bias`."""
        return self.bias[0]

    @property
    def b_t(self) -> torch.Tensor:
        """b_t (), a view of `bias`."""
        return self.bias[1]

    def proj_params(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The router's projections of x, in the order forward() reads: the weights, and the
        bias in parts (zeros for W_r's rows), for one concatenated linear map."""
        return [self.weight], [zeros_block((self.n_heads,), self.bias.dtype, self.bias.device), self.bias]

    def forward(self, x: torch.Tensor, proj: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> Routing:
        """`proj`: the float32 projections of x by `proj_params()` (B, T, H + 2) when the caller
        already computed them (the attention fuses them into its qkv matmul); None = here.
        `valid` (B, T) bool, the real tokens: the node also sums the aux objective's token sums
        over them (`Routing.sums`, C kernel only)."""
        H = self.n_heads
        if proj is None:  # W_r x, w_c . x + b_c, w_t . x + b_t in float32, one matmul
            ws, bs = self.proj_params()
            proj = fused_linear(x.float(), ws, [torch.cat(bs)])
        # one autograd node for the whole head selection (route_reference is its definition)
        gates, hard, probs, c, kappa, tau, count, pred_norm, sums = _AdaptiveRoute.apply(proj, self, valid)
        if gates.dtype != x.dtype:  # (a no-op `to` still costs a dispatch)
            gates = gates.to(x.dtype)
        return Routing(hard=hard, gates=gates, probs=probs, logits=proj[..., :H],
                       count=count, tau=tau, complexity=c, kappa=kappa,
                       balance_heads=slice(0, H), pred_norm=pred_norm,
                       sums=sums, sums_valid=None if sums is None else valid)

    def predictor_norm(self) -> torch.Tensor:
        """The logged mean L2 norm of the complexity and threshold weight vectors, no graph
        (where moh/native.c runs, `_AdaptiveRoute`'s kernel computes it in its own pass)."""
        with torch.no_grad():
            return 0.5 * (self.w_c.norm() + self.w_t.norm())

    def route_reference(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The adaptive routing of the projections `out` (B, T, H + 2) in plain autograd ops:
        (gates, hard, probs, c, kappa, tau, count). This defines what `_AdaptiveRoute`, the node
        forward() runs, computes (tests/moh/test_routing_fast.py holds them equal)."""
        H = self.n_heads
        logits = out[..., :H]  # (B, T, H)
        probs = logits.softmax(-1)
        c = torch.sigmoid(out[..., H])  # (B, T) in [0, 1]
        kappa = self.k_min + (H - self.k_min) * c  # (B, T) in [k_min, H]
        tau = self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(out[..., H + 1])
        tau = tau.clamp(self.tau_lo, self.tau_hi)  # (B, T); only rounding error is clamped
        hard, soft = select_heads(probs, tau, kappa, self.t1, self.t2)
        gates = hard.to(probs.dtype) + (soft - soft.detach())  # forward hard, backward soft
        if not self.straight_through:  # pitfall 1 on purpose: a hard mask with no gradient path
            gates = gates.detach()
        return gates, hard, probs, c, kappa, tau, gates.sum(-1)


class _NarrowLinear(torch.autograd.Function):
    """y = x W^T + b for a narrow W (K, C), K << C: the routers' projections.

    The maths of nn.Linear; only the matmul layouts differ. At the routers' shapes (N = B*T
    rows, K <= 10 outputs) the layouts autograd picks for nn.Linear are several times slower
    on CPU than `W @ x^T` forward and `g^T @ x` for the weight gradient (bench/bench_router.py).
    """

    @staticmethod
    def forward(ctx, x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        out = torch.mm(w, x2.t())  # (K, N)
        if b is not None:
            out += b.unsqueeze(1)
        return out.t().contiguous()  # (N, K)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x2, w = ctx.saved_tensors
        g = g.contiguous()
        gx = g.mm(w) if ctx.needs_input_grad[0] else None
        gw = g.t().mm(x2) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def fused_linear(x: torch.Tensor, weights: list[torch.Tensor],
                 biases: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Several small linear maps of the same input in one matmul: x (..., C) -> (..., sum K_i).

    Output column block i is `x @ weights[i].T + biases[i]` (None = no bias), exactly what the
    separate nn.Linear calls compute; gradients flow back to each weight and bias.
    """
    w = torch.cat(weights) if len(weights) > 1 else weights[0]
    b = None
    if biases is not None and any(bi is not None for bi in biases):
        b = torch.cat([bi if bi is not None else w.new_zeros(wi.shape[0]) for wi, bi in zip(weights, biases)])
    lead = x.shape[:-1]
    out = _NarrowLinear.apply(x.reshape(-1, x.shape[-1]), w, b)
    return out.view(*lead, w.shape[0])


def _f32_inside(x: float, *, up: bool) -> float:
    """The float32 nearest `x` that does not leave the interval on that side."""
    t = torch.tensor(x, dtype=torch.float32)
    if (float(t) < x) if up else (float(t) > x):
        t = torch.nextafter(t, torch.tensor(float("inf") if up else float("-inf")))
    return float(t)


def select_heads(probs: torch.Tensor, tau: torch.Tensor, kappa: torch.Tensor,
                 t1: float, t2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard top-p-with-budget mask and its soft surrogate, both (B, T, H) in head order.

    probs (B, T, H) sum to 1; tau, kappa (B, T). Head of rank j (descending prob) is kept
    while C_j = sum of the j larger probs < tau and j < kappa; rank 0 is always kept.
    """
    H = probs.shape[-1]
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)  # (B, T, H)
    # exclusive cumsum built from a leading zero, so C_0 is exactly 0 (no cumsum - p rounding)
    cum_excl = torch.cat([torch.zeros_like(sorted_p[..., :1]), sorted_p[..., :-1].cumsum(-1)], -1)
    rank = torch.arange(H, device=probs.device, dtype=probs.dtype)  # (H,)
    tau_, kappa_ = tau.unsqueeze(-1), kappa.unsqueeze(-1)  # (B, T, 1)
    hard_sorted = (cum_excl < tau_) & (rank < kappa_)
    hard_sorted[..., 0] = True  # at least one head
    soft_sorted = torch.sigmoid((tau_ - cum_excl) / t1) * torch.sigmoid((kappa_ - rank - 0.5) / t2)
    hard = torch.zeros_like(hard_sorted).scatter(-1, order, hard_sorted)
    soft = torch.zeros_like(soft_sorted).scatter(-1, order, soft_sorted)
    return hard, soft


ROUTER_CLASSES = {"dense": DenseRouter, "moh": MoHRouter, "adaptive": AdaptiveRouter}


def make_router(cfg: Config) -> nn.Module:
    return ROUTER_CLASSES[cfg.router](cfg)


# --- telemetry ---------------------------------------------------------------------------------


def layer_stats(r: Routing, valid: torch.Tensor, full: bool = False) -> dict[str, torch.Tensor | None]:
    """Per-layer routing statistics over real (non-padding) tokens, as 0-d/1-d tensors.

    valid (B, T) bool. No `.item()` here: the caller syncs once per logging step. Fields that
    do not apply to the router are None (never a fake 0). `full` (config telemetry_tier =
    "full") adds the optional `heads_hist` (H+1 fractions of tokens using 0..H heads) and
    `prob_mean` (mean router probability per routed head; None for dense).
    """
    v = valid.reshape(-1)
    hard = r.hard.reshape(-1, r.hard.shape[-1])[v].float()  # (N, H)
    counts = hard.sum(-1)  # (N,) hard head count per token
    out: dict[str, torch.Tensor | None] = {
        "heads_mean": counts.mean(),
        "heads_min": counts.min(),
        "heads_max": counts.max(),
        "heads_std": counts.std(unbiased=False),
        "head_load": hard.mean(0),  # (H,) fraction of tokens using each head
    }
    for name, t in (("threshold", r.tau), ("complexity", r.complexity)):
        if t is None:
            out |= {f"{name}_mean": None, f"{name}_min": None, f"{name}_max": None}
        else:
            t = t.reshape(-1)[v].detach()
            out |= {f"{name}_mean": _mean64(t), f"{name}_min": t.min(), f"{name}_max": t.max()}
    if r.probs is None:
        out["entropy"] = None
    else:
        p = r.probs.reshape(-1, r.probs.shape[-1])[v].detach()
        p64 = p.double()
        out["entropy"] = (-(p64 * p64.clamp_min(1e-12).log()).sum(-1).mean()).to(p.dtype)  # nats, max log H'
    out["pred_norm"] = r.pred_norm
    if full:
        H = r.hard.shape[-1]
        n = max(int(counts.numel()), 1)
        out["heads_hist"] = torch.bincount(counts.long(), minlength=H + 1)[: H + 1].float() / n
        out["prob_mean"] = None if r.probs is None else _mean64(p, 0)
    return out


def _mean64(t: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """t's mean (over `dim`, else all of it) summed in float64 and rounded once to t's dtype:
    the value does not depend on the order of the sum (to ~2^-29 of values), so the stacked
    step record (moh/monitor/stacked.py) and its C pass (moh/native.c series_stats) give the
    same bits, and the mean of a few hundred float32 values loses no digits to the sum."""
    m = t.double().mean() if dim is None else t.double().mean(dim)
    return m.to(t.dtype)
