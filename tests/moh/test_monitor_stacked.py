"""The stacked step-record path (moh/monitor/stacked.py) against the per-layer reference
(routing.layer_stats + alignment.loss_alignment + rows.layer_rows) on real routings of a small
model: the same floats to the bit, the same keys in the same order (compared as JSON text,
which round-trips floats exactly), and the reference whenever the layers cannot be stacked."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from moh.alignment import average_ranks, loss_alignment, spearman, spearman_rows
from moh.data import load_corpus, make_batches
from moh.model import IGNORE_INDEX, LM
from moh import native
from moh.monitor import Recorder, stacked
from moh.monitor.rows import layer_rows
from moh.optim import make_optimizer
from moh.routing import Routing, layer_stats
from moh.tokenizer import Tokenizer


def reference(parts, layers, full, has_target, token_loss):
    """What Recorder._layer_rows writes layer by layer on one process."""
    stats = [layer_stats(r, v, full=full) for r, v in parts]
    if has_target is not None:
        corr = loss_alignment([r for r, _ in parts], has_target, token_loss)
        stats = [s | c for s, c in zip(stats, corr)]
    return layer_rows(stats, layers)


def text(rows):
    return json.dumps(rows)


_CORPUS = load_corpus(None)


def real_step(tiny_cfg, router, steps=3, padded=True):
    """Routings, valid mask, targets and per-token losses of a real batch, after `steps`
    optimizer steps (so the adaptive router's counts and complexities vary)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(router=router)
    tok = Tokenizer.fit(_CORPUS.texts())
    # instruction pairs: padded batches; pre-training text: full ones (every token valid)
    seqs = [tok.encode(t) for t in (_CORPUS.instruct if padded else _CORPUS.pretrain)]
    batches = make_batches(seqs, 16, seed=0, epoch=0, pad_id=tok.pad_id, max_len=cfg.max_len)
    model = LM(cfg, tok.vocab_size)
    opt = make_optimizer(model, cfg, 3e-3)
    for idx, targets in batches[:steps]:
        _, loss_sum, _ = model(idx, targets)
        opt.zero_grad()
        (loss_sum / (targets != IGNORE_INDEX).sum()).backward()
        opt.step()
    idx, targets = batches[steps]
    token_loss, _, routings = model(idx, targets, token_losses=True)
    valid = idx != tok.pad_id
    assert bool(valid.all()) != padded  # both branches of the valid-token selection
    parts = [(Routing(hard=r.hard.detach().bool(), probs=None if r.probs is None else r.probs.detach().float(),
                      tau=r.tau, complexity=r.complexity, pred_norm=r.pred_norm), valid) for r in routings]
    return parts, targets != IGNORE_INDEX, token_loss


@pytest.mark.parametrize("router", ["adaptive", "moh", "dense"])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_stacked_rows_are_the_reference_to_the_bit(tiny_cfg, router, full, padded, kernels, monkeypatch):
    parts, has_target, token_loss = real_step(tiny_cfg, router, padded=padded)
    in_c = spy_c(monkeypatch)
    for ht, tl in ((None, None), (has_target, None), (has_target, token_loss)):
        with native.disabled() if kernels == "torch" else contextlib.nullcontext():
            fast = stacked.rows(parts, [0, 1], full, ht, tl)
        assert fast is not None  # same shapes: the stacked path is taken
        assert text(fast) == text(reference(parts, [0, 1], full, ht, tl))
    assert in_c == [kernels == "native"] * 3  # the path named is the one run
    if router == "adaptive":  # the alignment values are measured, not null, on this step
        assert isinstance(fast[0]["complexity_loss_corr"], float)
        assert fast[0]["complexity_loss_corr"] != fast[1]["complexity_loss_corr"]


def spy_c(monkeypatch) -> list[bool]:
    """What each stacked._values_in_c call answered (True: native.c step_layers made the values)."""
    calls: list[bool] = []
    real = stacked._values_in_c

    def spy(*args):
        got = real(*args)
        calls.append(got is not None)
        return got
    monkeypatch.setattr(stacked, "_values_in_c", spy)
    return calls


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_random_float_fields_of_many_sizes_match_the_reference(kernels, monkeypatch):
    # thresholds, complexities and probabilities with no exact sums: each row-wise mean (in C, a
    # double sum in token order; in torch, a float64 row-wise mean) must round as the per-layer
    # 1-d float64 mean does, at sizes below and above the kernels' blocks
    in_c = spy_c(monkeypatch)
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 7, 31, 224, 1000, 4099, 224):  # (the last reuses a larger buffer)
        valid = torch.rand(n, generator=g) > 0.2
        valid[0] = True
        parts = []
        for _ in range(3):
            probs = torch.rand(n, 6, generator=g).softmax(-1)
            hard = probs > 1 / 6
            parts.append((Routing(hard=hard, probs=probs, tau=torch.rand(n, generator=g),
                                  complexity=torch.rand(n, generator=g) * 1e3,
                                  pred_norm=torch.rand((), generator=g)), valid))
        has_target = torch.rand(n, generator=g) > 0.1
        loss = torch.rand(int(has_target.sum()), generator=g)
        for full in (False, True):
            with native.disabled() if kernels == "torch" else contextlib.nullcontext():
                fast = stacked.rows(parts, [3, 5, 9], full, has_target, loss)
            assert text(fast) == text(reference(parts, [3, 5, 9], full, has_target, loss)), n
    assert in_c == [kernels == "native"] * 16


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_known_answers_of_every_field(kernels):
    """Both paths (native.c step_layers, the torch ops) on values with known answers: means,
    extremes, the entropy, pred_norm, prob_mean and the head counts over the valid tokens
    only; a NaN in a valid token makes its field NaN, one in a padding token is not read."""
    valid = torch.tensor([True, False, True, True])
    tau = torch.tensor([1.0, 100.0, 2.0, 4.0])
    probs = torch.tensor([[0.5, 0.5], [float("nan"), 1.0], [1.0, 0.0], [0.25, 0.75]])
    hard = probs > 0.4  # valid tokens use 2, 1 and 1 heads (the padding token 1)
    parts = [(Routing(hard=hard, probs=probs, tau=tau, complexity=torch.tensor([0.5, 0.0, float("nan"), 0.25]),
                      pred_norm=torch.tensor(3.5)), valid),
             (Routing(hard=hard.flip(-1).contiguous(), probs=probs.flip(-1).contiguous(), tau=tau * 2,
                      complexity=tau, pred_norm=torch.tensor(-1.0)), valid)]
    with native.disabled() if kernels == "torch" else contextlib.nullcontext():
        a, b = stacked.rows(parts, [0, 1], True, None, None)
    f32 = lambda x: torch.tensor(x, dtype=torch.float64).float().item()  # noqa: E731
    plogp = 0.5 * math.log(0.5) * 2 + 0.0 + 0.25 * math.log(0.25) + 0.75 * math.log(0.75)  # 0 log 0 = 0
    assert (a["threshold_mean"], a["threshold_min"], a["threshold_max"]) == (f32(7 / 3), 1.0, 4.0)
    assert (b["threshold_mean"], b["threshold_min"], b["threshold_max"]) == (f32(14 / 3), 2.0, 8.0)
    assert all(a[f] != a[f] for f in ("complexity_mean", "complexity_min", "complexity_max"))  # NaN
    assert (b["complexity_mean"], b["complexity_min"], b["complexity_max"]) == (f32(7 / 3), 1.0, 4.0)
    assert a["entropy"] == b["entropy"] == -f32(plogp / 3) and (a["pred_norm"], b["pred_norm"]) == (3.5, -1.0)
    assert a["prob_mean"] == [f32(1.75 / 3), f32(1.25 / 3)] and b["prob_mean"] == [f32(1.25 / 3), f32(1.75 / 3)]
    assert (a["heads_mean"], a["heads_min"], a["heads_max"]) == (f32(4 / 3), 1.0, 2.0)
    assert a["heads_std"] == f32(math.sqrt(2 / 9)) and a["head_load"] == b["head_load"] == [f32(2 / 3)] * 2
    assert a["heads_hist"] == b["heads_hist"] == [0.0, f32(2 / 3), f32(1 / 3)]


