"""`moh report` / `moh compare` at 80 columns and piped: the compact layout never cuts a value
or a code, keeps the verdict on one line, and says how many per-layer rows a row stands for.
Run through the real entry point: piped (subprocess pipes), and on a pseudo-terminal of 80 and
81 columns (both sides of the switch)."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_logs"
MOH = [sys.executable, "-c", "from cli import main; main()"]
VERDICT = re.compile(r"^(PASS|FAIL): (\d+) passed, (\d+) failed, (\d+) warned, (\d+) n/a; "
                     r"findings (\d+) error, (\d+) warning, (\d+) info$", re.M)


def piped(*args, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(MOH + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def on_terminal(*args, columns: int) -> str:
    """stdout of the command on a pseudo-terminal `columns` wide."""
    main, child = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"}
    proc = subprocess.Popen(MOH + [str(a) for a in args], stdout=child, stderr=subprocess.DEVNULL, cwd=ROOT,
                            env=env)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=300)
    os.close(main)
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def json_report(log: Path) -> dict:
    return json.loads(piped("report", log, "--format", "json").stdout)


@pytest.mark.parametrize("sample", ["healthy_adaptive", "broken_unstable_lr", "broken_no_gradient",
                                    "dense_baseline"])
def test_piped_report_fits_80_columns_and_cuts_nothing(sample):
    log = SAMPLES / f"{sample}.jsonl"
    r = piped("report", log)
    assert r.returncode in (0, 1), r.stderr
    out = r.stdout
    assert all(len(line) <= 80 for line in out.splitlines()), max(out.splitlines(), key=len)
    assert "…" not in out and "┃" not in out
    doc = json_report(log)
    flat = " ".join(out.split())
    for f in doc["findings"]:                        # every code whole, as a word
        assert re.search(rf"\b{f['code']}\b", out), f["code"]
        assert " ".join(f["message"].split()) in flat
    for c in doc["criteria"]:
        assert c["label"] in flat
    # the verdict: one line of its own, and the same counts as the JSON document
    (m,) = VERDICT.findall(out)
    s = doc["summary"]
    assert m[0] == doc["verdict"].upper()
    assert list(map(int, m[1:])) == [s["criteria"]["pass"], s["criteria"]["fail"], s["criteria"]["warn"],
                                     s["criteria"]["missing"], s["findings"]["error"],
                                     s["findings"]["warning"], s["findings"]["info"]]
    # rows + "(per layer: N rows)" account for every criterion result the verdict counts
    rows = [line for line in out.split("\n\n")[1].splitlines()[1:] if re.match(r"^(pass|fail|warn|missing|n/a) ", line)]
    per_layer = [int(n) for n in re.findall(r"\(per layer: (\d+) rows\)", flat)]
    assert len(rows) - len(per_layer) + sum(per_layer) == len(doc["criteria"])


def test_grep_finds_the_verdict():
    """`moh report X | grep PASS`: a real pipe between the two processes."""
    moh = subprocess.Popen(MOH + ["report", str(SAMPLES / "healthy_adaptive.jsonl")], stdout=subprocess.PIPE,
                           cwd=ROOT)
    grep = subprocess.run(["grep", "PASS"], stdin=moh.stdout, capture_output=True, text=True, timeout=300)
    moh.stdout.close()
    assert moh.wait(timeout=300) == 0
    assert grep.returncode == 0 and grep.stdout.startswith("PASS: 17 passed, 0 failed"), grep
    assert grep.stdout.count("\n") == 1


def test_a_long_value_is_never_cut_even_narrower_than_the_value():
    r = piped("report", SAMPLES / "broken_unstable_lr.jsonl")
    # the router-learning value is longer than a line: wrapped at spaces, each number whole
    assert re.search(r"Δthreshold_mean \d", r.stdout) and re.search(r"Δpred_norm \d", r.stdout)


def test_terminal_80_columns_is_compact_81_is_the_wide_table():
    log = SAMPLES / "broken_no_gradient.jsonl"
    narrow = on_terminal("report", log, columns=80)
    wide = on_terminal("report", log, columns=81)
    assert VERDICT.search(re.sub(r"\x1b\[[0-9;]*m", "", narrow)) and "┃" not in narrow
    assert "┃" in wide and "Expected vs actual" in wide
    assert all(len(line) <= 80 for line in narrow.splitlines())


@pytest.mark.parametrize("first, second", [("dense_baseline", "broken_unstable_lr"),
                                           ("healthy_adaptive", "dense_baseline")])
def test_compare_lists_criteria_in_the_report_order(first, second):
    def labels(doc_rows):
        return list(dict.fromkeys((c["label"], c["phase"]) for c in doc_rows))

    cmp = json.loads(piped("compare", SAMPLES / f"{first}.jsonl", SAMPLES / f"{second}.jsonl",
                           "--format", "json").stdout)
    phased = labels(json_report(SAMPLES / "broken_unstable_lr.jsonl")["criteria"])
    assert labels(cmp["criteria"]) == [k for k in phased if k[1] is not None or
                                       not any(p[0] == k[0] and p[1] for p in phased)]


def test_piped_compare_fits_and_has_a_one_line_verdict():
    r = piped("compare", SAMPLES / "healthy_adaptive.jsonl", SAMPLES / "broken_no_gradient.jsonl")
    assert r.returncode == 1
    assert all(len(line) <= 80 for line in r.stdout.splitlines())
    assert r.stdout.rstrip().splitlines()[-1] == "FAIL: run 1 pass, run 2 fail"
    assert "router_grad_zero" in r.stdout
