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
LOSSES_T = (KNOWN, "tests/moh/test_routing.py", "tests/moh/test_losses_fast.py", LEARN)
# the C kernels: what the engine runs (and each test module that compares them with torch)
NATIVE_ROUTING_T = (KNOWN, "tests/moh/test_routing_fast.py", "tests/moh/test_native.py")  # KNOWN: native_select
NATIVE_LOSSES_T = (KNOWN, "tests/moh/test_losses_fast.py", "tests/moh/test_difficulty.py", "tests/moh/test_native.py")
MOH_T = (KNOWN, "tests/moh/test_routing_sources.py", "tests/moh/test_routing.py", LEARN)
OPTIM_T = (KNOWN, "tests/moh/test_optim.py", LEARN)
TRAIN_T = (KNOWN, LEARN, "tests/moh/test_train.py")
# the fast reliability tests: a kill that always lands between two checkpoints, and SIGINT/SIGTERM
# mid-epoch (the signal's checkpoint), each resumed against the uninterrupted run
RESUME_T = ("tests/moh/test_reliability.py",)


def _m(id, kind, file, original, replacement, breaks, tests, equivalent=""):
    return Mutant(id, kind, file, original, replacement, breaks, tuple(tests), equivalent)


ENGINE = [
    # ---- routing: the hard mask, the budget, the surrogate ------------------------------------
    _m("budget_rank_le", "budget", "moh/route_fast.py",
       "    hard_sorted = (cum_excl < tau_) & (rank < kappa_)",
       "    hard_sorted = (cum_excl < tau_) & (rank <= kappa_)",
       "the model's head budget keeps one head too many at integer kappa", ROUTING_T),
    _m("budget_rank_le_reference", "budget", "moh/routing.py",
       "\n    hard_sorted = (cum_excl < tau_) & (rank < kappa_)",
       "\n    hard_sorted = (cum_excl < tau_) & (rank <= kappa_)",
       "the reference select_heads keeps one head too many at integer kappa", ROUTING_T),
    _m("threshold_cum_le", "threshold", "moh/route_fast.py",
       "    hard_sorted = (cum_excl < tau_) & (rank < kappa_)",
       "    hard_sorted = (cum_excl <= tau_) & (rank < kappa_)",
       "a head whose exclusive cumulative probability equals tau is kept", ROUTING_T),
    _m("no_forced_first_head", "selection", "moh/route_fast.py",
       "    hard_sorted[..., 0] = True  # at least one head",
       "    hard_sorted[..., 0] = hard_sorted[..., 0]  # at least one head",
       "a token can end up with no head at all", ROUTING_T),
    _m("ascending_selection", "selection", "moh/route_fast.py",
       "    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)",
       "    sorted_p, order = probs.sort(dim=-1, descending=False, stable=True)",
       "the least probable heads are taken first", ROUTING_T),
    _m("surrogate_budget_offset", "gradient", "moh/route_fast.py",
       "    b = torch.sigmoid((kappa_ - rank - half) / t2_)  # budget factor",
       "    b = torch.sigmoid((kappa_ - rank + half) / t2_)  # budget factor",
       "the surrogate's budget factor is centred one rank late", ROUTING_T),
    _m("surrogate_temperature_times", "gradient", "moh/route_fast.py",
       "dz1 = torch.ops.aten.sigmoid_backward(gs * b, a) / t1_",
       "dz1 = torch.ops.aten.sigmoid_backward(gs * b, a) * t1_",
       "the threshold gradient is scaled by T1^2 (100x too small at T1 = 0.1)", ROUTING_T),
    _m("cumsum_gradient_sign", "gradient", "moh/route_fast.py",
       "g_probs = -minus_gp if g_probs is None else g_probs - minus_gp",
       "g_probs = minus_gp if g_probs is None else g_probs + minus_gp",
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
    # ---- the moh router (Jin et al.; released-code arithmetic by default) ---------------------------
    _m("moh_topk_one_fewer", "selection", "moh/routing.py",
       "top = probs.topk(k, dim=-1).indices", "top = probs.topk(k - 1, dim=-1).indices",
       "moh routes one head fewer than moh_topk", MOH_T),
    _m("moh_released_no_times_k", "gates", "moh/routing.py",
       "torch.finfo(routed_gates.dtype).eps) * k", "torch.finfo(routed_gates.dtype).eps)",
       "released routed gates sum to 1 instead of k", MOH_T),
    _m("moh_released_shared_not_scaled", "gates", "moh/routing.py",
       "shared_gates, a = shared_gates * Hs, a * 2", "shared_gates, a = shared_gates, a * 2",
       "released shared gates sum to 1 instead of Hs", MOH_T),
    _m("moh_type_weights_swapped", "gates", "moh/routing.py",
       "a[..., :1] * shared_gates, a[..., 1:] * routed_gates", "a[..., 1:] * shared_gates, a[..., :1] * routed_gates",
       "the shared heads get the routed type weight and vice versa", MOH_T),
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
       "balance = Hb_ * (f * P).sum()", "balance = (f * P).sum()",
       "the balanced load-balance value is 1/H instead of 1", LOSSES_T),
    _m("balance_per_k_inverted", "losses", "moh/losses.py",
       "append(balance / mean_k if lay.per_k else balance)",
       "append(balance if lay.per_k else balance / mean_k)",
       "the Switch form and the released MoH form of the balance swapped", LOSSES_T),
    _m("entropy_sign", "losses", "moh/losses.py",
       "ent = -(p * p.clamp_min(1e-12).log()).sum(-1)", "ent = (p * p.clamp_min(1e-12).log()).sum(-1)",
       "the entropy term is negative: minimising it flattens the router", LOSSES_T),
    _m("z_not_squared", "losses", "moh/losses.py",
       "_masked_sum(lse ** 2, w)",
       "_masked_sum(lse, w)",
       "the z-loss is the mean logsumexp, not its square", LOSSES_T),
    _m("complexity_over_h", "losses", "moh/losses.py",
       'per_term["complexity"].append(flat[pos] / flat[pos + 3].clamp_min(1.0) / H2_)',
       'per_term["complexity"].append(flat[pos] / flat[pos + 3].clamp_min(1.0) / H_)',
       "the complexity term is H times too large", LOSSES_T),
    _m("budget_abs", "losses", "moh/losses.py",
       'per_term["budget"].append(((mean_count - th_) / H_) ** 2)',
       'per_term["budget"].append(abs((mean_count - th_) / H_))',
       "the budget term is |gap| / H, not its square", LOSSES_T),
    _m("aux_counts_padding", "losses", "moh/losses.py",
       "    return (x * w).sum()", "    return x.sum()",
       "z, complexity and count sums include padding tokens", LOSSES_T),
    _m("aux_sum_over_layers", "losses", "moh/losses.py",
       "return [torch.stack(v).mean() for v in per_term.values() if v]",
       "return [torch.stack(v).sum() for v in per_term.values() if v]",
       "aux terms are summed over layers, not averaged", LOSSES_T),
    _m("weights_ignored", "losses", "moh/losses.py",
       "parts = [getattr(cfg, WEIGHT_KEYS[t]) * v for t, v in aux.items() if v is not None]",
       "parts = [v for t, v in aux.items() if v is not None]",
       "aux weights ignored: every term at weight 1", LOSSES_T),
    # ---- the CPU kernels (moh/native.c) and the aux terms on floats: what the engine runs ------
    _m("native_budget_rank_le", "budget", "moh/native.c",
       "uint8_t keep = j == 0 || (cum[j] < ti && (float)j < ki);",
       "uint8_t keep = j == 0 || (cum[j] < ti && (float)j <= ki);",
       "the C kernel's head budget keeps one head too many at integer kappa", NATIVE_ROUTING_T),
    _m("native_threshold_cum_le", "threshold", "moh/native.c",
       "uint8_t keep = j == 0 || (cum[j] < ti && (float)j < ki);",
       "uint8_t keep = j == 0 || (cum[j] <= ti && (float)j < ki);",
       "the C kernel keeps a head whose exclusive cumulative probability equals tau", NATIVE_ROUTING_T),
    _m("native_no_forced_first_head", "selection", "moh/native.c",
       "uint8_t keep = j == 0 || (cum[j] < ti && (float)j < ki);",
       "uint8_t keep = (cum[j] < ti && (float)j < ki);",
       "the C kernel can leave a token with no head", NATIVE_ROUTING_T),
    _m("native_ascending_sort", "selection", "moh/native.c",
       "while (j > 0 && p[order[j - 1]] < p[i]) {", "while (j > 0 && p[order[j - 1]] > p[i]) {",
       "the C kernel takes the least probable heads first", NATIVE_ROUTING_T),
    _m("native_surrogate_budget_offset", "gradient", "moh/native.c",
       "float b = sigmoidf_((kappa[i] - (float)j - 0.5f) / t2);",
       "float b = sigmoidf_((kappa[i] - (float)j + 0.5f) / t2);",
       "the C backward's budget factor is centred one rank late", NATIVE_ROUTING_T),
    _m("native_cumsum_gradient_sign", "gradient", "moh/native.c",
       "gp[order[j]] -= tail;", "gp[order[j]] += tail;",
       "the C backward's gradient through the cumulative probability has the wrong sign", NATIVE_ROUTING_T),
    _m("native_clamp_gradient_everywhere", "gradient", "moh/native.c",
       "float gtk = tau_kept[i] ? gt * span_t : 0.0f;", "float gtk = gt * span_t;",
       "the C backward passes the threshold gradient where the clamp cut tau", NATIVE_ROUTING_T),
    _m("native_z_not_squared", "losses", "moh/native.c",
       "z += wi * (double)lse[i] * (double)lse[i];", "z += wi * (double)lse[i];",
       "the C sums' z-loss is the mean logsumexp, not its square", NATIVE_LOSSES_T),
    _m("native_complexity_counts_padding", "losses", "moh/native.c",
       "w_c[i] = w[i] * (float)has;", "w_c[i] = w[i];",
       "the complexity target counts tokens that have no difficulty (no next-token target)", NATIVE_LOSSES_T),
    _m("native_rank_ties_first", "difficulty", "moh/native.c",
       "double r = ((double)start + (double)end) / 2.0;",
       "double r = (double)start;",
       "tied difficulties take the lowest rank, not the mean of theirs", NATIVE_LOSSES_T),
    _m("floats_budget_abs", "losses", "moh/losses.py",
       'per_term["budget"].append(((flat[pos + 1] / n - target_heads) / H) ** 2)',
       'per_term["budget"].append(abs((flat[pos + 1] / n - target_heads) / H))',
       "the CPU path's budget term is |gap| / H, not its square", NATIVE_LOSSES_T),
    _m("floats_z_gradient_unscaled", "losses", "moh/losses.py",
       "grad += [0.0] * Hb + [scale * fi for fi in f] + [gl[\"z\"] / n]",
       "grad += [0.0] * Hb + [scale * fi for fi in f] + [gl[\"z\"]]",
       "the CPU path's z-loss gradient misses its 1/n", NATIVE_LOSSES_T),
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
       "sq = torch.stack(torch._foreach_norm(grads)).square().sum()",
       "sq = torch.stack(torch._foreach_norm(grads)).sum()",
       "the total gradient norm adds norms instead of squares", OPTIM_T),
    _m("adam_beta1_swapped", "optimizer", "moh/optim.py",
       'lr=g["lr"], beta1=beta1,',
       'lr=g["lr"], beta1=1 - beta1,',
       "AdamW's first moment keeps 10% of its history instead of 90%", OPTIM_T),
    _m("warmup_skipped", "lr", "moh/optim.py",
       "    if step < warmup:", "    if step < 0:",
       "no warmup: the first steps run at the peak learning rate", OPTIM_T),
    # ---- the training step -----------------------------------------------------------------------
    _m("no_clipping_in_train", "clipping", "moh/train.py",
       "clipped = clip_(params, norm, cfg.grad_clip)", "clipped = norm",
       "gradients are never clipped (and the log says so)", TRAIN_T),
    _m("log_post_clip_as_pre", "clipping", "moh/monitor/recorder.py",
       "grad_norm=_float(norm), grad_norm_clipped=", "grad_norm=_float(grad_norm_clipped), grad_norm_clipped=",
       "the logged grad_norm is the post-clip norm (the clip hides every spike)", TRAIN_T),
    _m("aux_not_in_loss", "losses", "moh/train.py",
       "loss = lm_loss if aux_total is None else lm_loss + aux_total",
       "loss = lm_loss",
       "the auxiliary losses are logged but never trained on", TRAIN_T),
    _m("resume_skips_a_batch", "resume", "moh/train.py",
       "skip = start_batch if epoch == start_epoch else 0", "skip = start_batch + 1 if epoch == start_epoch else 0",
       "a resumed run skips one batch after the checkpoint (silently off the uninterrupted curve)", RESUME_T),
    _m("checkpoint_position_late", "resume", "moh/train.py",
       "nxt = (epoch, b + 1) if b + 1 < len(batches) else (epoch + 1, 0)",
       "nxt = (epoch, b + 2) if b + 2 < len(batches) else (epoch + 1, 0)",
       "checkpoints record a position one batch past the step they hold", RESUME_T),
    _m("no_optimizer_step", "optimizer", "moh/train.py",
       "                opt.step()\n", "                pass\n",
       "the optimizer never steps: the weights never change", TRAIN_T),
]

