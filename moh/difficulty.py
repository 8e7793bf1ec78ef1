"""Stop-gradient difficulty targets for the adaptive router's complexity predictor.

By default (`complexity_target = "heads"`) the complexity term teaches kappa the head count the
hard mask used, and that mask was cut by kappa itself: the predictor learns to predict its own
output, and nothing in the objective says which tokens are hard (docs/routing.md, "Allocation
that tracks difficulty"). The alternatives here give kappa a target that comes from the model's
prediction of the token instead:

    loss_rank     the token's next-token cross-entropy
    entropy_rank  the entropy (nats) of the model's predictive distribution for that token

Each signal is turned into its rank quantile u in [0, 1] within the batch (ties share their
average rank), so its scale, which falls by orders of magnitude during training, does not
matter, and then into a budget in heads

    kappa* = k_min + 2 (target_heads - k_min - 1/2) u

whose head count ceil(kappa*) averages target_heads over the batch (defaults: kappa* from 1 to
5, counts 1..5, mean 3.5): the target asks the predictor to move heads from easy to hard
tokens, not to use more of them. The signal comes, detached, from the softmax the LM loss already
made (moh/token_loss.py: the per-token loss, or the entropy); the complexity term's gradient
reaches the predictor only through kappa, never the LM head through the target.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import native
from .alignment import average_ranks
from .distributed import gather_columns

TARGETS = ("heads", "loss_rank", "entropy_rank")  # config complexity_target


def rank_quantiles(x: torch.Tensor) -> torch.Tensor:
    """Ranks of x (N,) scaled to [0, 1] (lowest 0, highest 1, ties averaged); a single token
    gets 0.5, the middle, since there is nothing to rank it against."""
    n = x.shape[-1]
    if n < 2:
        return torch.full_like(x, 0.5, dtype=torch.float32)
    return (average_ranks(x) / (n - 1)).float()  # the ranks in one C pass where moh/native.c runs


def budget_target(u: torch.Tensor, k_min: float, target_heads: float, n_heads: int) -> torch.Tensor:
    """kappa* = k_min + 2 max(target_heads - k_min - 1/2, 0) u, kept inside [k_min, n_heads].

    The mask keeps the ranks j < kappa, ceil(kappa) heads, so for u uniform on [0, 1] the count
    ceil(kappa*) averages target_heads (k_min integer): the target alone meets the budget, and
    the threshold need not cut heads regardless of difficulty to get there."""
    return (k_min + budget_span(k_min, target_heads) * u).clamp(k_min, float(n_heads))


def budget_span(k_min: float, target_heads: float) -> float:
    """budget_target's 2 max(target_heads - k_min - 1/2, 0): kappa* runs from k_min to k_min + this."""
    return 2.0 * max(target_heads - k_min - 0.5, 0.0)


def quantiles_at(signal: torch.Tensor, has_target: torch.Tensor) -> torch.Tensor:
    """(B, T) rank quantile of `signal` (N,), the raw difficulty of the positions of has_target
    (B, T) in row-major order (LM.forward has it from moh/token_loss.py), NaN elsewhere."""
    s = signal.detach() if signal.requires_grad else signal  # (no no-op calls: ~5 us each in a step)
    s = s if s.dtype == torch.float32 else s.float()
    kernels = native.for_tensors(s) if not _data_parallel() else None
    if kernels is not None:  # rank_quantiles and the masked copy in one C pass (the same bits)
        has = has_target if has_target.is_contiguous() else has_target.contiguous()
        s = s if s.is_contiguous() else s.contiguous()
        n = s.shape[0]
        out = torch.empty(has.shape)
        scratch = torch.empty(3 * n, dtype=torch.int64)  # the ranks' sort buffers and the ranks (float64)
        at = scratch.data_ptr()
        kernels.rank_quantiles_at(has.numel(), has.data_ptr(), n, s.data_ptr(), at, at + 8 * n, at + 16 * n,
                                  out.data_ptr())
        return out
    out = torch.full(has_target.shape, float("nan"), dtype=torch.float32, device=signal.device)
    out[has_target] = job_rank_quantiles(s)
    return out


def _data_parallel() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def job_rank_quantiles(x: torch.Tensor) -> torch.Tensor:
    """rank_quantiles over the whole job's batch: under data parallelism every rank's values are
    gathered (with the rank that owns each) and ranked together, so a 2-rank run trains toward
    the 1-rank run's targets; the identity of rank_quantiles in one process. A collective: every
    rank must call it on every training step (LM.forward does, in training mode only)."""
    if not _data_parallel():
        return rank_quantiles(x)
    me = float(dist.get_rank())
    table = gather_columns(torch.stack([x.float(), torch.full_like(x, me, dtype=torch.float32)]))
    return rank_quantiles(table[0])[table[1] == me]
