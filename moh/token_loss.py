"""Next-token cross-entropy per token, with the predictive entropy, in one autograd node.

What `F.cross_entropy(logits, targets, reduction="none")` computes, and its gradient, plus
what the difficulty targets (moh/difficulty.py) and the loss alignment (moh/alignment.py)
need from the same logits:

    loss_t    = -log p_t[y_t]                  (N,) the LM loss of each target token
    entropy_t = -sum_v p_t[v] log p_t[v]       (N,) nats, on request, no gradient

Why by hand: autograd's log_softmax + nll_loss computes exp(log p) again in the backward
pass, and the entropy needs it a third time; at the default size the vocabulary projection's
(N, V) elementwise passes are ~1 ms of a ~20 ms step (bench/bench_throughput.py profile). Here
p is computed once in the forward pass and kept for the backward pass, whose gradient is
the textbook (p - onehot(y)) * g: autograd's log_softmax backward forms the same terms
(g - p * sum g, with sum g = -g_y), equal up to a few ulps of rounding; the loss values are
bit-identical (tests/moh/test_token_loss.py).
"""

from __future__ import annotations

import torch


class _TokenLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool):  # type: ignore[override]
        logp = logits.log_softmax(-1)
        p = logp.exp()
        loss = -logp.gather(1, targets[:, None]).squeeze(1)
        # in place: log p is not needed again, and a fresh (N, V) product cost ~0.1 ms of page
        # faults at the default size (the same bits)
        ent = -logp.mul_(p).sum(-1) if with_entropy else None
        ctx.save_for_backward(p, targets)
        if ent is not None:
            ctx.mark_non_differentiable(ent)
        return loss, ent

    @staticmethod
    def backward(ctx, g: torch.Tensor, _g_ent):  # type: ignore[override]
        p, targets = ctx.saved_tensors
        if g is None:
            return None, None, None
        grad = p * g[:, None]
        grad.scatter_add_(1, targets[:, None], -g[:, None])  # the -onehot(y) * g term
        return grad, None, None


def token_loss(logits: torch.Tensor, targets: torch.Tensor, *, with_entropy: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (N, V) float32, targets (N,) class indices (no ignore index: select the target
    positions first) -> (loss (N,), entropy (N,) or None). The loss carries the gradient;
    the entropy is detached."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"token_loss wants logits (N, V) and targets (N,), got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    return _TokenLoss.apply(logits, targets, with_entropy)
