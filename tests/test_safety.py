"""Safety (issue 5 item 6): nothing read is executed, log strings are shown literally and escaped,
and outputs land exactly where the user said, with ordinary permissions."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.analyze.conftest import make_records, write_log
from tests.faults import MOH, ROOT

# Patterns that execute or unpickle data; the one allowed form is torch.load(..., weights_only=True).
_UNSAFE = [
    (re.compile(r"\bimport\s+(c?pickle|marshal|shelve|dill|cloudpickle)\b|\bfrom\s+(c?pickle|marshal|shelve)\b"),
     "unpickling module"),
    (re.compile(r"\bpickle\.loads?\(|read_pickle\(|allow_pickle\s*=\s*True"), "unpickling call"),
    # a call of the builtin; `def eval(` (Recorder.eval, an eval record) defines a method, `.eval(` calls one
    (re.compile(r"(?<![\w.])(?<!def )(eval|exec)\("), "eval/exec"),
    (re.compile(r"\byaml\.(unsafe_)?load\("), "yaml.load"),
    (re.compile(r"\bshell\s*=\s*True"), "shell=True"),
]
_TORCH_LOAD = re.compile(r"torch\.load\(")


def _sources() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "build", "dist"}
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return out


def test_no_pickle_eval_or_exec_on_anything_read():
    found = []
    me = Path(__file__).resolve()
    for path in _sources():
        if path.resolve() == me:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            for pat, what in _UNSAFE:
                if pat.search(code):
                    found.append(f"{path.relative_to(ROOT)}:{i}: {what}: {line.strip()}")
            if _TORCH_LOAD.search(code):
                call = text.splitlines()[i - 1: i + 3]  # the call may wrap over a few lines
                if "weights_only=True" not in " ".join(call):
                    found.append(f"{path.relative_to(ROOT)}:{i}: torch.load without weights_only=True")
    assert not found, "\n".join(found)


HOSTILE = ("| pipe `tick` <script>alert(1)</script> **bold** [red]markup[/red] ![img](http://x) "
           "$\\frac{a}{$ \x1b[31mansi\x1b[0m \r\u202eevil\nnewline")


@pytest.fixture(scope="module")
def hostile_log(tmp_path_factory) -> Path:
    recs = make_records(n_steps=40)
    recs[0]["run_id"] = HOSTILE
    recs[0]["model"]["router"] = HOSTILE
    for r in recs:
        if r["event"] == "step":
            if r["phase"] == "instruct":
                r["phase"] = HOSTILE
            for lay in r["layers"]:
                lay["label"] = HOSTILE
        if r["event"] == "eval":
            r["samples"] = [{"prompt": HOSTILE, "expected": HOSTILE, "output": HOSTILE, "match": False}]
    recs.insert(5, {"event": "alert", "step": 3, "level": "error", "code": HOSTILE, "message": HOSTILE})
    recs.insert(6, {"event": HOSTILE})
    d = tmp_path_factory.mktemp("hostile") / "a <b> | `c` [red]"
    return write_log(d / "run.jsonl", recs)


def moh(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(MOH + [str(a) for a in args], capture_output=True, cwd=cwd, env=env, timeout=120)


def _no_raw_controls(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text, repr(text[:300])


def test_markdown_escapes_log_strings(hostile_log):
    p = moh("report", hostile_log, "--format", "md")
    assert p.returncode in (0, 1), p.stderr
    md, err = p.stdout.decode(), p.stderr.decode()
    _no_raw_controls(md)
    _no_raw_controls(err)
    assert "<script>" not in md and "&lt;script&gt;" in md
    for line in md.splitlines():
        if line.startswith("|"):  # every table row keeps its column count: pipes from logs are escaped
            assert len(re.findall(r"(?<!\\)\|", line)) == 7, line
    assert "\\`tick\\`" in md and "\\[red\\]" in md


def test_terminal_table_shows_markup_literally(hostile_log):
    p = moh("report", hostile_log)
    assert p.returncode in (0, 1), p.stderr
    out = p.stdout.decode()
    _no_raw_controls(out)
    assert "[red]markup[/red]" in out  # shown, not interpreted
    assert "\\x1b" in out  # the escape is visible as text


def test_json_keeps_log_strings_exactly(hostile_log):
    p = moh("report", hostile_log, "--format", "json")
    assert p.returncode in (0, 1), p.stderr
    doc = json.loads(p.stdout)
    assert doc["run"]["router"] == HOSTILE


def test_compare_markdown_escapes(hostile_log):
    p = moh("compare", hostile_log, hostile_log, "--format", "md")
    assert p.returncode in (0, 1), p.stderr
    md = p.stdout.decode()
    _no_raw_controls(md)
    assert "<script>" not in md


def test_plot_draws_hostile_labels_literally(hostile_log, tmp_path):
    out = tmp_path / "figs"
    p = moh("plot", hostile_log, "-o", out, "--format", "svg")
    assert p.returncode == 0, p.stderr.decode()
    svg = (out / "heads.svg").read_text()
    assert "<script" not in svg


def test_output_paths_are_exactly_what_was_given(tmp_path):
    from tests.faults import rust_log

    log = rust_log(tmp_path)
    for name in ("odd name [1]", "no_extension", "x.JSONL.gz.txt"):
        target = tmp_path / "sub dir" / name
        p = moh("import", log, "-o", target)
        assert p.returncode == 0, p.stderr.decode()
        assert target.is_file()
        mask = os.umask(0)
        os.umask(mask)
        assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    assert sorted(x.name for x in (tmp_path / "sub dir").iterdir()) == sorted(
        ["odd name [1]", "no_extension", "x.JSONL.gz.txt"])
    figs = tmp_path / "figs [x]"
    p = moh("plot", tmp_path / "sub dir" / "no_extension", "-o", figs)
    assert p.returncode == 0, p.stderr.decode()
    assert {f.parent for f in figs.iterdir()} == {figs}
    assert all(not f.name.startswith(".") for f in figs.iterdir())  # no temp files left


@pytest.mark.skipif(os.geteuid() != 0 or not hasattr(os, "mknod"), reason="needs root to make a device node")
def test_import_never_replaces_a_device_node(tmp_path):
    from tests.faults import rust_log

    dev = tmp_path / "full"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    p = moh("import", rust_log(tmp_path), "-o", dev)
    assert p.returncode == 3 and b"No space left" in p.stderr
    assert stat.S_ISCHR(dev.stat().st_mode)  # still the device, not a regular file renamed over it
