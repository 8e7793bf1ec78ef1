"""Data parallelism with real torchrun processes on CPU (gloo): exact match with one rank, and
a rank that dies or hangs ends the job with a clear message instead of a hang.

Tolerances (docs/distributed.md): a 2-rank step computes the same sums as a 1-rank step, only
in another order (per-rank partial sums, then the all-reduce; matmuls over half the rows), so
values differ by float32 rounding: measured <= 3e-7 relative on the loss and <= 3e-7 absolute on
the routing statistics over this run. The asserted bounds (1e-4 relative on the losses, 1e-3 on
routing statistics, from the issue) leave room for that rounding to grow through training; the
discrete statistics (hard head counts, head load) match exactly here.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # real torchrun jobs (~20 s each on a loaded 2-core VM); CI runs them
from moh import schema
from moh.config import Config
from moh.train import CHECKPOINT, train

from .conftest import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The whole-curve parity tests check the data-parallel arithmetic (sums reduced in another order),
# so they pin the continuous complexity objective ("heads"): the default's rank target is
# discrete, and a near-tie reordered by rounding moves one token's target by one rank, a
# difference of the objective, not of the reduction. The default objective has its own test and
# bounds (test_two_ranks_match_one_rank_with_a_difficulty_target).
HEADS_OBJECTIVE = {"complexity_target": "heads", "complexity_weight": 0.1}
CFG = {**TINY, "pretrain_epochs": 2, "device": "cpu", "threads": 1, "telemetry_tier": "full", **HEADS_OBJECTIVE}
OVERRIDES = [f"{k}={v}" for k, v in CFG.items()]


def _torchrun(out, *extra, nproc=2, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "moh.train", *(["--out", str(out)] if out is not None else []), *OVERRIDES, *extra]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return cmd, env


def _records(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _rel(a, b):
    return abs(a - b) / max(abs(a), 1e-12)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 1-rank run of CFG (in this process): its records."""
    one = tmp_path_factory.mktemp("one")
    assert train(Config(**CFG), one).status == "completed"
    return _records(one / "run.jsonl")


# Head selection is discrete: where two router probabilities (or a cumulative sum and the
# threshold) are nearly tied, the reduction order's rounding can flip a token's choice, and the
# runs part a little from there (chaotically, not by a reduction error). Measured with this
# config (2026-11-30, after the fused AdamW and moh/token_loss.py): seeds 1-3 never flip
# (losses 1.4e-7 apart at most); seed 1337 meets a near-tie at step 9, then 1-7 tokens of ~550
# choose another head (head loads up to 0.013 apart, the complexity term 2e-4) while the losses
# stay within 1.2e-5. So the arithmetic is held to the tight bounds over the first TIGHT_STEPS
# logged steps, where a missing reduction shows at once, and the rest of the curve only to the
# drift bounds of DRIFT.
TIGHT_STEPS = 8
DRIFT = {"loss": 1e-3, "aux": 1e-2, "grad_norm": 1e-2, "stat": 0.05, "corr": 0.05}


def _same_curve(a, b):
    """Every logged step of run b matches run a (bounds above)."""
    sa = [r for r in a if r["event"] == schema.STEP]
    sb = [r for r in b if r["event"] == schema.STEP]
    assert [r["step"] for r in sa] == [r["step"] for r in sb] and len(sa) >= 20
    for n, (x, y) in enumerate(zip(sa, sb)):
        tight = n < TIGHT_STEPS
        assert x["tokens"] == y["tokens"]  # the job's token count, not rank 0's
        for k in ("loss", "lm_loss"):
            assert _rel(x[k], y[k]) <= (1e-4 if tight else DRIFT["loss"]), (x["step"], k, x[k], y[k])
        for t in schema.AUX_TERMS:
            assert _rel(x["aux"][t], y["aux"][t]) <= (1e-4 if tight else DRIFT["aux"]), (x["step"], t)
        # norms of the synchronised gradients
        assert _rel(x["grad_norm"], y["grad_norm"]) <= (1e-3 if tight else DRIFT["grad_norm"])
        stat_tol = 1e-3 if tight else DRIFT["stat"]
        for la, lb in zip(x["layers"], y["layers"]):
            for k in schema.LAYER_STATS:
                assert abs(la[k] - lb[k]) <= stat_tol, (x["step"], la["layer"], k, la[k], lb[k])
            if tight:
                assert la["heads_min"] == lb["heads_min"] and la["heads_max"] == lb["heads_max"]
            for k in ("head_load", "heads_hist", "prob_mean"):
                assert len(la[k]) == len(lb[k]) and max(abs(p - q) for p, q in zip(la[k], lb[k])) <= stat_tol, k
            assert abs(sum(lb["head_load"]) - lb["heads_mean"]) <= 1e-5  # summed, then normalised
            # rank correlations over the whole job's tokens (gathered, not averaged over ranks);
            # measured: <= 1e-5 apart gathered, up to 0.25 apart from rank 0's tokens alone
            for k in schema.ALIGNMENT_STATS:
                assert (la[k] is None) == (lb[k] is None), (x["step"], k)
                if la[k] is not None:
                    assert abs(la[k] - lb[k]) <= (1e-3 if tight else DRIFT["corr"]), (x["step"], la["layer"], k)


