"""moh.monitor.Recorder on hand-built routings with known statistics, small real models, real
files read back by the analyzer, and a real two-process gloo job."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from analyze.load import load_run
from moh import layer_sums, schema
from moh.monitor import Recorder
from moh.monitor.groups import group_of
from moh.routing import Routing, layer_stats

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _records(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


class Toy(nn.Module):
    """One embedding, one router ("gate"), two experts: enough names for every default group."""

    def __init__(self, detach=False):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.gate = nn.Linear(4, 2, bias=False)
        self.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.detach = detach

    def forward(self, idx):
        x = self.embed(idx)
        logits = self.gate(x)
        probs = (logits.detach() if self.detach else logits).softmax(-1)
        top = probs.argmax(-1, keepdim=True)
        self.last = {"selected": torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top, True),
                     "probs": probs}
        y = sum(probs[..., e:e + 1] * (top == e) * ex(x) for e, ex in enumerate(self.experts))
        return y.sum()


def test_accumulated_forwards_give_the_known_statistics(tmp_path):
    # forward 1: tokens use {0}, {0, 1}; forward 2: token uses {2} -> counts 1, 2, 1
    with Recorder(tmp_path, unit="head") as rec:
        rec.routing(0, selected=_mask([[1, 0, 0], [1, 1, 0]]), threshold=torch.tensor([0.3, 0.5]))
        rec.routing(0, selected=_mask([[0, 0, 1]]), threshold=torch.tensor([0.7]))
        out = rec.step(1, loss=2.0)
    row = out["layers"][0]
    assert row["heads_mean"] == pytest.approx(4 / 3)
    assert (row["heads_min"], row["heads_max"]) == (1.0, 2.0)
    assert row["heads_std"] == pytest.approx(math.sqrt(6 / 3 - 16 / 9))
    assert row["head_load"] == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert row["threshold_mean"] == pytest.approx(0.5)
    assert (row["threshold_min"], row["threshold_max"]) == pytest.approx((0.3, 0.7))
    assert row["complexity_mean"] is None and row["entropy"] is None  # not given: null, never 0
    assert rec._acc == {}  # nothing kept after the step
    with Recorder(tmp_path / "masked", unit="head") as rec2:  # `valid`: padding is not counted
        rec2.routing(0, selected=_mask([[1, 1, 0], [1, 1, 1]]), valid=torch.tensor([True, False]))
        masked = rec2.step(1, loss=2.0)["layers"][0]
    assert masked["heads_mean"] == 2.0 and masked["head_load"] == [1.0, 1.0, 0.0]
    recs = _records(tmp_path / "run.jsonl")
    assert [r["event"] for r in recs] == ["run_start", "step", "run_end"]
    assert recs[0]["routing"] == {"unit": "head", "kind": "custom", "n_units": 3}
    assert recs[0]["model"]["n_heads"] == 3 and recs[-1]["status"] == "completed"


def test_routing_still_in_the_graph_gives_the_detached_record(tmp_path):
    """routing() holds what a forward hook hands it as given (no detach: an operator each inside
    a step); the statistics, one pass or accumulated, are the detached tensors' to the bit,
    probabilities in float64 converted without a graph, and nothing is held after step()."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, requires_grad=True)
    probs = logits.double().softmax(-1)  # a float64 router: converted to float32 by the recorder
    tau, cx = logits.sigmoid().mean(-1), logits.tanh().abs().mean(-1)
    sel = probs > 0.25
    out = []
    for name, grad in (("graph", True), ("detached", False)):
        p_, t_, c_ = (probs, tau, cx) if grad else (probs.detach(), tau.detach(), cx.detach())
        with Recorder(tmp_path / name, unit="head", log_every=1) as rec:
            rec.routing(0, selected=sel, probs=p_, threshold=t_, complexity=c_)
            rec.routing(1, selected=sel, probs=p_, threshold=t_, complexity=c_)
            one = rec.step(1, loss=1.0)["layers"]
            for _ in range(2):  # accumulation: the merged sums
                rec.routing(0, selected=sel, probs=p_, threshold=t_, complexity=c_)
            two = rec.step(2, loss=1.0)["layers"]
            assert rec._acc == {}
        out.append(json.dumps([one, two]))
    assert out[0] == out[1]
    assert logits.grad is None  # the recorder did not touch the graph


