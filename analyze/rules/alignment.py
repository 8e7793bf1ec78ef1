"""Rules on whether the allocation tracks difficulty: the fully adaptive router's premise is
that harder tokens get more heads. The engine measures it on every logged step (per layer:
Spearman rank correlation over the step's tokens between each token's complexity, or head
count, and its LM loss; moh/alignment.py). A log written before those fields, or by a router
without complexity, has nothing to judge: no finding (the report shows n/a).
"""

from __future__ import annotations

import numpy as np

from .base import Finding, evidence, short
from .context import Context
from .heads import HEAD_WINDOW_FRACTION, final_values
from .registry import routing_rule

# Late-run mean Spearman(complexity, token loss) below this: complexity does not track
# difficulty. 0.3 is the customary lower edge of a "moderate" rank correlation: below it,
# ordering tokens by complexity orders them by loss little better than chance. Default runs
# (the complexity predictor trained toward its own head count, complexity_target = "heads")
# measure -0.32..+0.23 per layer over the final fifth and the rule fires on all of them: a true
# finding about that objective; with complexity_target = "entropy_rank" (weight 1.0) +0.44..+0.87
# (3 seeds x 2 corpora, docs/routing.md) and it fires on none. Not re-tuned: the two populations
# fall either side of it.
COMPLEXITY_MIN_CORR = 0.3


@routing_rule
def complexity_uninformative(ctx: Context) -> list[Finding]:
    """Per-token complexity does not track per-token difficulty over the final window."""
    heads = {li: v for li, _, v in ctx.series("heads_loss_corr")}
    steps_of = {li: st for li, st, _ in ctx.series("complexity_loss_corr")}
    out = []
    for li, w, st, c in final_values(ctx, "complexity_loss_corr"):
        mean = float(c.mean())
        ctx.margin("complexity_uninformative", "late mean Spearman(complexity, token loss)", mean,
                   COMPLEXITY_MIN_CORR, "<", layer=li)
        if mean >= COMPLEXITY_MIN_CORR:
            continue
        h = heads.get(li)
        h_mean = None
        if h is not None and np.isfinite(h[w]).any():
            h_mean = float(np.nanmean(h[w]))
        also = "" if h_mean is None else f"; head count vs loss {short(h_mean)}"
        out.append(Finding(
            "complexity_uninformative", "warning", li,
            f"layer {li}: per-token complexity does not track difficulty: mean Spearman(complexity, "
            f"token LM loss) {short(mean)} over the final {short(100 * HEAD_WINDOW_FRACTION)}% of the run "
            f"({len(c)} logged steps) < {short(COMPLEXITY_MIN_CORR)}{also}",
            evidence(st, c, mean=mean, threshold=COMPLEXITY_MIN_CORR, heads_loss_corr_mean=h_mean,
                     window_first_step=int(steps_of[li][w][0]), window_last_step=int(steps_of[li][w][-1])),
            "the budget follows something other than the token's difficulty: train the complexity "
            "predictor on a difficulty signal (e.g. the token's loss), not only on the heads it was "
            "given; until then adaptive routing saves heads without choosing where"))
    return out
