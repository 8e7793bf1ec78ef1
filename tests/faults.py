"""The CLI fault catalogue (issue 5 item 5): bad input and unwritable output for every command.

Each `Fault` builds its files in a fresh directory, runs the real `moh` console script in a
subprocess (optionally without the root privilege to ignore file permissions, or under a file-size
limit that makes writes fail like a full disk), and records what came back: exit code, stderr,
the records kept, and every file or directory the command left behind.

tests/test_cli_faults.py asserts each fault's contract; bench/fault_suite.py runs the same catalogue
and prints the table in docs/reliability.md. One catalogue, so the table is what the tests check.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from moh import schema

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "moh"
# The installed console script when there is one (a clean `pip install`), else the same entry point.
MOH = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from cli import main; main()"]
IS_ROOT = os.geteuid() == 0
# Root ignores file permissions through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH; dropping both from the
# inheritable and bounding sets makes a root child obey mode bits like any user (chmod 000 denies).
_DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
             "--bounding-set=-dac_override,-dac_read_search", "--"]
TINY_TRAIN = ["--set", "n_layers=1", "--set", "d_model=32", "--set", "n_heads=4", "--set", "d_ff=64",
              "--set", "eval_prompts=4", "--set", "eval_max_new_tokens=6", "--epochs", "1", "-q"]
BIG = 100 << 20  # the 100 MB single line


class Skip(Exception):
    """This fault cannot be injected here (e.g. no way to drop privileges); the reason says why."""


@dataclass
class Setup:
    argv: list[str]
    stdout: str | None = None           # redirect stdout to this path (e.g. /dev/full)
    allowed: tuple[str, ...] = ()       # outputs the command may create (relative to the work dir)
    cleanup: Callable[[], None] | None = None


@dataclass
class Fault:
    id: str
    command: str
    fault: str
    how: str
    build: Callable[[Path], Setup]
    codes: tuple[int, ...]              # acceptable exit codes (a tolerant load: 0 or 1 = the verdict)
    names: tuple[str, ...] = ()         # substrings the error line must contain (file, line)
    unprivileged: bool = False          # run without the root file-permission override
    fsize: int | None = None            # RLIMIT_FSIZE bytes: writes past it fail (EFBIG), like a full disk
    slow: bool = False

    @property
    def fails(self) -> bool:
        return not set(self.codes) & {0, 1}


@dataclass
class Observation:
    code: int
    stdout: str
    stderr: str
    leftovers: list[str]
    kept: str = ""

    @property
    def message_lines(self) -> list[str]:
        """stderr lines that are not notes or warnings (the error itself)."""
        return [ln for ln in self.stderr.splitlines()
                if ln.strip() and not ln.startswith(("note:", "warning:"))]


# ---- input builders ---------------------------------------------------------------------------


def _records(n_steps: int = 60) -> list[dict]:
    from tests.analyze.conftest import make_records

    return make_records(n_steps=n_steps)


def _write(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else schema.encode_record(r)) + "\n" for r in records),
                    encoding="utf-8")
    return path


def good_log(w: Path, name: str = "good.jsonl") -> Path:
    return _write(w / name, _records())


def rust_log(w: Path, name: str = "train.log") -> Path:
    from tests.analyze.test_rustgpt import make_log

    p = w / name
    p.write_text(make_log(samples=True)[0], encoding="utf-8")
    return p


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(w: Path) -> Path:
        p = w / name
        p.write_bytes(data)
        return p
    return make


_empty = _bytes("empty.jsonl", b"")
_binary = _bytes("binary.jsonl", bytes(range(256)) * 64)


def _missing(w: Path) -> Path:
    return w / "missing.jsonl"


def _directory(w: Path) -> Path:
    (w / "adir").mkdir()
    return w / "adir"


def _unreadable(w: Path) -> Path:
    p = good_log(w, "unreadable.jsonl")
    p.chmod(0)
    return p


def _big_line_json(w: Path) -> Path:
    """One valid step record whose 'loss' is a 100 MB string, written in chunks (memory stays flat)."""
    p = w / "bigline.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"event":"step","step":1,"loss":"')
        chunk = b"x" * (1 << 20)
        for _ in range(BIG >> 20):
            f.write(chunk)
        f.write(b'"}\n')
    return p


def _big_line_garbage(w: Path) -> Path:
    """A run_start, one good step, then 100 MB of non-JSON on a single line (newline-terminated)."""
    recs = _records(4)
    p = _write(w / "biggarbage.jsonl", [recs[0], recs[1]])
    with open(p, "ab") as f:
        f.write(b"{")
        chunk = b"garbage " * (1 << 17)
        for _ in range(BIG >> 20):
            f.write(chunk)
        f.write(b"\n")
    return p


def _wrong_types(w: Path) -> Path:
    recs = _records()
    recs[3] = {**recs[3], "loss": "low", "grad_norms": [1, 2], "layers": "none", "phase": 7}
    recs[4] = {**recs[4], "step": "four"}
    return _write(w / "wrongtypes.jsonl", recs)


def _no_run_start(w: Path) -> Path:
    return _write(w / "nostart.jsonl", _records()[1:])


def _dup_steps(w: Path) -> Path:
    recs = _records()
    steps = [r for r in recs if r["event"] == "step"]
    # steps 0..19, then 10..29 again (duplicates and a step going back), then the rest
    return _write(w / "dupsteps.jsonl", [recs[0]] + steps[:20] + steps[10:30] + steps[20:] + [recs[-1]])


def _mixed_versions(w: Path) -> Path:
    recs = _records()
    return _write(w / "mixed.jsonl", recs[:20] + [{**recs[0], "schema_version": 2}] + recs[20:])


def _future_version(w: Path) -> Path:
    recs = _records()
    return _write(w / "v99.jsonl", [{**recs[0], "schema_version": 99}] + recs[1:])


def _truncated(w: Path) -> Path:
    p = good_log(w, "truncated.jsonl")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 40])  # cut inside the run_end record
    return p


def _garbage_lines(w: Path) -> Path:
    recs = _records()
    recs.insert(10, "{not json at all")
    recs.insert(20, "\x00\x01\x02")
    recs.insert(30, "[1, 2, 3]")
    return _write(w / "garbage.jsonl", recs)


def _full_device(w: Path) -> Path:
    """A character device like /dev/full (writes fail with ENOSPC).

    Root gets its own node (mknod c 1 7) in the work dir, so a regression that renamed a temp
    file over it would replace that copy and never the system's /dev/full; others use /dev/full,
    which they cannot replace anyway.
    """
    if not IS_ROOT:
        return Path("/dev/full")
    p = w / "full"
    try:
        os.mknod(p, 0o666 | 0o020000, os.makedev(1, 7))
    except OSError as e:
        raise Skip(f"cannot create a /dev/full node ({e.strerror})") from None
    return p


def _read_only_dir(w: Path) -> Path:
    d = w / "readonly"
    d.mkdir()
    d.chmod(0o555)
    return d


def _under_file(w: Path) -> Path:
    good_log(w, "afile")
    return w / "afile" / "out"


# ---- the catalogue ----------------------------------------------------------------------------


def _input_faults() -> list[tuple[str, str, Callable[[Path], Path], tuple[int, ...], tuple[str, ...], dict]]:
    """(id, fault, builder, exit codes, names in the error, extra) shared by report/compare/plot."""
    return [
        ("empty", "empty file", _empty, (3,), ("empty.jsonl", "empty"), {}),
        ("binary", "binary file (all 256 byte values)", _binary, (3,), ("binary.jsonl", "binary"), {}),
        ("missing", "missing path", _missing, (3,), ("missing.jsonl", "no such file"), {}),
        ("directory", "a directory", _directory, (3,), ("adir", "directory"), {}),
        ("unreadable", "unreadable file (mode 000)", _unreadable, (3,), ("unreadable.jsonl", "permission denied"),
         {"unprivileged": True}),
        ("future-version", "unsupported schema_version 99", _future_version, (3,), ("v99.jsonl:1:", "schema_version"), {}),
        ("mixed-versions", "mixed schema versions (a version 2 run_start at line 21)", _mixed_versions, (3,),
         ("mixed.jsonl:21:", "schema_version"), {}),
        ("wrong-types", "wrong types in known fields (loss, phase, layers, grad_norms, step)", _wrong_types,
         (0, 1), (), {}),
        ("no-run-start", "missing run_start", _no_run_start, (0, 1), (), {}),
        ("dup-steps", "duplicate and non-monotonic steps (10..29 written twice)", _dup_steps, (0, 1), (), {}),
        ("truncated", "truncated last line (cut mid-record)", _truncated, (0, 1), (), {}),
        ("garbage-lines", "garbage lines (not JSON, NUL bytes, a JSON array)", _garbage_lines, (0, 1), (), {}),
        ("bigline-json", "100 MB single line (a step whose loss is a 100 MB string)", _big_line_json, (0, 1), (),
         {"slow": True}),
        ("bigline-garbage", "100 MB single line of non-JSON after one good step", _big_line_garbage, (0, 1), (),
         {"slow": True}),
    ]


def _how(fid: str) -> str:
    return {
        "empty": "0-byte file",
        "binary": "bytes 0x00..0xff repeated",
        "missing": "path that does not exist",
        "directory": "an existing directory as the log",
        "unreadable": "chmod 000, command run without CAP_DAC_OVERRIDE (setpriv) or as a user",
        "future-version": "run_start.schema_version = 99",
        "mixed-versions": "second run_start with schema_version 2 after 19 steps",
        "wrong-types": "loss=\"low\", grad_norms=[1,2], layers=\"none\", phase=7 on line 4; step=\"four\" on line 5",
        "no-run-start": "first line removed",
        "dup-steps": "steps 0-19, 10-29, 20-59 in that order",
        "truncated": "last 40 bytes cut",
        "garbage-lines": "3 lines inserted: `{not json at all`, NUL bytes, `[1, 2, 3]`",
        "bigline-json": "streamed to disk in 1 MB chunks",
        "bigline-garbage": "streamed to disk in 1 MB chunks",
    }.get(fid, "")


_QUICK_SHARED = ("unreadable", "binary", "garbage-lines")


def catalogue() -> list[Fault]:
    faults: list[Fault] = []
    for fid, fault, make, codes, names, extra in _input_faults():
        faults.append(Fault(f"report/{fid}", "report", fault, _how(fid),
                            lambda w, make=make: Setup(["report", str(make(w)), "--format", "json"]),
                            codes, names, **extra))
        if fid in ("wrong-types", "garbage-lines"):
            faults.append(Fault(f"report/{fid}/strict", "report --strict", fault, _how(fid),
                                lambda w, make=make: Setup(["report", str(make(w)), "--strict"]),
                                (3,), (":4:",) if fid == "wrong-types" else (":11:",)))
        if fid in ("bigline-json", "bigline-garbage", "no-run-start", "dup-steps"):
            continue  # report covers these; the loader is shared
        # compare and plot share report's loader: a few of each in the quick suite, all under -m slow
        extra = {**extra, "slow": extra.get("slow", False) or fid not in _QUICK_SHARED}
        faults.append(Fault(f"compare/{fid}", "compare", fault, _how(fid),
                            lambda w, make=make: Setup(["compare", str(good_log(w)), str(make(w)), "--format", "json"]),
                            codes, names, **extra))
        faults.append(Fault(f"plot/{fid}", "plot", fault, _how(fid),
                            lambda w, make=make: Setup(["plot", str(make(w)), "-o", str(w / "figs")],
                                                       allowed=("figs",)),
                            (0,) if set(codes) & {0, 1} else codes, names, **extra))
    # import: its input is a reference trainer text log
    for fid, fault, make, names in [
        ("empty", "empty file", _empty, ("empty.jsonl",)),
        ("binary", "binary file", _binary, ("binary.jsonl", "binary")),
        ("missing", "missing path", _missing, ("missing.jsonl",)),
        ("directory", "a directory", _directory, ("adir",)),
        ("unreadable", "unreadable file (mode 000)", _unreadable, ("unreadable.jsonl", "ermission denied")),
        ("not-a-log", "a telemetry JSONL instead of a text log", good_log, ("good.jsonl", "not a text log")),
    ]:
        faults.append(Fault(f"import/{fid}", "import", fault, _how(fid) or "a moh run.jsonl",
                            lambda w, make=make: Setup(["import", str(make(w)), "-o", str(w / "out" / "run.jsonl")]),
                            (3,), names, unprivileged=fid == "unreadable"))
    # outputs that cannot be written
    faults += [
        Fault("plot/out-under-file", "plot", "output directory under a regular file", "-o afile/out",
              lambda w: Setup(["plot", str(good_log(w)), "-o", str(_under_file(w))]), (3,), ("afile", "not a directory")),
        Fault("plot/out-read-only", "plot", "output directory not writable", "-o readonly/figs, readonly is mode 555, "
              "no CAP_DAC_OVERRIDE", lambda w: Setup(["plot", str(good_log(w)), "-o", str(_read_only_dir(w) / "figs")]),
              (3,), ("readonly/figs", "ermission denied"), unprivileged=True),
        Fault("plot/out-is-device", "plot", "output is an existing non-directory (a /dev/full node)", "-o full",
              lambda w: Setup(["plot", str(good_log(w)), "-o", str(_full_device(w))]), (3,), ("full", "not a directory")),
        Fault("plot/disk-full", "plot", "disk full while writing figures", "RLIMIT_FSIZE 16 KiB (writes past it fail, "
              "EFBIG)", lambda w: Setup(["plot", str(good_log(w)), "-o", str(w / "new" / "figs")]), (3,),
              ("new/figs", "File too large"), fsize=16 << 10),
        Fault("import/out-under-file", "import", "output under a regular file", "-o afile/out",
              lambda w: Setup(["import", str(rust_log(w)), "-o", str(_under_file(w))]), (3,), ("afile/out", "not a directory")),
        Fault("import/out-is-directory", "import", "output path is a directory", "-o adir",
              lambda w: Setup(["import", str(rust_log(w)), "-o", str(_directory(w))]), (3,), ("adir", "is a directory")),
        Fault("import/out-read-only", "import", "output directory not writable", "readonly is mode 555, no "
              "CAP_DAC_OVERRIDE", lambda w: Setup(["import", str(rust_log(w)), "-o", str(_read_only_dir(w) / "run.jsonl")]),
              (3,), ("readonly/run.jsonl", "ermission denied"), unprivileged=True),
        Fault("import/dev-full", "import", "disk full: output is /dev/full", "-o a /dev/full node (mknod c 1 7)",
              lambda w: Setup(["import", str(rust_log(w)), "-o", str(_full_device(w))]), (3,),
              ("full", "No space left on device")),
        Fault("import/disk-full", "import", "disk full while writing", "RLIMIT_FSIZE 1 KiB",
              lambda w: Setup(["import", str(rust_log(w)), "-o", str(w / "new" / "run.jsonl")]), (3,),
              ("new/run.jsonl", "File too large"), fsize=1 << 10),
        Fault("report/stdout-full", "report", "disk full: stdout is /dev/full", "`moh report --format md > /dev/full`",
              lambda w: Setup(["report", str(good_log(w)), "--format", "md"], stdout="/dev/full"), (3,),
              ("standard output", "No space left on device")),
        Fault("compare/stdout-full", "compare", "disk full: stdout is /dev/full", "`moh compare a b > /dev/full`",
              lambda w: Setup(["compare", str(good_log(w)), str(good_log(w, "b.jsonl"))], stdout="/dev/full"), (3,),
              ("standard output", "No space left on device")),
    ]
    # train: --config, --data, --out
    cfg = lambda name, data: _bytes(name, data)  # noqa: E731
    for fid, fault, how, make, code, names, slow, unpriv in [
        ("config-binary", "--config binary file", "bytes 0x00..0xff", cfg("c.toml", bytes(range(256))), 2,
         ("c.toml", "not UTF-8"), False, False),
        ("config-missing", "--config missing path", "path that does not exist", lambda w: w / "nope.toml", 2,
         ("nope.toml", "No such file"), False, False),
        ("config-directory", "--config a directory", "an existing directory", _directory, 2, ("adir",), False, False),
        ("config-unreadable", "--config unreadable", "chmod 000, no CAP_DAC_OVERRIDE",
         lambda w: (lambda p: (p.chmod(0), p)[1])(cfg("c.toml", b"seed = 1\n")(w)), 2, ("c.toml", "Permission denied"),
         False, True),
        ("config-wrong-type", "--config wrong type", 'seed = "one"', cfg("c.toml", b'seed = "one"\n'), 2,
         ("seed", "expected int"), False, False),  # names the key, not the file (flags merge first)
        ("config-bad-toml", "--config not TOML", "a JSONL line", cfg("c.toml", b'{"event": "step"}\n'), 2,
         ("c.toml", "not valid TOML"), False, False),
        ("data-empty", "--data empty file", "0-byte file", _bytes("corpus.txt", b""), 3, ("corpus.txt", "empty"), True, False),
        ("data-binary", "--data binary file", "bytes 0x00..0xff", _bytes("corpus.txt", bytes(range(256)) * 8), 3,
         ("corpus.txt", "binary"), True, False),
        ("data-missing", "--data missing path", "path that does not exist", lambda w: w / "nope.txt", 3,
         ("nope.txt",), True, False),
        ("data-directory", "--data directory without a corpus", "an empty directory", _directory, 3, ("adir",), True, False),
        ("data-unreadable", "--data unreadable", "chmod 000, no CAP_DAC_OVERRIDE",
         lambda w: (lambda p: (p.chmod(0), p)[1])(_bytes("corpus.txt", b"hello world\n" * 100)(w)), 3,
         ("corpus.txt",), True, True),
    ]:
        opt = "--config" if fid.startswith("config") else "--data"
        faults.append(Fault(f"train/{fid}", "train", fault, how,
                            lambda w, make=make, opt=opt: Setup(["train", *TINY_TRAIN, opt, str(make(w)),
                                                                 "--out", str(w / "run")]),
                            (code,), names, unprivileged=unpriv, slow=slow))
    faults += [
        Fault("train/out-under-file", "train", "--out under a regular file", "--out afile/out",
              lambda w: Setup(["train", *TINY_TRAIN, "--out", str(_under_file(w))]), (3,), ("afile", "not a directory")),
        Fault("train/out-is-device", "train", "--out an existing non-directory (a /dev/full node)", "--out full",
              lambda w: Setup(["train", *TINY_TRAIN, "--out", str(_full_device(w))]), (3,), ("full", "not a directory")),
        Fault("train/out-read-only", "train", "--out in a directory that is not writable",
              "readonly is mode 555, no CAP_DAC_OVERRIDE",
              lambda w: Setup(["train", *TINY_TRAIN, "--out", str(_read_only_dir(w) / "run")]), (3,),
              ("readonly", "not writable"), unprivileged=True),
    ]
    return faults


# ---- running ----------------------------------------------------------------------------------


def _snapshot(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            out.add(os.path.normpath(os.path.join(rel, n)))
    return out


def _kept(fault: Fault, obs_stdout: str, stderr: str, work: Path) -> str:
    """What the command kept: logged steps (report/compare JSON), figures (plot), epochs (import)."""
    if fault.command.startswith(("report", "compare")) and obs_stdout.strip().startswith("{"):
        try:
            doc = json.loads(obs_stdout)
        except ValueError:
            return ""
        if "runs" in doc:
            return f"{len(doc['runs'])} runs judged ({', '.join(r['verdict'] for r in doc['runs'])})"
        return f"{doc['run']['logged_steps']} steps ({doc['verdict']})"
    if fault.command == "plot" and (work / "figs").is_dir():
        return f"{len(list((work / 'figs').iterdir()))} figures"
    m = re.search(r"(\d+) epochs", stderr)
    return f"{m[1]} epochs" if m else ""


def run_fault(fault: Fault, work: Path, timeout: float = 300) -> Observation:
    """Inject `fault` in `work` (an empty directory) and run the command; raises Skip when impossible."""
    if fault.unprivileged and IS_ROOT and shutil.which("setpriv") is None:
        raise Skip("running as root and setpriv is missing: cannot make a file unreadable")
    work.chmod(0o755)
    setup = fault.build(work)
    before = _snapshot(work)
    cmd = MOH + setup.argv
    if fault.unprivileged and IS_ROOT:
        cmd = _DROP_DAC + cmd
    if fault.fsize is not None:
        import matplotlib.font_manager  # noqa: F401 -- the font cache exists before writes are limited
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    env.pop("MOH_DEBUG", None)

    def limits():
        if fault.fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fault.fsize, fault.fsize))

    out_fh = open(setup.stdout, "wb") if setup.stdout else None
    try:
        p = subprocess.run(cmd, cwd=work, env=env, stdout=out_fh or subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, preexec_fn=limits)
    finally:
        if out_fh:
            out_fh.close()
        if setup.cleanup:
            setup.cleanup()
    stdout = (p.stdout or b"").decode("utf-8", "replace")
    stderr = p.stderr.decode("utf-8", "replace")
    after = _snapshot(work)
    allowed = set(setup.allowed) if p.returncode in (0, 1) else set()
    leftovers = sorted(x for x in after - before
                       if not any(x == a or x.startswith(a + os.sep) for a in allowed))
    return Observation(p.returncode, stdout, stderr, leftovers, _kept(fault, stdout, stderr, work))


def problems(fault: Fault, obs: Observation) -> list[str]:
    """Ways `obs` breaks the contract of issue 5 item 5 (empty when it holds)."""
    out = []
    if obs.code not in fault.codes:
        out.append(f"exit {obs.code}, expected {' or '.join(map(str, fault.codes))}")
    if "Traceback" in obs.stderr or "Exception ignored" in obs.stderr:
        out.append("a Python traceback on stderr")
    if fault.fails:
        lines = obs.message_lines
        if len(lines) != 1:
            out.append(f"{len(lines)} error lines on stderr, expected 1")
        elif not re.match(r"^(config |data )?error: ", lines[0]):
            out.append(f"error line does not start with 'error:': {lines[0][:80]!r}")
        for name in fault.names:
            if lines and name.lower() not in lines[0].lower():
                out.append(f"error line does not name {name!r}")
        if obs.leftovers:
            out.append(f"left behind: {obs.leftovers}")
    else:
        if obs.leftovers:
            out.append(f"unexpected files: {obs.leftovers}")
    return out
