"""`moh train` writes through `moh.monitor.Recorder` (one telemetry path, issue 12): a structural
check of moh/train.py, a real training run whose log is exactly what the Recorder emitted, and
the Recorder features the engine relies on (grad_norms before clipping, force_log, resume,
extra sinks, alignment) on small real models."""

from __future__ import annotations

import ast
import json
import os

import pytest
import torch
import torch.nn as nn

from moh import schema
from moh.monitor import Recorder
from moh.monitor import recorder as recorder_mod
from moh.train import train
from tests.moh.records import Records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "moh", "train.py")


def _records(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _names(tree: ast.AST) -> set[str]:
    """Every name, dotted attribute and imported name of a module (`schema.record`, `JsonlSink`, ...)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            out.add(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            out.update(a.asname or a.name for a in node.names)
    return out


def test_train_module_makes_no_record_and_no_statistic_of_its_own():
    used = _names(ast.parse(open(TRAIN, encoding="utf-8").read()))
    assert "Recorder" in used
    bypass = {"schema.record", "JsonlSink", "NullSink", "TeeSink", "layer_stats", "layer_stats_global",
              "loss_alignment", "grad_norms", "layer_rows", "encode_record", "encode_line"}
    assert not used & bypass, f"moh/train.py writes or reduces telemetry itself: {sorted(used & bypass)}"


def test_a_real_run_logs_exactly_what_the_recorder_emitted(tmp_path, tiny_cfg, monkeypatch):
    emitted = []
    real = recorder_mod.Recorder._emit

    def spy(self, rec):
        emitted.append(rec)
        real(self, rec)
    monkeypatch.setattr(recorder_mod.Recorder, "_emit", spy)
    extra = Records()
    res = train(tiny_cfg(threads=1, log_every=3, eval_prompts=2), tmp_path, sink=extra)
    assert res.status == "completed"
    lines = open(tmp_path / "run.jsonl", "rb").read().splitlines(keepends=True)
    assert lines == [schema.encode_line(r) for r in emitted]
    assert [r is e for r, e in zip(extra.records, emitted)] == [True] * len(emitted) and len(extra.records) == len(emitted)
    kinds = [r["event"] for r in emitted]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and kinds.count("eval") == 2
    steps = [r["step"] for r in emitted if r["event"] == "step"]
    total = res.steps
    # every 3rd step plus each phase's last step (force_log), nothing else
    last_pre = next(r["step"] for r in emitted if r["event"] == "eval")
    assert steps == sorted({s for s in range(1, total + 1) if s % 3 == 0} | {last_pre, total})
    assert all(len(r["layers"]) == 2 and len(r["layers"][0]["head_load"]) == 4 for r in emitted if r["event"] == "step")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 3)
        self.router = nn.Linear(3, 2)
        self.out = nn.Linear(3, 6)

    def forward(self, idx):
        x = self.embed(idx)
        p = self.router(x).softmax(-1)
        self.sel = torch.nn.functional.one_hot(p.argmax(-1), 2).bool()
        self.p = p
        return nn.functional.cross_entropy(self.out(x * p[..., :1]).flatten(0, 1), idx.flatten(), reduction="none")


def test_grad_norms_before_clipping_then_step_after_the_optimizer(tmp_path):
    torch.manual_seed(0)
    m = Tiny()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with Recorder(tmp_path, model=m, unit="expert") as rec:
        idx = torch.tensor([[0, 1, 2, 3, 4]])
        tl = m(idx)
        tl.mean().backward()
        want = torch.sqrt(sum(p.grad.square().sum() for p in m.parameters())).item()
        norm, per = rec.grad_norms()
        torch.nn.utils.clip_grad_norm_(m.parameters(), want / 10)
        opt.step()
        rec.routing(0, selected=m.sel, probs=m.p)
        got = rec.step(1, loss=tl.mean(), grad_norm_clipped=want / 10)
    assert got["grad_norm"] == pytest.approx(want, rel=1e-6) and norm.item() == got["grad_norm"]
    assert got["grad_norm_clipped"] == pytest.approx(want / 10)
    assert got["grad_norms"]["router"] > 0 and per["router"].item() == got["grad_norms"]["router"]


def test_force_log_writes_an_off_grid_step_with_its_routing(tmp_path):
    sel = torch.tensor([[True, False], [False, True]])
    with Recorder(tmp_path, unit="expert", log_every=10) as rec:
        for step in (1, 2, 3):
            if step == 3:
                rec.force_log()
            rec.routing(0, selected=sel)
            rec.step(step, loss=1.0)
    steps = [r for r in _records(tmp_path / "run.jsonl") if r["event"] == "step"]
    assert [s["step"] for s in steps] == [3]  # not 1 or 2: off the grid and not forced
    assert steps[0]["layers"][0]["head_load"] == [0.5, 0.5]


def test_known_unit_count_writes_run_start_at_once_and_resume_appends(tmp_path):
    rec = Recorder(tmp_path, unit="head", kind="dense", n_units=3, run_info={"data": {"source": "x"}})
    assert [r["event"] for r in _records(tmp_path / "run.jsonl")] == ["run_start"]
    assert _records(tmp_path / "run.jsonl")[0]["data"] == {"source": "x"}
    rec.routing(0, selected=torch.ones(2, 3, dtype=torch.bool))
    rec.step(1, loss=2.0)
    run_id = rec.run_id
    rec.close(schema.STATUS_INTERRUPTED)
    with open(tmp_path / "run.jsonl", "ab") as f:
        f.write(b'{"event":"st')  # a kill mid-write
    with Recorder(tmp_path, unit="head", kind="dense", resume={"step": 1, "run_id": run_id, "batch": 7}) as rec:
        rec.routing(0, selected=torch.ones(2, 3, dtype=torch.bool))
        rec.step(2, loss=1.5)
    recs = _records(tmp_path / "run.jsonl")
    assert [r["event"] for r in recs] == ["run_start", "step", "run_end", "resume", "alert", "step", "run_end"]
    assert recs[3]["step"] == 1 and recs[3]["run_id"] == run_id and recs[3]["batch"] == 7
    assert recs[4]["code"] == "torn_line" and "cut 12 bytes" in recs[4]["message"]
    assert recs[-1]["steps"] == 2 and recs[-1]["status"] == "completed"


def test_alignment_fields_from_token_loss_and_null_after_accumulation(tmp_path):
    sel = torch.tensor([[[True, False], [True, True], [True, True], [False, False]]])  # 1, 2, 2, 0 units
    cx = torch.tensor([[0.1, 0.5, 0.9, 0.0]])
    has = torch.tensor([[True, True, True, False]])
    with Recorder(tmp_path, unit="head", kind="adaptive") as rec:
        rec.routing(0, selected=sel, complexity=cx)
        one = rec.step(1, loss=1.0, token_loss=torch.tensor([1.0, 2.0, 3.0]), has_target=has)
        rec.routing(0, selected=sel, complexity=cx)
        rec.routing(0, selected=sel, complexity=cx)
        two = rec.step(2, loss=1.0, token_loss=torch.tensor([1.0, 2.0, 3.0]), has_target=has)
        rec.routing(0, selected=sel, complexity=cx)
        three = rec.step(3, loss=1.0)
    # complexity 0.1 < 0.5 < 0.9 against loss 1 < 2 < 3: rank correlation 1; heads 1, 2, 2
    # (ties) against 1, 2, 3: Pearson of ranks (1, 2.5, 2.5) and (1, 2, 3) = sqrt(3)/2
    assert one["layers"][0]["complexity_loss_corr"] == 1.0
    assert one["layers"][0]["heads_loss_corr"] == pytest.approx(3 ** 0.5 / 2, rel=1e-6)
    assert two["layers"][0]["complexity_loss_corr"] is None and two["layers"][0]["heads_mean"] == pytest.approx(5 / 4)
    assert three["layers"][0]["heads_max"] == 2.0
    assert "complexity_loss_corr" not in three["layers"][0]  # nothing measured: the field is left out
