"""Fast paths of the routers: hand-written autograd nodes and thread-count care for tiny ops.

The definitions live in moh/routing.py (`select_heads`, `AdaptiveRouter.route_reference`); these
compute the same values bit for bit and gradients equal to autograd's up to float rounding
(tests/moh/test_routing_fast.py). Why they exist: at this model's size a router works on a few
thousand numbers per layer, so its cost is the count of tensor operations (each a dispatch of
several microseconds on CPU, more for one that multiplies by a Python float: the scalar is
first copied into a tensor), not their arithmetic; docs/benchmarks.md has the measurements.

- `row_softmax`: a router's softmax on one thread (aten parallelises it at ~256 rows).
- `_AdaptiveRoute`: the adaptive router from its projections to gates, mask, probabilities,
  complexity, budget, threshold and head count: one node for ~60 autograd nodes.
- `fused_projections`: the attention's qkv matmul with the router projections riding along.
- `scalars`: Python numbers as cached 0-d tensors (also used by moh/losses.py's nodes);
  `zeros_block` a cached zero block.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import native


def row_softmax(x: torch.Tensor) -> torch.Tensor:
    """x.softmax(-1) for a router's few logits per token, run on one CPU thread.

    aten splits a softmax over the last dim between threads once there are more than
    32768 / (16 * width) rows (256 at 8 heads), so a router's softmax of ~3k numbers was a
    parallel region of its own: ~60 us on one thread, 300-1,400 us at 2 threads on busy cores
    (docs/benchmarks.md). Every row is computed by the same code whichever thread runs it, so
    the values are the same bits (tests/moh/test_routing_fast.py)."""
    n = torch.get_num_threads()
    if n == 1 or x.device.type != "cpu":
        return x.softmax(-1)
    torch.set_num_threads(1)
    try:
        return x.softmax(-1)
    finally:
        torch.set_num_threads(n)


@functools.lru_cache(maxsize=256)
def scalars(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Python numbers as 0-d tensors of `dtype`, made once: `x * t` gives the same bits as
    `x * v` (aten rounds a Python operand to the tensor's dtype first; checked in
    tests/moh/test_routing_fast.py), minus the tensor aten builds and copies from a Python
    number on every call (~2-4 us each on this CPU, more than the arithmetic)."""
    return tuple(torch.tensor(v, dtype=dtype, device=device) for v in values)


