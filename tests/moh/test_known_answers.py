"""Known answers for the numbers the engine computes (issue 15 item 2).

Every expected value here is worked out by hand from a tiny, hand-made input (written in the
comment next to it), never read back from the code under test: per-layer stats on a known mask,
the head budget at integer and half-integer kappa, each aux term at a closed-form case, gradient
clipping, and the straight-through surrogate's gradient against finite differences of the
surrogate written out independently below.
"""

from __future__ import annotations

import math

import pytest
import torch

from moh.config import Config
from moh.losses import aux_losses, weighted_total
from moh.optim import AdamW, clip_divisor, grad_norms
from moh.route_fast import _st_backward, _st_select, native_select
from moh.routing import Routing, layer_stats, select_heads
from tests.moh.native_switch import both_kernels, native_on  # noqa: F401 (a fixture)
from tests.moh.records import Records

# ------------------------------------------------------------------------------------------------
# per-layer stats on a hand-made mask


def _hand_routing() -> tuple[Routing, torch.Tensor]:
    """5 tokens (1 x 5), 4 heads; the last token is padding with extreme values everywhere, so
    any stat that forgets the valid mask lands far from the answers below."""
    hard = torch.tensor([[[1, 0, 0, 0],    # 1 head
                          [1, 1, 0, 0],    # 2 heads
                          [1, 1, 1, 1],    # 4 heads
                          [0, 1, 1, 1],    # 3 heads
                          [0, 0, 0, 0]]],  # padding: 0 heads
                        dtype=torch.bool)
    probs = torch.tensor([[[1.0, 0.0, 0.0, 0.0],        # entropy 0
                           [0.25, 0.25, 0.25, 0.25],    # entropy ln 4
                           [0.5, 0.5, 0.0, 0.0],        # entropy ln 2
                           [0.5, 0.5, 0.0, 0.0],        # entropy ln 2
                           [0.25, 0.25, 0.25, 0.25]]])  # padding
    tau = torch.tensor([[0.3, 0.5, 0.8, 0.6, 0.01]])
    c = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.999]])
    valid = torch.tensor([[True, True, True, True, False]])
    return Routing(hard=hard, probs=probs, tau=tau, complexity=c, pred_norm=torch.tensor(0.25)), valid


def test_layer_stats_of_a_known_mask_are_exact():
    r, valid = _hand_routing()
    s = {k: (None if v is None else v.tolist()) for k, v in layer_stats(r, valid).items()}
    # head counts of the real tokens: 1, 2, 4, 3
    assert s["heads_mean"] == pytest.approx(2.5, abs=1e-7)
    assert s["heads_min"] == 1.0 and s["heads_max"] == 4.0
    # population std: deviations -1.5, -0.5, 1.5, 0.5 -> mean square 1.25
    assert s["heads_std"] == pytest.approx(math.sqrt(1.25), abs=1e-6)
    # head i used by: head0 tokens 0,1,2; head1 tokens 1,2,3; head2 tokens 2,3; head3 tokens 2,3
    assert s["head_load"] == pytest.approx([0.75, 0.75, 0.5, 0.5], abs=1e-7)
    assert s["threshold_min"] == pytest.approx(0.3) and s["threshold_max"] == pytest.approx(0.8)
    assert s["threshold_mean"] == pytest.approx(0.55, abs=1e-6)  # (0.3 + 0.5 + 0.8 + 0.6) / 4
    assert s["complexity_min"] == pytest.approx(0.1) and s["complexity_max"] == pytest.approx(0.9)
    assert s["complexity_mean"] == pytest.approx(0.45, abs=1e-6)  # (0.9 + 0.1 + 0.5 + 0.3) / 4
    assert s["entropy"] == pytest.approx((0 + math.log(4) + 2 * math.log(2)) / 4, abs=1e-6)
    assert s["pred_norm"] == pytest.approx(0.25)


