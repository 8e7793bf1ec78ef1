"""Known answers for the complexity predictor's difficulty targets (moh/difficulty.py, issue 18).

Every expected value is worked out by hand in the comment beside it."""

from __future__ import annotations

import math

import pytest
import torch

from moh.config import COMPLEXITY_TARGETS, Config
from moh.difficulty import TARGETS, budget_target, quantiles_at, rank_quantiles
from moh.losses import aux_losses
from moh.model import LM
from moh.routing import Routing
from tests.moh.native_switch import both_kernels  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("both_kernels")


def test_config_and_module_name_the_same_targets():
    assert COMPLEXITY_TARGETS == TARGETS


def test_rank_quantiles_with_ties():
    # values 3, 1, 2, 2, 5 -> ranks 3, 0, 1.5, 1.5, 4 -> / 4
    got = rank_quantiles(torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0]))
    assert got.tolist() == pytest.approx([0.75, 0.0, 0.375, 0.375, 1.0])
    assert rank_quantiles(torch.tensor([7.0])).tolist() == [0.5]  # nothing to rank against


def test_budget_target_has_the_target_mean_and_its_bounds():
    # k_min 1, target 3.5: kappa* = 1 + 2 (3.5 - 1 - 0.5) u = 1 + 4 u -> 1, 3, 5
    got = budget_target(torch.tensor([0.0, 0.5, 1.0]), 1.0, 3.5, 8)
    assert got.tolist() == pytest.approx([1.0, 3.0, 5.0])
    # u = 1/8, 3/8, 5/8, 7/8 (evenly spread): kappa* 1.5, 2.5, 3.5, 4.5 -> ceil 2, 3, 4, 5, mean 3.5
    spread = budget_target(torch.tensor([1 / 8, 3 / 8, 5 / 8, 7 / 8]), 1.0, 3.5, 8)
    assert spread.ceil().mean().item() == 3.5
    # target 6 of 8 would ask 1 + 9 u: clamped to H = 8 at u = 1
    assert budget_target(torch.tensor([1.0]), 1.0, 6.0, 8).tolist() == [8.0]


def test_quantiles_scatter_into_the_target_positions():
    has = torch.tensor([[True, False, True]])
    got = quantiles_at(torch.tensor([math.log(2), 0.5]), has)  # ranks 1, 0
    assert got[0, 0].item() == 1.0 and math.isnan(got[0, 1].item()) and got[0, 2].item() == 0.0


@pytest.mark.parametrize("kind", ["entropy_rank", "loss_rank"])
def test_the_model_ranks_the_signal_its_target_names(kind):
    """LM.forward's difficulty is the rank quantile of each target position's predictive
    entropy (entropy_rank) or next-token loss (loss_rank), computed here from its own logits."""
    torch.manual_seed(0)
    cfg = Config(n_layers=1, n_heads=4, d_model=32, d_ff=64, max_len=16, complexity_target=kind)
    model = LM(cfg, vocab_size=30).train()
    idx, targets = torch.randint(0, 30, (3, 12)), torch.randint(0, 30, (3, 12))
    targets[0, -4:] = -100  # positions without a target get NaN
    _, _, routings = model(idx, targets)
    has = targets != -100
    with torch.no_grad():
        x, _ = model.features(idx)
        logp = model.lm_head(x[has]).float().log_softmax(-1)
    signal = (-(logp.exp() * logp).sum(-1) if kind == "entropy_rank"
              else -logp.gather(1, targets[has][:, None]).squeeze(1))
    want = rank_quantiles(signal)
    got = routings[0].difficulty
    assert torch.isnan(got[~has]).all()
    torch.testing.assert_close(got[has], want)
    other = -(logp.exp() * logp).sum(-1) if kind == "loss_rank" else -logp.gather(1, targets[has][:, None]).squeeze(1)
    assert not torch.allclose(got[has], rank_quantiles(other))  # the two signals rank differently here


