"""Auxiliary routing losses, each averaged over layers and real (non-padding) tokens.

| term          | formula (per layer)                                   | applies to     |
|---------------|-------------------------------------------------------|----------------|
| load_balance  | (H_b / mean_k) * sum_i f_i P_i   (= 1 when balanced)   | moh "paper", adaptive |
|               | H_b * sum_i f_i P_i              (= k when balanced)   | moh "released" |
| z             | mean(logsumexp(logits)^2)                             | moh, adaptive  |
| complexity    | mean((stopgrad(target) - kappa)^2) / H^2              | adaptive       |
| budget        | ((mean count - target_heads) / H)^2                   | adaptive       |
| entropy       | mean(-sum_i pi_i log pi_i)       (nats, <= log H)      | adaptive       |

f_i: fraction of tokens whose hard mask selects head i; P_i: mean router probability; mean_k:
mean hard heads per token over the balanced heads (moh: the routed ones). The released MoH code
omits the 1/mean_k, so under moh_gates = "released" the same lb_weight pushes k times harder than
the Switch form, as in the authors' runs. The complexity term teaches the predictor a target
(config complexity_target): by default the number of heads the hard mask actually used; under
"loss_rank" / "entropy_rank" the budget kappa* = k_min + 2 (target_heads - k_min - 1/2) u from the
rank quantile u of the token's difficulty in the batch (moh/difficulty.py), averaged over the
tokens that have a next-token target. The budget term's count is the straight-through count: its
value is the hard count, its gradient the surrogate's, so it steers the count that is measured.
The entropy term (Huang et al.'s "dynamic loss"), minimised, sharpens the router so that top-p
keeps fewer heads. A term that does not apply is None, never 0.
"""

from __future__ import annotations

import array
import functools
import types
from collections.abc import Mapping
from typing import Callable, NamedTuple

import torch

from . import native, schema
from .config import Config
from .difficulty import budget_span, budget_target
from .lazy_values import LazyValues
from .route_fast import _rows_of, scalars
from .routing import Routing

TERMS = schema.AUX_TERMS
WEIGHT_KEYS = schema.AUX_WEIGHT_KEYS  # term -> the config key of its weight