def test_an_alignment_the_call_cannot_rank_is_made_after_it(monkeypatch):
    """One target token (nothing to rank): step_layers makes the rest and the alignment comes
    from alignment.py after it, null; a strided target mask is copied for the call: values. Both
    as the reference."""
    in_c = spy_c(monkeypatch)
    g = torch.Generator().manual_seed(6)
    valid = torch.ones(40, dtype=torch.bool)
    parts = [(Routing(hard=torch.rand(40, 4, generator=g) > 0.5, tau=torch.rand(40, generator=g),
                      complexity=torch.rand(40, generator=g)), valid) for _ in range(2)]
    one = torch.zeros(40, dtype=torch.bool)
    one[3] = True
    strided = (torch.rand(80, generator=g) > 0.3)[::2]
    for has in (one, strided):
        loss = torch.rand(int(has.sum()), generator=g)
        got = stacked.rows(parts, [0, 1], False, has, loss)
        assert text(got) == text(reference(parts, [0, 1], False, has, loss))
        assert (got[0]["heads_loss_corr"] is None) == (has is one)
    assert in_c == [True, True]


def test_a_field_of_the_wrong_length_is_refused_not_read_past(monkeypatch):
    """A threshold or probability table with fewer values than tokens (a caller's bug): the C
    pass is not called (it would read past the tensor); the torch ops raise, as the reference."""
    in_c = spy_c(monkeypatch)
    valid = torch.ones(6, dtype=torch.bool)
    hard = torch.rand(6, 3) > 0.5
    for short in ({"tau": torch.rand(4)}, {"probs": torch.rand(4, 3)}):
        parts = [(Routing(hard=hard, **short), valid) for _ in range(2)]
        with pytest.raises((IndexError, RuntimeError)):
            stacked.rows(parts, [0, 1], False, None, None)
        with pytest.raises((IndexError, RuntimeError)):
            reference(parts, [0, 1], False, None, None)
    assert in_c == [False, False]