def _routing(kappa, difficulty, used) -> Routing:
    hard = torch.zeros(1, len(kappa), 4, dtype=torch.bool)
    for t, n in enumerate(used):
        hard[0, t, :n] = True
    return Routing(hard=hard, probs=torch.full((1, len(kappa), 4), 0.25), logits=torch.zeros(1, len(kappa), 4),
                   balance_heads=slice(0, 4), kappa=torch.tensor([kappa], requires_grad=True),
                   count=hard.float().sum(-1), difficulty=torch.tensor([difficulty]))


def test_complexity_term_toward_the_difficulty_budget():
    # H 4, k_min 1, target 2.5: kappa* = 1 + 2 u. Tokens: u 0 -> 1, u 1 -> 3, u 0.5 -> 2, and a
    # position without a target (NaN) that must not count. kappa 2, 2, 2.5, 9 -> gaps 1, 1, 0.5:
    # mean square 2.25 / 3 over the three target tokens, / H^2 = 16
    cfg = Config(n_heads=4, d_model=32, target_heads=2.5, complexity_target="loss_rank")
    r = _routing([2.0, 2.0, 2.5, 9.0], [0.0, 1.0, 0.5, float("nan")], used=[4, 1, 3, 2])
    got = aux_losses([r], torch.ones(1, 4, dtype=torch.bool), cfg)["complexity"]
    assert got.item() == pytest.approx(2.25 / 3 / 16)
    # the same routing under the default target: used counts 4, 1, 3, 2 vs kappa 2, 2, 2.5, 9:
    # gaps 2, 1, 0.5, 7 -> (4 + 1 + 0.25 + 49) / 4 / 16, over all four real tokens
    heads = aux_losses([r], torch.ones(1, 4, dtype=torch.bool), cfg.replace(complexity_target="heads"))
    assert heads["complexity"].item() == pytest.approx(54.25 / 4 / 16)


def test_gradient_reaches_kappa_from_the_target_and_not_the_target():
    cfg = Config(n_heads=4, d_model=32, target_heads=2.5, complexity_target="loss_rank")
    r = _routing([2.0, 2.0, 2.5], [0.0, 1.0, 0.5], used=[1, 1, 1])
    r.difficulty.requires_grad_(True)  # were the target differentiable, it would get a gradient
    aux_losses([r], torch.ones(1, 3, dtype=torch.bool), cfg)["complexity"].backward()
    # d/dkappa_t of sum_t (kappa_t - kappa*_t)^2 / 3 / 16 = 2 (kappa_t - kappa*_t) / 48
    # kappa* = 1, 3, 2 -> gaps +1, -1, +0.5
    assert r.kappa.grad.tolist() == [[pytest.approx(2 / 48), pytest.approx(-2 / 48), pytest.approx(1 / 48)]]
    assert r.difficulty.grad is None


def test_the_model_sets_the_target_and_the_predictor_learns_from_it():
    cfg = Config(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_len=16, complexity_target="entropy_rank",
                 lb_weight=0.0, z_weight=0.0, budget_weight=0.0)
    torch.manual_seed(0)
    model = LM(cfg, vocab_size=11)
    idx = torch.randint(3, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    targets = idx.roll(-1, 1)
    targets[:, -1] = -100
    _, _, routings = model(idx, targets)
    u = routings[0].difficulty
    assert u is routings[1].difficulty
    assert torch.isnan(u[:, -1]).all() and torch.isfinite(u[:, :-1]).all()
    assert u[:, :-1].min().item() == 0.0 and u[:, :-1].max().item() == 1.0  # ranks over 14 tokens
    aux = aux_losses(routings, torch.ones_like(idx, dtype=torch.bool), cfg)
    aux["complexity"].backward()
    w = model.blocks[0].attn.router.weight  # [W_r; w_c; w_t]: the w_c row learns
    assert w.grad is not None and w.grad[cfg.n_heads].abs().sum() > 0
    # the target came from the logits under no_grad: the final LayerNorm, which only the logits
    # see (the routers read the blocks' inputs), gets no gradient through it
    assert model.ln_f.weight.grad is None and model.ln_f.bias.grad is None
    # the default target leaves difficulty unset (no extra work)
    _, _, plain = LM(cfg.replace(complexity_target="heads"), 11)(idx, targets)
    assert plain[0].difficulty is None
