"""The adaptive router's fused paths equal the reference formulation (value and gradient)."""

import pytest
import torch

from moh.routing import _SelectHeadsST, fused_linear, select_heads
from tests.moh.records import Records


@pytest.mark.parametrize("seed", range(4))
def test_select_heads_st_matches_autograd_through_select_heads(seed):
    g = torch.Generator().manual_seed(seed)
    B, T, H = 3, 7, 8
    logits = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    tau_in = torch.rand(B, T, generator=g, dtype=torch.float64, requires_grad=True)
    kappa_in = (1 + 7 * torch.rand(B, T, generator=g, dtype=torch.float64)).requires_grad_()
    w = torch.randn(B, T, H, generator=g, dtype=torch.float64)

    def run(fast):
        probs = logits.softmax(-1)
        tau, kappa = 0.3 + 0.5 * tau_in, kappa_in * 1.0
        if fast:
            gates, hard = _SelectHeadsST.apply(probs, tau, kappa, 0.1, 1.0)
        else:
            hard, soft = select_heads(probs, tau, kappa, 0.1, 1.0)
            gates = hard.to(probs.dtype) + (soft - soft.detach())
        loss = (gates * w).sum() + gates.sum(-1).pow(2).sum()
        grads = torch.autograd.grad(loss, [logits, tau_in, kappa_in])
        return gates.detach(), hard, grads

    g_ref, h_ref, d_ref = run(False)
    g_new, h_new, d_new = run(True)
    assert torch.equal(h_ref, h_new)
    assert torch.equal(g_ref, g_new) and torch.equal(g_new, h_new.double())
    for a, b in zip(d_ref, d_new):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert a.abs().sum() > 0


def test_fused_linear_matches_separate_linears():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(4, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 16, generator=g, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(1, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w1, w2, b2: fused_linear(x, [w1, w2], [None, b2]), (x, w1, w2, b2))
    ref = torch.cat([x @ w1.T, x @ w2.T + b2], -1)
    torch.testing.assert_close(fused_linear(x, [w1, w2], [None, b2]), ref)


def test_full_telemetry_tier_adds_heads_hist_and_prob_mean(tiny_cfg):
    from moh import schema
    from moh.train import train

    for router, tier in (("adaptive", "full"), ("dense", "full"), ("adaptive", "basic")):
        sink = Records()
        train(tiny_cfg(router=router, telemetry_tier=tier, instruct_epochs=0, eval_prompts=0), None, sink=sink)
        steps = [r for r in sink.records if r["event"] == schema.STEP]
        assert steps and not any(schema.missing_fields(r) for r in steps)
        for layer in steps[-1]["layers"]:
            if tier == "basic":
                assert "heads_hist" not in layer and "prob_mean" not in layer
                continue
            hist = layer["heads_hist"]
            assert len(hist) == 4 + 1 and abs(sum(hist) - 1) < 1e-5
            mean_from_hist = sum(k * f for k, f in enumerate(hist))
            assert abs(mean_from_hist - layer["heads_mean"]) < 1e-4
            if router == "dense":
                assert layer["prob_mean"] is None and hist[-1] == 1.0
            else:
                assert len(layer["prob_mean"]) == 4 and abs(sum(layer["prob_mean"]) - 1) < 1e-5