def test_fields_the_kernels_cannot_take_go_to_the_torch_ops(monkeypatch):
    """float64 or strided fields: step_layers is not called (it reads float32 rows), the torch
    ops answer, the same values as the reference."""
    in_c = spy_c(monkeypatch)
    g = torch.Generator().manual_seed(2)
    valid = torch.rand(50, generator=g) > 0.2
    for bad in (torch.rand(50, generator=g).double(), torch.rand(100, generator=g)[::2]):
        parts = [(Routing(hard=torch.rand(50, 4, generator=g) > 0.5, tau=bad), valid) for _ in range(2)]
        assert text(stacked.rows(parts, [0, 1], False, None, None)) == text(reference(parts, [0, 1], False, None, None))
    assert in_c == [False, False]


def test_head_counts_of_many_values_match_the_reference_in_c_and_past_its_limits():
    """Head counts with many distinct values (40 units), so the std's squared deviations do
    not sum exactly: native.c head_count_stats must add them in torch's order, in double. At
    stacked._STD_GRAIN tokens and more the torch ops answer (torch's std then sums in
    parallel chunks); both against the reference, padded and not."""
    g = torch.Generator().manual_seed(4)
    for n in (3, 224, 5000, stacked._STD_GRAIN):
        for pad in (0.0, 0.3):
            valid = torch.rand(n, generator=g) >= pad
            valid[0] = True
            parts = [(Routing(hard=torch.rand(n, 40, generator=g) < torch.rand(n, 1, generator=g)), valid)
                     for _ in range(2)]
            for full in (False, True):
                fast = stacked.rows(parts, [0, 1], full, None, None)
                assert text(fast) == text(reference(parts, [0, 1], full, None, None)), (n, pad, full)
            assert n < 224 or parts[0][0].hard.sum(-1).unique().numel() > 20  # many distinct counts


