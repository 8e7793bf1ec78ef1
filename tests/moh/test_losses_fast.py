"""aux_objective's hand-written nodes (_LayerSums, _Terms) against plain autograd through the same
forward code (`reference=True`): the same values bit for bit on the torch path (up to the
rounding of double sums on moh/native.c's), gradients equal up to rounding."""

import pytest
import torch

from moh.config import Config
from moh.losses import aux_losses, aux_objective, weighted_total
from moh.model import LM
from tests.moh.native_switch import both_kernels, native_on  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("both_kernels")

VOCAB = 40


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(1, VOCAB, (4, 12), generator=g)
    idx[1, 8:] = 0  # right padding
    idx[3, 5:] = 0
    targets = idx.roll(-1, 1).clone()
    targets[idx == 0] = -100
    targets[:, -1] = -100
    targets[targets == 0] = -100
    return idx, targets


def _same_value(new: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Bit for bit on the torch path; moh/native.c sums in double and rounds once, so its
    terms differ from float32 tree sums in the last bits."""
    if native_on():
        torch.testing.assert_close(new, ref, rtol=2e-6, atol=1e-9, msg=what)
    else:
        assert torch.equal(new, ref), what


def _run(cfg: Config, reference: bool, reduce=None, weights=None):
    """aux terms and every parameter gradient of lm loss + sum_t w_t aux_t."""
    torch.manual_seed(0)
    model = LM(cfg, VOCAB)
    model.train()
    idx, targets = _batch(1)
    _, loss_sum, routings = model(idx, targets)
    aux = aux_losses(routings, idx != 0, cfg, reduce=reduce, reference=reference)
    total = loss_sum / (targets != -100).sum()
    g = torch.Generator().manual_seed(5)
    for t, v in aux.items():  # each term with its own arbitrary weight: every term's gradient counts
        if v is not None:
            total = total + (weights or {}).get(t, float(torch.rand((), generator=g)) + 0.1) * v
    total.backward()
    return aux, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


CASES = [
    dict(router="adaptive"),  # default: entropy_rank difficulty target, entropy logged only
    dict(router="adaptive", complexity_target="heads", entropy_weight=0.1),
    dict(router="adaptive", complexity_target="loss_rank", straight_through=False),
    dict(router="moh"),  # released gates: balance without 1/mean_k
    dict(router="moh", moh_gates="paper", moh_shared=0),
    dict(router="dense"),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_aux_nodes_match_plain_autograd(kw):
    cfg = Config(n_layers=3, n_heads=4, d_model=32, d_ff=64, **kw)
    aux_ref, g_ref = _run(cfg, reference=True)
    aux_new, g_new = _run(cfg, reference=False)
    assert aux_ref.keys() == aux_new.keys()
    for t in aux_ref:
        if aux_ref[t] is None:
            assert aux_new[t] is None, t
        else:
            _same_value(aux_new[t], aux_ref[t], t)
    assert g_ref.keys() == g_new.keys()
    for name in g_ref:
        torch.testing.assert_close(g_new[name], g_ref[name], rtol=1e-4, atol=1e-7, msg=name)
    if kw["router"] != "dense":
        # adaptive: W_r is the rows of [W_r; w_c; w_t] before the last two
        key, rows = (("attn.router.weight", slice(0, -2)) if kw["router"] == "adaptive"
                     else ("attn.router.router.weight", slice(None)))
        w_r = [g[rows] for n, g in g_new.items() if n.endswith(key)]
        assert len(w_r) == 3 and all(g.abs().sum() > 0 for g in w_r)  # the aux terms reach W_r


@pytest.mark.parametrize("router", ["adaptive", "moh"])
def test_each_term_alone_gets_the_reference_gradient(router):
    """One term at a time (the others at weight 0): a mistake in one term's backward cannot
    hide behind the larger gradient of another."""
    cfg = Config(n_layers=2, n_heads=4, d_model=32, d_ff=64, router=router, entropy_weight=1.0)
    terms = ("load_balance", "z") + (("complexity", "budget", "entropy") if router == "adaptive" else ())
    for term in terms:
        weights = {t: (50.0 if t == term else 0.0) for t in terms}
        _, g_ref = _run(cfg, True, weights=weights)
        _, g_new = _run(cfg, False, weights=weights)
        routed = [n for n in g_ref if ".router." in n]
        for name in routed:
            scale = float(g_ref[name].abs().max())  # float32 rounding, relative to the gradient's size
            torch.testing.assert_close(g_new[name], g_ref[name], rtol=1e-4, atol=1e-5 * scale, msg=f"{term}: {name}")
        assert any(g_ref[n].abs().sum() > 0 for n in routed), term


def test_aux_nodes_match_under_a_reduce():
    """The data-parallel path: the flat sums pass through an autograd-aware `reduce` between
    the two nodes (here a differentiable stand-in that scales every sum)."""
    cfg = Config(n_layers=2, n_heads=4, d_model=32, d_ff=64)
    reduce = lambda flat: flat * 2.0  # noqa: E731
    aux_ref, g_ref = _run(cfg, True, reduce=reduce)
    aux_new, g_new = _run(cfg, False, reduce=reduce)
    for t in aux_ref:
        if aux_ref[t] is None:
            assert aux_new[t] is None, t
        else:
            _same_value(aux_new[t], aux_ref[t], t)
    for name in g_ref:
        torch.testing.assert_close(g_new[name], g_ref[name], rtol=1e-4, atol=1e-7, msg=name)


def test_weighted_total_is_unchanged_by_the_nodes():
    cfg = Config(n_layers=2, n_heads=4, d_model=32, d_ff=64)
    torch.manual_seed(0)
    model = LM(cfg, VOCAB)
    idx, targets = _batch(2)
    _, _, routings = model(idx, targets)
    a = weighted_total(aux_losses(routings, idx != 0, cfg, reference=True), cfg)
    b = weighted_total(aux_losses(routings, idx != 0, cfg), cfg)
    _same_value(b, a, "weighted total")



def _run_objective(cfg: Config, reference: bool):
    """aux_objective's total and every parameter gradient of lm loss + total + 0.7 z: the
    node's total and a term used directly both send their gradient back."""
    torch.manual_seed(0)
    model = LM(cfg, VOCAB)
    model.train()
    idx, targets = _batch(3)
    _, loss_sum, routings = model(idx, targets)
    aux, total = aux_objective(routings, idx != 0, cfg, reference=reference)
    loss = loss_sum / (targets != -100).sum()
    if total is not None:
        loss = loss + total + 0.7 * aux["z"]
    loss.backward()
    return aux, total, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_the_objective_total_is_the_weighted_sum_of_its_terms(kw):
    cfg = Config(n_layers=2, n_heads=4, d_model=32, d_ff=64, **{"entropy_weight": 0.3, **kw})
    aux_ref, total_ref, g_ref = _run_objective(cfg, reference=True)
    aux_new, total_new, g_new = _run_objective(cfg, reference=False)
    if kw["router"] == "dense":
        assert total_ref is None and total_new is None and all(v is None for v in aux_new.values())
        return
    assert total_ref.item() == pytest.approx(sum(getattr(cfg, k) * aux_ref[t].item() for t, k in
                                                 (("load_balance", "lb_weight"), ("z", "z_weight"),
                                                  ("complexity", "complexity_weight"), ("budget", "budget_weight"),
                                                  ("entropy", "entropy_weight")) if aux_ref[t] is not None), rel=1e-6)
    _same_value(total_new, weighted_total(aux_new, cfg), "total against its own terms")
    _same_value(total_new, total_ref, "total")
    assert g_ref.keys() == g_new.keys()
    for name in g_ref:
        torch.testing.assert_close(g_new[name], g_ref[name], rtol=1e-4, atol=1e-7, msg=name)
