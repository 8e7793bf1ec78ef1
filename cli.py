"""`moh` command line: thin commands that parse, call the library, render.

Exit codes (documented in README.md and docs/reliability.md):
  0  success / report verdict pass
  1  report criteria failed; training failed (non-finite stop)
  2  usage or configuration error
  3  unreadable or unusable input, or an output that cannot be written (full disk, no permission)
  130, 143  training interrupted by SIGINT / SIGTERM; 130 a watch left with Ctrl-C
Payload goes to stdout; progress, warnings and errors go to stderr.
Library code never calls sys.exit: domain errors become exit codes here only. Every failure is one
line on stderr naming the file (and line), never a traceback (MOH_DEBUG=1 shows one), and a
failed command leaves no partial output file (analyze.atomic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli_conventions import OneLineErrors, PlainHelp, choice, refuse_existing, version_callback

app = typer.Typer(
    cls=OneLineErrors,  # usage errors: one line on stderr, exit 2 (cli_conventions.py)
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags without a <bool> metavar, choices as [a|b], no boxes
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Train fully adaptive Mixture-of-Heads LMs and diagnose their routing telemetry.",
)


@app.callback()
def _moh(version: bool = typer.Option(False, "--version", is_eager=True, callback=version_callback,
                                      help="Print the version and exit.")) -> None:
    """Train fully adaptive Mixture-of-Heads LMs and diagnose their routing telemetry."""


def _err(message: str) -> None:
    """One message to stderr; control characters from logs are escaped (no terminal escapes)."""
    import re

    typer.echo(re.sub("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]",
                      lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                      str(message)), err=True)


# ---- train (moh/) --------------------------------------------------------------------------


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", readable=False,
                                          help="TOML file of config keys (flat), applied over the defaults."),
    router: Optional[str] = typer.Option(None, help="dense | moh | adaptive (default adaptive)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs for BOTH phases (see --pretrain-epochs / --instruct-epochs)."),
    pretrain_epochs: Optional[int] = typer.Option(None, help="Pre-training epochs."),
    instruct_epochs: Optional[int] = typer.Option(None, help="Instruction-tuning epochs."),
    data: Optional[str] = typer.Option(None, help="Corpus: JSON array, JSONL with 'text', plain text, or a directory; default the embedded corpus."),
    out: Optional[Path] = typer.Option(None, "-o", "--output", "--out",
                                       help="Run directory (default runs/<router>-<time>)."),
    seed: Optional[int] = typer.Option(None, help="Random seed; same seed => same run.jsonl apart from time fields."),
    lr: Optional[float] = typer.Option(None, help="Peak pre-training learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Pre-training batch size."),
    target_heads: Optional[float] = typer.Option(None, help="adaptive: mean heads per token to steer to."),
    log_every: Optional[int] = typer.Option(None, help="Write a step record every N optimizer steps."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default 0: the usable cores, split between --nproc ranks)."),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when available), cpu or cuda."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes on this machine: runs "
                              "torchrun --standalone --nproc_per_node N -m moh.train (see docs/distributed.md)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Any config key: --set key=value (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run.jsonl in --output."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", metavar="DIR", readable=False,
        help="Continue the run in DIR from its checkpoint.pt (config from the checkpoint; only "
             "threads, log_every, checkpoint_every, nonfinite, eval_* may change)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary (alerts still go to stderr); only the run directory on stdout."),
    alert_every: int = typer.Option(10, "--alert-every", min=0, metavar="N", help=(
        "Run the early rules (zero router gradient, non-finite, explosion, collapse, pinned stat) every "
        "N logged steps; alerts go to the log and stderr. 0: off.")),
    stop_on: Optional[str] = typer.Option(None, "--stop-on", metavar="error|warning",
                                          help="End the run (status failed, exit 1) on an alert of this level."),
) -> None:
    """Train a small LM (pre-training, then instruction tuning) and write <out>/run.jsonl telemetry."""
    import signal
    import time as _time

    from moh import config as mconfig  # torch-free: config errors answer before torch loads
    from moh import launch

    try:
        flags = dict(mconfig.parse_override(s) for s in set_)
        named = {"router": router, "data": data, "seed": seed, "lr": lr, "batch_size": batch_size,
                 "target_heads": target_heads, "log_every": log_every, "threads": threads, "device": device,
                 "pretrain_epochs": epochs if pretrain_epochs is None else pretrain_epochs,
                 "instruct_epochs": epochs if instruct_epochs is None else instruct_epochs}
        cfg, checkpoint, out = launch.prepare(
            config, {**flags, **{k: v for k, v in named.items() if v is not None}}, out=out, resume=resume,
            overwrite=overwrite, default_out=lambda c: Path("runs") / f"{c.router}-{_time.strftime('%Y%m%d-%H%M%S')}")
    except (mconfig.ConfigError, launch.LaunchError) as e:
        code, message = launch.exit_for(e)
        _err(message)
        raise typer.Exit(code)
    if stop_on not in (None, "error", "warning"):
        _err(f"error: --stop-on must be error or warning, not {stop_on!r}")
        raise typer.Exit(2)
    if stop_on is not None and (nproc > 1 or not alert_every):
        _err("error: --stop-on needs the in-process alerts: not with --nproc > 1 or --alert-every 0")
        raise typer.Exit(2)

    if nproc > 1:
        raise typer.Exit(launch.torchrun(cfg, out, nproc, overwrite=overwrite, resume=resume, quiet=quiet,
                                         err=_err, say=typer.echo))

    class _Terminated(KeyboardInterrupt):
        pass

    def _on_term(signum, frame):
        raise _Terminated()

    from moh import train as mtrain
    from moh.checkpoint import CheckpointError, Interrupted
    from moh.data import DataError

    from moh.progress import TrainProgress

    monitor = None
    if alert_every:
        from analyze.live.early import EarlyAlerts

        monitor = EarlyAlerts(alert_every, out / "run.jsonl", earlier=out / "run.jsonl" if checkpoint else None)
    previous = signal.signal(signal.SIGTERM, _on_term)
    progress = TrainProgress(quiet)
    try:
        res = mtrain.train(cfg, out, callback=progress, overwrite=overwrite, resume=checkpoint,
                           monitor=monitor, stop_on=stop_on)
    except (mconfig.ConfigError, DataError, CheckpointError) as e:
        code, message = launch.exit_for(e)
        _err(message)
        raise typer.Exit(code)
    except Interrupted as e:  # first SIGINT/SIGTERM: the step finished, a checkpoint was written
        import signal as _signal

        name = _signal.Signals(e.signum).name
        if "abandoned" in str(e):
            _err(f"interrupted ({e}); telemetry up to the last step in {out}")
        else:
            _err(f"interrupted by {name}: checkpoint and telemetry in {out}; continue with: moh train --resume {out}")
        raise typer.Exit(128 + e.signum)
    except _Terminated:
        _err(f"terminated; partial telemetry in {out}")
        raise typer.Exit(143)
    except KeyboardInterrupt:
        _err(f"interrupted; partial telemetry in {out}")
        raise typer.Exit(130)
    except OSError as e:  # the run directory filled up or went away mid-run
        name = e.filename if e.filename is not None else out
        _err(f"error: cannot write to {name}: {e.strerror or e}")
        raise typer.Exit(3)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not quiet:
        con = progress.console
        con.print(f"[bold]{res.status}[/]: {res.steps} steps in {res.wall_s:.1f} s ({cfg.router} router)")
        for phase, rec in res.last_step.items():
            heads = ", ".join(f"{l['heads_mean']:.2f}" for l in rec["layers"])
            con.print(f"  {phase:<8} last step: loss {rec['loss']:.3f}  grad norm {rec['grad_norm']:.2f}  heads/layer [{heads}]")
        for ev in res.evals:
            em = "n/a" if ev["exact_match"] is None else f"{ev['exact_match']:.2f}"
            con.print(f"  {ev['phase']:<8} eval: loss {ev['loss']:.3f}  exact match {em}")
        if res.message:
            con.print(f"  [red]{res.message}[/]")
    typer.echo(str(out))
    if res.status != "completed":
        raise typer.Exit(1)


# ---- report / compare (analyze/) ------------------------------------------------------------


_FORMAT_HELP = ("table (for a terminal; a compact layout at <= 80 columns or piped), md (Markdown), "
                "json (one document, docs/report-json.md) or html (one self-contained page).")
# The choices are spelled here (not imported) so that `moh -h` does not load pandas; a test checks
# they equal analyze.formats.FORMATS, analyze.loader.INPUT_FORMATS and analyze.plots.FORMATS.
REPORT_FORMATS = ("table", "md", "json", "html")
INPUT_FORMATS = ("auto", "jsonl", "rustgpt")
PLOT_FORMATS = ("png", "svg")
ReportFormat, InputFormat, PlotFormat = (choice("ReportFormat", REPORT_FORMATS), choice("InputFormat", INPUT_FORMATS),
                                         choice("PlotFormat", PLOT_FORMATS))
XAxis, ImportFormat = choice("XAxis", ("step", "time")), choice("ImportFormat", ("auto", "rustgpt"))
_CRITERIA_HELP = "TOML criteria file merged over the defaults (analyze/default_criteria.toml)."
# Input paths are declared readable=False: click would otherwise answer an unreadable file with a
# multi-line usage box and exit 2; the loaders answer it with one line and exit 3.



def run_logs(value):
    """Shared callback of every log argument: a run directory (what `moh train` prints) stands
    for its run.jsonl."""
    from analyze.runpath import log_path

    if value is None:
        return None
    return [log_path(p) for p in value] if isinstance(value, (list, tuple)) else log_path(value)


# Options report, compare and plot share, declared once.
CriteriaOption = Annotated[Optional[Path], typer.Option("--criteria", readable=False, help=_CRITERIA_HELP)]
FormatOption = Annotated[ReportFormat, typer.Option("--format", help=_FORMAT_HELP)]
StrictOption = Annotated[bool, typer.Option(
    "--strict", help="Bad log lines and wrong types are errors (exit 3) instead of notes.")]
InputFormatOption = Annotated[InputFormat, typer.Option("--input-format", help="auto (sniff the content), jsonl or rustgpt.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No notes or warnings on stderr (errors still).")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files (refused otherwise).")]
ReportOutputOption = Annotated[Optional[Path], typer.Option(
    "-o", "--output", help="Write the report to this file instead of stdout (table: the compact layout).")]
_BASELINE_HELP = ("A known-good reference run (same config, another seed): report baseline_deviation "
                  "findings where a key series leaves the reference's normal band (docs/findings.md).")
BaselineOption = Annotated[Optional[Path], typer.Option("--baseline", readable=False, help=_BASELINE_HELP)]


def _load(path: Path, strict: bool, input_format: str, what: str = "", quiet: bool = False):
    """A loaded Run with its notes on stderr, or typer.Exit(3) with one line saying why not."""
    from analyze import loader

    try:
        run = loader.load_run(path, strict=strict, input_format=input_format)
    except loader.LoadError as e:
        _err(f"error: {what}{e}")
        raise typer.Exit(3)
    for note in () if quiet else run.notes:
        _err(f"note: {what}{note}")
    if not len(run.steps):
        _err(f"error: {what}{path}: no step records, nothing to judge")
        raise typer.Exit(3)
    return run


def _analysis(paths: list[Path], criteria: Optional[Path], strict: bool, input_format: str,
              baseline: Optional[Path] = None, quiet: bool = False) -> list:
    """Parse-and-evaluate shared by report and compare: Reports, or typer.Exit with the exit code.
    `baseline`: a known-good reference run; each report adds its baseline_deviation findings."""
    from analyze import criteria as crit
    from analyze import report

    sets: dict = {}
    try:  # a criteria file that fits neither default set is reported before any log is read (exit 2)
        sets[crit.DEFAULT_CRITERIA_PATH] = crit.load_criteria(criteria)
    except crit.CriteriaError as e:
        try:
            sets[crit.GENERIC_CRITERIA_PATH] = crit.load_criteria(criteria, crit.GENERIC_CRITERIA_PATH)
        except crit.CriteriaError:
            _err(f"error: {e}")
            raise typer.Exit(2)
    ref = None if baseline is None else _load(baseline, strict, input_format, "baseline: ", quiet)
    runs = [_load(path, strict, input_format, quiet=quiet) for path in paths]
    try:  # the user file merges over whichever default set a log gets
        for b in {crit.default_path(run) for run in runs} - set(sets):
            sets[b] = crit.load_criteria(criteria, b)
    except crit.CriteriaError as e:
        _err(f"error: {e}")
        raise typer.Exit(2)
    return [report.build_report(run, sets[crit.default_path(run)], baseline=ref,
                                criteria_file=None if criteria is None else str(criteria)) for run in runs]


def _narrow() -> bool:
    """stdout is a pipe or file, or a terminal of 80 columns or fewer (COLUMNS counts)."""
    import shutil
    import sys

    return not sys.stdout.isatty() or shutil.get_terminal_size().columns <= 80


def _deliver(doc, fmt: str, render, compact, output: Optional[Path], overwrite: bool) -> None:
    """A report or comparison to `output` (atomically) or stdout; the table is compact when narrow."""
    if output is None:
        _emit(compact(doc) if fmt == "table" and _narrow() else render(doc, fmt))
        return
    from analyze.atomic import OutputError, atomic_output

    refuse_existing([output], overwrite, _err)
    text = compact(doc) if fmt == "table" else render(doc, fmt)
    try:
        with atomic_output(output) as fh:
            fh.write(text.encode("utf-8"))
    except OutputError as e:
        _err(f"error: {e}")
        raise typer.Exit(3)


def _emit(payload) -> None:
    """Payload to stdout: rich renderables through a console, text as is.

    stdout that cannot be written (a full disk behind `> file`) is exit 3 with one line; a closed
    pipe (`| head`) is not an error (see _guarded).
    """
    import os
    import sys

    try:
        if isinstance(payload, str):
            typer.echo(payload, nl=False)
        else:
            from rich.console import Console

            Console(soft_wrap=False).print(payload)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        try:  # the interpreter's final flush of the same buffer would print "Exception ignored"
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        _err(f"error: cannot write to standard output: {e.strerror or e}")
        raise typer.Exit(3)


def _guarded(fn):
    """Run a command body; an unexpected error becomes one line and exit 3, never a traceback."""
    import os

    try:
        return fn()
    except typer.Exit:
        raise
    except BrokenPipeError:  # stdout closed early (| head): not an error worth a message
        import sys

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        raise typer.Exit(0)
    except Exception as e:  # noqa: BLE001 -- the CLI edge: a one-line message instead of a traceback
        if os.environ.get("MOH_DEBUG"):
            raise
        _err(f"error: internal error while analysing ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
             f"set MOH_DEBUG=1 for the traceback")
        raise typer.Exit(3)


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., readable=False, callback=run_logs, help="Run directory or telemetry log: run.jsonl, a .gz of it, or a reference trainer text log."),
    criteria: CriteriaOption = None,
    fmt: FormatOption = ReportFormat.table,
    output: ReportOutputOption = None,
    overwrite: OverwriteOption = False,
    strict: StrictOption = False,
    input_format: InputFormatOption = InputFormat.auto,
    baseline: BaselineOption = None,
    quiet: QuietOption = False,
) -> None:
    """Judge a run against the success criteria and list findings. Exit 0 pass, 1 fail, 2 usage, 3 bad input."""
    def body():
        from analyze import report
        from analyze.render import compact

        (rep,) = _analysis([run], criteria, strict, input_format.value, baseline, quiet)
        _deliver(rep, fmt.value, report.render, compact.report_text, output, overwrite)
        raise typer.Exit(0 if rep.verdict == "pass" else 1)

    _guarded(body)


@app.command("compare", cls=PlainHelp)
def compare_cmd(
    runs: list[Path] = typer.Argument(..., readable=False, metavar="RUN", callback=run_logs,
                                      help="Two or more run directories or telemetry logs; the first is the baseline for deltas."),
    criteria: CriteriaOption = None,
    fmt: FormatOption = ReportFormat.table,
    output: ReportOutputOption = None,
    overwrite: OverwriteOption = False,
    strict: StrictOption = False,
    input_format: InputFormatOption = InputFormat.auto,
    baseline: BaselineOption = None,
    quiet: QuietOption = False,
) -> None:
    """Criteria and key final metrics of runs side by side, with deltas. Exit 1 when any run fails."""
    def body():
        from analyze import compare
        from analyze.render import compact

        if len(runs) < 2:
            _err("moh compare: error: compare needs at least two runs (see moh compare -h)")
            raise typer.Exit(2)
        reports = _analysis(runs, criteria, strict, input_format.value, baseline, quiet)
        cmp = compare.build_comparison(reports)
        _deliver(cmp, fmt.value, compare.render, compact.compare_text, output, overwrite)
        raise typer.Exit(0 if cmp.verdict == "pass" else 1)

    _guarded(body)

# ---- watch (analyze/live/) -------------------------------------------------------------------


@app.command("watch", cls=PlainHelp)
def watch_cmd(
    runs: list[Path] = typer.Argument(..., readable=False, metavar="RUN",
                                      help="Run directories or run.jsonl files, also ones still being written."),
    criteria: CriteriaOption = None,
    once: bool = typer.Option(False, "--once", help="Print one snapshot of what the logs hold now and exit."),
    interval: float = typer.Option(0.5, "--interval", min=0.05, help="Seconds between looks at the logs."),
    quiet: QuietOption = False,  # noqa: ARG001 -- watch writes no notes; -q is accepted like everywhere
) -> None:
    """Follow runs live (progress, loss, heads, findings) until they end; exit 0 pass, 1 fail, 130 Ctrl-C."""
    def body():
        from analyze import criteria as crit
        from analyze.live import watch

        try:  # no file: each run's report picks its default set (engine or generic) itself
            specs = None if criteria is None else crit.load_criteria(criteria)
        except crit.CriteriaError as e:
            _err(f"error: {e}")
            raise typer.Exit(2)
        try:
            code = watch.snapshot(runs, specs) if once else watch.follow(runs, specs, interval)
        except watch.WatchError as e:
            _err(f"error: {e}")
            raise typer.Exit(3)
        raise typer.Exit(code)

    _guarded(body)

# ---- plot (analyze/) ------------------------------------------------------------------------


@app.command("plot", cls=PlainHelp)
def plot(
    runs: list[Path] = typer.Argument(..., readable=False, metavar="RUN", callback=run_logs,
                                      help="One or more run directories or telemetry logs (run.jsonl, .gz, or a reference text log); several overlay."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for the figures (created if needed)."),
    fmt: PlotFormat = typer.Option(PlotFormat.png, "--format", help="Figure file format."),
    x: XAxis = typer.Option(XAxis.step, "--x", help="x axis: step, or time (elapsed since run start)."),
    input_format: InputFormatOption = InputFormat.auto,
    strict: StrictOption = False,
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j", min=1, help="Processes drawing figures (default: one per CPU, up to one per figure)."),
    findings: bool = typer.Option(
        False, "--findings", help="Mark each finding (moh report's) at the steps it rests on, on the figure of its series."),
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Draw thresholds, complexity, heads, head load, gradient norms and loss figures; print the paths."""
    _guarded(lambda: _plot(runs, output, fmt.value, x.value, input_format.value, strict, jobs, findings, overwrite,
                           quiet))