def _masked_sum(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Sum of x (B, T[, K]) over tokens with weight w (B, T) in {0, 1}: (K,) or 0-d."""
    if x.dim() == 3:
        return (x * w.unsqueeze(-1)).sum((0, 1))
    return (x * w).sum()


def aux_losses(routings: list[Routing], valid: torch.Tensor, cfg: Config,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
               reference: bool = False) -> Mapping[str, torch.Tensor | None]:
    """Raw (unweighted) aux terms, each a 0-d tensor averaged over layers, or None
    (`aux_objective` without the weighted total)."""
    return aux_objective(routings, valid, cfg, reduce, reference=reference)[0]


def aux_objective(routings: list[Routing], valid: torch.Tensor, cfg: Config,
                  reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                  reference: bool = False) -> tuple[Mapping[str, torch.Tensor | None], torch.Tensor | None]:
    """(raw aux terms, their weighted total): what a training step logs and what it adds to
    the LM loss. Each term is a 0-d tensor averaged over layers, or None; the total is
    `weighted_total(terms, cfg)` (None when no term applies), made by the same node as the
    terms (one node instead of a product per term, a stack and a sum, ~0.15 ms a step with
    their backward on CPU).

    Every term is a function of token SUMS (per-head f_i and P_i sums, z, complexity and
    head-count sums, the real-token count). `reduce` maps the flat vector of those sums to the
    job's sums before the terms are formed: under data parallelism an autograd-aware all-reduce
    (`distributed.sum_autograd`), so the batch-level statistics (f_i, P_i, mean count) are the
    global batch's and a 2-rank run computes the 1-rank run's terms. None = this process only.

    `_layer_sums` and `_terms` define the sums and the terms; `reference` lets autograd
    differentiate them op by op. The default runs the same formulas in hand-written nodes
    (gradients equal up to rounding, tests/moh/test_losses_fast.py): on CPU with moh/native.c,
    one node `_NativeAux` for every layer's sums, the terms and the total (four C calls a step,
    none per layer: at this model's size each tensor operation or autograd node costs more
    than the arithmetic, docs/benchmarks.md); else (CUDA, no compiler) `_LayerSums` per layer
    and `_Terms`, with the reference's operations (the same values bit for bit).
    """
    if all(r.probs is None for r in routings):  # nothing is routed: no term applies (and no
        return {t: None for t in TERMS}, None  # collective: every rank has the same layers)
    if not reference:
        native_objective = _native_objective(routings, valid, cfg, reduce)
        if native_objective is not None:
            return native_objective
    w = valid.float()  # (B, T)
    parts: list[torch.Tensor] = [w.sum().view(1)]
    layout: list[_Layer] = []
    shared_target: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # one per difficulty tensor
    for r in routings:
        if r.probs is None:  # dense: nothing is routed
            continue
        hard_b = r.hard[..., r.balance_heads]  # (B, T, Hb)
        adaptive = r.kappa is not None
        target = w_c = None
        if adaptive:  # the difficulty target is the same tensor in every layer: made once
            key = id(r.difficulty) if r.difficulty is not None and cfg.complexity_target != "heads" else None
            if key is None or key not in shared_target:
                target_wc = _complexity_target(r, w, cfg)
                if key is not None:
                    shared_target[key] = target_wc
            target, w_c = shared_target[key] if key is not None else target_wc
        # off (weight 0): logged only, no path into the backward pass
        ent_grad = bool(cfg.entropy_weight)
        args = (hard_b, r.probs, r.logits, r.kappa, r.count, w, target, w_c, ent_grad)
        parts.append(_layer_sums(*args)[0] if reference else _LayerSums.apply(*args))
        layout.append(_Layer(hard_b.shape[-1], r.hard.shape[-1], adaptive, r.balance_per_k))
    flat = torch.cat(parts)
    if reduce is not None:
        flat = reduce(flat)
    layout = tuple(layout)
    if reference:
        terms = _by_name(_terms(flat, layout, float(cfg.target_heads)), layout)
        return terms, weighted_total(terms, cfg)
    weights = tuple(float(getattr(cfg, WEIGHT_KEYS[t])) for t in _layers_per_term(layout))
    total, *terms = _Terms.apply(flat, (layout, float(cfg.target_heads), weights))
    return _by_name(terms, layout), total


class _Layer(NamedTuple):
    """One routed layer's place in the flat vector of sums."""
    Hb: int  # balanced heads
    H: int  # all heads
    adaptive: bool  # complexity, budget and entropy sums follow the z sum
    per_k: bool  # load balance divided by the mean head count (Switch form)
    b0: int = 0  # the first balanced head (moh/native.c reads the hard mask from there)


_ADAPTIVE_TERMS = ("complexity", "budget", "entropy")


def _applies(term: str, layout: list[_Layer] | tuple[_Layer, ...]) -> bool:
    return bool(layout) and (term not in _ADAPTIVE_TERMS or any(l.adaptive for l in layout))


def _layer_sums(hard_b, probs, logits, kappa, count, w, target, w_c, ent_grad):
    """One layer's token sums: [f numerators (Hb), P numerators (Hb), z] and for the adaptive
    router [complexity, head count, entropy, complexity tokens]; and logsumexp(logits) (B, T).
    Differentiable in probs, logits, kappa and count (entropy only when `ent_grad`); the rest
    are counts."""
    lse = torch.logsumexp(logits, -1)  # (B, T)
    out = [_masked_sum(hard_b.float(), w), _masked_sum(probs, w),  # (Hb,) f and P numerators
           _masked_sum(lse ** 2, w).view(1)]
    if kappa is not None:
        p = probs if ent_grad else probs.detach()
        ent = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (B, T) nats
        out += [_masked_sum((target - kappa) ** 2, w_c).view(1),
                _masked_sum(count.float(), w).view(1), _masked_sum(ent, w).view(1), w_c.sum().view(1)]
    return torch.cat(out), lse