def test_reduction_matches_the_engine_layer_stats_on_the_concatenated_tokens():
    g = torch.Generator().manual_seed(1)
    parts = []
    for n in (5, 9, 2):
        probs = torch.rand(1, n, 4, generator=g).softmax(-1)
        hard = torch.rand(1, n, 4, generator=g) < 0.5
        hard[..., 0] = True
        tau = torch.rand(1, n, generator=g)
        parts.append(Routing(hard=hard, probs=probs, tau=tau, complexity=tau / 2))
    merged = None
    for r in parts:
        s = layer_sums.partial(r, torch.ones(r.hard.shape[:2], dtype=torch.bool), full=True)
        merged = s if merged is None else merged.merge(s)
    got = layer_sums.finish(merged)
    cat = Routing(hard=torch.cat([r.hard for r in parts], 1), probs=torch.cat([r.probs for r in parts], 1),
                  tau=torch.cat([r.tau for r in parts], 1), complexity=torch.cat([r.complexity for r in parts], 1))
    want = layer_stats(cat, torch.ones(1, 16, dtype=torch.bool), full=True)
    for k, v in want.items():
        if v is None:
            assert got[k] is None, k
        else:
            assert torch.allclose(got[k].double(), v.double(), atol=1e-6), k


def test_watch_hook_leaves_output_alone_and_skips_no_grad_forwards(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    idx = torch.randint(0, 10, (3, 5))
    plain = model(idx).item()
    with Recorder(tmp_path, model=model) as rec:
        rec.watch(model, layer=0, extract=lambda m, i, o: m.last)
        assert model(idx).item() == plain
        with torch.no_grad():
            model(torch.randint(0, 10, (7, 5)))  # an evaluation forward: not counted
        out = rec.step(0, loss=1.0)
    assert out["layers"][0]["heads_mean"] == 1.0
    assert sum(out["layers"][0]["head_load"]) == pytest.approx(1.0)  # 15 tokens, one expert each
    assert len(model._forward_hooks) == 0  # removed on close


def test_default_groups_by_name():
    assert group_of("blocks.0.moe.gate.weight") == "router"
    assert group_of("model.layers.1.mlp.router.weight") == "router"
    assert group_of("model.layers.1.mlp.experts.0.gate_proj.weight") == "ffn"  # an expert, not the router
    assert group_of("model.embed_tokens.weight") == "embedding"
    assert group_of("tok_emb.weight") == "embedding"
    assert group_of("layers.0.self_attn.q_proj.weight") == "attention"
    assert group_of("blocks.0.aggregate.weight") == "ffn"  # "gate" inside a word is not a router
    assert group_of("blocks.0.moe.gate.weight", {"special": lambda n: "moe" in n}) == "special"


@pytest.mark.parametrize("detach", [False, True])
def test_router_gradient_norm_before_clipping(tmp_path, detach):
    torch.manual_seed(0)
    model = Toy(detach=detach)
    with Recorder(tmp_path, model=model) as rec:
        model(torch.randint(0, 10, (4, 6))).backward()
        want = model.gate.weight.grad.norm().item() if model.gate.weight.grad is not None else 0.0
        total = math.sqrt(sum(p.grad.norm().item() ** 2 for p in model.parameters() if p.grad is not None))
        out = rec.step(1, loss=1.0)
        nn.utils.clip_grad_norm_(model.parameters(), 1e-6)  # after step(): does not change the record
    g = out["grad_norms"]
    assert g["router"] == pytest.approx(want) and (want == 0.0) == detach
    assert g["embedding"] > 0 and g["ffn"] > 0 and g["complexity"] is None
    assert out["grad_norm"] == pytest.approx(total)


def test_log_every_and_nonfinite_encoding(tmp_path):
    with Recorder(tmp_path, log_every=2) as rec:
        for step in range(1, 6):
            rec.routing(0, selected=_mask([[1, 0]]))
            rec.step(step, loss=float("nan") if step == 3 else 1.0)
    lines = open(tmp_path / "run.jsonl", encoding="utf-8").read().splitlines()
    steps = [json.loads(line) for line in lines if '"step"' in line and '"event":"step"' in line]
    assert [s["step"] for s in steps] == [2, 3, 4]  # every 2nd, plus the non-finite one
    assert steps[1]["loss"] == "NaN" and steps[1]["layers"] == []  # step 3's routing was not kept
    assert steps[2]["layers"][0]["head_load"] == [1.0, 0.0]


@pytest.mark.parametrize("exc, status", [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")])
def test_run_end_on_exception(tmp_path, exc, status):
    with pytest.raises(type(exc)):
        with Recorder(tmp_path) as rec:
            rec.routing(0, selected=_mask([[1, 0]]))
            rec.step(1, loss=1.0)
            raise exc
    recs = _records(tmp_path / "run.jsonl")
    assert recs[-1]["event"] == "run_end" and recs[-1]["status"] == status and recs[-1]["steps"] == 1


def test_log_is_flushed_per_record_and_read_by_the_analyzer(tmp_path):
    with Recorder(tmp_path, unit="expert", top_k=1, config={"lr": 1e-3}) as rec:
        for step in range(1, 4):
            rec.routing(1, selected=_mask([[1, 0, 0], [0, 1, 0]]), probs=torch.full((2, 3), 1 / 3))
            rec.step(step, loss=3.0 - step)
        # before the run ends, every step written so far is already on disk
        assert len(_records(tmp_path / "run.jsonl")) == 4
        rec.eval(3, loss=1.5)
        rec.alert(3, "warning", "mine", "a note")
    run = load_run(tmp_path / "run.jsonl")
    assert run.meta["routing"] == {"unit": "expert", "kind": "topk", "n_units": 3, "top_k": 1}
    assert list(run.steps["loss"]) == [2.0, 1.0, 0.0]
    assert run.layers["entropy"].iloc[0] == pytest.approx(math.log(3))
    assert len(run.evals) == 1 and len(run.alerts) == 1


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unit"):
        Recorder(tmp_path / "a", unit="neuron")
    with pytest.raises(ValueError, match="kind"):
        Recorder(tmp_path / "b", kind="sparse")
    with Recorder(tmp_path / "c") as rec:
        rec.routing(0, selected=_mask([[1, 0]]))
        with pytest.raises(ValueError, match="3 units"):
            rec.routing(0, selected=_mask([[1, 0, 0]]))
        with pytest.raises(ValueError, match="unknown aux"):
            rec.step(0, loss=1.0, aux={"lb": 1.0})


_DIST = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from moh.monitor import Recorder
    dist.init_process_group("gloo")
    r = dist.get_rank()
    with Recorder(sys.argv[1], unit="expert") as rec:
        # rank 0: one token on expert 0; rank 1: two tokens on experts 0+1 and 1
        sel = [[[1, 0]], [[1, 1], [0, 1]]][r]
        rec.routing(0, selected=torch.tensor(sel, dtype=torch.bool))
        rec.step(1, loss=1.0)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_distributed_rank_zero_writes_the_job_statistics(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_DIST)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script), str(tmp_path / "out")], env=env, check=True, timeout=300,
                   capture_output=True)
    recs = _records(tmp_path / "out" / "run.jsonl")
    assert [r["event"] for r in recs] == ["run_start", "step", "run_end"]  # one writer
    assert recs[0]["world_size"] == 2
    row = recs[1]["layers"][0]  # counts 1, 2, 1 over both ranks
    assert row["heads_mean"] == pytest.approx(4 / 3) and (row["heads_min"], row["heads_max"]) == (1.0, 2.0)
    assert row["head_load"] == pytest.approx([2 / 3, 2 / 3])


