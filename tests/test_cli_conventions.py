"""The command line's conventions, through the real console entry point (`cli.main`) in a
subprocess: --version, -h, one-line usage errors with exit 2, flags and choices in help,
-q/--quiet everywhere, shell completion, one --overwrite rule for every written file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import cli
from tests.faults import good_log, rust_log

ROOT = Path(__file__).resolve().parents[1]
MOH = [sys.executable, "-c", "from cli import main; main()"]
HEALTHY = ROOT / "sample_logs" / "healthy_adaptive.jsonl"
COMMANDS = ("train", "report", "compare", "plot", "import", "watch")


def moh(*args, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(MOH + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, **(env or {})})


def test_version():
    r = moh("--version")
    assert r.returncode == 0 and r.stdout == f"moh {version('moh')}\n", r
    assert re.fullmatch(r"moh \d+\.\d+\.\d+\n", r.stdout)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_dash_h_is_help_with_flags_as_flags(command):
    r = moh(*([command] if command else []), "-h")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Usage: moh {command}".rstrip()), r.stdout[:200]
    assert "<bool>" not in r.stdout and "<list" not in r.stdout and "╭" not in r.stdout
    if command:
        assert re.search(r"-q, --quiet\s", r.stdout)
    if command in ("report", "compare"):
        assert "--format <table|md|json|html>" in r.stdout
        assert re.search(r"\n  --strict  +Bad log lines", r.stdout)   # a flag: no value shown
        assert "-o, --output <path>" in r.stdout


def test_choices_in_cli_match_the_library():
    from analyze import formats, loader, plots

    assert cli.REPORT_FORMATS == formats.FORMATS
    assert cli.INPUT_FORMATS == loader.INPUT_FORMATS
    assert cli.PLOT_FORMATS == plots.FORMATS


USAGE_ERRORS = [
    (["train", "--epochs", "abc"], "'--epochs'"),
    (["report", HEALTHY, "--bogus"], "No such option: --bogus"),
    (["report", HEALTHY, "--format", "xml"], "'xml'"),
    (["report", HEALTHY, "--strict", "true"], "--strict is a flag and takes no value"),
    (["compare", HEALTHY, HEALTHY, "--strict", "no"], "write '--strict' alone (or leave it out)"),
    (["report"], "Missing argument"),
    (["plot", HEALTHY], "Missing option '-o'"),
    (["plot", HEALTHY, "-o", "figs", "--jobs", "0"], "'--jobs'"),
    (["plot", HEALTHY, "-o", "figs", "--x", "epoch"], "'epoch'"),
    (["import", "x.log"], "Missing option '-o'"),
    (["compare", HEALTHY], "at least two runs"),
    (["frobnicate"], "No such command"),
]


@pytest.mark.parametrize("args, says", USAGE_ERRORS, ids=[" ".join(map(str, a[:3])).replace(str(ROOT), "")
                                                          for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line_and_exit_2(args, says, tmp_path):
    r = moh(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    prefix = "moh: error: " if args[0] == "frobnicate" else f"moh {args[0]}: error: "
    assert lines[0].startswith(prefix) and says in lines[0], lines[0]
    assert r.stdout == ""
    assert not (tmp_path / "figs").exists()


def test_a_flag_without_a_value_still_works():
    r = moh("report", HEALTHY, "--strict", "--format", "json", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("{") and r.stderr == ""


def test_shell_completion_completes_commands_and_options():
    env = {"_MOH_COMPLETE": "complete_bash", "COMP_WORDS": "moh rep", "COMP_CWORD": "1"}
    r = moh(env=env)
    assert r.stdout.split() == ["report"], r
    env = {"_MOH_COMPLETE": "complete_bash", "COMP_WORDS": "moh report --form", "COMP_CWORD": "2"}
    assert moh(env=env).stdout.split() == ["--format"]
    # Typer finds the shell among the command's ancestors (shellingham), not in $SHELL: run it
    # under a bash that stays its parent (a test run whose shell has exited has none above it)
    shown = subprocess.run(["/bin/bash", "-c", '"$@"; status=$?; exit $status', "bash", *MOH, "--show-completion"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "complete -o default -F _moh_completion moh" in shown.stdout, shown


def test_every_command_has_quiet():
    import typer.main

    group = typer.main.get_command(cli.app)
    for name in COMMANDS:
        opts = {o for p in group.commands[name].params for o in p.opts}
        assert {"-q", "--quiet"} <= opts, name


def test_quiet_silences_notes_not_errors(tmp_path):
    log = good_log(tmp_path)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    loud, quiet = moh("report", log, "--format", "json"), moh("report", log, "--format", "json", "-q")
    assert loud.returncode == quiet.returncode and loud.stdout == quiet.stdout
    assert "note:" in loud.stderr and quiet.stderr == ""
    missing = moh("report", tmp_path / "missing.jsonl", "-q")
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1


def _refused(r: subprocess.CompletedProcess, path: Path) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.splitlines() == [f"error: {path} exists; pass --overwrite to replace it"], r.stderr


def test_import_refuses_an_existing_output_unless_overwrite(tmp_path):
    log, out = rust_log(tmp_path), tmp_path / "run.jsonl"
    assert moh("import", log, "-o", out).returncode == 0
    first = out.read_bytes()
    out.write_text("keep me\n")
    _refused(moh("import", log, "-o", out), out)
    assert out.read_text() == "keep me\n"
    r = moh("import", log, "-o", out, "--overwrite", "-q")
    assert r.returncode == 0 and r.stderr == "" and out.read_bytes() == first


def test_plot_refuses_existing_figures_unless_overwrite(tmp_path):
    log, figs = good_log(tmp_path), tmp_path / "figs"
    assert moh("plot", log, "-o", figs, "--format", "svg", "-j", "1").returncode == 0
    (figs / "loss.svg").write_text("keep me")
    _refused(moh("plot", log, "-o", figs, "--format", "svg"), figs / "thresholds.svg")
    assert (figs / "loss.svg").read_text() == "keep me"
    assert moh("plot", log, "-o", figs, "--format", "png", "-j", "1").returncode == 0   # other files: fine
    assert moh("plot", log, "-o", figs, "--format", "svg", "--overwrite", "-j", "1").returncode == 0
    assert (figs / "loss.svg").read_text().lstrip().startswith("<?xml")


def test_train_refuses_an_existing_run_the_same_way_with_either_spelling(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.jsonl").write_text("{}\n")
    for spelling in ("-o", "--output", "--out"):
        r = moh("train", spelling, run, "--epochs", "1")
        assert r.returncode == 2, (spelling, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and "--overwrite" in r.stderr and str(run) in r.stderr


def test_report_output_file(tmp_path):
    out = tmp_path / "report.md"
    r = moh("report", HEALTHY, "--format", "md", "-o", out)
    assert r.returncode == 0 and r.stdout == "" and out.read_text().startswith("# moh report")
    _refused(moh("report", HEALTHY, "-o", out), out)
    r = moh("report", HEALTHY, "-o", out, "--overwrite")     # table to a file: the compact layout
    assert r.returncode == 0 and "\nPASS: " in out.read_text()