def _terms(flat: torch.Tensor, layout: tuple[_Layer, ...], target_heads: float) -> list[torch.Tensor]:
    """The terms that apply (TERMS order, averaged over layers) from the flat sums [n, layer 0's
    sums, layer 1's, ...]. The Python numbers enter as 0-d tensors (`scalars`: same values)."""
    n = flat[0].clamp_min(1.0)
    per_term: dict[str, list[torch.Tensor]] = {t: [] for t in TERMS}
    pos = 1
    for lay in layout:
        Hb, H = lay.Hb, lay.H
        Hb_, H_, H2_, th_ = scalars((Hb, H, H**2, target_heads), flat.dtype, flat.device)
        f = flat[pos : pos + Hb] / n  # (Hb,) fraction of tokens per head
        P = flat[pos + Hb : pos + 2 * Hb] / n  # (Hb,) mean probability per head
        pos += 2 * Hb
        mean_k = f.sum().clamp_min(1e-6)  # heads per token among the balanced ones
        balance = Hb_ * (f * P).sum()
        per_term["load_balance"].append(balance / mean_k if lay.per_k else balance)
        per_term["z"].append(flat[pos] / n)
        pos += 1
        if lay.adaptive:
            per_term["complexity"].append(flat[pos] / flat[pos + 3].clamp_min(1.0) / H2_)
            mean_count = flat[pos + 1] / n
            per_term["budget"].append(((mean_count - th_) / H_) ** 2)
            per_term["entropy"].append(flat[pos + 2] / n)
            pos += 4
    return [torch.stack(v).mean() for v in per_term.values() if v]


def _by_name(terms, layout: tuple[_Layer, ...]) -> dict[str, torch.Tensor | None]:
    """The values of the terms that apply (TERMS order) as {term: value}, None for the others."""
    values = iter(terms)
    return {t: (next(values) if _applies(t, layout) else None) for t in TERMS}


@functools.lru_cache(maxsize=64)
def _layers_per_term(layout: tuple[_Layer, ...]) -> Mapping[str, int]:
    """The terms that apply and how many layers each is averaged over (read-only: made once per
    layout, as the native node asks twice a step, ~10 us each)."""
    return types.MappingProxyType({t: sum(1 for l in layout if l.adaptive or t not in _ADAPTIVE_TERMS)
                                   for t in TERMS if _applies(t, layout)})


class _LayerSums(torch.autograd.Function):
    """`_layer_sums` as one autograd node (the torch path: CUDA, or no C compiler): the same
    forward values, the chain rule by hand."""

    @staticmethod
    def forward(ctx, hard_b, probs, logits, kappa, count, w, target, w_c, ent_grad):  # type: ignore[override]
        out, lse = _layer_sums(hard_b, probs, logits, kappa, count, w, target, w_c, ent_grad)
        ctx.save_for_backward(probs, logits, lse, kappa, w, target, w_c)
        ctx.ent_grad = ent_grad
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        probs, logits, lse, kappa, w, target, w_c = ctx.saved_tensors
        need = ctx.needs_input_grad
        Hb = probs.shape[-1]
        two, minus_two = scalars((2.0, -2.0), g.dtype, g.device)
        g_probs = g_logits = g_kappa = g_count = None
        if need[1]:  # P sums: d/dp_i = g_P_i on real tokens
            g_probs = g[Hb:2 * Hb] * w.unsqueeze(-1)
            if kappa is not None and ctx.ent_grad:  # ent = -sum p log max(p, 1e-12)
                pc = probs.clamp_min(1e-12)
                d_ent = -(pc.log() + torch.where(probs >= 1e-12, probs / pc, 0.0))
                g_probs = g_probs + (g[2 * Hb + 3] * w).unsqueeze(-1) * d_ent
        if need[2]:  # z = sum lse^2: d/dlogits = 2 lse softmax(logits)
            lse_ = lse.unsqueeze(-1)
            g_logits = ((g[2 * Hb] * two) * w).unsqueeze(-1) * lse_ * (logits - lse_).exp()
        if kappa is not None:
            if need[3]:  # complexity = sum w_c (target - kappa)^2
                g_kappa = (g[2 * Hb + 1] * minus_two) * w_c * (target - kappa)
            if need[4]:  # head count sum
                g_count = g[2 * Hb + 2] * w
        return None, g_probs, g_logits, g_kappa, g_count, None, None, None, None


