"""Router maths: selection order, at least one head, budget cap, threshold, dense equivalence,
and the straight-through gradient that the reference trainer lacked."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moh.config import Config
from moh.losses import aux_losses, weighted_total
from moh.model import LM
from moh.routing import AdaptiveRouter, MoHRouter, layer_stats, select_heads

H = 8


def _case(seed: int, n: int = 64, temp: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(1, n, H, generator=g) * temp).softmax(-1)
    tau = 0.3 + 0.5 * torch.rand(1, n, generator=g)
    kappa = 1 + (H - 1) * torch.rand(1, n, generator=g)
    return probs, tau, kappa


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), temp=st.sampled_from([0.1, 1.0, 4.0]))
def test_selection_follows_descending_probability(seed, temp):
    probs, tau, kappa = _case(seed, temp=temp)
    hard, _ = select_heads(probs, tau, kappa, 0.1, 1.0)
    sel_min = torch.where(hard, probs, torch.full_like(probs, math.inf)).amin(-1)
    unsel_max = torch.where(hard, torch.full_like(probs, -math.inf), probs).amax(-1)
    assert (sel_min >= unsel_max).all()  # the kept heads are the most probable ones


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), temp=st.sampled_from([0.1, 1.0, 4.0]))
def test_threshold_and_budget_define_the_count(seed, temp):
    probs, tau, kappa = _case(seed, temp=temp)
    hard, _ = select_heads(probs, tau, kappa, 0.1, 1.0)
    count = hard.sum(-1)
    sorted_p = probs.sort(-1, descending=True).values
    cum_excl = sorted_p.cumsum(-1) - sorted_p
    by_tau = (cum_excl < tau[..., None]).sum(-1)  # heads the threshold alone allows
    by_kappa = torch.ceil(kappa).long()  # ranks j with j < kappa
    expected = torch.minimum(by_tau, by_kappa).clamp(min=1)
    assert torch.equal(count, expected)
    assert (count <= by_kappa).all() and (count >= 1).all()


def test_at_least_one_head_even_with_zero_threshold_and_budget():
    probs, _, _ = _case(0)
    hard, _ = select_heads(probs, torch.zeros(1, 64), torch.zeros(1, 64), 0.1, 1.0)
    assert torch.equal(hard.sum(-1), torch.ones(1, 64, dtype=torch.long))
    assert torch.equal(hard.float().argmax(-1), probs.argmax(-1))  # and it is the top head


def test_surrogate_is_largest_for_the_most_probable_head():
    # regression: the reference soft gate sigmoid(T*(cum_inclusive - tau)) ran backwards
    probs, tau, kappa = _case(1)
    _, soft = select_heads(probs, tau, kappa, 0.1, 1.0)
    order = probs.argsort(-1, descending=True)
    soft_sorted = soft.gather(-1, order)
    assert (soft_sorted[..., :-1] >= soft_sorted[..., 1:]).all()


def _equivalent_pair(seed=0):
    cfg_a = Config(router="adaptive", n_layers=2, n_heads=H, d_model=32, d_ff=64, tau_max=1.0)
    torch.manual_seed(seed)
    adaptive = LM(cfg_a, vocab_size=50)
    dense = LM(cfg_a.replace(router="dense"), vocab_size=50)
    missing, unexpected = dense.load_state_dict(adaptive.state_dict(), strict=False)
    assert not missing and all(".router." in k for k in unexpected)
    with torch.no_grad():
        for block in adaptive.blocks:
            r = block.attn.router
            r.w_t.zero_(); r.b_t.fill_(100.0)  # tau -> 1
            r.w_c.zero_(); r.b_c.fill_(100.0)  # kappa -> H
    return adaptive, dense


def test_adaptive_with_threshold_one_and_budget_h_reproduces_dense():
    adaptive, dense = _equivalent_pair()
    idx = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    la, _, routes = adaptive(idx)
    ld, _, _ = dense(idx)
    assert all(bool(r.hard.all()) for r in routes)
    torch.testing.assert_close(la, ld, rtol=0, atol=0)


def test_lm_loss_alone_reaches_router_threshold_and_complexity():
    cfg = Config(n_layers=2, n_heads=H, d_model=32, d_ff=64, lb_weight=0, z_weight=0,
                 complexity_weight=0, budget_weight=0)
    torch.manual_seed(0)
    model = LM(cfg, vocab_size=50)
    idx = torch.randint(1, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    targets = idx.roll(-1, 1)
    _, loss_sum, routes = model(idx, targets)
    aux = aux_losses(routes, idx != 0, cfg)
    total = weighted_total(aux, cfg)
    assert float(total.detach()) == 0.0  # every aux weight is zero: only the LM loss is left
    (loss_sum / targets.numel() + total).backward()
    for i, block in enumerate(model.blocks):
        r = block.attn.router
        assert r.weight.grad is not None, f"layer {i}: the router gets no LM gradient"
        for name, rows in (("router", slice(0, H)), ("complexity", H), ("threshold", H + 1)):
            assert r.weight.grad[rows].norm() > 0, f"layer {i} {name} gets no LM gradient"


def test_head_count_is_measured_from_the_hard_mask_not_the_budget():
    cfg = Config(n_heads=H, d_model=32)
    torch.manual_seed(0)
    router = AdaptiveRouter(cfg)
    x = torch.randn(2, 10, 32)
    r = router(x)
    stats = layer_stats(r, torch.ones(2, 10, dtype=torch.bool))
    assert float(stats["heads_mean"]) == float(r.hard.sum(-1).float().mean())
    assert float(stats["heads_mean"]) != pytest.approx(float(r.kappa.detach().mean()))
    assert torch.equal(r.gates.detach(), r.hard.float())  # forward value is exactly the mask


def test_threshold_stays_inside_its_range_when_saturated():
    cfg = Config(n_heads=H, d_model=32)
    router = AdaptiveRouter(cfg)
    with torch.no_grad():
        router.b_t.fill_(1e4)
    assert float(router(torch.randn(1, 3, 32)).tau.max().detach()) <= 0.8
    with torch.no_grad():
        router.b_t.fill_(-1e4)
    assert float(router(torch.randn(1, 3, 32)).tau.min().detach()) >= 0.3


def test_moh_router_uses_shared_plus_topk_heads():
    cfg = Config(router="moh", n_heads=H, d_model=32, moh_shared=2, moh_topk=3)
    torch.manual_seed(0)
    r = MoHRouter(cfg)(torch.randn(2, 5, 32))
    assert torch.equal(r.hard.sum(-1), torch.full((2, 5), 5))
    assert r.hard[..., :2].all()  # shared heads always on
    assert (r.gates[~r.hard] == 0).all() and (r.gates[r.hard] > 0).all()
