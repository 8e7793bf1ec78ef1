"""moh.token_loss: the per-token cross-entropy and its gradient are autograd's, the entropy is
the predictive distribution's, on known answers and on random logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moh.token_loss import token_loss


def test_known_answers_uniform_and_peaked():
    # row 0: uniform over 4 classes -> loss log 4, entropy log 4
    # row 1: p = (1/2, 1/4, 1/4) over 3 classes, target 1 -> loss log 4, entropy 1.5 log 2
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0, -1e9]])
    loss, ent = token_loss(logits, torch.tensor([2, 1]), with_entropy=True)
    assert loss.tolist() == pytest.approx([math.log(4), math.log(4)])
    assert ent.tolist() == pytest.approx([math.log(4), 1.5 * math.log(2)])


def test_entropy_only_on_request_and_detached():
    logits = torch.randn(5, 7, requires_grad=True)
    loss, ent = token_loss(logits, torch.randint(0, 7, (5,)))
    assert ent is None and loss.requires_grad
    _, ent = token_loss(logits, torch.randint(0, 7, (5,)), with_entropy=True)
    assert not ent.requires_grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_loss_and_gradient_as_cross_entropy(seed):
    torch.manual_seed(seed)
    logits = (3 * torch.randn(64, 300)).requires_grad_()
    twin = logits.detach().clone().requires_grad_()
    targets = torch.randint(0, 300, (64,))
    weights = torch.rand(64)  # a non-uniform upstream gradient
    loss, _ = token_loss(logits, targets)
    ref = F.cross_entropy(twin, targets, reduction="none")
    assert torch.equal(loss, ref.detach())
    (loss * weights).sum().backward()
    (ref * weights).sum().backward()
    # equal up to float rounding (autograd recomputes exp(log p) in its backward, fused with
    # the subtraction): a few ulps of gradients of order 1
    torch.testing.assert_close(logits.grad, twin.grad, rtol=0, atol=5e-8)


def test_repeated_targets_and_bad_shapes():
    logits = torch.zeros(3, 2, requires_grad=True)
    loss, _ = token_loss(logits, torch.tensor([0, 0, 1]))
    loss.sum().backward()
    # softmax 1/2 each: the target column gets 1/2 - 1, the other 1/2
    assert logits.grad.tolist() == [[-0.5, 0.5], [-0.5, 0.5], [0.5, -0.5]]
    with pytest.raises(ValueError, match="logits \\(N, V\\)"):
        token_loss(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