@functools.lru_cache(maxsize=64)
def _ranks(H: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.arange(H, device=device, dtype=dtype)


def _consts(H: int, values: tuple[float, ...], dtype: torch.dtype, device: torch.device
            ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The ranks 0..H-1 and `scalars(values)`."""
    return _ranks(H, dtype, device), scalars(values, dtype, device)


def _st_select(probs: torch.Tensor, tau: torch.Tensor, kappa: torch.Tensor, t1: float, t2: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """select_heads' hard mask (B, T, H) in head order, with what its surrogate's gradient
    needs: the sort order and the two sigmoid factors a (threshold), b (budget), sorted."""
    rank, (half, t1_, t2_) = _consts(probs.shape[-1], (0.5, t1, t2), probs.dtype, probs.device)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    # exclusive cumsum from a leading zero, so C_0 is exactly 0 (no cumsum - p rounding)
    cum_excl = F.pad(sorted_p[..., :-1], (1, 0)).cumsum(-1)
    tau_, kappa_ = tau.unsqueeze(-1), kappa.unsqueeze(-1)
    hard_sorted = (cum_excl < tau_) & (rank < kappa_)
    hard_sorted[..., 0] = True  # at least one head
    a = torch.sigmoid((tau_ - cum_excl) / t1_)  # threshold factor of the surrogate
    b = torch.sigmoid((kappa_ - rank - half) / t2_)  # budget factor
    # order is a permutation: every slot is written, so no zero fill is needed
    hard = torch.empty_like(hard_sorted).scatter_(-1, order, hard_sorted)
    return hard, order, a, b


def _st_backward(g: torch.Tensor, order: torch.Tensor, a: torch.Tensor, b: torch.Tensor, t1: float,
                 t2: float, need_probs: bool = True) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The surrogate's gradient for the upstream gradient g (B, T, H) of the gates, head order:
    (MINUS d probs (B, T, H), or None; d tau (B, T); d kappa (B, T)). The sign is left to the
    caller, which folds it into the subtraction it makes anyway."""
    _, (t1_, t2_) = _consts(g.shape[-1], (t1, t2), g.dtype, g.device)
    gs = g.gather(-1, order)  # gradient w.r.t. soft, in sorted order
    dz1 = torch.ops.aten.sigmoid_backward(gs * b, a) / t1_  # d/d (tau - C_j)
    dz2 = torch.ops.aten.sigmoid_backward(gs * a, b) / t2_  # d/d (kappa - j - 0.5)
    minus_g_probs = None
    if need_probs:
        # C_j = sum_{i<j} p_(i): p_(i) receives -sum_{j>i} dz1_j (the last sorted prob: 0);
        # the sums from the end, as a cumsum of the reversed dz1 shifted by one
        tail = F.pad(dz1.flip(-1)[..., :-1], (1, 0)).cumsum(-1).flip(-1)
        minus_g_probs = torch.empty_like(tail).scatter_(-1, order, tail)
    return minus_g_probs, dz1.sum(-1), dz2.sum(-1)


class _AdaptiveRoute(torch.autograd.Function):
    """AdaptiveRouter.route_reference as one autograd node: the projections (B, T, H + 2) ->
    (gates, hard, probs, c, kappa, tau, count), the router's logged predictor norm (no
    gradient), and, with the C kernel and a real-token mask `valid`, `Routing.sums` (else
    None): here because the kernel computes them in the same pass.

    The forward pass runs the reference's operations on the same tensors in the same order
    (equal values, bit for bit); the backward pass is the chain rule through softmax, the two
    sigmoids, the clamp and the surrogate in a few fused steps. Gradients equal autograd's up
    to float rounding (tests/moh/test_routing_fast.py: both sides of the clamp, with and
    without straight-through, each output alone).
    """

    @staticmethod
    def forward(ctx, out, router, valid=None):  # type: ignore[override]
        H = router.n_heads
        kernels = native.for_tensors(out, width=H)
        ctx.kernels = kernels
        if kernels is not None:
            return _native_forward(ctx, kernels, out, router, valid)
        _, (k_min, span_k, tau_min, span_t) = _consts(
            H, (router.k_min, H - router.k_min, router.tau_min, router.tau_max - router.tau_min),
            out.dtype, out.device)
        probs = row_softmax(out[..., :H])
        c = torch.sigmoid(out[..., H])
        kappa = k_min + span_k * c
        s_t = torch.sigmoid(out[..., H + 1])
        tau_free = tau_min + span_t * s_t
        tau = tau_free.clamp(router.tau_lo, router.tau_hi)
        hard, order, a, b = _st_select(probs, tau, kappa, router.t1, router.t2)
        gates = hard.to(probs.dtype)
        count = gates.sum(-1)
        ctx.save_for_backward(probs, c, s_t, tau_free, tau, order, a, b)
        ctx.router, ctx.span_k, ctx.span_t = router, span_k, span_t
        ctx.set_materialize_grads(False)  # unused outputs arrive as None: no zero tensors
        pred_norm = router.predictor_norm()
        if router.straight_through:
            ctx.mark_non_differentiable(hard, pred_norm)
        else:  # pitfall 1 on purpose: no gradient path from the gates (nor their count)
            ctx.mark_non_differentiable(hard, gates, count, pred_norm)
        return gates, hard, probs, c, kappa, tau, count, pred_norm, None

    @staticmethod
    def backward(ctx, g_gates, _g_hard, g_probs, g_c, g_kappa, g_tau, g_count, _g_norm, g_sums):  # type: ignore[override]
        if ctx.kernels is not None:
            return _native_backward(ctx, g_gates, g_probs, g_c, g_kappa, g_tau, g_count, g_sums), None, None
        probs, c, s_t, tau_free, tau, order, a, b = ctx.saved_tensors
        rt = ctx.router
        g_sel = g_gates if rt.straight_through else None  # upstream gradient of the surrogate
        if rt.straight_through and g_count is not None:  # count = gates.sum(-1)
            g_sel = g_count.unsqueeze(-1).expand_as(probs) if g_sel is None else g_sel + g_count.unsqueeze(-1)
        if g_sel is not None:
            minus_gp, gt_sel, gk_sel = _st_backward(g_sel, order, a, b, rt.t1, rt.t2)
            g_probs = -minus_gp if g_probs is None else g_probs - minus_gp
            g_tau = gt_sel if g_tau is None else g_tau + gt_sel
            g_kappa = gk_sel if g_kappa is None else g_kappa + gk_sel
        # softmax: d logits = p (g - sum_i g_i p_i), the formula of aten's softmax backward,
        # whose kernel for 8-wide rows is ~10x slower than these three operations
        g_logits = (torch.zeros_like(probs) if g_probs is None
                    else probs * (g_probs - (g_probs * probs).sum(-1, keepdim=True)))
        if g_kappa is not None:  # kappa = k_min + (H - k_min) c
            g_k = g_kappa * ctx.span_k
            g_c = g_k if g_c is None else g_c + g_k
        g_xc = torch.zeros_like(c) if g_c is None else torch.ops.aten.sigmoid_backward(g_c, c)
        if g_tau is None:
            g_xt = torch.zeros_like(s_t)
        else:  # tau = clamp(tau_min + (tau_max - tau_min) s_t): the clamp passes the gradient
            # where it left tau as it was (autograd's lo <= x <= hi, NaN included)
            g_xt = torch.ops.aten.sigmoid_backward(torch.where(tau_free == tau, g_tau, 0.0) * ctx.span_t, s_t)
        return torch.cat([g_logits, g_xc.unsqueeze(-1), g_xt.unsqueeze(-1)], -1), None, None


def _native_forward(ctx, kernels, out: torch.Tensor, router, valid: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """_AdaptiveRoute.forward in one pass of moh/native.c (the predictor norm too, and with
    `valid` the layer's token sums for the aux objective).

    Every output lives in one float buffer (probs, gates, c, kappa, tau, count, s_t, lse, the
    sums, then the norm) or one byte buffer (hard, then the sort order and tau_kept), each an
    `as_strided` view of it, and the backward pass reads the buffers by address: each
    allocation, view or saved tensor costs a few microseconds at this point of a step, as much
    as the kernel's work, and so does Python arithmetic (the layout is made once per shape:
    `_BufferLayout`). (No saved-tensor version check, then: nothing writes into a routing's
    tensors.)"""
    H = router.n_heads
    _, at, stride = _rows_of(out)  # `out` is an input: alive until the call returns
    lay = _buffer_layout(out.shape[:-1], H)
    n, lead, tokens, shape, rows = lay.n, lay.lead, lay.tokens, lay.heads, lay.rows
    floats = torch.empty(lay.floats)
    # bool bytes: hard is read by torch, the order and tau_kept (values up to H) only by C
    bytes_ = torch.empty(lay.bytes, dtype=torch.bool)
    probs = floats.as_strided(shape, rows, 0)
    gates = floats.as_strided(shape, rows, n * H)
    c = floats.as_strided(lead, tokens, lay.c)
    kappa = floats.as_strided(lead, tokens, lay.c + n)
    tau = floats.as_strided(lead, tokens, lay.c + 2 * n)
    count = floats.as_strided(lead, tokens, lay.c + 3 * n)
    sums = floats.as_strided((lay.n_sums,), (1,), lay.sums) if valid is not None else None
    pred_norm = floats.as_strided((), (), lay.norm)
    hard = bytes_.as_strided(shape, rows, 0)
    if valid is not None:
        valid = valid if valid.dtype == torch.bool and valid.is_contiguous() else valid.bool().contiguous()
        if valid.numel() != n:
            raise ValueError(f"valid has {valid.numel()} tokens, the projections {n}")
    w = router.weight
    if w.dtype != torch.float32 or not w.is_contiguous():  # the kernel reads float32 rows
        w = w.detach().float().contiguous()
    C = w.shape[1]
    w_c = w.data_ptr() + 4 * H * C  # rows H and H + 1 of [W_r; w_c; w_t]
    f0, b0 = floats.data_ptr(), bytes_.data_ptr()
    c_at = f0 + 4 * lay.c  # then kappa, tau, count, s_t, lse: n floats each
    kernels.route_forward(n, H, at, stride, router.k_min, H - router.k_min, router.tau_min,
                          router.tau_max - router.tau_min, router.tau_lo, router.tau_hi, C,
                          w_c, w_c + 4 * C, f0, c_at, c_at + 4 * n, c_at + 8 * n, c_at + 16 * n, c_at + 20 * n,
                          b0 + 2 * n * H, b0 + n * H, b0, f0 + 4 * n * H, c_at + 12 * n,
                          f0 + 4 * lay.norm, None if valid is None else valid.data_ptr(), f0 + 4 * lay.sums)
    ctx.buffers, ctx.lay, ctx.router, ctx.valid = (floats, bytes_), lay, router, valid
    ctx.set_materialize_grads(False)
    if router.straight_through:
        ctx.mark_non_differentiable(hard, pred_norm)
    else:
        ctx.mark_non_differentiable(hard, gates, count, pred_norm)
    return gates, hard, probs, c, kappa, tau, count, pred_norm, sums


class _BufferLayout(NamedTuple):
    """Where `_native_forward`'s outputs live in its buffers, for rows `lead` of H heads.
    Offsets in floats: probs 0, gates n H, then c, kappa, tau, count, s_t, lse (n each) from
    `c`, the sums (2 H + 3) and the norm."""

    n: int  # tokens
    lead: tuple[int, ...]  # the projections' leading shape, (B, T)
    tokens: tuple[int, ...]  # strides of a per-token output
    heads: tuple[int, ...]  # lead + (H,)
    rows: tuple[int, ...]  # strides of a per-head output
    grad: tuple[int, ...]  # lead + (H + 2,), the projections' gradient
    c: int  # offset of c (kappa, tau, count, s_t and lse follow, n floats each)
    n_sums: int  # the aux sums' length, 2 H + 3
    sums: int  # offset of the sums
    norm: int  # offset of the predictor norm
    floats: int  # the float buffer's length
    bytes: int  # the byte buffer's length: hard (n H), the sort order (n H), tau_kept (n)


@functools.lru_cache(maxsize=64)
def _buffer_layout(lead: tuple[int, ...], H: int) -> _BufferLayout:
    n = 1
    for size in lead:
        n *= size
    n_sums = 2 * H + 3
    c, sums = 2 * n * H, 2 * n * H + 6 * n
    return _BufferLayout(n=n, lead=tuple(lead), tokens=_strides(tuple(lead)), heads=(*lead, H),
                         rows=_strides((*lead, H)), grad=(*lead, H + 2), c=c, n_sums=n_sums, sums=sums,
                         norm=sums + n_sums, floats=sums + n_sums + 1, bytes=2 * n * H + n)


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of this shape."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def native_select(probs: torch.Tensor, tau: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """The hard mask (B, T, H) that `_AdaptiveRoute`'s C kernel selects for these float32
    probabilities, thresholds and budgets (its selection, for known-answer tests); the
    kernels must be loaded."""
    kernels = native.lib()
    if kernels is None:
        raise RuntimeError(f"moh/native.c is not loaded: {native.status()}")
    p, t, k = (x.float().contiguous() for x in (probs, tau, kappa))
    hard = torch.empty(p.shape, dtype=torch.bool)
    kernels.select_heads(t.numel(), p.shape[-1], p.data_ptr(), t.data_ptr(), k.data_ptr(), hard.data_ptr())
    return hard


def _rows_of(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """x (..., K) for a C loop over its rows: (the tensor to keep alive while C reads it, its
    address, elements between rows). A view's own layout when its rows have one stride (the
    router projections are columns of the wider qkv output), else a contiguous copy."""
    st, sh = x.stride(), x.shape
    if len(st) == 3:  # (B, T, K), the routers' case: no generator (~5 us a call in a step)
        if st[2] == 1 and st[0] == sh[1] * st[1]:
            return x, x.data_ptr(), st[1]
    elif st[-1] == 1 and all(st[i] == sh[i + 1] * st[i + 1] for i in range(x.dim() - 2)):
        return x, x.data_ptr(), st[-2] if x.dim() > 1 else sh[-1]
    x = x.contiguous()
    return x, x.data_ptr(), sh[-1]


def _native_backward(ctx, g_gates, g_probs, g_c, g_kappa, g_tau, g_count, g_sums) -> torch.Tensor:
    (floats, bytes_), lay, rt = ctx.buffers, ctx.lay, ctx.router
    H, n = rt.n_heads, lay.n
    f0, b0 = floats.data_ptr(), bytes_.data_ptr()
    c = f0 + 4 * lay.c  # then kappa, tau, count, s_t, lse: n floats each
    g_out = torch.empty(lay.grad)
    # addresses of the upstream gradients; a copy made contiguous is held in `keep` while the
    # kernel runs (a temporary's memory would be freed before the call)
    at, keep = [], []
    for g in (g_gates, g_probs, g_c, g_kappa, g_tau, g_count, g_sums):
        if g is not None and not g.is_contiguous():
            g = g.contiguous()
            keep.append(g)
        at.append(None if g is None else g.data_ptr())
    ctx.kernels.route_backward(
        n, H, f0, c, c + 16 * n, c + 4 * n, c + 8 * n, b0 + 2 * n * H, b0 + n * H, *at[:6],
        None if ctx.valid is None else ctx.valid.data_ptr(), at[6], c + 20 * n, int(rt.straight_through),
        rt.t1, rt.t2, H - rt.k_min, rt.tau_max - rt.tau_min, g_out.data_ptr())
    return g_out


@functools.lru_cache(maxsize=64)
def zeros_block(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero block made once (only ever read: torch.cat copies it), e.g. the bias of a
    router's rows that have none."""
    return torch.zeros(shape, dtype=dtype, device=device)


def fused_projections(x: torch.Tensor, weights: list[torch.Tensor], bias_parts: list[torch.Tensor],
                      sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """`F.linear(x, cat(weights), cat(bias_parts))` (the bias parts cover the weights' rows, in
    order) as its column blocks of `sizes` (summing to the weights' rows): the attention's q, k,
    v and the router's projections from one matmul and one input gradient.

    Plain autograd, split in ONE operation: its backward pass joins the blocks' gradients in one
    copy, as the dense attention's q/k/v split does, and the matmul's backward is dense's. (Two
    slices had filled two zero gradients of the whole width; the hand-written node that replaced
    them, and padding the width to a multiple of 16, cost more than this in the step:
    docs/benchmarks.md, "Sixth session".)
    """
    return F.linear(x, torch.cat(weights), torch.cat(bias_parts)).split(sizes, dim=-1)