class _Terms(torch.autograd.Function):
    """`_terms` and their weighted total as one autograd node (the torch path: CUDA, or no C
    compiler): flat sums -> (total, *terms), spec = (layout, target_heads, the weight of each
    term that applies); the operations of `_terms` and `weighted_total` (the same values bit for
    bit), the chain rule by hand. Only the probability, z, complexity, head-count and entropy
    sums carry a gradient: n, the f numerators and the complexity token count are counts of the
    hard and valid masks (their slots get 0)."""

    @staticmethod
    def forward(ctx, flat, spec):  # type: ignore[override]
        layout, target_heads, weights = spec
        ctx.save_for_backward(flat)
        ctx.spec = spec
        ctx.set_materialize_grads(False)  # the terms are usually logged only: no zero gradients
        terms = _terms(flat, layout, target_heads)
        weights_ = scalars(weights, flat.dtype, flat.device)  # weighted_total's products, same bits
        return (torch.stack([wt * t for wt, t in zip(weights_, terms)]).sum(), *terms)

    @staticmethod
    def backward(ctx, g_total, *g_terms):  # type: ignore[override]
        (flat,) = ctx.saved_tensors
        layout, target_heads, weights = ctx.spec
        weights_ = scalars(weights, flat.dtype, flat.device)  # each term: its own gradient plus
        g_terms = tuple(  # its weight times the total's
            (flat.new_zeros(()) if g is None else g) + (0 if g_total is None else wt * g_total)
            for g, wt in zip(g_terms, weights_))
        layers = _layers_per_term(layout)
        gl = dict(zip(layers, (g / k for g, k in zip(g_terms, scalars(tuple(layers.values()), flat.dtype, flat.device)))))
        n = flat[0].clamp_min(1.0)
        zero = flat.new_zeros(1)
        per_n = {t: gl[t] / n for t in ("z", "entropy") if t in gl}  # d (sum / n) / d sum, every layer
        pieces = [zero]
        pos = 1
        for lay in layout:
            Hb, H = lay.Hb, lay.H
            Hb_, H_, H2_, th_, two_ = scalars((Hb, H, H**2, target_heads, 2.0), flat.dtype, flat.device)
            f = flat[pos : pos + Hb] / n
            # balance = Hb sum_i f_i P_i (/ mean_k), P_i = sum_i / n: d/d sum_i = Hb f_i (/ mean_k) / n
            coef = Hb_ * f
            if lay.per_k:
                coef = coef / f.sum().clamp_min(1e-6)
            rest = [per_n["z"]]
            if lay.adaptive:  # complexity = sum / max(tokens, 1) / H^2; budget = ((count / n - t) / H)^2
                z = pos + 2 * Hb
                rest += [gl["complexity"] / flat[z + 4].clamp_min(1.0) / H2_,
                         gl["budget"] * (two_ * ((flat[z + 2] / n - th_) / H_) / H_ / n), per_n["entropy"]]
            pieces += [torch.zeros_like(f), gl["load_balance"] * (coef / n), torch.stack(rest).view(-1)]
            if lay.adaptive:
                pieces.append(zero)  # the complexity token count
            pos += 2 * Hb + (5 if lay.adaptive else 1)
        return torch.cat(pieces), None