RULES_T = ("tests/analyze/test_thresholds.py", "tests/analyze/test_findings.py")
CRITERIA_T = ("tests/analyze/test_criteria_thresholds.py", "tests/analyze/test_criteria.py")
RUST_PARSE = "analyze/rustgpt/parse.py"
RUST_T = ("tests/analyze/test_rustgpt.py", "tests/analyze/test_findings.py", "tests/analyze/test_criteria.py")
G, HD, LS, PR, ST = ("analyze/rules/gradients.py", "analyze/rules/heads.py", "analyze/rules/loss.py",
                     "analyze/rules/predictors.py", "analyze/rules/statistics.py")

FINDINGS = [
    # ---- thresholds moved (the survivors first) ---------------------------------------
    _m("load_cv_0.8", "threshold_move", HD, "LOAD_CV_MAX = 0.5 ", "LOAD_CV_MAX = 0.8 ",
       "load_imbalance only above a CV of 0.8", RULES_T),
    _m("dead_share_0.01", "threshold_move", HD, "DEAD_HEAD_SHARE = 0.1 ", "DEAD_HEAD_SHARE = 0.01 ",
       "a head is dead only below 1/(100 H) of the load", RULES_T),
    _m("loss_drop_3pct", "threshold_move", LS, "LOSS_MIN_REL_DROP = 0.10", "LOSS_MIN_REL_DROP = 0.03",
       "a phase whose loss falls 3-10% counts as learning", RULES_T),
    _m("collapse_fraction_0.5", "threshold_move", HD, "HEAD_COLLAPSE_FRACTION = 0.9", "HEAD_COLLAPSE_FRACTION = 0.5",
       "head_collapse on half the final window", RULES_T),
    _m("head_window_0.5", "threshold_move", HD, "HEAD_WINDOW_FRACTION = 0.2 ", "HEAD_WINDOW_FRACTION = 0.5 ",
       "the head rules judge the final half of the run, not the final fifth", RULES_T),
    _m("aux_share_0.5", "threshold_move", PR, "AUX_SHARE_MAX = 0.3 ", "AUX_SHARE_MAX = 0.5 ",
       "aux_dominates only above 50% of the loss", RULES_T),
    _m("spike_factor_20", "threshold_move", G, "GRAD_SPIKE_FACTOR = 10.0 ", "GRAD_SPIKE_FACTOR = 20.0 ",
       "a gradient spike must be 20x the recent median", RULES_T),
    _m("spike_error_factor_1000", "threshold_move", G, "GRAD_SPIKE_ERROR_FACTOR = 100.0",
       "GRAD_SPIKE_ERROR_FACTOR = 1000.0", "a 100-1000x spike is only a warning", RULES_T),
    _m("grad_target_5", "threshold_move", G, 'GRAD_TARGET = default_target("grad_norm")[1]',
       'GRAD_TARGET = 2 * default_target("grad_norm")[1]',
       "spikes up to 5 are called harmless", RULES_T),
    _m("grad_zero_rtol_1e-6", "threshold_move", G, "GRAD_ZERO_RTOL = 1e-8 ", "GRAD_ZERO_RTOL = 1e-6 ",
       "a routing gradient 100x above float32 noise counts as zero", RULES_T),
    _m("diverge_factor_2", "threshold_move", LS, "LOSS_DIVERGE_FACTOR = 1.5 ", "LOSS_DIVERGE_FACTOR = 2.0 ",
       "a loss ending 50-100% above its best is not divergence", RULES_T),
    _m("diverge_rise_0.01", "threshold_move", LS, "LOSS_DIVERGE_MIN_RISE = 0.1 ", "LOSS_DIVERGE_MIN_RISE = 0.01 ",
       "tiny-loss noise (+0.01 nats) counts as divergence", RULES_T),
    _m("zero_atol_1e-9", "threshold_move", "analyze/rules/base.py", "ZERO_ATOL = 1e-12 ", "ZERO_ATOL = 1e-9 ",
       "values up to 1e-9 count as a placeholder 0", RULES_T),
    _m("constant_rtol_1e-6", "threshold_move", ST, "CONSTANT_RTOL = 1e-7 ", "CONSTANT_RTOL = 1e-6 ",
       "a stat moving by several float32 steps counts as constant", RULES_T),
    _m("redundant_slack_15", "threshold_move", ST, "REDUNDANT_SLACK = 1.5 ", "REDUNDANT_SLACK = 15.0 ",
       "deviations 10x the rounding bound still count as an exact restatement", RULES_T),
    _m("loss_tail_share_0.2", "threshold_move", LS, "LOSS_TAIL_SHARE = 0.10", "LOSS_TAIL_SHARE = 0.20",
       "a phase still giving 10-20% of its progress in its last tenth counts as converged", RULES_T),
    _m("degenerate_fraction_0.4", "threshold_move", ST, "DEGENERATE_WARN_FRACTION = 0.5 ",
       "DEGENERATE_WARN_FRACTION = 0.4 ", "min == max on 40% of the steps is already a fault", RULES_T),
    _m("clip_saturated_0.6", "threshold_move", G, "CLIP_SATURATED_FRACTION = 0.5 ", "CLIP_SATURATED_FRACTION = 0.6 ",
       "a norm pinned at the clip on 50-60% of the steps is only info", RULES_T),
    _m("clip_warn_ratio_1.5", "threshold_move", G, "CLIP_WARN_MEDIAN_RATIO = 2.0", "CLIP_WARN_MEDIAN_RATIO = 1.5",
       "a clip that trims the median step by a third already warns", RULES_T),
    _m("clip_info_0.1", "threshold_move", G, "CLIP_INFO_FRACTION = 0.25", "CLIP_INFO_FRACTION = 0.10",
       "occasional clipping (10-25% of the steps) is reported", RULES_T),
    # ---- severities downgraded ------------------------------------------------------------------
    _m("router_grad_zero_never_error", "severity", G, 'sev = "error" if nz == n else "warning"',
       'sev = "warning"', "a router that never gets a gradient is only a warning", RULES_T),
    _m("spike_never_error", "severity", G, 'sev = "error" if worst >= GRAD_SPIKE_ERROR_FACTOR else "warning"',
       'sev = "warning"', "a 100x gradient spike is only a warning", RULES_T),
    _m("nonfinite_never_error", "severity", LS, 'sev = "error" if (failed or last_bad or unskipped) else "warning"',
       'sev = "warning"', "unskipped NaN steps (corrupted weights) are only a warning", RULES_T),
    _m("silent_zero_warning", "severity", ST, '"silent_zero", "error", li,', '"silent_zero", "warning", li,',
       "a placeholder 0 statistic is only a warning", RULES_T),
    _m("redundant_stat_warning", "severity", ST, '"redundant_stat", "error", li,', '"redundant_stat", "warning", li,',
       "a stat restating another is only a warning", RULES_T),
    _m("degenerate_never_error", "severity", ST, 'sev = "error" if frac == 1.0 else "warning"',
       'sev = "warning"', "a stat with min == max on every step is only a warning", RULES_T),
    _m("head_collapse_info", "severity", HD, '"head_collapse", "warning", li,', '"head_collapse", "info", li,',
       "collapsed routing is only info", RULES_T),
    _m("vacuous_aux_always_warning", "severity", PR, '"vacuous_aux", "info" if off else "warning", None,',
       '"vacuous_aux", "warning", None,', "a switched-off aux term is reported as a fault", RULES_T),
    # ---- formulas ---------------------------------------------------------------------------------
    _m("load_cv_sample_std", "formula", HD, "cv = float(r.std() / r.mean())", "cv = float(r.std(ddof=1) / r.mean())",
       "the CV of head loads uses the sample std (inflated for few heads)", RULES_T),
    _m("dead_share_of_max", "formula", HD, "share = v / v.sum()", "share = v / v.max()",
       "a head's share measured against the busiest head, not the total", RULES_T),
]

