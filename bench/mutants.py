"""The mutant catalogue of bench/mutation.py: semantic one-line bugs in the core modules.

Each mutant is a realistic defect -- a threshold moved, a severity downgraded, min and max
swapped, a budget off by one, a learning rate scaled by 1e-6, a gradient path cut -- written as
an exact snippet of the current source and its replacement. The snippet must occur exactly once
in its file (include neighbouring text when the line repeats); when the code is refactored the
runner reports the mutant as an error, and the snippet here is updated to the new code.

`tests` are the fast test files that own the behaviour; `equivalent` (non-empty) says why a
mutant cannot change any observable behaviour, which keeps it out of the score.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    id: str
    kind: str           # family: budget, threshold_move, severity, min_max, lr, gradient, ...
    file: str
    original: str
    replacement: str
    breaks: str         # what the bug would do to a real run
    tests: tuple[str, ...]
    equivalent: str = ""


KNOWN = "tests/moh/test_known_answers.py"
LEARN = "tests/moh/test_learning.py"
ROUTING_T = (KNOWN, "tests/moh/test_routing.py", "tests/moh/test_routing_fast.py", LEARN)
LOSSES_T = (KNOWN, "tests/moh/test_routing.py", LEARN)
OPTIM_T = (KNOWN, "tests/moh/test_optim.py", LEARN)
TRAIN_T = (KNOWN, LEARN, "tests/moh/test_train.py")


def _m(id, kind, file, original, replacement, breaks, tests, equivalent=""):
    return Mutant(id, kind, file, original, replacement, breaks, tuple(tests), equivalent)


ENGINE = [
    # ---- routing: the hard mask, the budget, the surrogate ------------------------------------
    _m("budget_rank_le", "budget", "moh/routing.py",
       "        hard_sorted = (cum_excl < tau_) & (rank < kappa_)",
       "        hard_sorted = (cum_excl < tau_) & (rank <= kappa_)",
       "the model's head budget keeps one head too many at integer kappa", ROUTING_T),
    _m("budget_rank_le_reference", "budget", "moh/routing.py",
       "\n    hard_sorted = (cum_excl < tau_) & (rank < kappa_)",
       "\n    hard_sorted = (cum_excl < tau_) & (rank <= kappa_)",
       "the reference select_heads keeps one head too many at integer kappa", ROUTING_T),
    _m("threshold_cum_le", "threshold", "moh/routing.py",
       "        hard_sorted = (cum_excl < tau_) & (rank < kappa_)",
       "        hard_sorted = (cum_excl <= tau_) & (rank < kappa_)",
       "a head whose exclusive cumulative probability equals tau is kept", ROUTING_T),
    _m("no_forced_first_head", "selection", "moh/routing.py",
       "        hard_sorted[..., 0] = True  # at least one head",
       "        hard_sorted[..., 0] = hard_sorted[..., 0]  # at least one head",
       "a token can end up with no head at all", ROUTING_T),
    _m("ascending_selection", "selection", "moh/routing.py",
       "        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)\n        cum_excl",
       "        sorted_p, order = probs.sort(dim=-1, descending=False, stable=True)\n        cum_excl",
       "the least probable heads are taken first", ROUTING_T),
    _m("surrogate_budget_offset", "gradient", "moh/routing.py",
       "        b = torch.sigmoid((kappa_ - rank - 0.5) / t2)  # budget factor",
       "        b = torch.sigmoid((kappa_ - rank + 0.5) / t2)  # budget factor",
       "the surrogate's budget factor is centred one rank late", ROUTING_T),
    _m("surrogate_temperature_times", "gradient", "moh/routing.py",
       "dz1 = torch.ops.aten.sigmoid_backward(gs * b, a) / ctx.t1",
       "dz1 = torch.ops.aten.sigmoid_backward(gs * b, a) * ctx.t1",
       "the threshold gradient is scaled by T1^2 (100x too small at T1 = 0.1)", ROUTING_T),
    _m("cumsum_gradient_sign", "gradient", "moh/routing.py",
       "g_sorted[..., :-1] = (-dz1[..., 1:]).flip(-1).cumsum(-1).flip(-1)",
       "g_sorted[..., :-1] = (dz1[..., 1:]).flip(-1).cumsum(-1).flip(-1)",
       "the router's gradient through the cumulative probability has the wrong sign", ROUTING_T),
    _m("straight_through_inverted", "gradient", "moh/routing.py",
       "        if not self.straight_through:",
       "        if self.straight_through:",
       "the gates are detached by default: the LM loss never reaches router, threshold, complexity",
       ROUTING_T),
    _m("kappa_ignores_k_min", "budget", "moh/routing.py",
       "kappa = self.k_min + (H - self.k_min) * c",
       "kappa = self.k_min + H * c",
       "the budget overshoots H: kappa in [k_min, k_min + H]", ROUTING_T),
    _m("tau_range_swapped", "threshold", "moh/routing.py",
       "tau = self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(out[..., H + 1])",
       "tau = self.tau_max + (self.tau_max - self.tau_min) * torch.sigmoid(out[..., H + 1])",
       "the threshold leaves its documented range [tau_min, tau_max]", ROUTING_T),
    # ---- per-layer stats ------------------------------------------------------------------------
    _m("heads_min_is_max", "min_max", "moh/routing.py",
       '"heads_min": counts.min(),', '"heads_min": counts.max(),',
       "heads_min reports the largest head count", ROUTING_T),
    _m("heads_max_is_min", "min_max", "moh/routing.py",
       '"heads_max": counts.max(),', '"heads_max": counts.min(),',
       "heads_max reports the smallest head count", ROUTING_T),
    _m("threshold_min_max_swapped", "min_max", "moh/routing.py",
       'f"{name}_min": t.min(), f"{name}_max": t.max()',
       'f"{name}_min": t.max(), f"{name}_max": t.min()',
       "threshold/complexity min and max swapped", ROUTING_T),
    _m("heads_std_unbiased", "stats", "moh/routing.py",
       '"heads_std": counts.std(unbiased=False),', '"heads_std": counts.std(unbiased=True),',
       "heads_std uses the sample (n-1) estimator, not the population one", ROUTING_T),
    _m("stats_include_padding", "stats", "moh/routing.py",
       "hard = r.hard.reshape(-1, r.hard.shape[-1])[v].float()  # (N, H)",
       "hard = r.hard.reshape(-1, r.hard.shape[-1]).float()  # (N, H)",
       "head counts and loads include padding tokens", ROUTING_T),
    _m("head_load_sum", "stats", "moh/routing.py",
       '"head_load": hard.mean(0),', '"head_load": hard.sum(0),',
       "head_load is a token count, not a fraction", ROUTING_T),
    _m("entropy_mean_over_heads", "stats", "moh/routing.py",
       "out[\"entropy\"] = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()",
       "out[\"entropy\"] = -(p * p.clamp_min(1e-12).log()).mean(-1).mean()",
       "entropy divided by the number of heads", ROUTING_T),
    # ---- aux losses ----------------------------------------------------------------------------
    _m("load_balance_no_scale", "losses", "moh/losses.py",
       'per_term["load_balance"].append(Hb / mean_k * (f * P).sum())',
       'per_term["load_balance"].append(1 / mean_k * (f * P).sum())',
       "the balanced load-balance value is 1/H instead of 1", LOSSES_T),
    _m("z_not_squared", "losses", "moh/losses.py",
       "_masked_sum(torch.logsumexp(r.logits, -1) ** 2, w)",
       "_masked_sum(torch.logsumexp(r.logits, -1), w)",
       "the z-loss is the mean logsumexp, not its square", LOSSES_T),
    _m("complexity_over_h", "losses", "moh/losses.py",
       'per_term["complexity"].append(flat[pos] / n / H**2)',
       'per_term["complexity"].append(flat[pos] / n / H)',
       "the complexity term is H times too large", LOSSES_T),
    _m("budget_abs", "losses", "moh/losses.py",
       'per_term["budget"].append(((mean_count - cfg.target_heads) / H) ** 2)',
       'per_term["budget"].append(abs((mean_count - cfg.target_heads) / H))',
       "the budget term is |gap| / H, not its square", LOSSES_T),
    _m("aux_counts_padding", "losses", "moh/losses.py",
       "    return (x * w).sum()", "    return x.sum()",
       "z, complexity and count sums include padding tokens", LOSSES_T),
    _m("aux_sum_over_layers", "losses", "moh/losses.py",
       "return {t: (torch.stack(v).mean() if v else None) for t, v in per_term.items()}",
       "return {t: (torch.stack(v).sum() if v else None) for t, v in per_term.items()}",
       "aux terms are summed over layers, not averaged", LOSSES_T),
    _m("weights_ignored", "losses", "moh/losses.py",
       "parts = [getattr(cfg, WEIGHT_KEYS[t]) * v for t, v in aux.items() if v is not None]",
       "parts = [v for t, v in aux.items() if v is not None]",
       "aux weights ignored: every term at weight 1", LOSSES_T),
    # ---- optimizer, schedule, clipping ---------------------------------------------------------
    _m("lr_times_1e-6", "lr", "moh/optim.py",
       '        g["lr"] = lr * g["lr_mult"]', '        g["lr"] = lr * g["lr_mult"] * 1e-6',
       "the learning rate is multiplied by 1e-6: nothing learns", OPTIM_T),
    _m("clip_clamp_min", "clipping", "moh/optim.py",
       "scale = (max_norm / (total + 1e-6)).clamp(max=1.0)",
       "scale = (max_norm / (total + 1e-6)).clamp(min=1.0)",
       "clipping scales small gradients up to the clip norm and leaves large ones", OPTIM_T),
    _m("clip_returns_pre_norm", "clipping", "moh/optim.py",
       "    return total * scale", "    return total",
       "the logged post-clip norm is the pre-clip one", OPTIM_T),
    _m("grad_norm_sum_of_norms", "clipping", "moh/optim.py",
       "sq = torch.stack([torch.linalg.vector_norm(t.float()) ** 2 for t in grads]).sum()",
       "sq = torch.stack([torch.linalg.vector_norm(t.float()) for t in grads]).sum()",
       "the total gradient norm adds norms instead of squares", OPTIM_T),
    _m("adam_beta1_swapped", "optimizer", "moh/optim.py",
       "torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)",
       "torch._foreach_lerp_(exp_avgs, grads, beta1)",
       "AdamW's first moment keeps 10% of its history instead of 90%", OPTIM_T),
    _m("warmup_skipped", "lr", "moh/optim.py",
       "    if step < warmup:", "    if step < 0:",
       "no warmup: the first steps run at the peak learning rate", OPTIM_T),
    # ---- the training step -----------------------------------------------------------------------
    _m("no_clipping_in_train", "clipping", "moh/train.py",
       "clipped = clip_(params, norm, cfg.grad_clip)", "clipped = norm",
       "gradients are never clipped (and the log says so)", TRAIN_T),
    _m("log_post_clip_as_pre", "clipping", "moh/train.py",
       '"grad_norm": _f(norm), "grad_norm_clipped"', '"grad_norm": _f(clipped), "grad_norm_clipped"',
       "the logged grad_norm is the post-clip norm (the clip hides every spike)", TRAIN_T),
    _m("aux_not_in_loss", "losses", "moh/train.py",
       "loss = lm_loss if aux_total is None else lm_loss + aux_total",
       "loss = lm_loss",
       "the auxiliary losses are logged but never trained on", TRAIN_T),
    _m("no_optimizer_step", "optimizer", "moh/train.py",
       "                opt.step()\n", "                pass\n",
       "the optimizer never steps: the weights never change", TRAIN_T),
]

MUTANTS: list[Mutant] = ENGINE