def test_an_alert_before_any_routing_waits_for_the_unit_count(tmp_path):
    with Recorder(tmp_path) as rec:
        rec.alert(0, "info", "start", "before the first forward")
        assert not (tmp_path / "run.jsonl").read_text()  # run_start cannot say n_units yet
        rec.routing(0, selected=_mask([[1, 0, 0, 0]]))
        rec.step(1, loss=1.0)
    recs = _records(tmp_path / "run.jsonl")
    assert [r["event"] for r in recs] == ["run_start", "alert", "step", "run_end"]
    assert recs[0]["model"]["n_heads"] == 4 and recs[0]["routing"]["n_units"] == 4


def test_a_run_that_ends_before_any_routing_still_has_start_and_end(tmp_path):
    with pytest.raises(RuntimeError):
        with Recorder(tmp_path) as rec:
            rec.alert(0, "warning", "early", "about to fail")
            raise RuntimeError("data missing")
    recs = _records(tmp_path / "run.jsonl")
    assert [r["event"] for r in recs] == ["run_start", "alert", "run_end"]
    assert recs[0]["routing"]["n_units"] is None and recs[-1]["status"] == "failed"


def test_every_record_validates_against_the_json_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources
    validator = jsonschema.Draft202012Validator(
        json.loads(resources.files("moh").joinpath("telemetry.schema.json").read_text("utf-8")))
    torch.manual_seed(0)
    model = Toy()
    with Recorder(tmp_path, model=model, top_k=1, full=True) as rec:
        rec.watch(model, layer=0, extract=lambda m, i, o: m.last)
        for step in (1, 2):
            model(torch.randint(0, 10, (2, 3))).backward()
            rec.step(step, loss=float("inf") if step == 2 else 1.0, aux={"load_balance": 1.0})
        rec.eval(2, loss=0.5)
        rec.alert(2, "error", "x", "y")
    recs = _records(tmp_path / "run.jsonl")
    for r in recs:
        validator.validate(r)
        assert schema.missing_fields(r) == []
    assert recs[2]["loss"] == "Infinity" and len(recs[1]["layers"][0]["heads_hist"]) == 3