def test_full_tier_histogram_and_mean_probabilities_are_exact():
    r, valid = _hand_routing()
    s = layer_stats(r, valid, full=True)
    # tokens using 0, 1, 2, 3, 4 heads: none, one, one, one, one (of 4 real tokens)
    assert s["heads_hist"].tolist() == pytest.approx([0.0, 0.25, 0.25, 0.25, 0.25])
    # column means of the 4 real probability rows
    assert s["prob_mean"].tolist() == pytest.approx([0.5625, 0.3125, 0.0625, 0.0625], abs=1e-7)


def test_stats_that_do_not_apply_are_none():
    hard = torch.ones(1, 3, 4, dtype=torch.bool)
    s = layer_stats(Routing(hard=hard), torch.ones(1, 3, dtype=torch.bool))
    assert s["heads_mean"].item() == 4.0 and s["heads_std"].item() == 0.0
    for k in ("threshold_mean", "threshold_min", "complexity_max", "entropy", "pred_norm"):
        assert s[k] is None, k


# ------------------------------------------------------------------------------------------------
# the head budget: rank j is kept while j < kappa (strictly), and C_j < tau (strictly)

# probabilities that are exact binary fractions, so the exclusive cumsums are exact too:
# sorted descending 0.5, 0.25, 0.125, 0.125 -> C = 0, 0.5, 0.75, 0.875. Heads are stored out of
# order so the scatter back to head order is exercised: head 2 is the most probable.
PROBS = [0.125, 0.25, 0.5, 0.125]
RANK_OF_HEAD = [2, 1, 0, 3]  # stable sort: of the two 0.125s, head 0 comes before head 3


def _select(tau: float, kappa: float, fast) -> torch.Tensor:
    probs = torch.tensor([[PROBS]], dtype=torch.float32)
    t, k = torch.tensor([[tau]]), torch.tensor([[kappa]])
    if fast == "native":  # the C kernel's selection, what the model's node runs on CPU
        if not native_on():
            pytest.skip("moh/native.c not loaded")
        return native_select(probs, t, k)[0, 0]
    if fast:  # the selection the model's autograd node (route_fast._AdaptiveRoute) runs in torch
        return _st_select(probs, t, k, 0.1, 1.0)[0][0, 0]
    return select_heads(probs, t, k, 0.1, 1.0)[0][0, 0]


@pytest.mark.parametrize("fast", [False, True, "native"], ids=["select_heads", "st_select", "native"])
@pytest.mark.parametrize("kappa,count", [
    (0.5, 1),   # below one head: the top head is kept anyway
    (1.0, 1),   # integer: rank 0 only (rank 1 < 1 is false)
    (1.5, 2),   # half-integer: ranks 0, 1
    (2.0, 2),   # integer: ranks 0, 1 -- `rank <= kappa` would keep 3
    (2.5, 3),
    (3.0, 3),
    (3.5, 4),
    (4.0, 4),
])
def test_budget_at_integer_and_half_integer_kappa(fast, kappa, count):
    hard = _select(tau=1.0, kappa=kappa, fast=fast)  # tau 1: the threshold allows all 4 heads
    assert int(hard.sum()) == count
    kept_ranks = sorted(RANK_OF_HEAD[h] for h in range(4) if hard[h])
    assert kept_ranks == list(range(count)), "the budget keeps the most probable heads"


@pytest.mark.parametrize("fast", [False, True, "native"], ids=["select_heads", "st_select", "native"])
@pytest.mark.parametrize("tau,count", [
    (0.5, 1),          # C_1 = 0.5 is not < 0.5
    (0.5000001, 2),    # just above: rank 1 joins
    (0.75, 2),         # C_2 = 0.75 is not < 0.75 -- `<=` would keep 3
    (0.7500001, 3),
    (0.875, 3),
    (0.8750001, 4),
])
def test_threshold_is_strict_on_the_exclusive_cumulative_probability(fast, tau, count):
    hard = _select(tau=tau, kappa=4.0, fast=fast)
    assert int(hard.sum()) == count


