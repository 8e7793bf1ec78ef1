"""bench/allocation.py: the allocation measurement's known answers (issue 18).

Spearman on constructed data, the complexity-quartile split, the forced masks (exactly one head
fewer / more, the right head, never past 1 or H), and the command on a real trained run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import allocation  # noqa: E402

from moh.config import Config  # noqa: E402
from moh.model import LM  # noqa: E402
from moh.routing import Routing  # noqa: E402


def test_correlations_of_constructed_tokens():
    # one layer, 5 tokens. heads 1..5 against loss rising: +1; against entropy falling: -1.
    # complexity 1..5 against entropy 5, 6, 7, 8, 7: ranks 0, 1, 2.5, 4, 2.5 vs 0..4;
    # centred: (-2, -1, 0, 1, 2) . (-2, -1, 0.5, 2, 0.5) = 8; norms^2 10 and 9.5 -> 8 / sqrt(95)
    table = {"heads": np.array([[1.0, 2, 3, 4, 5]]), "complexity": np.array([[1.0, 2, 3, 4, 5]]),
             "loss": np.array([0.1, 0.2, 0.3, 0.4, 0.5]), "entropy": np.array([5.0, 6, 7, 8, 7]),
             "budget_bound": np.array([[1.0, 1, 0, 0, 1]])}
    got = allocation.correlations(table)
    lay = got["layers"][0]
    assert lay["heads_loss"] == pytest.approx(1.0)
    assert lay["complexity_entropy"] == pytest.approx(8 / math.sqrt(95))
    assert got["n_tokens"] == 5 and lay["heads_mean"] == 3.0 and lay["budget_bound"] == 0.6
    table["entropy"] = np.array([5.0, 4, 3, 2, 1])
    assert allocation.correlations(table)["layers"][0]["heads_entropy"] == pytest.approx(-1.0)


def test_a_constant_series_has_no_correlation_and_the_layer_mean_skips_it():
    table = {"heads": np.array([[2.0, 2, 2], [1.0, 2, 3]]), "complexity": np.array([[0.1, 0.2, 0.3]] * 2),
             "loss": np.array([1.0, 2, 3]), "entropy": np.array([1.0, 2, 3]), "budget_bound": np.ones((2, 3))}
    got = allocation.correlations(table)
    assert got["layers"][0]["heads_loss"] is None  # every token 2 heads: nothing to rank
    assert got["mean"]["heads_loss"] == pytest.approx(1.0)  # layer 1 only


def test_quartile_effects_of_known_records():
    # complexity 0..7, loss change = complexity: quartile edges 1.75, 3.5, 5.25 ->
    # {0, 1}, {2, 3}, {4, 5}, {6, 7}: means 0.5, 2.5, 4.5, 6.5. Token 7 could not be forced:
    # it is counted as impossible and leaves Q4's mean at 6.
    recs = [(float(c), float(c), 3, 2, c != 7) for c in range(8)]
    qs = allocation.quartile_effects(recs)
    assert [q["dloss_mean"] for q in qs] == [0.5, 2.5, 4.5, 6.0]
    assert [q["n"] for q in qs] == [2, 2, 2, 1] and qs[3]["n_impossible"] == 1
    assert allocation._margin(qs) == 5.5


def _routing() -> Routing:
    # 1 x 3 tokens, 4 heads. token 0: heads 0, 2 (probs 0.4, 0.3) of 0.4, 0.2, 0.3, 0.1;
    # token 1: one head (cannot lose one); token 2: all four (cannot gain one)
    hard = torch.tensor([[[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]]], dtype=torch.bool)
    probs = torch.tensor([[[0.4, 0.2, 0.3, 0.1], [0.1, 0.7, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]]])
    return Routing(hard=hard, gates=hard.float(), probs=probs)


def test_removing_drops_the_least_probable_selected_head_and_never_the_last():
    r = _routing()
    ok = allocation.force_one(r, torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), -1)
    assert ok.tolist() == [True, False, True]
    assert r.hard[0].int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]]
    assert torch.equal(r.gates, r.hard.float())  # the forward gates follow the mask


def test_adding_takes_the_most_probable_unselected_head_and_never_past_h():
    r = _routing()
    ok = allocation.force_one(r, torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), +1)
    assert ok.tolist() == [True, True, False]
    assert r.hard[0].int().tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_forcing_one_position_changes_its_count_by_exactly_one_and_leaves_the_others():
    r = _routing()
    before = r.hard.clone()
    allocation.force_one(r, torch.tensor([0]), torch.tensor([0]), -1)
    assert (r.hard.sum(-1) - before.sum(-1)).tolist() == [[-1, 0, 0]]


def test_intervention_on_a_model_moves_the_loss_of_the_forced_position():
    cfg = Config(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_len=16)
    torch.manual_seed(0)
    model = LM(cfg, vocab_size=12).eval()
    idx = torch.randint(3, 12, (2, 9))
    lengths = torch.tensor([9, 6])
    for delta in (-1, 1):
        recs = allocation.intervene(model, idx, lengths, layer=0, delta=delta)
        assert len(recs) == 8 + 5  # one per target position of each row
        done = [r for r in recs if r[4]]
        assert done and all(r[3] - r[2] == delta for r in done)
        assert all(r[3] == r[2] for r in recs if not r[4])
        assert any(abs(r[1]) > 0 for r in done)  # a head fewer / more changes the prediction


def test_a_missing_run_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "allocation.py"), str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "no model.pt" in p.stderr and "Traceback" not in p.stderr


def test_a_corrupt_model_file_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "allocation.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "not a moh model file" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_the_command_on_a_trained_run(tmp_path):
    run = tmp_path / "run"
    moh = Path(sys.executable).with_name("moh")
    subprocess.run([str(moh), "train", "--quiet", "--out", str(run), "--threads", "1",
                    "--pretrain-epochs", "2", "--instruct-epochs", "1",
                    "--set", "complexity_target=loss_rank"], check=True, capture_output=True, timeout=600)
    out = tmp_path / "a.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "allocation.py"), str(run), "--sample", "100",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    (res,) = json.loads(out.read_text())
    assert res["complexity_target"] == "loss_rank"
    assert res["pretrain"]["n_tokens"] > 1000 and res["instruct"]["n_tokens"] > 100
    assert res["heldout"]["n_tokens"] > 100  # the reference corpus's mostly in-vocabulary examples
    for name in ("instruct", "pretrain", "heldout"):
        for v in res[name]["mean"].values():
            assert v is None or -1.0 <= v <= 1.0
    for name in ("instruct", "pretrain"):
        lay = res["intervention"][name]["layers"]
        assert len(lay) == 2 and all(len(x["remove"]["quartiles"]) == 4 for x in lay)
        assert sum(q["n"] + q["n_impossible"] for q in lay[0]["remove"]["quartiles"]) >= 100
    assert run.name in p.stdout
