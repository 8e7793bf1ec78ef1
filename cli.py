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


if __name__ == "__main__":
    app()