def test_floats_reads_every_scalar_as_float_would():
    """A record's scalars in one host read: each value is what float() of it alone gives, also
    where the batch is promoted (a float32 value stacked with a float64 one keeps its bits), an
    integer tensor is read on its own (a float32 batch would round 2**24 + 1), and plain
    numbers and None pass through."""
    from moh.monitor.recorder import floats
    f32 = torch.tensor(0.1, dtype=torch.float32)  # 0.100000001490116..., not 0.1
    f64 = torch.tensor(0.1, dtype=torch.float64)
    bf16 = torch.tensor(1.0 / 3.0, dtype=torch.bfloat16)
    big = torch.tensor(2 ** 24 + 1, dtype=torch.int64)
    one_elem = torch.tensor([2.5])  # (1,) not 0-d
    xs = [None, 1.5, f32, f64, bf16, big, one_elem, torch.tensor(float("nan"))]
    got = floats(xs)
    assert got[:7] == [None, 1.5, float(f32), 0.1, float(bf16), float(2 ** 24 + 1), 2.5]
    assert got[2] != 0.1 and got[6] == 2.5 and math.isnan(got[7])
    assert all(type(v) is float for v in got[1:])
    assert floats([f32, big, torch.tensor(3.0)]) == [float(f32), 16777217.0, 3.0]  # no float64 to widen to
    assert floats([]) == [] and floats([None]) == [None]


def test_step_weights_aux_tensors_it_reads_with_the_other_scalars(tmp_path):
    """aux as one-element tensors with aux_weights: aux_weighted is each weight times the float
    read (Python arithmetic, as a caller weighting floats would get), None where a term is
    absent or has no weight; aux_weighted and aux_weights together are refused."""
    rec = Recorder(tmp_path, n_units=4)
    sel = torch.tensor([[True, False, True, False]])
    z = torch.tensor(0.1, dtype=torch.float32)  # 0.100000001490116...
    rec.routing(0, selected=sel)
    got = rec.step(1, loss=2.0, aux={"z": z, "load_balance": torch.tensor([0.5]), "entropy": 1.25},
                   aux_weights={"z": 0.01, "load_balance": 3.0})
    assert got["aux"]["z"] == float(z) and got["aux"]["load_balance"] == 0.5 and got["aux"]["entropy"] == 1.25
    assert got["aux_weighted"] == {"load_balance": 1.5, "z": 0.01 * float(z), "complexity": None,
                                   "budget": None, "entropy": None}
    assert got["aux_weighted"]["z"] != 0.01 * 0.1  # the float32 value was weighted, not a rounder one
    rec.routing(0, selected=sel)
    with pytest.raises(ValueError, match="aux_weighted or aux_weights, not both"):
        rec.step(2, loss=2.0, aux={"z": 0.1}, aux_weighted={"z": 0.001}, aux_weights={"z": 0.01})
    rec.close()
    written = [r for r in _records(tmp_path / "run.jsonl") if r["event"] == "step"]
    assert [r["aux_weighted"]["load_balance"] for r in written] == [1.5]


def test_a_step_forced_after_grad_norms_logs_the_fused_groups_before_clipping(tmp_path):
    """grad_norms() on a step log_every skips leaves the row blocks unmeasured; force_log()
    before the clip measures them, so the record holds the pre-clip norms of a fused tensor's
    groups (moh train forces a non-finite step's record this way)."""
    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(3, 2))
            self.grad_rows = {"weight": {"router": (0, 2), "threshold": (2, 3)}}

    model = nn.Module()
    model.gate = Fused()
    with Recorder(tmp_path, model=model, n_units=2, log_every=10) as rec:
        assert rec.step(1, loss=1.0) is None  # step 1: not logged
        model.gate.weight.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0], [12.0, 0.0]])
        rec.grad_norms()  # step 2: not a logged step by log_every
        rec.force_log()
        model.gate.weight.grad.mul_(0.01)  # the clip, in place
        rec.routing(0, selected=torch.tensor([[True, False]]))
        out = rec.step(2, loss=1.0)
    assert out["grad_norms"]["router"] == pytest.approx(5.0)
    assert out["grad_norms"]["threshold"] == pytest.approx(12.0)
    assert out["grad_norm"] == pytest.approx(13.0)