CRITERIA = [
    _m("criterion_loss_0.45", "threshold_move", "analyze/default_criteria.toml",
       "target = { max = 0.40 }", "target = { max = 0.45 }", "the loss target loosened to 0.45", CRITERIA_T),
    _m("criterion_heads_max_4.5", "threshold_move", "analyze/default_criteria.toml",
       "target = { min = 3.0, max = 4.0 }", "target = { min = 3.0, max = 4.5 }",
       "average heads up to 4.5 pass", CRITERIA_T),
    _m("criterion_heads_min_2.5", "threshold_move", "analyze/default_criteria.toml",
       "target = { min = 3.0, max = 4.0 }", "target = { min = 2.5, max = 4.0 }",
       "average heads down to 2.5 pass", CRITERIA_T),
    _m("criterion_grad_3", "threshold_move", "analyze/default_criteria.toml",
       "target = { max = 2.5 }", "target = { max = 3.0 }", "gradient norms up to 3 pass", CRITERIA_T),
    _m("criterion_exact_match_0.85", "threshold_move", "analyze/default_criteria.toml",
       "target = { min = 0.9 }", "target = { min = 0.85 }", "85% exact match passes", CRITERIA_T),
    _m("criterion_threshold_max_0.85", "threshold_move", "analyze/default_criteria.toml",
       "target = { min = 0.3, max = 0.8 }", "target = { min = 0.3, max = 0.85 }",
       "thresholds up to 0.85 pass", CRITERIA_T),
    _m("criterion_complexity_max_1.01", "threshold_move", "analyze/default_criteria.toml",
       "target = { min = 0.0, max = 1.0 }", "target = { min = 0.0, max = 1.01 }",
       "complexity above 1 passes", CRITERIA_T),
    _m("criterion_min_change_1e-5", "threshold_move", "analyze/default_criteria.toml",
       "min_change = 1e-6", "min_change = 1e-5", "a predictor moving by 1e-5 counts as not learning", CRITERIA_T),
    _m("criterion_window_n_5", "window", "analyze/default_criteria.toml",
       "[defaults]\nn = 50", "[defaults]\nn = 5", "\"last\" windows average 5 steps, not 50", CRITERIA_T),
    _m("criteria_tolerance_1e-2", "threshold_move", "analyze/criteria_spec.py", "_TOL = 1e-6", "_TOL = 1e-2",
       "targets missed by up to 1% pass", CRITERIA_T),
    _m("criteria_max_strict", "boundary", "analyze/criteria.py",
       "ok &= hi <= c.target_max + _tol(c.target_max)", "ok &= hi < c.target_max - _tol(c.target_max)",
       "a value exactly at the upper target fails", CRITERIA_T),
    _m("criteria_last_is_first", "window", "analyze/criteria.py",
       "tail = values[-c.n:]", "tail = values[:c.n]", "\"last n\" averages the first n steps", CRITERIA_T),
    _m("criteria_fail_becomes_warn", "severity", "analyze/criteria.py",
       'if status == "fail" and c.severity == "warn":', 'if status == "fail":',
       "every failed criterion is downgraded to a warning", CRITERIA_T),
    _m("verdict_ignores_fail", "severity", "analyze/criteria.py",
       'if any(r.status == "fail" for r in results):', 'if any(r.status == "error" for r in results):',
       "a failed criterion no longer fails the verdict", CRITERIA_T),
]

