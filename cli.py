"""`moh` command line: thin commands that parse, call the library, render.

Exit codes (documented in README.md and docs/reliability.md):
  0  success / report verdict pass
  1  report criteria failed; training failed (non-finite stop)
  2  usage or configuration error
  3  unreadable or unusable input, or an output that cannot be written (full disk, no permission)
  130, 143  training interrupted by SIGINT / SIGTERM
Payload goes to stdout; progress, warnings and errors go to stderr.
Library code never calls sys.exit: domain errors become exit codes here only. Every failure is one
line on stderr naming the file (and line), never a traceback (MOH_DEBUG=1 shows one), and a
failed command leaves no partial output file (analyze.atomic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train fully adaptive Mixture-of-Heads LMs and diagnose their routing telemetry.",
)


def _err(message: str) -> None:
    """One message to stderr; control characters from logs are escaped (no terminal escapes)."""
    import re

    typer.echo(re.sub("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]",
                      lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                      str(message)), err=True)


# ---- train (moh/) --------------------------------------------------------------------------


class _TrainProgress:
    """Rich progress bar on stderr fed by the training loop's callback (phase, epoch, loss, heads)."""

    def __init__(self, quiet: bool):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.progress = None if quiet else Progress(
            TextColumn("[bold]{task.fields[phase]:<8}[/] epoch {task.fields[epoch]:>3}"),
            BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  heads {task.fields[heads]}"), TimeElapsedColumn(),
            console=self.console, transient=False)
        self.task = None
        self.evals: list[dict] = []

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "eval":
            self.evals.append(info)
        if self.progress is None:
            return
        if kind == "phase_start":
            if self.task is None:
                self.progress.start()
            else:
                self.progress.stop_task(self.task)
            self.task = self.progress.add_task("", total=info["total_steps"], phase=info["phase"],
                                               epoch=0, loss="-", heads="-")
        elif kind == "step" and self.task is not None:
            fields = {"epoch": info["epoch"]}
            if info.get("loss") is not None:
                fields |= {"loss": f"{info['loss']:.3f}", "heads": f"{info['heads']:.2f}"}
            self.progress.update(self.task, completed=info["i"], **fields)
        elif kind == "eval":
            em = info["exact_match"]
            self.progress.console.print(
                f"[dim]{info['phase']} eval:[/] loss {info['loss']:.3f}  exact match "
                + ("n/a" if em is None else f"{em:.2f}"))
        elif kind == "end":
            self.progress.stop()


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", readable=False,
                                          help="TOML file of config keys (flat), applied over the defaults."),
    router: Optional[str] = typer.Option(None, help="dense | moh | adaptive (default adaptive)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs for BOTH phases (see --pretrain-epochs / --instruct-epochs)."),
    pretrain_epochs: Optional[int] = typer.Option(None, help="Pre-training epochs."),
    instruct_epochs: Optional[int] = typer.Option(None, help="Instruction-tuning epochs."),
    data: Optional[str] = typer.Option(None, help="Corpus: JSON array, JSONL with 'text', plain text, or a directory; default the embedded corpus."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<router>-<time>)."),
    seed: Optional[int] = typer.Option(None, help="Random seed; same seed => same run.jsonl apart from time fields."),
    lr: Optional[float] = typer.Option(None, help="Peak pre-training learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Pre-training batch size."),
    target_heads: Optional[float] = typer.Option(None, help="adaptive: mean heads per token to steer to."),
    log_every: Optional[int] = typer.Option(None, help="Write a step record every N optimizer steps."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (0 = all cores)."),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when available), cpu or cuda."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes on this machine: runs "
                              "torchrun --standalone --nproc_per_node N -m moh.train (see docs/distributed.md)."),
    set_: list[str] = typer.Option([], "--set", help="Any config key: --set key=value (repeatable)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run.jsonl in --out."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", metavar="DIR", readable=False,
        help="Continue the run in DIR from its checkpoint.pt (config from the checkpoint; only "
             "threads, log_every, checkpoint_every, nonfinite, eval_* may change)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary; only the run directory on stdout."),
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

    previous = signal.signal(signal.SIGTERM, _on_term)
    progress = _TrainProgress(quiet)
    try:
        res = mtrain.train(cfg, out, callback=progress, overwrite=overwrite, resume=checkpoint)
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


_FORMAT_HELP = "table (rich, for a terminal), md (Markdown, for docs) or json (one document)."
_CRITERIA_HELP = "TOML criteria file merged over the defaults (analyze/default_criteria.toml)."
# Input paths are declared readable=False: click would otherwise answer an unreadable file with a
# multi-line usage box and exit 2; the loaders answer it with one line and exit 3.

