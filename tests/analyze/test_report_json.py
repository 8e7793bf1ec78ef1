"""The JSON documents of `moh report` and `moh compare` against analyze/report.schema.json, with
known answers from analyze/default_criteria.toml and the sample logs (docs/report-json.md)."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from analyze import compare, report
from analyze.loader import load_run
from analyze.rustgpt import import_log
from tests.faults import rust_log

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_logs"
# The statistics the default criteria require of an adaptive run, read from the criteria file itself.
N_STATS = len(tomllib.loads((ROOT / "analyze" / "default_criteria.toml").read_text(encoding="utf-8"))
              ["criteria"]["statistics_logged"]["by_router"]["adaptive"]["metrics"])
SCHEMA = json.loads((ROOT / "analyze" / "report.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def report_doc(path: Path) -> dict:
    return json.loads(report.render(report.build_report(load_run(path)), "json"))


def compare_doc(*paths: Path) -> dict:
    cmp = compare.build_comparison([report.build_report(load_run(p)) for p in paths])
    return json.loads(compare.render(cmp, "json"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rust")
    out = d / "rust.jsonl"
    import_log(rust_log(d), out)
    return out


@pytest.fixture(scope="module")
def docs(imported) -> dict[str, dict]:
    names = ["healthy_adaptive", "broken_no_gradient", "broken_unstable_lr", "dense_baseline"]
    out = {n: report_doc(SAMPLES / f"{n}.jsonl") for n in names}
    out["imported"] = report_doc(imported)
    return out


def test_the_schema_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_every_report_matches_the_schema(docs):
    for name, doc in docs.items():
        errors = sorted(VALIDATOR.iter_errors(doc), key=str)
        assert not errors, f"{name}: {errors[0].message} at {list(errors[0].absolute_path)}"
        assert doc["report_version"] == 1 and doc["kind"] == "report"


def test_comparisons_match_the_schema(imported):
    for paths in [(SAMPLES / "healthy_adaptive.jsonl", SAMPLES / "dense_baseline.jsonl"),
                  (SAMPLES / "healthy_adaptive.jsonl", imported, SAMPLES / "broken_no_gradient.jsonl")]:
        doc = compare_doc(*paths)
        errors = list(VALIDATOR.iter_errors(doc))
        assert not errors, errors[0].message
        assert doc["kind"] == "comparison" and doc["report_version"] == 1


def test_the_schema_rejects_a_bare_number_as_value(docs):
    doc = copy.deepcopy(docs["healthy_adaptive"])
    loss = next(c for c in doc["criteria"] if c["name"] == "loss")
    loss["value"] = loss["value"]["value"]                         # the old, untyped shape
    assert not VALIDATOR.is_valid(doc)
    loss["value"], loss["target"] = {"type": "number", "value": 0.2}, "≤ 0.4"   # target as display text
    assert not VALIDATOR.is_valid(doc)


def test_targets_are_objects_from_the_criteria_file(docs):
    by_name = {c["name"]: c for c in docs["healthy_adaptive"]["criteria"]}
    # analyze/default_criteria.toml: threshold [0.3, 0.8], loss max 0.4, exact match min 0.9
    assert by_name["threshold_range"]["target"] == {"op": "between", "min": 0.3, "max": 0.8}
    assert by_name["loss"]["target"] == {"op": "<=", "value": 0.4}
    assert by_name["output_quality"]["target"] == {"op": ">=", "value": 0.9}
    assert by_name["statistics_logged"]["target"]["op"] == "all_logged"
    assert len(by_name["statistics_logged"]["target"]["metrics"]) == N_STATS
    assert by_name["loss"]["target_text"] == "≤ 0.4"


def test_values_keep_one_type_per_criterion(docs):
    types: dict[str, set] = {}
    for doc in docs.values():
        for c in doc["criteria"]:
            if c["value"] is not None:
                types.setdefault(c["name"], set()).add(c["value"]["type"])
    assert all(len(t) == 1 for t in types.values()), types
    assert types["statistics_logged"] == {"count"} and types["threshold_range"] == {"range"}
    assert types["loss"] == {"number"} and types["learning"] == {"changes"}
    healthy = {c["name"]: c for c in docs["healthy_adaptive"]["criteria"]}
    assert healthy["statistics_logged"]["value"] == {"type": "count", "count": N_STATS, "of": N_STATS}


def test_report_and_compare_use_the_same_names(docs):
    doc = compare_doc(SAMPLES / "healthy_adaptive.jsonl", SAMPLES / "broken_no_gradient.jsonl")
    crit = docs["healthy_adaptive"]["criteria"][0]
    cell = doc["criteria"][0]["cells"][0]
    assert {"status", "value", "value_text"} <= set(crit) and {"status", "value", "value_text"} <= set(cell)
    assert not {"statuses", "values", "text"} & set(doc["criteria"][0])
    loss = next(r for r in doc["criteria"] if r["name"] == "loss")
    assert loss["target"] == {"op": "<=", "value": 0.4}


def test_compare_takes_no_delta_between_different_meanings(imported):
    doc = compare_doc(SAMPLES / "healthy_adaptive.jsonl", imported)
    rows = {(r["name"], r["phase"]): r for r in doc["criteria"] + doc["metrics"]}
    heads = rows[("average_heads", "pretrain")]
    assert heads["comparable"] is False and heads["meanings"] == ["heads as hard_count", "heads as soft_weight_sum"]
    assert [c["delta"] for c in heads["cells"]] == [None, None]
    assert "not comparable" in heads["note"]
    final = rows[("final_loss", None)]
    assert final["comparable"] is False and final["meanings"] == ["LM loss", "total loss (LM + aux)"]
    assert all(c["delta"] is None for c in final["cells"])
    steps = rows[("logged_steps", None)]                   # a count means the same everywhere
    a, b = (c["value"]["value"] for c in steps["cells"])
    assert steps["comparable"] is True and steps["cells"][1]["delta"] == b - a


def test_compare_subtracts_comparable_losses():
    doc = compare_doc(SAMPLES / "healthy_adaptive.jsonl", SAMPLES / "dense_baseline.jsonl")
    final = next(r for r in doc["metrics"] if r["name"] == "final_loss")
    assert final["comparable"] is True and final["meanings"] == ["LM loss", "LM loss"]
    a, b = (c["value"]["value"] for c in final["cells"])
    assert final["cells"][1]["delta"] == pytest.approx(b - a)


def test_the_table_says_why_there_is_no_delta(imported):
    from analyze.render.compact import compare_text

    cmp = compare.build_comparison([report.build_report(load_run(p))
                                    for p in (SAMPLES / "healthy_adaptive.jsonl", imported)])
    text = " ".join(compare_text(cmp).split())
    assert "[not comparable: heads as hard_count vs heads as soft_weight_sum]" in text
    md = compare.render(cmp, "md")
    assert "not comparable: LM loss vs total loss (LM + aux)" in md
