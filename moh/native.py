"""The C kernels of moh/native.c: compiled once per machine on first use, loaded with ctypes.

Nothing to install: the first process that needs them runs the system C compiler (`$CC`, else
`cc`; ~0.3 s) and caches the shared library under `$MOH_NATIVE_CACHE`, else
`$XDG_CACHE_HOME/moh`, else `~/.cache/moh`, named by a digest of the source and the compiler
command, so an edited kernel is rebuilt and concurrent processes (torchrun ranks) never load a
half-written file (each writes its own temporary file and renames it into place).

Where there is no compiler, the cache is not writable, or `MOH_NATIVE=0`, `lib()` returns
None and the callers run their torch formulation: the same maths, equal up to float rounding
(tests/moh/test_native.py runs both). `status()` says which, for `moh train`'s run_start record.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
MAX_HEADS = 256  # the widest row the kernels take (native.c's per-row scratch)
# -O3: the same bits as -O2 (no -ffast-math: nothing is reassociated), and it vectorises the route
# kernels' per-head loops (native.c BY_HEADS)
FLAGS = ("-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno")

_P, _I, _F, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_double
SIGNATURES = {  # argument types, in the C declarations' order
    "route_forward": [_I, _I, _P, _I, _F, _F, _F, _F, _F, _F, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P],
    "select_heads": [_I, _I, _P, _P, _P, _P],
    "route_backward": [_I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int, _F, _F, _F, _F, _P],
    "aux_sums": [_I, _I, _P, _P, _F, _F, _P, _P],
    "aux_terms": [_I, _P, _P, _D, _P, _P],
    "aux_terms_backward": [_I, _P, _P, _D, _P, _D, _P, _P],
    "aux_sums_backward": [_I, _I, _P, _P, _F, _F, _P, _P, ctypes.c_int, _P],
    "average_ranks": [_I, _I, _P, _P, _P, _P],
    "spearman_rows": [_I, _I, _P, _P, _P, _P, _P],
    "spearman_rows_at": [_I, _P, _I, _P, _I, _P, _P, _P, _P, _P, _P, _P, _P],
    "rank_quantiles_at": [_I, _P, _I, _P, _P, _P, _P, _P],
    "group_norms": [_I, _P, _I, _P, _P, _P, _I, _P, _P, _P, _P],
    "step_layers": [_I, _I, _I, _P, _P, ctypes.c_int, _I, _P, _I, _P, _P, _P, _I, _P, _P, _P, _P, _P],
}

_lib: ctypes.CDLL | None = None
_status = "not loaded"


def cache_dir() -> Path:
    if os.environ.get("MOH_NATIVE_CACHE"):
        return Path(os.environ["MOH_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moh"


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def _build(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [*_compiler(), *FLAGS, "-o", tmp, str(SOURCE), "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        os.replace(tmp, target)  # atomic: other processes see the old name or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


STALE_AFTER_S = 7 * 24 * 3600  # another digest's library built this long ago is deleted after a build


def _prune(keep: Path) -> None:
    """Delete the cache's other libraries built more than STALE_AFTER_S ago (each edit of
    native.c or change of compiler leaves one ~20 KB file behind). A younger one may belong to
    another checkout in use; an older one that still is gets rebuilt there (~0.3 s), and a
    process that has it loaded keeps its mapping after the unlink."""
    now = time.time()
    for old in keep.parent.glob("native-*.so"):
        try:
            if old != keep and now - old.stat().st_mtime > STALE_AFTER_S:
                old.unlink()
        except OSError:  # gone already (another process pruned it), or not ours to delete
            pass


def lib() -> ctypes.CDLL | None:
    """The loaded kernels, or None (then use the torch path). Built at most once a process."""
    global _lib, _status
    if _lib is not None or _status != "not loaded":
        return _lib
    if os.environ.get("MOH_NATIVE", "1") == "0":
        _status = "off (MOH_NATIVE=0)"
        return None
    try:
        digest = hashlib.sha256(SOURCE.read_bytes() + repr((_compiler(), FLAGS)).encode()).hexdigest()[:16]
        target = cache_dir() / f"native-{digest}.so"
        if not target.exists():
            _build(target)
            _prune(target)
        loaded = ctypes.CDLL(str(target))
        for name, argtypes in SIGNATURES.items():
            fn = getattr(loaded, name)
            fn.argtypes, fn.restype = argtypes, None
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        _status = f"torch fallback ({type(e).__name__}: {e})"
        return None
    _lib, _status = loaded, "native"
    return _lib


@contextlib.contextmanager
def disabled():
    """Within the block lib() is None: the torch formulation runs (tests compare the two)."""
    global _lib, _status
    saved = _lib, _status
    _lib, _status = None, "off (disabled)"
    try:
        yield
    finally:
        _lib, _status = saved


def for_tensors(*tensors: torch.Tensor, width: int = 0) -> ctypes.CDLL | None:
    """The kernels when they can take these tensors (every one float32 on the CPU, rows of at
    most MAX_HEADS values), else None: the caller runs its torch formulation."""
    if width > MAX_HEADS:
        return None
    for t in tensors:  # a plain loop: called a few times a step, where a generator and a device
        if t.dtype is not torch.float32 or not t.is_cpu:  # object cost ~10 us (docs/benchmarks.md)
            return None
    return lib()


def status() -> str:
    """'native', 'off (MOH_NATIVE=0)', 'torch fallback (why)' or 'not loaded' (never asked)."""
    return _status


def ptr(t) -> int | None:
    """A tensor's data address for a kernel argument; None stays None (a NULL pointer)."""
    return None if t is None else t.data_ptr()
