"""analyze.load's fast paths (per-layout plans, whole-layer packing, the CSV bulk path for runs of
same-layout step lines) must give what the reference path (`ReferenceBuilder`, one record at a time)
gives, and hand every line they cannot read exactly to that path."""

from __future__ import annotations

import json

import pandas.testing as pdt
import pytest

from analyze.load import api, fast, source
from analyze.load.reference import ReferenceBuilder
from analyze.loader import LoadError, load_run
from tests.synthetic import iter_lines
from moh import schema

from .conftest import make_records

FRAMES = ("steps", "layers", "head_load", "evals", "samples", "alerts")


def _both(path, monkeypatch, **kw):
    bulk = load_run(path, workers=1, **kw)
    with monkeypatch.context() as m:
        m.setattr(api, "Builder", ReferenceBuilder)  # no fast path at all: the semantics as defined
        reference = load_run(path, workers=1, **kw)
    return bulk, reference


def _assert_same(a, b):
    for name in FRAMES:
        pdt.assert_frame_equal(getattr(a, name), getattr(b, name), obj=name, check_exact=False, rtol=1e-12)
    assert a.notes == b.notes
    assert a.meta == b.meta and a.end == b.end and a.resumes == b.resumes


def _count_careful_adds(monkeypatch) -> list[int]:
    seen: list[int] = []
    orig = ReferenceBuilder.add

    def add(self, rec, lineno):
        seen.append(lineno)
        return orig(self, rec, lineno)

    monkeypatch.setattr(ReferenceBuilder, "add", add)
    return seen


@pytest.mark.parametrize("knobs", [
    {},
    {"router": "dense"},
    {"nonfinite": True},
    {"missing": ("entropy", "head_load", "router")},
    {"grad_explosion": True, "n_layers": 3, "n_heads": 4},
    {"phases": ("pretrain", "instruct", "finetune")},
])
def test_bulk_equals_line_by_line_on_synthetic_runs(tmp_path, monkeypatch, knobs):
    p = tmp_path / "run.jsonl"
    p.write_text("\n".join(iter_lines(n_steps=700, seed=1, **knobs)) + "\n")
    bulk, lines = _both(p, monkeypatch)
    _assert_same(bulk, lines)
    assert len(bulk.steps) == 700


def test_bulk_path_reads_most_lines_without_per_record_work(tmp_path, monkeypatch):
    p = tmp_path / "run.jsonl"
    p.write_text("\n".join(iter_lines(n_steps=2000, seed=2)) + "\n")
    seen = _count_careful_adds(monkeypatch)
    run = load_run(p, workers=1)
    assert len(run.steps) == 2000
    assert len(seen) < 100  # run_start, evals, run_end, and the few lines with an exponent layout


def test_damaged_lines_inside_a_run_go_the_careful_way(tmp_path, monkeypatch):
    recs = make_records(n_steps=600, n_layers=3, seed=5)
    lines = [schema.encode_record(r) for r in recs]
    step_at = [i for i, r in enumerate(recs) if r.get("event") == "step"]

    def edit(k, fn):
        rec = json.loads(lines[step_at[k]])
        fn(rec)
        lines[step_at[k]] = schema.encode_record(rec)

    edit(50, lambda r: r.update(loss=float("nan")))                        # "NaN" tag
    edit(60, lambda r: r["layers"][1].update(entropy=None))                 # null stat
    edit(70, lambda r: r["layers"][0].update(label="L0"))                   # optional key from here on
    edit(300, lambda r: r.update(step=r["step"] + 0.5))                      # non-integral step: bad line
    edit(310, lambda r: r.update(step=r["step"] - 200))                      # restart: last write wins
    edit(320, lambda r: r.update(extra_metric=1.5))                          # unknown numeric field
    edit(330, lambda r: r.update(loss="high"))                               # wrong type
    lines[step_at[340]] = lines[step_at[340]].replace('"loss":', '"loss":,', 1)        # empty token
    lines[step_at[350]] = lines[step_at[350]].replace('"step":', '"stEp":', 1)          # a key's e changed
    lines[step_at[360]] = lines[step_at[360]].replace('"layer":1', '"layer":1.5', 1)    # bad layer index
    lines[step_at[370]] = lines[step_at[370]][:-40]                                     # cut mid-file
    lines.insert(step_at[380], "")                                                       # blank line
    lines.insert(step_at[390], '{"event": "alert", "step": 3, "level": "info", "code": "x", "message": "m"}')
    p = tmp_path / "damaged.jsonl"
    p.write_text("\n".join(lines) + "\n")
    bulk, careful = _both(p, monkeypatch)
    _assert_same(bulk, careful)
    assert any("bad line" in n for n in bulk.notes) and any("wrong type" in n for n in bulk.notes)
    assert "extra_metric" in bulk.steps and "label" in bulk.layers


def test_parallel_chunks_use_the_bulk_path_too(tmp_path, monkeypatch):
    p = tmp_path / "run.jsonl"
    p.write_text("\n".join(iter_lines(n_steps=1500, seed=3, nonfinite=True)) + "\n")
    seq = load_run(p, workers=1)
    par = load_run(p, workers=3)
    _assert_same(seq, par)


def test_strict_mode_reads_line_by_line(tmp_path, monkeypatch):
    """A token that is a decimal but not JSON (leading zero) is a bad line for the careful path; the
    bulk path (tolerant mode only) reads it as the number it spells, as documented in _Template."""
    recs = make_records(n_steps=300, n_layers=2, seed=6)
    lines = [schema.encode_record(r) for r in recs]
    k = next(i for i, r in enumerate(recs) if r.get("event") == "step" and r["step"] == 100)
    lines[k] = lines[k].replace('"epoch":10', '"epoch":010', 1)
    p = tmp_path / "lenient.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(LoadError, match=rf"lenient\.jsonl:{k + 1}: invalid JSON"):
        load_run(p, strict=True, workers=1)
    run = load_run(p, workers=1)
    assert run.steps.loc[run.steps["step"] == 100, "epoch"].item() == 10


@pytest.mark.parametrize("block_bytes", [1, 700, 5_000, 64_000])
def test_block_size_does_not_change_the_run(tmp_path, monkeypatch, block_bytes):
    """Whole-file reads are cut into line-aligned blocks (`_file_blocks`), a worker's chunk too;
    blocks smaller than a line, a little larger, and many lines long must all give the same run,
    including a line far longer than a block and a truncated last line."""
    lines = list(iter_lines(n_steps=400, seed=4, nonfinite=True))
    lines.insert(50, '{"event": "alert", "step": 3, "level": "info", "code": "x", "message": "' + "m" * 20_000 + '"}')
    p = tmp_path / "run.jsonl"
    p.write_text("\n".join(lines) + "\n" + lines[-1][:40])  # no newline: a write cut short
    ref = load_run(p, workers=1)
    with monkeypatch.context() as m:
        m.setattr(source, "_BLOCK_BYTES", block_bytes)
        for workers in (1, 3):
            _assert_same(load_run(p, workers=workers), ref)
    assert any("truncated last line" in n for n in ref.notes)
    assert len(ref.alerts) >= 1 and ref.alerts["message"].str.len().max() == 20_000

