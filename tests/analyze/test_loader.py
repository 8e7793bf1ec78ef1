"""analyze.loader: frames, tolerance, strictness, resume handling, bad input, chunked loading."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from analyze.loader import LoadError, load_records, load_run
from moh import schema

from .conftest import make_records, write_log


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_frames_follow_the_run_layout(healthy_log):
    run = load_run(healthy_log)
    recs = make_records()
    n_steps = sum(r["event"] == "step" for r in recs)
    assert len(run.steps) == n_steps
    assert run.steps["step"].is_monotonic_increasing
    for col in ("loss", "lm_loss", "grad_norm", "grad.router", "aux.z", "phase"):
        assert col in run.steps, col
    assert str(run.steps["phase"].dtype) == "category"
    assert list(run.steps["phase"].cat.categories) == ["pretrain", "instruct"]
    assert len(run.layers) == n_steps * 2
    assert set(schema.LAYER_STATS) <= set(run.layers.columns)
    assert run.layers["heads_mean"].dtype == np.float32
    assert len(run.head_load) == n_steps * 2 * 8
    assert list(run.head_load.columns[:4]) == ["step", "layer", "head", "load"]
    # values round-trip (float32 precision)
    first = recs[1]
    got = run.layers[(run.layers.step == 0) & (run.layers.layer == 1)].iloc[0]
    assert got["threshold_mean"] == pytest.approx(first["layers"][1]["threshold_mean"], rel=1e-6)
    hl = run.head_load[(run.head_load.step == 0) & (run.head_load.layer == 1)]["load"].to_numpy()
    np.testing.assert_allclose(hl, first["layers"][1]["head_load"], rtol=1e-6)
    assert len(run.evals) == 2 and run.evals["exact_match"].iloc[-1] == pytest.approx(0.95)
    assert run.samples["prompt"].iloc[0] == "User: hi"
    assert run.meta["model"]["n_heads"] == 8
    assert run.semantics["heads"] == schema.HEADS_HARD_COUNT  # filled from DEFAULT_SEMANTICS
    assert run.end["status"] == "completed"
    assert run.notes == []
    assert run.name == "healthy"


def test_gzip_is_read_by_content(tmp_path):
    plain = load_run(write_log(tmp_path / "a.jsonl", make_records()))
    gz = load_run(write_log(tmp_path / "b.jsonl.gz", make_records(), gz=True))
    pdt.assert_frame_equal(plain.layers, gz.layers)
    pdt.assert_frame_equal(plain.steps, gz.steps)


def test_truncated_last_line_is_skipped_with_a_note(tmp_path, healthy_log):
    text = healthy_log.read_text()
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text[: len(text) - 40])  # inside the run_end record, no final newline
    run = load_run(cut)
    assert run.end is None
    assert any("truncated last line" in n for n in run.notes), run.notes
    # strict mode tolerates it too: a run still writing is not a corrupt file
    assert load_run(cut, strict=True).end is None


def test_bad_lines_are_counted_with_line_numbers(tmp_path):
    lines = [schema.encode_record(r) for r in make_records(n_steps=10)]
    lines[3] = lines[3][:50]  # broken JSON in the middle
    lines[5] = "[1, 2]"  # valid JSON, not a record
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    run = load_run(p)
    assert len(run.steps) == 8
    note = next(n for n in run.notes if "bad line" in n)
    assert "2 bad line(s)" in note and "line 4, 6" in note and str(p) in note
    with pytest.raises(LoadError, match=r"bad\.jsonl:4: invalid JSON"):
        load_run(p, strict=True)


def test_nonfinite_tokens_and_tags_read_as_floats(tmp_path):
    recs = make_records(n_steps=4)
    lines = [schema.encode_record(r) for r in recs]
    # another writer's bare tokens
    lines[1] = lines[1].replace('"lr":0.001', '"lr":NaN').replace('"heads_std":', '"heads_std":-Infinity,"x":', 1)
    recs[2]["loss"] = math.inf  # the schema's tag "Infinity"
    lines[2] = schema.encode_record(recs[2])
    assert '"Infinity"' in lines[2]
    p = tmp_path / "nf.jsonl"
    p.write_text("\n".join(lines) + "\n")
    run = load_run(p, strict=True)
    assert math.isnan(run.steps["lr"].iloc[0])
    assert run.layers["heads_std"].iloc[0] == -np.inf
    assert run.steps["loss"].iloc[1] == np.inf
    assert run.notes == []


def test_wrong_types_become_nan_with_a_note(tmp_path):
    recs = make_records(n_steps=5, phases=("pretrain",))
    recs[2]["loss"] = "high"
    recs[3]["layers"][0]["threshold_mean"] = {"oops": 1}
    recs[3]["layers"][1]["head_load"] = "none"
    assert [r["event"] for r in recs[:4]] == ["run_start", "step", "step", "step"]
    p = write_log(tmp_path / "types.jsonl", recs)
    run = load_run(p)
    assert math.isnan(run.steps["loss"].iloc[1])
    assert math.isnan(run.layers.loc[(run.layers.step == 2) & (run.layers.layer == 0), "threshold_mean"].iloc[0])
    assert len(run.head_load) == 5 * 2 * 8 - 8
    notes = " ".join(run.notes)
    assert "'loss'" in notes and "layers[0].threshold_mean" in notes and "head_load" in notes
    with pytest.raises(LoadError, match=r"types\.jsonl:3: field 'loss' has wrong type str"):
        load_run(p, strict=True)


def test_unknown_fields_ignored_and_unknown_schema_version_is_an_error(tmp_path):
    recs = make_records(n_steps=3)
    recs[1]["future_field"] = {"a": [1, 2]}
    recs[1]["layers"][0]["future_stat"] = "x"
    run = load_run(write_log(tmp_path / "a.jsonl", recs))
    assert "future_field" not in run.steps and "future_stat" not in run.layers
    assert run.notes == []
    recs[0]["schema_version"] = 99
    with pytest.raises(LoadError, match=r"a2\.jsonl:1: unsupported schema_version 99"):
        load_run(write_log(tmp_path / "a2.jsonl", recs))


def test_missing_run_start_gives_empty_meta_and_a_note(tmp_path):
    run = load_run(write_log(tmp_path / "x.jsonl", make_records(n_steps=3)[1:]))
    assert run.meta == {}
    assert any("no run_start" in n for n in run.notes)


def test_mixed_schema_versions_is_an_error(tmp_path):
    recs = make_records(n_steps=3)
    second = dict(recs[0], schema_version=2)
    with pytest.raises(LoadError, match="(mixed schema versions|unsupported schema_version)"):
        load_run(write_log(tmp_path / "m.jsonl", recs + [second]))


def test_resumed_log_last_write_wins_and_is_noted(tmp_path):
    recs = make_records(n_steps=20, seed=1)
    start, steps = recs[0], [r for r in recs if r["event"] == "step"]
    redo = [dict(r, loss=r["loss"] + 100) for r in steps[12:16]]  # steps 12..15 rerun after resume
    log = [start] + steps[:16] + [{"event": "resume", "time": 1.0, "step": 12, "checkpoint": "c"}] + redo + steps[16:]
    run = load_run(write_log(tmp_path / "r.jsonl", log))
    assert list(run.steps["step"]) == list(range(20))
    assert run.steps.set_index("step").loc[13, "loss"] == pytest.approx(steps[13]["loss"] + 100)
    assert run.steps.set_index("step").loc[11, "loss"] == pytest.approx(steps[11]["loss"])
    assert len(run.layers) == 40 and run.layers.groupby("step").size().eq(2).all()
    assert len(run.resumes) == 1
    assert any("restart at 12" in n and "after a resume record" in n for n in run.notes), run.notes
    # without a resume record it is still resolved, and said differently
    run2 = load_run(write_log(tmp_path / "r2.jsonl", [start] + steps[:16] + redo + steps[16:]))
    assert any("without a resume record" in n for n in run2.notes)
    pdt.assert_frame_equal(run.steps, run2.steps)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\x00\x01\x02\xff" * 100, "binary file"),
    (b"hello world\nthis is text\n", "not a moh telemetry log"),
    (b'{"event": "step"\n{"nope\n', "no valid records"),
    (b"{}\n", "no valid records"),
])
def test_unusable_files_raise_one_line_errors(tmp_path, content, message):
    p = tmp_path / "f.jsonl"
    p.write_bytes(content)
    with pytest.raises(LoadError) as e:
        load_run(p)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_directory_and_missing_path(tmp_path):
    with pytest.raises(LoadError, match="is a directory"):
        load_run(tmp_path)
    with pytest.raises(LoadError, match="no such file"):
        load_run(tmp_path / "nope.jsonl")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(healthy_log):
    healthy_log.chmod(0)
    try:
        with pytest.raises(LoadError, match="permission denied"):
            load_run(healthy_log)
    finally:
        healthy_log.chmod(0o644)


def test_huge_single_line_is_a_bad_line_not_a_crash(tmp_path):
    recs = make_records(n_steps=3)
    p = tmp_path / "huge.jsonl"
    with open(p, "w") as f:
        f.write(schema.encode_record(recs[0]) + "\n")
        f.write('{"event": "step", "junk": "' + "x" * (20 << 20) + "\n")  # 20 MB, unterminated string
        for r in recs[1:]:
            f.write(schema.encode_record(r) + "\n")
    run = load_run(p)
    assert len(run.steps) == 3 and any("line 2" in n for n in run.notes)


def test_chunked_parallel_load_equals_sequential(tmp_path):
    recs = make_records(n_steps=300, n_layers=3, seed=3)
    recs.insert(150, {"event": "alert", "step": 148, "level": "warning", "code": "x", "message": "m"})
    lines = [schema.encode_record(r) for r in recs]
    lines[100] = "{broken"
    p = tmp_path / "par.jsonl"
    p.write_text("\n".join(lines) + "\n")
    seq = load_run(p, workers=1)
    par = load_run(p, workers=3)
    for name in ("steps", "layers", "head_load", "evals", "samples", "alerts"):
        pdt.assert_frame_equal(getattr(seq, name), getattr(par, name), obj=name)
    assert seq.notes == par.notes and "line 101" in seq.notes[0]
    assert seq.meta == par.meta and seq.end == par.end
    with pytest.raises(LoadError, match=r"par\.jsonl:101:"):
        load_run(p, strict=True, workers=3)


def test_load_records_uses_the_same_builder(tmp_path):
    recs = json.loads(json.dumps(make_records(n_steps=5)))
    run = load_records(recs, tmp_path / "imported.log")
    ref = load_run(write_log(tmp_path / "ref.jsonl", make_records(n_steps=5)))
    pdt.assert_frame_equal(run.layers, ref.layers)
    assert run.name == "imported"


def test_analyze_never_imports_torch():
    code = ("import sys, analyze, analyze.loader, analyze.criteria, analyze.report, analyze.compare, "
            "analyze.findings, analyze.rustgpt; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_heads_hist_is_noted_not_dropped_in_silence(tmp_path):
    """The engine's "full" tier logs heads_hist; no frame holds it, and the loader says so (once)."""
    recs = make_records(n_steps=6, n_layers=2, n_heads=4)
    plain = load_run(write_log(tmp_path / "plain.jsonl", recs))
    assert not [n for n in plain.notes if "heads_hist" in n]
    for r in recs:
        for lay in r.get("layers") or ():
            lay["heads_hist"] = [0.0, 0.5, 0.5, 0.0, 0.0]
    run = load_run(write_log(tmp_path / "full.jsonl", recs))
    hist = [n for n in run.notes if "heads_hist" in n]
    assert len(hist) == 1 and "in 12 layer entries and not loaded" in hist[0], run.notes
    assert "heads_hist" not in run.layers.columns
