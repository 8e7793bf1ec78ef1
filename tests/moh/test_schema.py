"""moh/schema.py is the one definition of the telemetry: the generated JSON Schema, the docs' field
tables, the record builder and the loader's columns all follow it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moh import schema, schema_json

ROOT = Path(__file__).resolve().parents[2]


def test_committed_json_schema_is_the_generated_one():
    assert schema_json.PATH.read_text(encoding="utf-8") == schema_json.text()
    check = subprocess.run([sys.executable, "-m", "moh.schema", "--check"], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_check_fails_on_a_stale_file(tmp_path, monkeypatch):
    stale = tmp_path / "telemetry.schema.json"
    stale.write_text(schema_json.text().replace('"pred_norm"', '"pred_norm_old"', 1), encoding="utf-8")
    monkeypatch.setattr(schema_json, "PATH", stale)
    assert schema_json.main(["--check"]) == 1
    assert schema_json.main(["--write"]) == 0
    assert schema_json.main(["--check"]) == 0
    assert schema_json.main(["--bogus"]) == 2


def _doc_names(section: str) -> set[str]:
    """Backticked field names in the first column of a markdown table (a/b/c expands a_b, a_c)."""
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        for tok in re.findall(r"`([a-z_/]+)`", line.split("|")[1]):
            head, *rest = tok.split("/")
            names.add(head)
            base = head.rsplit("_", 1)[0]
            names.update(f"{base}_{r}" for r in rest)
    return names


def _section(doc: str, start: str) -> str:
    i = doc.index(start) + len(start)
    stops = ("\n### ", "\n## ", "\nWhat is null", "\nPer-layer fields:")
    ends = [j for j in (doc.find(s, i) for s in stops) if j >= 0]
    return doc[i:min(ends)]


DOC = (ROOT / "docs" / "telemetry.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", [schema.RUN_START, schema.STEP, schema.EVAL])
def test_docs_table_lists_exactly_the_defined_fields(kind):
    doc = _doc_names(_section(DOC, f"### `{kind}`"))
    assert doc == {f.name for f in schema.RECORDS[kind]}


def test_docs_layer_table_lists_exactly_the_defined_fields():
    assert _doc_names(_section(DOC, "Per-layer fields:")) == {f.name for f in schema.LAYER}


@pytest.mark.parametrize("kind", [schema.ALERT, schema.RESUME, schema.RUN_END])
def test_docs_prose_names_every_defined_field(kind):
    text = _section(DOC, f"### `{kind}`")
    missing = [f.name for f in schema.RECORDS[kind] if f.name != "event" and f"`{f.name}`" not in text]
    assert missing == []


def test_record_builder_checks_fields():
    rec = schema.record(schema.RUN_END, time=1.0, status="completed", steps=3, wall_s=2.0)
    assert list(rec) == ["event", "time", "status", "steps", "wall_s"]
    with pytest.raises(ValueError, match=r"missing fields \['wall_s'\]"):
        schema.record(schema.RUN_END, time=1.0, status="completed", steps=3)
    with pytest.raises(ValueError, match=r"unknown fields \['wal_s'\]"):
        schema.record(schema.RUN_END, time=1.0, status="completed", steps=3, wall_s=2.0, wal_s=1)
    with pytest.raises(ValueError, match="unknown record kind"):
        schema.record("stpe")
    ext = schema.record(schema.RUN_END, time=1.0, status="completed", steps=3, wall_s=2.0,
                        extra={"wall_s": 9.0, "import": {"file": "x"}})
    assert ext["wall_s"] == 2.0 and list(ext)[-1] == "import"


def test_layer_row_fills_required_and_rejects_unknown():
    row = schema.layer_row(layer=0, label="L0", heads_mean=2.0)
    assert list(row)[: len(schema.LAYER_FIELDS)] == list(schema.LAYER_FIELDS)
    assert row["label"] == "L0" and row["entropy"] is None
    with pytest.raises(ValueError, match="unknown fields"):
        schema.layer_row(layer=0, heads_meen=2.0)


def test_derived_names_match_the_definitions():
    assert schema.LAYER_STATS == ("heads_mean", "heads_min", "heads_max", "heads_std", "threshold_mean",
                                  "threshold_min", "threshold_max", "complexity_mean", "complexity_min",
                                  "complexity_max", "entropy", "pred_norm")
    assert schema.STEP_GROUPS == {"grad_norms": "grad.", "aux": "aux.", "aux_weighted": "aux_weighted."}
    assert schema.grad_column("router") == "grad.router"
    assert schema.aux_column("z", weighted=True) == "aux_weighted.z"
    assert set(schema.ROUTING_GRAD_GROUPS) < set(schema.GRAD_GROUPS)
    assert schema.AUX_TERMS == ("load_balance", "z", "complexity", "budget", "entropy")


_PROBE = r'''
import json, sys
from pathlib import Path
from moh import schema, schema_json
from analyze.loader import load_run

layer = lambda i, v: schema.layer_row(layer=i, heads_mean=2.0, heads_min=1.0, heads_max=3.0, heads_std=0.5,
                                      head_load=[0.5, 0.5], entropy=0.6, probe_stat=v)
recs = [schema.record(schema.RUN_START, schema_version=1, run_id="x", time=0.0, config={},
                      model={"n_layers": 2, "n_heads": 2, "d_model": 8, "router": "moh", "params": 1},
                      world_size=1)]
for s in range(1, 4):
    recs.append(schema.record(schema.STEP, step=s, epoch=0, phase="pretrain", time=float(s), loss=1.0,
                              lm_loss=1.0, lr=0.1, grad_norm=1.0, grad_norm_clipped=1.0,
                              grad_norms=dict.fromkeys(schema.GRAD_GROUPS, 1.0),
                              aux=dict.fromkeys(schema.AUX_TERMS), layers=[layer(0, 0.1 * s), layer(1, -0.1 * s)]))
path = Path(sys.argv[1])
path.write_text("".join(schema.encode_record(r) + "\n" for r in recs))
run = load_run(path)
lay = run.layers.sort_values(["step", "layer"])
print(json.dumps({"columns": list(run.layers.columns),
                  "values": [round(float(v), 6) for v in lay["probe_stat"]],
                  "json_schema": schema_json.build()["$defs"]["layer"]["properties"].get("probe_stat"),
                  "torch": "torch" in sys.modules}))
'''


def test_one_layer_definition_drives_loader_columns_and_json_schema(tmp_path):
    """Copy the contract and the analysis package, add one per-layer Field line to `LAYER`, and see the
    new stat reach the loader's layer frame and the generated JSON Schema with no other edit."""
    tree = tmp_path / "tree"
    (tree / "moh").mkdir(parents=True)
    for name in ("__init__.py", "schema.py", "schema_json.py"):
        shutil.copy(ROOT / "moh" / name, tree / "moh" / name)
    shutil.copytree(ROOT / "analyze", tree / "analyze", ignore=shutil.ignore_patterns("__pycache__"))
    src = (tree / "moh" / "schema.py").read_text()
    anchor = '_f("entropy", "num"), _f("pred_norm", "num"),'
    assert src.count(anchor) == 1
    (tree / "moh" / "schema.py").write_text(src.replace(
        anchor, anchor + '\n    _opt("probe_stat", "num", description="a probe statistic"),'))
    (tree / "probe.py").write_text(_PROBE)
    out = subprocess.run([sys.executable, "probe.py", str(tmp_path / "run.jsonl")], cwd=tree,
                         capture_output=True, text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert "probe_stat" in got["columns"]
    assert got["values"] == [0.1, -0.1, 0.2, -0.2, 0.3, -0.3]
    assert got["json_schema"] == {"$ref": "#/$defs/num_or_null", "description": "a probe statistic"}
    assert got["torch"] is False  # the contract and the analysis import no torch


def test_without_the_definition_the_field_is_not_a_column(tmp_path):
    """The other side of the test above: the unedited contract does not load an unknown layer key."""
    tree = tmp_path / "tree"
    (tree / "moh").mkdir(parents=True)
    for name in ("__init__.py", "schema.py", "schema_json.py"):
        shutil.copy(ROOT / "moh" / name, tree / "moh" / name)
    shutil.copytree(ROOT / "analyze", tree / "analyze", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "probe.py").write_text(_PROBE)
    out = subprocess.run([sys.executable, "probe.py", str(tmp_path / "run.jsonl")], cwd=tree,
                         capture_output=True, text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "unknown fields ['probe_stat']" in out.stderr


def test_encode_line_writes_what_encode_record_means_and_tags_what_orjson_would_null():
    finite = {"event": "step", "loss": 4.663108484237455e-05, "n": 3, "ok": True, "none": None,
              "layers": [{"heads_mean": 1.5, "head_load": [0.25, 1e-30, 1e300], "tag": "é"}]}
    line = schema.encode_line(finite)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b" " not in line
    assert json.loads(line) == finite == json.loads(schema.encode_record(finite))
    # a non-finite float at any depth (a dict in a list in a dict, a list in a list): tagged, not
    # null (orjson's reading of NaN), wherever it sits among finite ones
    for bad, where in (({"a": [1.0, {"b": [0.5, float("nan")]}]}, lambda d: d["a"][1]["b"][1]),
                       ({"a": [[2.0], [float("-inf")]]}, lambda d: d["a"][1][0]),
                       ({"a": 1.0, "z": float("inf")}, lambda d: d["z"]),
                       ({"a": (0.0, float("nan"))}, lambda d: d["a"][1])):
        got = json.loads(schema.encode_line(bad))
        assert where(got) in ("NaN", "Infinity", "-Infinity"), (bad, got)
    # what orjson refuses goes through json: an int beyond 64 bits, a float subclass, an int key
    class Half(float):
        pass
    for odd in ({"big": 2 ** 70}, {"x": Half(0.5)}, {"k": {1: 2.0}}):
        assert schema.encode_line(odd) == (schema.encode_record(odd) + "\n").encode()
    assert json.loads(schema.encode_line({"x": Half("nan")})) == {"x": "NaN"}


def test_encode_record_tags_non_finite_floats_at_any_depth_and_leaves_finite_ones():
    finite = {"event": "step", "loss": 0.1, "layers": [{"heads_mean": 1.5, "head_load": [0.25, 1e-30]}]}
    assert schema.encode_record(finite) == json.dumps(finite, separators=(",", ":"))
    bad = {"event": "step", "loss": 0.1, "layers": [{"heads_mean": float("nan"), "head_load": [float("-inf"), 0.5]}]}
    line = schema.encode_record(bad)
    assert json.loads(line)["layers"][0] == {"heads_mean": "NaN", "head_load": ["-Infinity", 0.5]}
    assert bad["layers"][0]["head_load"][0] == float("-inf")  # the caller's record is not changed
