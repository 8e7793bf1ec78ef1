"""Loss alignment telemetry: Spearman of per-token complexity / head count against token LM loss."""

from __future__ import annotations

import math

import pytest
import torch

from moh import schema
from moh.alignment import average_ranks, loss_alignment, spearman
from moh.model import LM
from moh.monitor.rows import layer_rows as _rows
from moh.routing import Routing
from moh.train import train
from tests.moh.native_switch import both_kernels  # noqa: F401 (fixture)
from tests.moh.records import Records

pytestmark = pytest.mark.usefixtures("both_kernels")


def test_average_ranks_share_ties():
    assert average_ranks(torch.tensor([10.0, 20.0, 20.0, 5.0])).tolist() == [1.0, 2.5, 2.5, 0.0]


def test_spearman_known_answers():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    # 1 - 6 * sum d^2 / (n (n^2 - 1)) with d = (1, -1, 1, -1, 0): 1 - 24 / 120
    assert float(spearman(x, torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0]))) == pytest.approx(0.8)
    assert float(spearman(x, x ** 3)) == pytest.approx(1.0)  # monotone, not linear
    assert float(spearman(x, -x)) == pytest.approx(-1.0)
    # ties: x ranks (0.5, 0.5, 2, 3), y ranks (0, 1, 2, 3): Pearson of those = 0.9487 (by hand)
    r = spearman(torch.tensor([1.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert float(r) == pytest.approx(3 / math.sqrt(10), abs=1e-6)


def test_average_ranks_batched_rows_are_independent():
    x = torch.tensor([[3.0, 1.0, 2.0, 2.0], [7.0, 7.0, 7.0, 7.0]])
    assert average_ranks(x).tolist() == [[3.0, 0.0, 1.5, 1.5], [1.5, 1.5, 1.5, 1.5]]


def test_spearman_undefined_is_nan_not_zero():
    assert math.isnan(float(spearman(torch.ones(5), torch.arange(5.0))))  # constant series
    assert math.isnan(float(spearman(torch.arange(5.0), torch.ones(5))))  # constant loss
    assert math.isnan(float(spearman(torch.tensor([1.0]), torch.tensor([2.0]))))  # one token


def _adaptive(complexity, heads):
    B, T = complexity.shape
    hard = torch.arange(8).expand(B, T, 8) < heads.unsqueeze(-1)  # the first `heads` heads
    return Routing(hard=hard, complexity=complexity)


def test_loss_alignment_reads_target_positions_in_order():
    # two rows; the last position of row 0 and the pads of row 1 have no target
    has_target = torch.tensor([[True, True, True, False], [True, True, False, False]])
    complexity = torch.tensor([[0.1, 0.5, 0.9, 0.99], [0.3, 0.7, 0.0, 0.0]])
    heads = torch.tensor([[1, 3, 5, 8], [2, 4, 1, 1]])
    loss = torch.tensor([1.0, 2.0, 5.0, 1.5, 3.0])  # target tokens, row-major: rises with complexity
    dense = Routing(hard=torch.ones(2, 4, 8, dtype=torch.bool))
    out = loss_alignment([_adaptive(complexity, heads), dense], has_target, loss)
    assert float(out[0]["complexity_loss_corr"]) == pytest.approx(1.0)
    assert float(out[0]["heads_loss_corr"]) == pytest.approx(1.0)  # heads (1,3,5,2,4) rank like loss
    assert out[1] == {"complexity_loss_corr": None, "heads_loss_corr": None}
    # easier-is-more: the sign follows the loss (a position read out of order could not give +-1)
    rev = loss_alignment([_adaptive(complexity, heads)], has_target, -loss)[0]
    assert float(rev["complexity_loss_corr"]) == pytest.approx(-1.0)


def test_loss_alignment_without_token_losses_is_null():
    r = _adaptive(torch.rand(1, 3), torch.tensor([[1, 2, 3]]))
    assert loss_alignment([r], torch.ones(1, 3, dtype=torch.bool), None) == [
        {"complexity_loss_corr": None, "heads_loss_corr": None}]


def test_uniform_allocation_has_no_head_correlation():
    r = _adaptive(torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[2, 2, 2]]))
    out = loss_alignment([r], torch.ones(1, 3, dtype=torch.bool), torch.tensor([3.0, 2.0, 1.0]))[0]
    assert math.isnan(float(out["heads_loss_corr"])) and float(out["complexity_loss_corr"]) == pytest.approx(-1.0)
    # ... which the step record writes as null (undefined), not NaN or 0
    assert _rows([{"heads_mean": torch.tensor(2.0)} | out])[0]["heads_loss_corr"] is None


def test_token_losses_do_not_change_the_trained_loss(tiny_cfg):
    torch.manual_seed(0)
    model = LM(tiny_cfg(), vocab_size=50)
    idx = torch.randint(0, 50, (3, 10))
    targets = idx.roll(-1, 1)
    targets[:, -1] = -100
    targets[2, 6:] = -100
    none, plain, _ = model(idx, targets)
    per_token, with_flag, _ = model(idx, targets, token_losses=True)
    assert none is None and torch.equal(plain, with_flag)  # bit-identical training loss
    assert per_token.shape == ((targets != -100).sum(),) and not per_token.requires_grad
    assert float(per_token.sum()) == pytest.approx(float(plain.detach()), rel=1e-5)


@pytest.mark.parametrize("router", ["adaptive", "moh", "dense"])
def test_logged_steps_carry_the_alignment_of_each_layer(tiny_cfg, router):
    sink = Records()
    assert train(tiny_cfg(router=router, log_every=2), None, sink=sink).status == "completed"
    steps = [r for r in sink.records if r["event"] == schema.STEP]
    values = [layer[f] for r in steps for layer in r["layers"] for f in schema.ALIGNMENT_STATS]
    assert len(steps) >= 3
    if router == "adaptive":
        corr = [layer["complexity_loss_corr"] for r in steps for layer in r["layers"]]
        assert all(isinstance(v, float) and -1.0 <= v <= 1.0 for v in corr), corr
        assert len(set(corr)) > 2  # measured per step and layer, not a constant
        # head counts may tie across a whole step in this tiny model (then null); never out of range
        heads = [layer["heads_loss_corr"] for r in steps for layer in r["layers"]]
        assert any(isinstance(v, float) for v in heads)
        assert all(v is None or -1.0 <= v <= 1.0 for v in heads)
    else:
        assert values and all(v is None for v in values)  # no per-token budget: null, never 0


def test_json_schema_bounds_the_correlations():
    import json
    from importlib import resources

    import jsonschema

    doc = json.loads(resources.files("moh").joinpath("telemetry.schema.json").read_text("utf-8"))
    layer = jsonschema.Draft202012Validator({"$defs": doc["$defs"], "$ref": "#/$defs/layer"})
    base = {f: None for f in schema.LAYER_FIELDS} | {"layer": 0}
    for ok in (None, -1.0, 0.0, 1.0):
        assert layer.is_valid(base | {"complexity_loss_corr": ok, "heads_loss_corr": ok})
    for bad in (1.01, -1.5, "NaN"):
        assert not layer.is_valid(base | {"complexity_loss_corr": bad})
        assert not layer.is_valid(base | {"heads_loss_corr": bad})
