"""Starting a training run from a command line: resolve the config (or a checkpoint's, for a
resume), check the run directory, launch torchrun for several processes, and map the errors a
run can end with to exit codes. `moh train` (cli.py) and `python -m moh.train` (what torchrun
starts) both use it, so a config error, a bad checkpoint or bad data exits the same way whichever
started the run.

Torch loads lazily: a config error or an unwritable --out is answered before `import torch`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from . import config as mconfig
from . import threads

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BAD_INPUT = 0, 1, 2, 3


class LaunchError(Exception):
    """The run cannot start; `code` is the exit code, the message one line for stderr."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def exit_for(e: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error a run is expected to end with on bad input;
    None for anything else (a bug, an interruption: the caller decides)."""
    if isinstance(e, LaunchError):
        return e.code, str(e)
    if isinstance(e, mconfig.ConfigError):
        return EXIT_USAGE, f"config error: {e}"
    ckpt, data = sys.modules.get("moh.checkpoint"), sys.modules.get("moh.data")  # loaded if raised
    if ckpt is not None and isinstance(e, ckpt.CheckpointError):
        return EXIT_BAD_INPUT, f"error: {e}"
    if data is not None and isinstance(e, data.DataError):
        return EXIT_BAD_INPUT, f"data error: {e}"
    return None


def unwritable_dir(out: Path) -> str | None:
    """Why a run directory could not be created or written (None: it can), without creating it."""
    p = out
    while not p.exists():
        if p.is_symlink():
            return f"{p} is a broken symbolic link"
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir():
        return "not a directory" if p == out else f"{p} is not a directory"
    if not os.access(p, os.W_OK | os.X_OK):
        return "permission denied" if p == out else f"{p} is not writable (permission denied)"
    return None


def prepare(config: Path | None, overrides: dict[str, Any], *, out: Path | None, resume: Path | None,
            overwrite: bool, default_out: Callable[[mconfig.Config], Path]) -> tuple[mconfig.Config, dict | None, Path]:
    """(config, checkpoint or None, run directory) for `moh train`; raises LaunchError.

    Precedence: defaults < the TOML file < `overrides`. With `resume` the config is the
    checkpoint's, and only the keys a resume may change can be given (checkpoint.resume_config)."""
    try:
        given = mconfig.given(config, **overrides)
        cfg = mconfig.from_dict(given) if resume is None else None
    except mconfig.ConfigError as e:
        raise LaunchError(EXIT_USAGE, f"config error: {e}") from None
    checkpoint = None
    if resume is not None:
        if overwrite or (out is not None and out != resume):
            raise LaunchError(EXIT_USAGE, "error: --resume DIR continues the run in DIR; it takes neither "
                                          "--overwrite nor another --out")
        from . import checkpoint as mckpt  # loads torch

        try:
            checkpoint = mckpt.load(resume)
            cfg = mckpt.resume_config(checkpoint["config"], given)
        except (mckpt.CheckpointError, mconfig.ConfigError) as e:
            raise LaunchError(*exit_for(e)) from None
        out = resume
    # `moh train` refuses a run without a step (its log could not be reported); the library's
    # train() still takes one, which writes the initial weights (tests compare against them).
    if cfg.pretrain_epochs == 0 and cfg.instruct_epochs == 0:
        raise LaunchError(EXIT_USAGE, "config error: pretrain_epochs and instruct_epochs are both 0: "
                                      "there is nothing to train")
    if out is None:
        out = default_out(cfg)
    if (out / "run.jsonl").exists() and not overwrite and checkpoint is None:
        raise LaunchError(EXIT_USAGE, f"error: {out / 'run.jsonl'} exists; pass --resume {out} to continue it, "
                                      f"--overwrite to replace it, or choose another --out")
    problem = unwritable_dir(out)  # before torch loads: a bad --out answers in a second
    if problem:
        raise LaunchError(EXIT_BAD_INPUT, f"error: cannot write to {out}: {problem}")
    return cfg, checkpoint, out


def torchrun(cfg: mconfig.Config, out: Path, nproc: int, *, overwrite: bool, resume: Path | None, quiet: bool,
             err: Callable[[str], None], say: Callable[[str], None]) -> int:
    """The resolved config through `torchrun -m moh.train` on this machine; returns the exit code.

    The launcher runs in its own session, so a terminal's Ctrl-C reaches the workers once (as
    the launcher's forwarded SIGTERM/SIGINT: a checkpoint, then exit), not twice. Exit code: the
    launcher's, or 128 + signal when this process was interrupted. `err` prints a line to stderr,
    `say` the run directory to stdout once the launcher has finished.
    """
    for key in ("batch_size", "instruct_batch_size"):
        if getattr(cfg, key) % nproc:
            err(f"config error: {key}: {getattr(cfg, key)} (global) is not divisible by --nproc {nproc}")
            return EXIT_USAGE
    overrides = [f"{k}={v}" for k, v in cfg.to_dict().items() if v is not None]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "moh.train", "--out", str(out), *(["--overwrite"] if overwrite else []),
           *(["--resume", str(resume)] if resume is not None else []), *overrides]
    if not quiet:
        err(f"launching {nproc} processes: torchrun --standalone --nproc_per_node={nproc} -m moh.train --out {out} ...")
    env = {**os.environ}
    # torchrun warns when OMP_NUM_THREADS is unset; each rank then sets its own (moh/threads.py)
    env.setdefault("OMP_NUM_THREADS", str(cfg.threads or max(1, threads.usable_cores() // nproc)))
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    got: list[int] = []

    def forward(signum, frame):
        got.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if got:
        err(f"interrupted; checkpoint and telemetry in {out}; continue with: moh train --resume {out} --nproc {nproc}")
        return 128 + got[0]
    if not quiet and (out / "run.jsonl").exists():
        with open(out / "run.jsonl", encoding="utf-8") as f:
            recs = [json.loads(line) for line in f if line.strip()]
        for r in recs:
            if r.get("event") == "eval":
                em = "n/a" if r["exact_match"] is None else f"{r['exact_match']:.2f}"
                err(f"  {r['phase']:<8} eval: loss {r['loss']:.3f}  exact match {em}")
    say(str(out))
    return rc