def _native_objective(routings: list[Routing], valid: torch.Tensor, cfg: Config,
                      reduce: Callable[[torch.Tensor], torch.Tensor] | None
                      ) -> tuple[Mapping[str, torch.Tensor | None], torch.Tensor] | None:
    """aux_objective through `_NativeAux`, or None when moh/native.c cannot take these
    routings (no compiler, a tensor off the CPU or not float32, a head set that is not a
    contiguous slice, rows wider than native.MAX_HEADS)."""
    layout: list[_Layer] = []
    inputs: list[torch.Tensor | None] = []  # what has a gradient: _NativeAux's tensor arguments
    side: list[tuple] = []  # what has none, per layer: (hard, difficulty, whether inputs[0] are the sums)
    present: list[torch.Tensor] = []  # the inputs that are tensors, for the kernels' dtype check
    width = 0
    difficulty_target = cfg.complexity_target != "heads"
    for r in routings:
        if r.probs is None:  # not routed
            continue
        H, bh = r.hard.shape[-1], r.balance_heads
        if not isinstance(bh, slice) or bh.step not in (None, 1):
            return None
        start, stop, _ = bh.indices(H)
        Hb = max(stop - start, 0)
        layout.append(_Layer(Hb, H, r.kappa is not None, r.balance_per_k, start))
        width = max(width, H)
        # the router's own sums over this very mask: only kappa is then read per token
        summed = r.sums is not None and r.sums_valid is valid and Hb == H
        layer_inputs = [r.sums, None, r.kappa, None] if summed else [r.probs, r.logits, r.kappa, r.count]
        inputs += layer_inputs
        present += [t for t in layer_inputs if t is not None]
        side.append((r.hard, r.difficulty if difficulty_target else None, summed))
    kernels = native.for_tensors(*present, width=width)
    if kernels is None or not valid.is_cpu:
        return None
    layout = tuple(layout)
    applying = _layers_per_term(layout)
    weights = tuple(float(getattr(cfg, WEIGHT_KEYS[t])) if t in applying else 0.0 for t in TERMS)
    spec = (kernels, layout, float(cfg.target_heads), weights, float(cfg.k_min),
            budget_span(cfg.k_min, cfg.target_heads), reduce, bool(cfg.entropy_weight), valid, side)
    total, terms = _NativeAux.apply(spec, *inputs)
    index = _term_index(layout)  # the terms dict selects from the vector when read (logged steps)
    views: list[torch.Tensor] = []

    def term(t: str) -> torch.Tensor | None:
        if index[t] is None:
            return None
        if not views:  # every term's view in one operator on the first read, not an index each
            views.extend(terms.unbind())
        return views[index[t]]
    return LazyValues(TERMS, term), total


@functools.lru_cache(maxsize=64)
def _term_index(layout: tuple[_Layer, ...]) -> dict[str, int | None]:
    """Each term's place in the vector of the terms that apply (None: it does not apply)."""
    applying = list(_layers_per_term(layout))
    return {t: (applying.index(t) if t in applying else None) for t in TERMS}


_PER_LAYER = 4  # _NativeAux's tensors per routed layer: probs or sums, logits, kappa, count
_KEPT = 7  # what its forward keeps per layer: hard, probs, logits, kappa, count, difficulty, sums


