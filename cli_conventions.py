"""The command line's conventions, shared by every `moh` command (cli.py declares the commands).

- A usage error is ONE line on stderr, `moh CMD: error: ...`, and exit 2: unknown options, bad
  types, bad choices, missing arguments. Click/Typer's boxed multi-line errors never show.
- A flag given a value (`--strict true`) is answered with what to write instead, not with
  "unexpected extra argument" (or, for `compare`, an attempt to read a run called `true`).
- `--overwrite` means the same for every command that writes a file: an existing output is
  refused with exit 2 and one line, unless the flag is given.
"""

from __future__ import annotations

import re
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

import typer
from typer.core import TyperCommand, TyperGroup

try:  # Typer >= 0.2x carries its own copy of Click (typer._click); older ones depend on Click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

EXIT_USAGE = 2
_BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def usage_line(prog: str, message: str) -> str:
    return f"{prog}: error: {one_line(message)} (see {prog} -h)"


class OneLineErrors(TyperGroup):
    """The `moh` group: click runs in non-standalone mode, so its usage errors come back here as
    exceptions and are printed as one line instead of Typer's rich box."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        prog = prog_name or "moh"
        flag_misuse = _flag_given_a_value(self, args)
        if flag_misuse is not None:
            typer.echo(usage_line(f"{prog} {args[0]}", flag_misuse), err=True)
            rv = EXIT_USAGE
        else:
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except NoArgsIsHelpError as e:  # `moh` or `moh CMD` alone: the help, as Click does
                typer.echo(e.format_message(), err=True)
                rv = EXIT_USAGE
            except UsageError as e:
                cmd = e.ctx.command_path if e.ctx is not None else prog
                typer.echo(usage_line(cmd, e.format_message()), err=True)
                rv = EXIT_USAGE
            except ClickException as e:  # e.g. a FileError: bad input, still one line
                typer.echo(f"{prog}: error: {one_line(e.format_message())}", err=True)
                rv = e.exit_code
            except typer.Abort:  # Ctrl-C / end of input at a prompt
                rv = 130
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


class PlainHelp(TyperCommand):
    """A command whose help shows a list argument as `RUN...`, without Typer's `<list[Path]>`."""

    def format_help(self, ctx, formatter) -> None:
        super().format_help(ctx, formatter)
        # blanked to the same width: the help column stays aligned with its wrapped lines
        formatter.buffer[:] = [re.sub(r" <list\[\w+\]>", lambda m: " " * len(m.group()), piece)
                               for piece in formatter.buffer]


def _flag_given_a_value(group: TyperGroup, args: list[str]) -> str | None:
    """`--flag true`: what to write instead (checked before Click parses anything), else None."""
    if not args or args[0] not in group.commands:
        return None
    command = group.commands[args[0]]
    flags = {opt for p in command.params if getattr(p, "is_flag", False)
             for opt in (*p.opts, *p.secondary_opts)}
    for token, following in zip(args[1:], args[2:]):
        if token == "--":
            return None
        if token in flags and following.lower() in _BOOL_WORDS:
            off = following.lower() in {"false", "no", "off", "0"}
            return (f"{token} is a flag and takes no value: write '{token}' alone"
                    + (" (or leave it out)" if off else ""))
    return None


def version_callback(value: bool) -> None:
    """`moh --version`: the installed distribution's version, then exit 0."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("moh")
    except PackageNotFoundError:  # running from a source tree that was never installed
        v = "unknown (not installed)"
    typer.echo(f"moh {v}")
    raise typer.Exit(0)


def refuse_existing(paths: Sequence[Path], overwrite: bool, err) -> None:
    """Exit 2 with one line naming the first existing path, unless `overwrite`."""
    if overwrite:
        return
    for p in paths:
        # Regular files only: a device (/dev/null) is written through, and a directory where a
        # file should go is bad output (exit 3, "is a directory"), answered where it is written.
        if Path(p).is_file():
            err(f"error: {p} exists; pass --overwrite to replace it")
            raise typer.Exit(EXIT_USAGE)


def choice(name: str, values: Sequence[str]) -> type[Enum]:
    """A str Enum of `values`: Typer shows it as `<a|b|c>` in help and rejects anything else
    with a usage error (one line, exit 2). Commands read the chosen `.value`."""
    return Enum(name, {v: v for v in values}, type=str)