RUST = [
    _m("rust_heads_hard_count", "semantics", RUST_PARSE,
       '"heads": schema.HEADS_SOFT_WEIGHT_SUM,', '"heads": schema.HEADS_HARD_COUNT,',
       "the Rust log's soft-weight sums are presented as head counts", RUST_T),
    _m("rust_grad_pre_clip", "semantics", RUST_PARSE,
       '"grad_norm": schema.GRAD_NORM_POST_CLIP,', '"grad_norm": schema.GRAD_NORM_PRE_CLIP,',
       "the Rust log's post-clip norms are presented as pre-clip", RUST_T),
    _m("rust_grad_per_step", "semantics", RUST_PARSE,
       '"grad_norm_reduction": "epoch_mean",', '"grad_norm_reduction": "per_step",',
       "epoch means of the gradient norm are presented as per-step values", RUST_T),
    _m("rust_clip_1", "semantics", "analyze/rustgpt/text.py", "CLIP_VALUE = 100.0 ", "CLIP_VALUE = 1.0 ",
       "the Rust trainer's clip value is taken as 1", RUST_T),
    _m("rust_heads_threshold_swapped", "semantics", RUST_PARSE,
       "heads_mean=vals[0],\n                                           threshold_mean=vals[1]",
       "heads_mean=vals[1],\n                                           threshold_mean=vals[0]",
       "h and p of 'L1: 4.70h@0.55p' read the wrong way round", RUST_T),
    _m("rust_lm_loss_is_loss", "semantics", RUST_PARSE,
       'loss=rec["loss"], lm_loss=None,', 'loss=rec["loss"], lm_loss=rec["loss"],',
       "the Rust loss (which includes the load-balance term) is presented as the LM loss", RUST_T),
    _m("rust_no_model_wide", "semantics", RUST_PARSE,
       '"model_wide_stats": model_wide,', '"model_wide_stats": [],',
       "model-wide complexity/pred_norm are not declared: criteria and findings cannot use them", RUST_T),
]

EQUIVALENT = [
    _m("mean_k_clamp_1e-7", "equivalent", "moh/losses.py",
       "mean_k = f.sum().clamp_min(1e-6)", "mean_k = f.sum().clamp_min(1e-7)",
       "the load-balance denominator's guard moves", LOSSES_T,
       equivalent="f.sum() is the mean head count per token, >= 1 whenever a token exists (every token "
                  "keeps at least one head, moh keeps k >= 1 routed ones); with no token f = 0 and the "
                  "term is 0 either way"),
    _m("token_count_clamp_0.5", "equivalent", "moh/losses.py",
       "    n = flat[0].clamp_min(1.0)\n    per_term", "    n = flat[0].clamp_min(0.5)\n    per_term",
       "the token-count guard moves", LOSSES_T,
       equivalent="the count of real tokens is an integer: it is 0 (then every sum divided by it is 0 "
                  "as well) or >= 1 (the guard does nothing)"),
]

MUTANTS: list[Mutant] = ENGINE + FINDINGS + CRITERIA + RUST + EQUIVALENT