class _NativeAux(torch.autograd.Function):
    """aux_objective on CPU in one node: every routed layer's token sums (`_layer_sums`, with
    the complexity target of `_complexity_target` per token), the terms (`_terms`) and their
    weighted total, and the backward pass of all of it, in four calls of moh/native.c a step
    (aux_sums, aux_terms; aux_terms_backward, aux_sums_backward), with `reduce` between the
    sums and the terms in both passes. `reduce` must be its own adjoint, as a sum over ranks
    is (`distributed.sum_autograd`: its backward is the same all-reduce).

    Inputs: spec (kernels, layout, target_heads, the 5 weights in TERMS order, k_min, kappa*
    span, reduce, ent_grad, valid (B, T), and per routed layer (hard, difficulty, summed)),
    then the tensors with a gradient, per routed layer (probs, logits, kappa, count), or
    (sums, None, kappa, None) where the router summed over `valid` itself (`Routing.sums`,
    summed = True: only the complexity sums are made here); kappa, count and difficulty None
    for a non-adaptive layer (difficulty also under the "heads" target). Only these four are
    node inputs: every input costs autograd bookkeeping. Outputs: (total, the vector of the
    terms that apply, TERMS order). The sums are accumulated in double and rounded once, the
    terms and the total computed in double: the torch path's values up to float32 rounding
    (tests/moh/test_losses_fast.py)."""

    @staticmethod
    def forward(ctx, spec, *tensors):  # type: ignore[override]
        # (explicit statements rather than generators, and `array` rather than ctypes arrays:
        # each costs microseconds at this point of a step, docs/benchmarks.md "Eighth session")
        kernels, layout, target_heads, weights, k_min, span, reduce, _, valid, side = spec
        valid = valid if valid.dtype == torch.bool and valid.is_contiguous() else valid.bool().contiguous()
        n = valid.numel()
        kept, fields = [valid], []
        for l, lay in enumerate(layout):
            first, logits, kappa, count = tensors[_PER_LAYER * l: _PER_LAYER * (l + 1)]
            hard, diff, summed = side[l]
            hard, hard_at, hard_stride = _rows_of(hard)
            logits, logits_at, logits_stride = (None, 0, 0) if logits is None else _rows_of(logits)
            first = None if first is None else first.contiguous()
            kappa = None if kappa is None else kappa.contiguous()
            count = None if count is None else count.contiguous()
            diff = None if diff is None else diff.contiguous()
            probs, sums = (None, first) if summed else (first, None)
            kept += [hard, probs, logits, kappa, count, diff, sums]
            fields += [lay.Hb, lay.H, hard_at, hard_stride, lay.b0, 0 if probs is None else probs.data_ptr(),
                       logits_at, logits_stride, 0 if kappa is None else kappa.data_ptr(),
                       0 if count is None else count.data_ptr(), 0 if diff is None else diff.data_ptr(),
                       int(lay.per_k), 0 if sums is None else sums.data_ptr()]
        layers = array.array("q", fields)  # int64 fields, read by the kernels at its address
        layers_at = layers.buffer_info()[0]
        # one float buffer, by address: logsumexp (layers x n), the flat sums and their gradient,
        # then the total and the terms (each tensor allocated or viewed costs a few us here)
        n_flat, n_terms = _sizes(layout)
        buf = torch.empty(len(layout) * n + 2 * n_flat + 1 + n_terms)
        lse_at = buf.data_ptr()
        flat_at = lse_at + 4 * len(layout) * n
        kernels.aux_sums(n, len(layout), layers_at, valid.data_ptr(), k_min, span, lse_at, flat_at)
        flat = None
        if reduce is not None:  # the job's sums, in a tensor of their own
            flat = reduce(buf[len(layout) * n: len(layout) * n + n_flat])
            flat_at = flat.data_ptr()
        out_at = len(layout) * n + 2 * n_flat
        weights_ = array.array("d", weights)
        kernels.aux_terms(len(layout), layers_at, flat_at, target_heads, weights_.buffer_info()[0],
                          lse_at + 4 * out_at)
        ctx.kept, ctx.layers, ctx.weights, ctx.spec = kept, layers, weights_, spec
        ctx.buf, ctx.flat, ctx.at = buf, flat, (lse_at, flat_at, n_flat)
        ctx.set_materialize_grads(False)  # the terms are usually logged only: no zero gradients
        return buf.as_strided((), (), out_at), buf.as_strided((n_terms,), (1,), out_at + 1)

    @staticmethod
    def backward(ctx, g_total, g_terms):  # type: ignore[override]
        kernels, layout, target_heads, _, k_min, span, reduce, ent_grad, _, _ = ctx.spec
        lse_at, flat_at, n_flat = ctx.at
        if g_terms is None:  # (the usual case: the terms are logged, only the total is trained)
            g_terms_ = _NO_TERM_GRADS
        else:
            index, values = _term_index(layout), g_terms.tolist()
            g_terms_ = array.array("d", [0.0 if index[t] is None else values[index[t]] for t in TERMS])
        layers_at = ctx.layers.buffer_info()[0]
        g_flat_at = lse_at + 4 * (len(layout) * ctx.kept[0].numel() + n_flat)  # the buffer's slot
        kernels.aux_terms_backward(len(layout), layers_at, flat_at, target_heads, ctx.weights.buffer_info()[0],
                                   0.0 if g_total is None else float(g_total), g_terms_.buffer_info()[0],
                                   g_flat_at)
        g_flat = None
        if reduce is not None:
            start = (g_flat_at - lse_at) // 4
            g_flat = reduce(ctx.buf[start: start + n_flat])
            g_flat_at = g_flat.data_ptr()
        need = ctx.needs_input_grad
        grads: list[torch.Tensor | None] = []
        for l in range(len(layout)):
            _, probs, logits, kappa, _, _, sums = ctx.kept[1 + _KEPT * l: 1 + _KEPT * (l + 1)]
            at = 1 + _PER_LAYER * l  # d probs | d sums, d logits, d kappa, d count
            first = probs if sums is None else sums
            grads.append(torch.empty(first.shape) if first is not None and need[at] else None)
            grads.append(torch.empty(logits.shape) if logits is not None and need[at + 1] else None)
            grads.append(torch.empty(kappa.shape) if kappa is not None and need[at + 2] else None)
            grads.append(torch.empty(kappa.shape) if kappa is not None and need[at + 3] else None)
        addresses = array.array("q", [0 if g is None else g.data_ptr() for g in grads])
        valid = ctx.kept[0]
        kernels.aux_sums_backward(valid.numel(), len(layout), layers_at, valid.data_ptr(), k_min, span,
                                  lse_at, g_flat_at, int(ent_grad), addresses.buffer_info()[0])
        return (None, *grads)


