"""docs/monitor.md's complete example runs as written and its log is judged without errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a real (small) training run in a subprocess


def test_the_complete_example_runs(tmp_path):
    doc = (ROOT / "docs" / "monitor.md").read_text(encoding="utf-8")
    code = re.search(r"## A complete example.*?```python\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "example.py").write_text(code)
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    log = tmp_path / "runs" / "doc_example" / "run.jsonl"
    recs = [json.loads(line) for line in open(log, encoding="utf-8")]
    steps = [x for x in recs if x["event"] == "step"]
    assert len(steps) == 60 and steps[-1]["loss"] < steps[0]["loss"]
    assert recs[0]["routing"] == {"unit": "expert", "kind": "topk", "n_units": 4, "top_k": 2}
    rep = subprocess.run([sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "report", str(log),
                          "--format", "json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rep.returncode in (0, 1), rep.stderr
    assert [f for f in json.loads(rep.stdout)["findings"] if f["severity"] == "error"] == []