def _plot(runs: list[Path], output: Path, fmt: str, x: str, input_format: str, strict: bool,
          jobs: int | None = None, findings: bool = False, overwrite: bool = False, quiet: bool = False) -> None:
    import warnings

    from analyze import loader, plots

    refuse_existing([output / f"{name}.{fmt}" for name in plots.FAMILIES], overwrite, _err)
    loaded = []
    for path in runs:
        try:
            run = loader.load_run(path, strict=strict, input_format=input_format)
        except (loader.LoadError, OSError) as e:
            _err(f"error: {e}")
            raise typer.Exit(3)
        for note in () if quiet else run.notes:
            _err(f"note: {note}")  # notes already name the file
        loaded.append(run)
    marks = None
    if findings:
        from analyze.findings import find_all

        marks = [(f.to_dict(), run) for run in loaded for f in find_all(run)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", plots.PlotWarning)
        try:
            written = plots.write_figures(loaded, output, fmt=fmt, x="elapsed" if x == "time" else "step",
                                          jobs=jobs, marks=marks)
        except plots.OutputError as e:  # names the path; nothing partial is left (all or nothing)
            _err(f"error: {e}")
            raise typer.Exit(3)
        except OSError as e:
            _err(f"error: cannot write to {output}: {e.strerror or e}")
            raise typer.Exit(3)
    for w in () if quiet else caught:
        if issubclass(w.category, plots.PlotWarning):
            _err(f"warning: {w.message}")
    for path in written:
        typer.echo(str(path))

# ---- import (analyze/) ----------------------------------------------------------------------


@app.command("import")
def import_log(
    log: Path = typer.Argument(..., readable=False, help="Reference RustGPT trainer text log (UTF-8 or UTF-16, as captured)."),
    output: Path = typer.Option(..., "-o", "--output", help="Telemetry file to write (run.jsonl format)."),
    input_format: ImportFormat = typer.Option(
        ImportFormat.auto, "--input-format",
        help="auto (detect from content) or rustgpt (force the text-log reader)."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Corpus (JSON array, text file or directory) whose answers samples are matched against."),
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Convert a reference trainer text log into telemetry JSONL (one step per epoch line)."""
    _guarded(lambda: _import(log, output, data, overwrite, quiet))


def _import(log: Path, output: Path, data: Optional[Path], overwrite: bool = False, quiet: bool = False) -> None:
    from analyze import rustgpt
    from analyze.atomic import OutputError

    refuse_existing([output], overwrite, _err)
    notes: list[str] = []
    try:
        counts = rustgpt.import_log(log, output, corpus=data, notes=notes)
    except (rustgpt.RustLogError, OutputError) as e:
        _err(f"error: {e}")
        raise typer.Exit(3)
    except OSError as e:  # reading the log or the corpus
        name = e.filename if e.filename is not None else log
        _err(f"error: {name}: {e.strerror or e}")
        raise typer.Exit(3)
    if quiet:
        return
    for note in notes:
        _err(f"note: {note}")
    phases = ", ".join(f"{n} {ph}" for ph, n in counts["phases"].items())
    state = "completed" if counts["completed"] else "no end (killed or still running)"
    _err(f"{log} -> {output}: {counts['steps']} epochs ({phases}), {counts['evals']} eval, {state}")


# ---- entry point ------------------------------------------------------------------------------

# Commands that only read logs and write their output files: nothing is left to do at exit.
_FAST_EXIT_COMMANDS = frozenset({"report", "compare", "plot", "import", "watch", "train"})


def main() -> None:
    """The `moh` console script: `app`, then, for an analysis command or `train`, an immediate
    process exit.

    Python's own teardown (freeing every module and object one by one) took 0.4-0.6 s after
    pandas and matplotlib were imported on the 2-core CI machine, 5% of `moh plot` on a 200k-step
    log (docs/benchmarks.md), and does nothing such a command needs: its output files are written
    and closed (atomically) before it returns, and stdout/stderr are flushed here. The same holds
    for `moh train`: by the time `train()` returns, the Recorder has closed (and fsynced) the
    log, the checkpoint and model files were written atomically, and a process group was torn
    down in `train()`'s finally (`--nproc` > 1 runs the ranks as torchrun's children, which have
    exited). With torch imported the teardown took 0.35 s of a ~15.6 s default run (measured
    2026-11-30: `python -c "import torch"` ends 0.35 s after its last line, 0.014 s with
    os._exit).
    """
    import sys

    try:
        app(prog_name="moh")  # standalone: always ends in SystemExit; "moh" also under python -c
    except SystemExit as done:
        command = sys.argv[1] if len(sys.argv) > 1 else ""
        if command in _FAST_EXIT_COMMANDS and (done.code is None or isinstance(done.code, int)):
            _exit_now(done.code or 0)
        raise


def _exit_now(code: int) -> None:
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): the output was not wanted
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
