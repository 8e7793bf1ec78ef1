"""`moh` command line: thin commands that parse, call the library, render.

Exit codes (documented in README.md):
  0  success / report verdict pass
  1  report criteria failed; training failed (non-finite stop)
  2  usage or configuration error
  3  unreadable or unusable input
  130, 143  training interrupted by SIGINT / SIGTERM
Payload goes to stdout; progress, warnings and errors go to stderr.
Library code never calls sys.exit: domain errors become exit codes here only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train fully adaptive Mixture-of-Heads LMs and diagnose their routing telemetry.",
)

# ---- train (moh/) --------------------------------------------------------------------------

# ---- report / compare (analyze/) ------------------------------------------------------------

# ---- plot (analyze/) ------------------------------------------------------------------------


@app.command("plot")
def plot(
    runs: list[Path] = typer.Argument(..., help="One or more telemetry logs (run.jsonl, .gz, or a reference text log); several overlay."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for the figures (created if needed)."),
    fmt: str = typer.Option("png", "--format", help="png or svg."),
    x: str = typer.Option("step", "--x", help="x axis: step, or time (elapsed since run start)."),
    input_format: str = typer.Option("auto", "--input-format", help="auto, jsonl or rustgpt."),
    strict: bool = typer.Option(False, "--strict", help="Bad log lines are errors instead of notes."),
) -> None:
    """Draw thresholds, complexity, heads, head load, gradient norms and loss figures; print the paths."""
    import warnings

    from analyze import loader, plots

    if fmt not in plots.FORMATS:
        typer.echo(f"error: --format must be one of {', '.join(plots.FORMATS)}, not {fmt!r}", err=True)
        raise typer.Exit(2)
    if x not in ("step", "time"):
        typer.echo(f"error: --x must be step or time, not {x!r}", err=True)
        raise typer.Exit(2)
    if input_format not in loader.INPUT_FORMATS:
        typer.echo(f"error: --input-format must be one of {', '.join(loader.INPUT_FORMATS)}, not {input_format!r}", err=True)
        raise typer.Exit(2)
    loaded = []
    for path in runs:
        try:
            run = loader.load_run(path, strict=strict, input_format=input_format)
        except (loader.LoadError, OSError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(3)
        for note in run.notes:
            typer.echo(f"note: {path}: {note}", err=True)
        loaded.append(run)
    try:
        plots.prepare_output_dir(output)
    except OSError as e:
        typer.echo(f"error: cannot write to {output}: {e.strerror or e}", err=True)
        raise typer.Exit(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", plots.PlotWarning)
        try:
            written = plots.write_figures(loaded, output, fmt=fmt, x="elapsed" if x == "time" else "step")
        except OSError as e:
            typer.echo(f"error: cannot write to {output}: {e.strerror or e}", err=True)
            raise typer.Exit(3)
    for w in caught:
        if issubclass(w.category, plots.PlotWarning):
            typer.echo(f"warning: {w.message}", err=True)
    for path in written:
        typer.echo(str(path))

# ---- import (analyze/) ----------------------------------------------------------------------


@app.command("import")
def import_log(
    log: Path = typer.Argument(..., help="Reference RustGPT trainer text log (UTF-8 or UTF-16, as captured)."),
    output: Path = typer.Option(..., "-o", "--output", help="Telemetry file to write (run.jsonl format)."),
    input_format: str = typer.Option(
        "auto", "--input-format", help="auto (detect from content) or rustgpt (force the text-log reader)."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Corpus (JSON array, text file or directory) whose answers samples are matched against."),
) -> None:
    """Convert a reference trainer text log into telemetry JSONL (one step per epoch line)."""
    from analyze import rustgpt

    if input_format not in ("auto", rustgpt.SOURCE):
        typer.echo(f"error: --input-format must be auto or {rustgpt.SOURCE}, not {input_format!r}", err=True)
        raise typer.Exit(2)
    notes: list[str] = []
    try:
        counts = rustgpt.import_log(log, output, corpus=data, notes=notes)
    except (rustgpt.RustLogError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    phases = ", ".join(f"{n} {ph}" for ph, n in counts["phases"].items())
    state = "completed" if counts["completed"] else "no end (killed or still running)"
    typer.echo(f"{log} -> {output}: {counts['steps']} epochs ({phases}), {counts['evals']} eval, {state}", err=True)


if __name__ == "__main__":
    app()
