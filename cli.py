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