@pytest.mark.parametrize("fast", [False, True, "native"], ids=["select_heads", "st_select", "native"])
def test_the_most_probable_head_is_kept_even_at_zero_threshold_and_budget(fast):
    hard = _select(tau=0.0, kappa=0.0, fast=fast)
    assert hard.tolist() == [False, False, True, False]  # head 2 (p = 0.5) alone


@pytest.mark.parametrize("z_c,z_t,kappa,tau", [
    (0.0, 0.0, 2.5, 0.55),          # sigmoid 0.5: kappa = 1 + (4 - 1) / 2, tau = 0.3 + 0.5 / 2
    (math.log(2), 0.0, 3.0, 0.55),  # sigmoid 2/3: kappa = 1 + 3 * 2/3
    (40.0, 40.0, 4.0, 0.8),         # saturated high: kappa = H, tau = tau_max
    (-40.0, -40.0, 1.0, 0.3),       # saturated low: kappa = k_min, tau = tau_min
])
def test_adaptive_router_maps_its_predictors_to_budget_and_threshold(z_c, z_t, kappa, tau):
    from moh.routing import AdaptiveRouter

    router = AdaptiveRouter(Config(n_heads=4, d_model=32, k_min=1.0, tau_min=0.3, tau_max=0.8))
    logits = torch.log(torch.tensor(PROBS))  # softmax gives PROBS back
    proj = torch.cat([logits, torch.tensor([z_c, z_t])]).view(1, 1, 6)
    r = router(torch.zeros(1, 1, 32), proj=proj)
    assert r.probs.view(-1).tolist() == pytest.approx(PROBS, abs=1e-6)
    assert r.kappa.item() == pytest.approx(kappa, abs=1e-5)
    assert r.tau.item() == pytest.approx(tau, abs=1e-6)
    assert r.complexity.item() == pytest.approx((kappa - 1.0) / 3.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# aux terms at closed-form cases


def _cfg(**kw) -> Config:
    return Config(n_heads=4, d_model=32, **kw)


def _routing(hard, probs=None, logits=None, kappa=None, count=None) -> Routing:
    hard = torch.tensor(hard, dtype=torch.bool)
    if probs is None:
        probs = torch.full(hard.shape, 1 / hard.shape[-1])
    else:
        probs = torch.tensor(probs)
    if logits is None:
        logits = torch.zeros(hard.shape)
    adaptive = kappa is not None
    return Routing(hard=hard, probs=probs, logits=logits, balance_heads=slice(0, hard.shape[-1]),
                   kappa=torch.tensor(kappa) if adaptive else None,
                   count=(hard.float().sum(-1) if count is None else torch.tensor(count)) if adaptive else None)


ONE_HEAD_EACH = [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]]  # 4 tokens, 1 head each
VALID4 = torch.ones(1, 4, dtype=torch.bool)


def test_load_balance_is_one_when_balanced_and_h_when_collapsed():
    cfg = _cfg()
    # balanced: f_i = 1/4, P_i = 1/4, mean_k = 1 -> (4 / 1) * 4 * (1/16) = 1
    assert aux_losses([_routing(ONE_HEAD_EACH)], VALID4, cfg)["load_balance"].item() == pytest.approx(1.0)
    # balanced with two heads per token: f_i = 1/2, mean_k = 2 -> (4 / 2) * 4 * (1/2 * 1/4) = 1
    two = [[[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]]]
    assert aux_losses([_routing(two)], VALID4, cfg)["load_balance"].item() == pytest.approx(1.0)
    # collapsed on head 0 with probability 1: f = P = (1, 0, 0, 0) -> 4 * 1 = H
    col = [[[1, 0, 0, 0]] * 4]
    probs = [[[1.0, 0.0, 0.0, 0.0]] * 4]
    assert aux_losses([_routing(col, probs)], VALID4, cfg)["load_balance"].item() == pytest.approx(4.0)