# Options report, compare and plot share, declared once.
CriteriaOption = Annotated[Optional[Path], typer.Option("--criteria", readable=False, help=_CRITERIA_HELP)]
FormatOption = Annotated[str, typer.Option("--format", help=_FORMAT_HELP)]
StrictOption = Annotated[bool, typer.Option(
    "--strict", help="Bad log lines and wrong types are errors (exit 3) instead of notes.")]
InputFormatOption = Annotated[str, typer.Option("--input-format", help="auto (sniff the content), jsonl or rustgpt.")]
_BASELINE_HELP = ("A known-good reference run (same config, another seed): report baseline_deviation "
                  "findings where a key series leaves the reference's normal band (docs/findings.md).")
BaselineOption = Annotated[Optional[Path], typer.Option("--baseline", readable=False, help=_BASELINE_HELP)]


def _load(path: Path, strict: bool, input_format: str, what: str = ""):
    """A loaded Run with its notes on stderr, or typer.Exit(3) with one line saying why not."""
    from analyze import loader

    try:
        run = loader.load_run(path, strict=strict, input_format=input_format)
    except loader.LoadError as e:
        _err(f"error: {what}{e}")
        raise typer.Exit(3)
    for note in run.notes:
        _err(f"note: {what}{note}")
    if not len(run.steps):
        _err(f"error: {what}{path}: no step records, nothing to judge")
        raise typer.Exit(3)
    return run


def _analysis(paths: list[Path], criteria: Optional[Path], fmt: str, strict: bool, input_format: str,
              baseline: Optional[Path] = None) -> list:
    """Parse-and-evaluate shared by report and compare: Reports, or typer.Exit with the exit code.
    `baseline`: a known-good reference run; each report adds its baseline_deviation findings."""
    from analyze import criteria as crit
    from analyze import loader, report

    if fmt not in report.FORMATS:
        _err(f"error: --format must be one of {', '.join(report.FORMATS)}, not {fmt!r}")
        raise typer.Exit(2)
    if input_format not in loader.INPUT_FORMATS:
        _err(f"error: --input-format must be one of {', '.join(loader.INPUT_FORMATS)}, not {input_format!r}")
        raise typer.Exit(2)
    try:
        specs = crit.load_criteria(criteria)
    except crit.CriteriaError as e:
        _err(f"error: {e}")
        raise typer.Exit(2)
    ref = None if baseline is None else _load(baseline, strict, input_format, what="baseline: ")
    return [report.build_report(_load(path, strict, input_format), specs, baseline=ref,
                                criteria_file=None if criteria is None else str(criteria))
            for path in paths]


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
    run: Path = typer.Argument(..., readable=False, help="Telemetry log: run.jsonl, a .gz of it, or a reference trainer text log."),
    criteria: CriteriaOption = None,
    fmt: FormatOption = "table",
    strict: StrictOption = False,
    input_format: InputFormatOption = "auto",
    baseline: BaselineOption = None,
) -> None:
    """Judge a run against the success criteria and list findings. Exit 0 pass, 1 fail, 2 usage, 3 bad input."""
    def body():
        from analyze import report

        (rep,) = _analysis([run], criteria, fmt, strict, input_format, baseline)
        _emit(report.render(rep, fmt))
        raise typer.Exit(0 if rep.verdict == "pass" else 1)

    _guarded(body)


@app.command("compare")
def compare_cmd(
    runs: list[Path] = typer.Argument(..., readable=False, help="Two or more telemetry logs; the first is the baseline for deltas."),
    criteria: CriteriaOption = None,
    fmt: FormatOption = "table",
    strict: StrictOption = False,
    input_format: InputFormatOption = "auto",
    baseline: BaselineOption = None,
) -> None:
    """Criteria and key final metrics of runs side by side, with deltas. Exit 1 when any run fails."""
    def body():
        from analyze import compare

        if len(runs) < 2:
            _err("error: compare needs at least two runs")
            raise typer.Exit(2)
        reports = _analysis(runs, criteria, fmt, strict, input_format, baseline)
        cmp = compare.build_comparison(reports)
        _emit(compare.render(cmp, fmt))
        raise typer.Exit(0 if cmp.verdict == "pass" else 1)

    _guarded(body)

# ---- plot (analyze/) ------------------------------------------------------------------------