def test_two_ranks_match_one_rank(tmp_path, reference):
    """`moh train --nproc 2` (torchrun --standalone underneath) against the 1-rank run."""
    two = tmp_path / "two"
    sets = [a for k, v in CFG.items() if k != "device" for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-c", "from cli import main; main()", "train", "--nproc", "2", "--device", "cpu",
           "--out", str(two), *sets]
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == str(two)
    assert p.stderr.count("completed:") == 1  # rank 0 alone prints
    a, b = reference, _records(two / "run.jsonl")
    assert a[0]["world_size"] == 1 and a[0]["backend"] is None
    assert b[0]["world_size"] == 2 and b[0]["backend"] == "gloo" and b[0]["device"] == "cpu"
    assert b[-1]["event"] == schema.RUN_END and b[-1]["status"] == "completed"
    assert (two / CHECKPOINT).exists() and (two / "config.toml").exists()
    _same_curve(a, b)
    ea = [r for r in a if r["event"] == schema.EVAL]
    eb = [r for r in b if r["event"] == schema.EVAL]
    assert len(ea) == len(eb) == 2
    for x, y in zip(ea, eb):
        assert _rel(x["loss"], y["loss"]) <= 1e-4
        assert [s["prompt"] for s in x["samples"]] == [s["prompt"] for s in y["samples"]]  # gathered in order
        assert x["exact_match"] == y["exact_match"]