def test_released_moh_balance_is_k_when_balanced():
    # the released MoH arithmetic drops the 1/mean_k: H_b * sum f_i P_i = 4 * 4 * (1/2 * 1/4) = 2 = k
    two = [[[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]]]
    r = _routing(two)
    r.balance_per_k = False
    assert aux_losses([r], VALID4, _cfg())["load_balance"].item() == pytest.approx(2.0)


def test_entropy_term_of_known_probabilities():
    # uniform over 4 heads: ln 4; one-hot: 0; the padding token (uniform) is left out
    probs = [[[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.25] * 4]]
    r = _routing([[[1, 0, 0, 0]] * 3], probs=probs, kappa=[[1.0, 1.0, 1.0]])
    aux = aux_losses([r], torch.tensor([[True, True, False]]), _cfg())
    assert aux["entropy"].item() == pytest.approx(math.log(4) / 2, rel=1e-6)


def test_z_loss_of_known_logits_ignores_padding():
    cfg = _cfg()
    # token 0: logits 0 -> logsumexp ln 4; token 1: (ln 2, 0, 0, 0) -> ln 5; token 2 is padding
    logits = [[[0.0, 0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0, 0.0], [50.0, 50.0, 50.0, 50.0]]]
    r = _routing([[[1, 0, 0, 0]] * 3], logits=torch.tensor(logits))
    valid = torch.tensor([[True, True, False]])
    z = aux_losses([r], valid, cfg)["z"].item()
    assert z == pytest.approx((math.log(4) ** 2 + math.log(5) ** 2) / 2, rel=1e-6)


def test_complexity_term_is_the_squared_gap_between_used_heads_and_budget():
    cfg = _cfg()
    # used 1 head each; kappa 1, 2, 3, 1 -> gaps 0, 1, 2, 0 -> mean square 5/4, over H^2 = 16
    r = _routing(ONE_HEAD_EACH, kappa=[[1.0, 2.0, 3.0, 1.0]])
    assert aux_losses([r], VALID4, cfg)["complexity"].item() == pytest.approx(5 / 4 / 16)


@pytest.mark.parametrize("mean_count,expected", [
    (3.5, 0.0),                 # at the target: 0
    (4.5, (1 / 4) ** 2),        # one head above: (1/H)^2
    (5.5, (2 / 4) ** 2),        # two above: grows quadratically
    (1.5, (2 / 4) ** 2),        # and symmetrically below
])
def test_budget_term_is_zero_at_the_target_and_grows_away_from_it(mean_count, expected):
    cfg = _cfg(target_heads=3.5)
    # the straight-through count's value is what the term reads; two tokens around the mean
    count = [[mean_count - 0.5, mean_count + 0.5]]
    r = _routing([[[1, 0, 0, 0], [0, 1, 0, 0]]], kappa=[[1.0, 1.0]], count=count)
    got = aux_losses([r], torch.ones(1, 2, dtype=torch.bool), cfg)["budget"].item()
    assert got == pytest.approx(expected, abs=1e-9)


def test_terms_average_over_layers_and_dense_layers_add_nothing():
    cfg = _cfg()
    balanced = _routing(ONE_HEAD_EACH)
    collapsed = _routing([[[1, 0, 0, 0]] * 4], [[[1.0, 0.0, 0.0, 0.0]] * 4])
    dense = Routing(hard=torch.ones(1, 4, 4, dtype=torch.bool))
    aux = aux_losses([balanced, dense, collapsed], VALID4, cfg)
    assert aux["load_balance"].item() == pytest.approx((1.0 + 4.0) / 2)
    assert aux["complexity"] is None and aux["budget"] is None  # no adaptive layer
    dense_only = aux_losses([dense], VALID4, cfg)
    assert set(dense_only) >= {"load_balance", "z", "complexity", "budget"}
    assert all(v is None for v in dense_only.values()), dense_only


