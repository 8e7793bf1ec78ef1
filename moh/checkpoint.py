"""Checkpoints for crash safety and `moh train --resume`, and graceful SIGINT/SIGTERM.

A checkpoint is one file, `<run>/checkpoint.pt`, replaced atomically (temp file in the same
directory, fsync, `os.replace`, fsync of the directory), so a kill at any moment leaves either
the previous checkpoint or the new one, never a torn file. It holds only tensors and plain
dicts/lists/numbers/strings, so it loads with `torch.load(weights_only=True)`: nothing read back
can run code.

    format      FORMAT (int)
    model       model.state_dict()
    optimizer   optimizer.state_dict() of the current phase (None between phases)
    rng         {"torch": ByteTensor, "python": {"version", "state": int64 tensor, "gauss"},
                 "cuda": [ByteTensor per device] (only when CUDA is available)}
    position    {"phase": index into the run's phases, "epoch", "batch" (next batch index in
                 that epoch), "i" (steps done in the phase, drives the LR schedule), "step"
                 (global optimizer steps done), "finished" (bool: the run completed)}
    config      Config.to_dict()
    tokenizer   Tokenizer.to_dict()
    corpus_sha256  digest of the corpus texts (resume refuses a changed corpus)
    run_id      the run's id (kept across resumes)
    time        Unix seconds when written

Batching is a pure function of (seed, epoch) (`data.make_batches`) and the LR schedule a pure
function of the step within the phase, so (phase, epoch, batch, i) plus the optimizer and RNG
states continue a run exactly: a resumed run ends with the same loss as an uninterrupted one
(tests/moh/test_reliability.py). numpy's RNG is not used by the engine and is not saved.

Under torch.distributed only rank 0 writes (`save` is a no-op elsewhere); every rank reads.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import random
import signal
import threading
import time
import zipfile
from typing import Any, Iterable

import torch

from .atomic import replacing

CHECKPOINT_FILE = "checkpoint.pt"
# 2: the adaptive router's parameters are one matrix [W_r; w_c; w_t] and one bias [b_c, b_t]
# (format 1 had five tensors): a format-1 checkpoint's model and optimizer state do not fit
FORMAT = 2

# Config keys a resume may change: they alter what is logged, how often a checkpoint is
# written, what happens on a non-finite step or how fast a step runs, never the maths of a
# finite run. Every other key (model, data, seed, optimiser, schedule, epochs) is fixed by the
# checkpoint: changing epochs would change the cosine schedule's length, so the resumed run
# would match neither the original nor a fresh longer run. Start a new run for that.
RESUMABLE_KEYS = ("threads", "log_every", "checkpoint_every", "nonfinite", "eval_prompts",
                  "eval_max_new_tokens", "inject_nonfinite_at_step",
                  "device", "dist_timeout")  # where it runs / how long a rank waits (docs/distributed.md)


class CheckpointError(Exception):
    """No usable checkpoint (missing, unreadable, not a moh checkpoint, or already finished)."""


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def corpus_digest(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


# --- RNG -------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(d: dict[str, Any]) -> None:
    torch.set_rng_state(d["torch"])
    py = d["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if d.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda"])


# --- save / load -----------------------------------------------------------------------------


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temp file beside `path`, fsync, rename over `path`, fsync the directory."""
    buf = io.BytesIO()  # serialise first: a write error is then a plain OSError (ENOSPC,
    torch.save(obj, buf)  # EFBIG), not torch's zip-writer RuntimeError
    with replacing(path, durable=True) as f:
        f.write(buf.getbuffer())


def save(run_dir: str | os.PathLike, state: dict[str, Any]) -> str | None:
    """Write `state` as the run's checkpoint (rank 0 only); returns the path written or None.

    Temp files left by a writer killed mid-write (`.checkpoint.pt.*.tmp`) are removed first:
    one process writes a run directory's checkpoints, so any such file is stale."""
    if _rank() != 0:
        return None
    path = os.path.join(run_dir, CHECKPOINT_FILE)
    for stale in glob.glob(os.path.join(glob.escape(os.fspath(run_dir)), f".{CHECKPOINT_FILE}.*.tmp")):
        try:
            os.unlink(stale)
        except OSError:
            pass
    atomic_save({"format": FORMAT, "time": time.time(), **state}, path)
    return path


def load(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint of `run_dir`, checked for shape; `CheckpointError` with a one-line reason."""
    run_dir = os.fspath(run_dir)
    path = os.path.join(run_dir, CHECKPOINT_FILE)
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not os.path.exists(path):
        raise CheckpointError(f"{run_dir}: no {CHECKPOINT_FILE} to resume from (the run was killed before "
                              f"its first checkpoint; see checkpoint_every); start it again with --overwrite")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable moh checkpoint (not a torch zip archive: damaged or "
                              f"another format)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (code or a type weights_only refuses), RuntimeError, EOFError
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable moh checkpoint ({why[:200]})") from None
    if isinstance(ck, dict) and isinstance(ck.get("format"), int) and ck["format"] < FORMAT:
        raise CheckpointError(f"{path}: written by an earlier moh (checkpoint format {ck['format']}, this one reads "
                              f"{FORMAT}); resume it with that version, or start the run again with --overwrite")
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a moh checkpoint of format {FORMAT}")
    missing = [k for k in ("model", "rng", "position", "config", "tokenizer", "run_id") if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if ck["position"].get("finished"):
        raise CheckpointError(f"{run_dir}: the run already completed at step {ck['position']['step']}; "
                              f"nothing to resume")
    return ck


def resume_config(saved: dict[str, Any], given: dict[str, Any]):
    """The checkpoint's config with the keys the user `given` (file + flags) applied.

    A given key that differs from the checkpoint and is not in RESUMABLE_KEYS raises
    ConfigError naming it; keys equal to the saved value are fine.
    """
    from .config import KEYS, ConfigError, from_dict

    for k, v in given.items():
        if v is None or k in RESUMABLE_KEYS or (k in saved and saved[k] == v):
            continue
        old = saved.get(k, "(unset)")
        raise ConfigError(f"{k}: cannot change on --resume (checkpoint has {old!r}, got {v!r}); "
                          f"changeable: {', '.join(RESUMABLE_KEYS)}")
    known = {k: v for k, v in saved.items() if k in KEYS}  # keys dropped since: ignored
    # written before moh_gates existed: that engine used the paper's gate equations, and a
    # resumed run must not switch arithmetic halfway (the default is now "released")
    known.setdefault("moh_gates", "paper")
    return from_dict({**known, **{k: v for k, v in given.items() if v is not None}})


# --- signals ---------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after a checkpoint; `signum` gives the exit code 128 + signum."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or signal.Signals(signum).name)
        self.signum = signum


class GracefulStop:
    """SIGINT/SIGTERM -> a flag the loop checks between steps; a second signal abandons at once.

    Installed only in the main thread (signal handlers cannot be set elsewhere); previous
    handlers are restored on exit. `requested` is the first signal number, or None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # second signal: do not wait for the step to end
            raise Interrupted(signum, f"{signal.Signals(signum).name} again: abandoned without a checkpoint")
        self.requested = signum

    def agreed(self, device: Any = None) -> int | None:
        """`requested`, agreed by every rank under torch.distributed (one all-reduce MAX per
        call), so all ranks stop after the same step; a plain read otherwise."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.requested
        flag = torch.tensor([self.requested or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        got = int(flag.item())
        if got and self.requested is None:
            self.requested = got
        return got or None

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