@app.command("plot")
def plot(
    runs: list[Path] = typer.Argument(..., readable=False, help="One or more telemetry logs (run.jsonl, .gz, or a reference text log); several overlay."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for the figures (created if needed)."),
    fmt: str = typer.Option("png", "--format", help="png or svg."),
    x: str = typer.Option("step", "--x", help="x axis: step, or time (elapsed since run start)."),
    input_format: InputFormatOption = "auto",
    strict: StrictOption = False,
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j", help="Processes drawing figures (default: one per CPU, up to one per figure)."),
    findings: bool = typer.Option(
        False, "--findings", help="Mark each finding (moh report's) at the steps it rests on, on the figure of its series."),
) -> None:
    """Draw thresholds, complexity, heads, head load, gradient norms and loss figures; print the paths."""
    _guarded(lambda: _plot(runs, output, fmt, x, input_format, strict, jobs, findings))


def _plot(runs: list[Path], output: Path, fmt: str, x: str, input_format: str, strict: bool,
          jobs: int | None = None, findings: bool = False) -> None:
    import warnings

    from analyze import loader, plots

    if fmt not in plots.FORMATS:
        _err(f"error: --format must be one of {', '.join(plots.FORMATS)}, not {fmt!r}")
        raise typer.Exit(2)
    if x not in ("step", "time"):
        _err(f"error: --x must be step or time, not {x!r}")
        raise typer.Exit(2)
    if input_format not in loader.INPUT_FORMATS:
        _err(f"error: --input-format must be one of {', '.join(loader.INPUT_FORMATS)}, not {input_format!r}")
        raise typer.Exit(2)
    if jobs is not None and jobs < 1:
        _err(f"error: --jobs must be at least 1, not {jobs}")
        raise typer.Exit(2)
    loaded = []
    for path in runs:
        try:
            run = loader.load_run(path, strict=strict, input_format=input_format)
        except (loader.LoadError, OSError) as e:
            _err(f"error: {e}")
            raise typer.Exit(3)
        for note in run.notes:
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
    for w in caught:
        if issubclass(w.category, plots.PlotWarning):
            _err(f"warning: {w.message}")
    for path in written:
        typer.echo(str(path))

# ---- import (analyze/) ----------------------------------------------------------------------


@app.command("import")
def import_log(
    log: Path = typer.Argument(..., readable=False, help="Reference RustGPT trainer text log (UTF-8 or UTF-16, as captured)."),
    output: Path = typer.Option(..., "-o", "--output", help="Telemetry file to write (run.jsonl format)."),
    input_format: str = typer.Option(
        "auto", "--input-format", help="auto (detect from content) or rustgpt (force the text-log reader)."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Corpus (JSON array, text file or directory) whose answers samples are matched against."),
) -> None:
    """Convert a reference trainer text log into telemetry JSONL (one step per epoch line)."""
    _guarded(lambda: _import(log, output, input_format, data))


def _import(log: Path, output: Path, input_format: str, data: Optional[Path]) -> None:
    from analyze import rustgpt
    from analyze.atomic import OutputError

    if input_format not in ("auto", rustgpt.SOURCE):
        _err(f"error: --input-format must be auto or {rustgpt.SOURCE}, not {input_format!r}")
        raise typer.Exit(2)
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
    for note in notes:
        _err(f"note: {note}")
    phases = ", ".join(f"{n} {ph}" for ph, n in counts["phases"].items())
    state = "completed" if counts["completed"] else "no end (killed or still running)"
    _err(f"{log} -> {output}: {counts['steps']} epochs ({phases}), {counts['evals']} eval, {state}")


# ---- entry point ------------------------------------------------------------------------------

# Commands that only read logs and write their output files: nothing is left to do at exit.
_ANALYSIS_COMMANDS = frozenset({"report", "compare", "plot", "import"})


def main() -> None:
    """The `moh` console script: `app`, then, for an analysis command, an immediate process exit.

    Python's own teardown (freeing every module and object one by one) took 0.4-0.6 s after
    pandas and matplotlib were imported on the 2-core CI machine, 5% of `moh plot` on a 200k-step
    log (docs/benchmarks.md), and does nothing such a command needs: its output files are written
    and closed (atomically) before it returns, and stdout/stderr are flushed here. `moh train`
    exits normally (torch and its process group clean up at exit).
    """
    import sys

    try:
        app()  # standalone Typer/Click: always ends in SystemExit
    except SystemExit as done:
        command = sys.argv[1] if len(sys.argv) > 1 else ""
        if command in _ANALYSIS_COMMANDS and (done.code is None or isinstance(done.code, int)):
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