_NO_TERM_GRADS = array.array("d", [0.0] * len(TERMS))  # read only (const in moh/native.c)


@functools.lru_cache(maxsize=64)
def _sizes(layout: tuple[_Layer, ...]) -> tuple[int, int]:
    """`_NativeAux`'s flat sums (the real-token count, then each layer's) and terms that apply."""
    return 1 + sum(2 * l.Hb + (5 if l.adaptive else 1) for l in layout), len(_layers_per_term(layout))


def _complexity_target(r: Routing, w: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """What kappa is trained toward (B, T), with no gradient, and the tokens that count (B, T).

    "heads": the hard count the mask used, over real tokens. A difficulty target: the budget
    kappa* from the rank quantile of the token's difficulty (moh/difficulty.py), over the
    tokens that have one (real tokens with a next-token target)."""
    if cfg.complexity_target == "heads" or r.difficulty is None:
        return r.hard.sum(-1).to(r.kappa.dtype), w
    d = r.difficulty.detach()  # stop-gradient: the target is not something to move
    has = torch.isfinite(d)
    u = torch.where(has, d, 0.0)
    target = budget_target(u, cfg.k_min, cfg.target_heads, r.hard.shape[-1]).to(r.kappa.dtype)
    return target, w * has.float()


def weighted_total(aux: dict[str, torch.Tensor | None], cfg: Config) -> torch.Tensor | None:
    """sum_t weight_t * aux_t over the terms that apply (None when none do)."""
    parts = [getattr(cfg, WEIGHT_KEYS[t]) * v for t, v in aux.items() if v is not None]
    return torch.stack(parts).sum() if parts else None