def test_interrupted_two_rank_run_resumes_on_two_ranks(tmp_path, reference):
    """SIGTERM to the launcher: every rank stops after the same step, rank 0 checkpoints; a
    2-rank --resume (every rank loads the checkpoint) ends on the 1-rank run's curve."""
    out = tmp_path / "run"
    cmd, env = _torchrun(out)
    log = open(tmp_path / "torchrun.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    _wait_steps(proc, out, 6, tmp_path)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to the workers
    rc, text = _finish(proc, tmp_path, limit=90)
    assert rc != 0 and "resume with --resume" in text, text[-3000:]
    recs = _records(out / "run.jsonl")
    assert recs[-1]["event"] == schema.RUN_END and recs[-1]["status"] == "interrupted"
    assert recs[-1]["steps"] < 22
    cmd, env = _torchrun(None, "--resume", str(out))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    b = _records(out / "run.jsonl")
    assert [r["event"] for r in b].count(schema.RESUME) == 1 and b[-1]["status"] == "completed"
    _same_curve(reference, b)


def _wait_steps(proc, out, n, tmp_path):
    deadline = time.time() + 180
    while time.time() < deadline:  # wait until the job is training (a few step records)
        try:
            if sum(1 for line in open(out / "run.jsonl") if '"event":"step"' in line) >= n:
                return
        except OSError:
            pass
        assert proc.poll() is None, (tmp_path / "torchrun.log").read_text()[-3000:]
        time.sleep(0.2)
    pytest.fail(f"no {n} step records within 180 s")


def _children(pid):
    """(pid, RANK) of the launcher's worker processes."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if b"RANK" in env:
            out.append((int(d), int(env[b"RANK"])))
    return out


def _start_long_job(tmp_path, timeout_s):
    out = tmp_path / "run"
    cmd, env = _torchrun(out, "pretrain_epochs=200", f"dist_timeout={timeout_s}")
    log = open(tmp_path / "torchrun.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    _wait_steps(proc, out, 3, tmp_path)
    ranks = dict((r, p) for p, r in _children(proc.pid))
    assert set(ranks) == {0, 1}, ranks
    return proc, out, ranks


def _finish(proc, tmp_path, limit):
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        for p, _ in _children(proc.pid):
            os.kill(p, signal.SIGKILL)
        pytest.fail(f"the job did not exit within {limit} s")
    return rc, (tmp_path / "torchrun.log").read_text()


def test_killed_rank_ends_the_job_with_a_clear_message(tmp_path):
    proc, out, ranks = _start_long_job(tmp_path, timeout_s=60)
    t0 = time.time()
    os.kill(ranks[1], signal.SIGKILL)
    rc, text = _finish(proc, tmp_path, limit=60)
    assert rc != 0
    assert time.time() - t0 < 60  # the survivor noticed at once (connection closed), not after the timeout
    assert "rank 0: distributed error: another rank crashed" in text, text[-3000:]
    end = _records(out / "run.jsonl")[-1]
    assert end["event"] == schema.RUN_END and end["status"] in ("failed", "interrupted")


def test_hung_rank_times_out_with_a_clear_message(tmp_path):
    proc, out, ranks = _start_long_job(tmp_path, timeout_s=5)
    os.kill(ranks[1], signal.SIGSTOP)  # alive but silent: only the collective timeout can tell
    t0 = time.time()
    try:
        while time.time() - t0 < 60:
            recs = _records(out / "run.jsonl")
            if recs[-1]["event"] == schema.RUN_END:
                break
            time.sleep(0.2)
        waited = time.time() - t0
    finally:
        os.kill(ranks[1], signal.SIGKILL)  # the launcher would SIGKILL it only after a 30 s grace
    rc, text = _finish(proc, tmp_path, limit=60)
    assert recs[-1]["event"] == schema.RUN_END and recs[-1]["status"] == "failed", recs[-1]
    assert 4 <= waited < 30, waited  # dist_timeout=5 s, plus the end of rank 0's step
    assert rc != 0
    assert "rank 0: distributed error" in text and "dist_timeout" in text, text[-3000:]


def test_two_ranks_match_one_rank_with_a_difficulty_target(tmp_path):
    """The difficulty target ranks the whole job's tokens (gathered), not each rank's own, so the
    2-rank run starts toward the 1-rank run's targets: at step 1 the complexity term agrees to
    1.1e-7 relative (ranking per rank: 3.3e-3). A rank is discrete, though: once float rounding
    (<= 3e-7) reorders two near-equal entropies the targets differ by one rank and the runs part
    a little (measured over this run: complexity term <= 1.4e-3 relative, LM loss <= 6.9e-6,
    heads_mean <= 0.05 apart), so the whole-curve bounds of the default objective do not apply."""
    cfg = {k: v for k, v in CFG.items() if k not in HEADS_OBJECTIVE}  # the default objective
    assert Config().complexity_target == "entropy_rank" and Config().complexity_weight == 1.0
    one = tmp_path / "one"
    assert train(Config(**cfg), one).status == "completed"
    two = tmp_path / "two"
    sets = [a for k, v in cfg.items() if k != "device" for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-c", "from cli import main; main()", "train", "--nproc", "2", "--device", "cpu",
           "--out", str(two), *sets]
    p = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    sa = [r for r in _records(one / "run.jsonl") if r["event"] == schema.STEP]
    sb = [r for r in _records(two / "run.jsonl") if r["event"] == schema.STEP]
    assert [r["step"] for r in sa] == [r["step"] for r in sb] and len(sa) >= 20
    assert _rel(sa[0]["aux"]["complexity"], sb[0]["aux"]["complexity"]) <= 1e-5
    for x, y in zip(sa, sb):
        assert _rel(x["lm_loss"], y["lm_loss"]) <= 1e-4, (x["step"], x["lm_loss"], y["lm_loss"])
        assert _rel(x["aux"]["complexity"], y["aux"]["complexity"]) <= 1e-2, x["step"]