def test_weighted_total_is_the_weight_times_each_term():
    cfg = _cfg(lb_weight=0.5, z_weight=2.0)
    aux = {"load_balance": torch.tensor(3.0), "z": torch.tensor(0.25), "complexity": None, "budget": None}
    assert weighted_total(aux, cfg).item() == pytest.approx(0.5 * 3.0 + 2.0 * 0.25)
    assert weighted_total({k: None for k in aux}, cfg) is None


# ------------------------------------------------------------------------------------------------
# gradient norms and clipping


def _params_with_grads(*grads):
    ps = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g)
        ps.append(p)
    return ps


def test_grad_norms_total_and_per_group():
    a, b = _params_with_grads([3.0, 0.0], [0.0, 4.0])
    total, per = grad_norms({"attention": [a], "ffn": [b], "router": []})
    assert total.item() == pytest.approx(5.0)
    assert per["attention"].item() == pytest.approx(3.0) and per["ffn"].item() == pytest.approx(4.0)
    assert per["router"] is None


class _FusedRouter(torch.nn.Module):
    """A user's module with two groups in the rows of one matrix and one bias (moh/row_blocks.py)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, 2))
        self.bias = torch.nn.Parameter(torch.zeros(2))
        self.grad_rows = {"weight": {"router": (0, 2), "threshold": (2, 3)}, "bias": {"threshold": (1, 2)}}


@pytest.mark.usefixtures("both_kernels")
def test_row_blocks_split_a_fused_tensor_between_groups():
    """Rows of one tensor count toward their own groups (a row no group claims, and the bias's
    row 0, count in the total only); the tensor counts once in the total."""
    from moh.monitor.groups import named_groups

    model = torch.nn.Module()
    model.gate = _FusedRouter()
    model.mlp = torch.nn.Linear(1, 1, bias=False)
    model.gate.weight.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0], [12.0, 0.0]])  # rows: 3, 4 | 12
    model.gate.bias.grad = torch.tensor([2.0, 5.0])  # row 0 unclaimed, row 1 threshold
    model.mlp.weight.grad = torch.tensor([[1.0]])
    groups = named_groups(model)
    total, per = grad_norms(groups)
    assert per["router"].item() == pytest.approx(5.0)  # rows 0-1: sqrt(9 + 16)
    assert per["threshold"].item() == pytest.approx(13.0)  # sqrt(144 + 25)
    assert per["ffn"].item() == pytest.approx(1.0) and per["complexity"] is None
    assert total.item() == pytest.approx(math.sqrt(9 + 16 + 144 + 4 + 25 + 1))
    model.gate.weight.grad.mul_(0.5)  # clipped in place later: the norms were taken before
    assert per["router"].item() == pytest.approx(5.0) and per["threshold"].item() == pytest.approx(13.0)
    # all at once as floats (the step record's read): the same values, None without parameters
    as_floats = per.floats()
    assert as_floats == {g: None if per[g] is None else per[g].item() for g in per}
    assert list(as_floats) == list(per) and as_floats["complexity"] is None and as_floats["router"] > 0


@pytest.mark.usefixtures("both_kernels")
def test_row_blocks_of_several_fused_tensors_go_to_their_own_groups():
    """Two fused modules whose groups interleave across tensors (router rows of both, then the
    threshold rows of both, then a bias row): each group is the norm of exactly its rows, and
    with rows=False the rows are measured at measure(), before a clip, or when first read."""
    from moh.monitor.groups import named_groups
    from moh.optim import GradNorms

    model = torch.nn.Module()
    model.a, model.b = _FusedRouter(), _FusedRouter()
    model.a.weight.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0], [12.0, 0.0]])
    model.b.weight.grad = torch.tensor([[0.0, 6.0], [8.0, 0.0], [0.0, 5.0]])
    model.a.bias.grad = torch.tensor([2.0, 9.0])
    model.b.bias.grad = torch.tensor([7.0, 1.0])
    norms = GradNorms(named_groups(model))
    total, per = norms()
    assert per["router"].item() == pytest.approx(math.sqrt(9 + 16 + 36 + 64))  # rows 0-1 of each
    assert per["threshold"].item() == pytest.approx(math.sqrt(144 + 25 + 81 + 1))  # row 2, bias row 1
    assert total.item() == pytest.approx(math.sqrt(9 + 16 + 144 + 36 + 64 + 25 + 4 + 81 + 49 + 1))
    _, later = norms(rows=False)
    later.measure()  # the step turns out to be logged: measured before the clip below
    model.a.weight.grad.mul_(0.5)
    assert later["router"].item() == pytest.approx(math.sqrt(9 + 16 + 36 + 64))
    _, unmeasured = norms(rows=False)  # never measured: read as the gradients are at the read
    model.b.weight.grad.mul_(0.0)
    assert unmeasured["router"].item() == pytest.approx(math.sqrt(9 + 16) / 2)


def test_group_norms_in_c_are_the_torch_formulation_to_float32_rounding(monkeypatch):
    """native.c group_norms against the torch formulation on a real model's gradients (the
    adaptive router's fused rows, every group): equal to float32 rounding, and the C pass is
    the one that ran (it answers None where it cannot take the gradients)."""
    if not native_on():
        pytest.skip("moh/native.c not loaded")
    from moh import native
    from moh.model import LM
    from moh.optim import GradNorms, named_groups

    torch.manual_seed(0)
    model = LM(Config(n_layers=2, n_heads=4, d_model=16, d_ff=32), vocab_size=20)
    idx = torch.randint(0, 20, (3, 9))
    _, loss_sum, _ = model(idx, idx)
    loss_sum.backward()
    norms = GradNorms(named_groups(model))
    answers = []
    real = GradNorms._measure_c
    monkeypatch.setattr(GradNorms, "_measure_c", lambda *a: answers.append(real(*a)) or answers[-1])
    total_c, in_c = norms()
    with native.disabled():
        total_t, in_torch = norms()
    assert [a is not None for a in answers] == [True, False]
    assert total_c.item() == total_t.item()  # the clip's norm: one formulation
    for g in in_c:
        if in_torch[g] is None:
            assert in_c[g] is None
        else:
            assert in_c[g].item() == pytest.approx(in_torch[g].item(), rel=1e-6, abs=0) and in_c[g].item() > 0, g
    assert sum(v is not None for v in in_c.values()) == 6


def test_a_fused_tensor_resized_after_the_table_is_not_read_past():
    """GradNorms reads its table once; a fused parameter given smaller data later (fewer rows
    than the table's) is not handed to the C pass, which would read past its end: the torch
    formulation says the table no longer fits."""
    from moh.monitor.groups import named_groups
    from moh.optim import GradNorms

    model = torch.nn.Module()
    model.gate = _FusedRouter()
    norms = GradNorms(named_groups(model))
    model.gate.weight.data = torch.zeros(2, 2)  # 3 rows in the table
    model.gate.weight.grad = torch.ones(2, 2)
    model.gate.bias.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        norms()


def test_the_adaptive_routers_rows_are_its_three_groups():
    from moh.model import LM
    from moh.optim import named_groups

    model = LM(Config(n_layers=1, n_heads=4, d_model=16, d_ff=32), vocab_size=10)
    r = model.blocks[0].attn.router
    g = named_groups(model)
    assert [(b.start, b.stop) for b in g["router"]] == [(0, 4)]
    assert [(b.param is r.bias, b.start, b.stop) for b in g["complexity"]] == [(False, 4, 5), (True, 0, 1)]
    assert [(b.param is r.bias, b.start, b.stop) for b in g["threshold"]] == [(False, 5, 6), (True, 1, 2)]
    assert torch.equal(r.w_c, r.weight[4]) and torch.equal(r.w_t, r.weight[5])


def _step_clipped(params, total, clip):
    """The trainer's clip: AdamW's fused step divides the gradients in place."""
    AdamW([{"params": params}], lr=0.0, betas=(0.9, 0.999), eps=1e-8).step(grad_scale=clip_divisor(total, clip))


@pytest.mark.usefixtures("both_kernels")
def test_grad_norms_per_group_are_the_gradients_before_clipping():
    """The per-group norms are read on logged steps, after the optimizer's step has clipped the
    gradients in place: they must still be the norms grad_norms measured (the record logs those)."""
    a, b = _params_with_grads([3.0, 0.0], [0.0, 4.0])
    c = torch.nn.Parameter(torch.zeros(2))  # a parameter that got no gradient
    total, per = grad_norms({"attention": [a], "ffn": [b], "router": [c], "threshold": []})
    _step_clipped([a, b], total, 1.0)
    assert a.grad[0].item() == pytest.approx(0.6)  # clipped in place
    assert per["attention"].item() == pytest.approx(3.0) and per["ffn"].item() == pytest.approx(4.0)
    assert per["router"].item() == 0.0 and per["threshold"] is None
    assert list(per) == ["attention", "ffn", "router", "threshold"] and len(per) == 4
    with pytest.raises(KeyError):
        per["embedding"]  # not one of the groups it was given


@pytest.mark.parametrize("clip,post", [(1.0, 1.0), (4.9, 4.9), (5.1, 5.0), (100.0, 5.0), (0.0, 5.0)])
def test_clipping_scales_to_min_of_norm_and_clip(clip, post):
    ps = _params_with_grads([3.0, 0.0], [0.0, 4.0])  # global norm 5
    divisor = clip_divisor(torch.tensor(5.0), clip)
    got = torch.tensor(5.0) if divisor is None else torch.tensor(5.0) / divisor  # what the log says
    assert got.item() == pytest.approx(post, rel=1e-5)
    _step_clipped(ps, torch.tensor(5.0), clip)
    after = math.sqrt(sum(float((p.grad ** 2).sum()) for p in ps))
    assert after == pytest.approx(post, rel=1e-5)
    assert ps[0].grad[0].item() == pytest.approx(3.0 * post / 5.0, rel=1e-5)  # direction kept


def test_a_training_run_logs_the_pre_clip_norm_and_the_clipped_one(tmp_path, tiny_cfg):
    from moh.train import train

    clip = 0.05  # far below this model's early gradient norms
    sink = Records()
    train(tiny_cfg(grad_clip=clip, instruct_epochs=0, eval_prompts=0), None, sink=sink)
    assert sink.steps
    above = [r for r in sink.steps if r["grad_norm"] > clip * 1.01]
    assert len(above) >= len(sink.steps) // 2, "the test needs steps whose norm exceeds the clip"
    for r in sink.steps:
        assert r["grad_norm_clipped"] == pytest.approx(min(r["grad_norm"], clip), rel=1e-4)
        # the logged total is the pre-clip norm: it agrees with the per-group norms
        groups = [v for v in r["grad_norms"].values() if v is not None]
        assert r["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in groups)), rel=1e-4)


def test_the_trained_loss_is_the_lm_loss_plus_the_weighted_aux_terms(tiny_cfg):
    """What a step optimises: loss = lm_loss + sum_t weight_t * aux_t, each weighted term logged."""
    from moh.train import train

    cfg = tiny_cfg(instruct_epochs=0, eval_prompts=0, lb_weight=0.5, z_weight=0.25, budget_weight=3.0)
    sink = Records()
    train(cfg, None, sink=sink)
    weights = {"load_balance": 0.5, "z": 0.25, "complexity": cfg.complexity_weight, "budget": 3.0}
    for r in sink.steps:
        for t, w in weights.items():
            assert r["aux_weighted"][t] == pytest.approx(w * r["aux"][t], rel=1e-6)
        assert r["loss"] == pytest.approx(r["lm_loss"] + sum(r["aux_weighted"].values()), rel=1e-5)
        assert r["loss"] - r["lm_loss"] > 0.4  # load balance alone is >= 0.5 * ~1: the aux part is there


@pytest.mark.parametrize("step,lr", [
    (0, 0.1),     # warmup 9: (0 + 1) / (9 + 1) of the peak
    (4, 0.5),
    (8, 0.9),
    (9, 1.0),     # warmup over: the cosine starts at the peak
    (54, 0.55),   # half-way through the cosine's 90-step span: 0.1 + 0.9 * (1 + cos(pi/2)) / 2
    (99, 0.1),    # last step: the floor, min_lr_ratio x peak
])
def test_learning_rate_schedule_known_points(step, lr):
    from moh.optim import lr_at

    assert lr_at(step, 100, 1.0, 9, 0.1) == pytest.approx(lr, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# the straight-through surrogate's gradient against finite differences


def _surrogate(probs: torch.Tensor, tau: torch.Tensor, kappa: torch.Tensor, t1: float, t2: float) -> torch.Tensor:
    """s_j = sigmoid((tau - C_j) / t1) * sigmoid((kappa - j - 1/2) / t2), written out per head
    with plain loops (ranks from a Python sort), scattered back to head order; (H,) for one token."""
    H = probs.shape[0]
    order = sorted(range(H), key=lambda h: -float(probs[h]))
    out = [None] * H
    cum = torch.zeros((), dtype=probs.dtype)
    for j, h in enumerate(order):
        out[h] = torch.sigmoid((tau - cum) / t1) * torch.sigmoid((kappa - j - 0.5) / t2)
        cum = cum + probs[h]
    return torch.stack(out)


@pytest.mark.parametrize("t1,t2", [(0.1, 1.0), (0.3, 0.5)])
def test_straight_through_gradient_matches_finite_differences_of_the_surrogate(t1, t2):
    # well-separated probabilities (no rank changes under a 1e-6 step)
    probs = torch.tensor([0.05, 0.4, 0.15, 0.3, 0.1], dtype=torch.float64)
    tau, kappa = torch.tensor(0.62, dtype=torch.float64), torch.tensor(2.7, dtype=torch.float64)
    w = torch.tensor([0.7, -1.3, 2.0, 0.4, -0.6], dtype=torch.float64)  # an arbitrary upstream gradient

    # the selection and hand-written backward the model's node (route_fast._AdaptiveRoute) runs
    hard, order, a, b = _st_select(probs.view(1, 1, -1), tau.view(1, 1), kappa.view(1, 1), t1, t2)
    minus_g, g_tau, g_kappa = _st_backward(w.view(1, 1, -1), order, a, b, t1, t2, True)
    p_grad, t_grad, k_grad = -minus_g.view(-1), g_tau.view(()), g_kappa.view(())

    def f(p, t, k):
        return float((_surrogate(p, t, k, t1, t2) * w).sum())

    eps = 1e-6
    for name, x, got in (("tau", tau, t_grad), ("kappa", kappa, k_grad)):
        plus = f(probs, x + eps, kappa) if name == "tau" else f(probs, tau, x + eps)
        minus = f(probs, x - eps, kappa) if name == "tau" else f(probs, tau, x - eps)
        assert got.item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-9), name
    for h in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[h] = eps
        fd = (f(probs + e, tau, kappa) - f(probs - e, tau, kappa)) / (2 * eps)
        assert p_grad[h].item() == pytest.approx(fd, rel=1e-6, abs=1e-9), f"probs[{h}]"
    assert p_grad.abs().sum() > 0 and t_grad.abs() > 0 and k_grad.abs() > 0
    # the forward value is the hard mask: ranks 0, 1, 2 pass kappa 2.7; C = 0, .4, .7 -> tau .62 keeps 2
    assert hard.view(-1).tolist() == [False, True, False, True, False]