def test_layers_that_cannot_be_stacked_take_the_reference_path(tiny_cfg):
    parts, has_target, token_loss = real_step(tiny_cfg, "adaptive", steps=1)
    (r0, v), (r1, _) = parts
    no_tau = Routing(hard=r1.hard, probs=r1.probs, complexity=r1.complexity, pred_norm=r1.pred_norm)
    other_valid = v.clone()  # equal values, another tensor: not provably the same tokens
    narrow = Routing(hard=r1.hard[..., :2], probs=r1.probs, tau=r1.tau, complexity=r1.complexity,
                     pred_norm=r1.pred_norm)
    half = Routing(hard=r1.hard, probs=r1.probs.half(), tau=r1.tau, complexity=r1.complexity,
                   pred_norm=r1.pred_norm)
    for mixed in ([(r0, v), (no_tau, v)], [(r0, v), (r1, other_valid)], [(r0, v), (narrow, v)],
                  [(r0, v), (half, v)]):
        assert not stacked.stackable(mixed)
        assert stacked.rows(mixed, [0, 1], False, has_target, token_loss) is None
    assert stacked.stackable([(r0, v), (r1, v)])
    # the Recorder writes the reference's values either way
    for mixed in ([(r0, v), (no_tau, v)], [(r0, v), (r1, v)]):
        with Recorder(None, unit="head") as rec:
            for li, (r, vl) in enumerate(mixed):
                rec.routing(li, selected=r.hard, probs=r.probs, threshold=r.tau, complexity=r.complexity,
                            valid=vl, pred_norm=r.pred_norm)
            got = rec.step(1, loss=1.0, token_loss=token_loss, has_target=has_target)["layers"]
        assert text(got) == text(reference(mixed, [0, 1], False, has_target, token_loss))


def test_no_valid_token_raises_as_the_reference_does(tiny_cfg):
    parts, has_target, token_loss = real_step(tiny_cfg, "moh", steps=0)
    none = torch.zeros_like(parts[0][1])
    parts = [(r, none) for r, _ in parts]
    assert stacked.rows(parts, [0, 1], False, None, None) is None
    with pytest.raises(RuntimeError):
        reference(parts, [0, 1], False, None, None)


def test_recorder_default_valid_is_one_mask_for_the_step():
    # routing() without `valid` on several layers: one shared all-true mask, so the step is
    # stackable, and the values are the reference's over every token
    hard = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(2)) > 0.5
    with Recorder(None, unit="head") as rec:
        rec.routing(0, selected=hard)
        rec.routing(1, selected=~hard)
        assert rec._acc[0][1] is rec._acc[1][1] and bool(rec._acc[0][1].all())
        got = rec.step(1, loss=1.0)["layers"]
    ones = torch.ones(2, 5, dtype=torch.bool)
    assert text(got) == text(reference([(Routing(hard=hard), ones), (Routing(hard=~hard), ones)],
                                       [0, 1], False, None, None))


def test_spearman_rows_is_spearman_ranked_once():
    g = torch.Generator().manual_seed(3)
    y = torch.rand(300, generator=g)
    x = torch.stack([torch.randint(0, 4, (300,), generator=g).float(), torch.rand(300, generator=g),
                     torch.full((300,), 2.0)])  # ties, no ties, constant (NaN)
    table = torch.cat([y[None], x])
    got = spearman_rows(table)
    assert torch.equal(got[:2], spearman(x, y)[:2]) and bool(got[2].isnan())
    assert torch.equal(average_ranks(table)[0], average_ranks(y))
    assert spearman_rows(table[:, :1]).isnan().all() and spearman_rows(table[:, :1]).shape == (3,)
