"""examples/own_moe.py: a plain-PyTorch MoE model instrumented only through moh.monitor, trained
for real, then judged, drawn and compared by the CLI (subprocesses, as a user runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # three real training runs, ~10-20 s each on the loaded 2-core VM

VARIANTS = {"healthy": [], "detached": ["--detach-router"], "forced": ["--force-expert", "0"]}


def _cli(*args):
    return subprocess.run([sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    base = tmp_path_factory.mktemp("own_moe")
    out = {}
    for name, flags in VARIANTS.items():
        t = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "own_moe.py"), str(base / name), *flags],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t
        # the example ends with `moh report`: exit 0 (pass) or 1 (criteria fail), never 2/3
        assert r.returncode in (0, 1), r.stderr
        assert "Routing metrics" in r.stdout
        assert wall < 60, f"{name}: {wall:.0f} s"
        out[name] = base / name / "run.jsonl"
    return out


def _findings(path):
    r = _cli("report", str(path), "--format", "json")
    assert r.returncode in (0, 1), r.stderr
    return {(f["code"], f["severity"]): f for f in json.loads(r.stdout)["findings"]}


def test_healthy_run_has_no_error_finding_and_one_load_per_expert(logs):
    found = _findings(logs["healthy"])
    assert [k for k in found if k[1] == "error"] == []
    step = [json.loads(line) for line in open(logs["healthy"])][-2]
    assert step["event"] == "step" and [len(l["head_load"]) for l in step["layers"]] == [4, 4]
    assert step["loss"] < 2.6  # it learned (ln 60 = 4.1 at the start)


def test_detached_router_is_router_grad_zero(logs):
    found = _findings(logs["detached"])
    assert ("router_grad_zero", "error") in found
    assert ("router_grad_zero", "error") not in _findings(logs["healthy"])


def test_forced_expert_is_flagged_in_expert_words(logs):
    found = _findings(logs["forced"])
    dead = found[("dead_heads", "warning")]
    assert ("load_imbalance", "warning") in found
    assert "expert(s) 1, 2, 3" in dead["message"] and "head" not in dead["message"]
    assert ("dead_heads", "warning") not in _findings(logs["healthy"])


def _criteria(path):
    r = _cli("report", str(path), "--format", "json")
    doc = json.loads(r.stdout)
    return doc["verdict"], {c["name"] for c in doc["criteria"] if c["status"] == "fail"}, doc["criteria_set"]


def test_generic_criteria_pass_the_healthy_run_and_fail_the_broken_ones(logs):
    verdict, failed, cs = _criteria(logs["healthy"])
    assert (verdict, failed) == ("pass", set()) and "generic criteria" in cs["reason"]
    verdict, failed, _ = _criteria(logs["detached"])
    assert verdict == "fail" and {"router_gradient", "statistics_logged"} <= failed
    verdict, failed, _ = _criteria(logs["forced"])
    assert verdict == "fail" and {"no_collapse", "dead_units", "routing_changes"} <= failed
    text = _cli("report", str(logs["forced"]), "--format", "md").stdout
    assert "Dead experts" in text and "Dead heads" not in text


def test_plot_and_compare_work_on_the_logs(logs, tmp_path):
    r = _cli("plot", *map(str, logs.values()), "-o", str(tmp_path / "fig"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "fig").glob("*.png"))) >= 3
    r = _cli("compare", *map(str, logs.values()), "--format", "json")
    assert r.returncode in (0, 1), r.stderr
    assert len(json.loads(r.stdout)["runs"]) == 3


def test_hf_mixtral_example_runs_and_is_judged_without_errors(tmp_path):
    pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_mixtral.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode in (0, 1), r.stderr
    assert time.perf_counter() - t < 60
    found = _findings(tmp_path / "run.jsonl")
    assert [k for k in found if k[1] == "error"] == []
    recs = [json.loads(line) for line in open(tmp_path / "run.jsonl")]
    assert recs[0]["routing"]["n_units"] == 4
    assert recs[-2]["loss"] < recs[1]["loss"] - 1.0  # it learned
