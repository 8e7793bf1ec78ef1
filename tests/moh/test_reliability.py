"""Training faults through real `moh train` subprocesses and real signals (issue 5, engine side).

SIGKILL at random (seeded) moments, SIGINT/SIGTERM, kill-and-resume against an uninterrupted run,
non-finite skip/stop, resume errors, weights-only checkpoints. Timing-robust: the tests poll the
run's files (never sleep a fixed time and hope) and allow generous timeouts on a shared machine.
The default suite runs one kill at a random point; `-m slow` adds a seeded series of kills.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from moh import checkpoint as ck
from moh import schema
from moh.config import Config
from moh.telemetry import JsonlSink
from moh.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ~40 steps of a 1-layer model: long enough to be hit mid-run, short enough for a test.
SMALL = dict(n_layers=1, d_model=32, n_heads=4, d_ff=64, max_len=64, eval_prompts=4, eval_max_new_tokens=6,
             batch_size=32, instruct_batch_size=16, warmup_steps=2, pretrain_epochs=2, instruct_epochs=2,
             log_every=1, threads=1, seed=11, checkpoint_every=3)
ARGS = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]


def moh_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cli import main; main()", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(moh_cmd(*args), capture_output=True, text=True, env=_env(), timeout=timeout)


def start(out, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(moh_cmd("train", "--quiet", "--out", str(out), *ARGS, *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def lines(path) -> tuple[list[dict], bytes]:
    """Records of every complete line (strict JSON: a bare NaN fails) and the torn tail, if any."""
    data = open(path, "rb").read()
    body, _, tail = data.rpartition(b"\n")
    recs = []
    for i, line in enumerate(body.split(b"\n") if body else [], 1):
        recs.append(json.loads(line, parse_constant=lambda c: pytest.fail(f"line {i}: bare {c}")))
    return recs, tail


def wait_for(pred, proc: subprocess.Popen, timeout: float = 120, what: str = "") -> None:
    t = time.time()
    while not pred():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        if time.time() - t > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def n_steps(path) -> int:
    try:
        return open(path, "rb").read().count(b'"event":"step"')
    except FileNotFoundError:
        return 0


def final_losses(recs: list[dict]) -> dict[int, float]:
    """step -> loss, last write wins (what analyze.loader does with a resumed log)."""
    out = {}
    for r in recs:
        if r["event"] == schema.STEP:
            out[r["step"]] = schema.decode_number(r["loss"])
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in process (same config and thread count => the same numbers)."""
    out = tmp_path_factory.mktemp("ref")
    res = train(Config(**SMALL), out)
    assert res.status == "completed"
    recs, tail = lines(out / "run.jsonl")
    assert tail == b""
    return final_losses(recs)


def assert_same_run(recs: list[dict], ref: dict[int, float]) -> None:
    got = final_losses(recs)
    assert sorted(got) == sorted(ref), "every step logged (after last-write-wins)"
    last = max(ref)
    assert math.isclose(got[last], ref[last], rel_tol=1e-4), (got[last], ref[last])
    worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
    assert worst <= 1e-4, worst


def check_killed_dir(out) -> tuple[list[dict], dict | None]:
    """After a SIGKILL: complete lines valid, steps 1..n contiguous, checkpoint loadable and behind the log."""
    recs, tail = lines(out / "run.jsonl")
    assert recs and recs[0]["event"] == schema.RUN_START
    steps = [r["step"] for r in recs if r["event"] == schema.STEP]
    assert steps == list(range(1, len(steps) + 1)), "no logged step lost or out of order"
    for r in recs:
        assert schema.missing_fields(r) == [], r
    assert tail == b"" or not tail.endswith(b"}"), "a torn tail is never a complete record"
    path = out / ck.CHECKPOINT_FILE
    if not path.exists():
        return recs, None
    state = torch.load(path, weights_only=True)  # never a broken file: atomic replace
    assert state["format"] == ck.FORMAT
    assert state["position"]["step"] <= len(steps), "the log holds every step the checkpoint has"
    assert state["position"]["step"] % SMALL["checkpoint_every"] == 0 or state["position"]["finished"]
    return recs, state


KILL_TRIES = 6  # fresh runs tried before a kill that never lands mid-run fails the test


def kill_and_resume(tmp_path, reference, rng: random.Random, tag: str) -> str:
    """SIGKILL a run at a random (seeded) moment after its first checkpoint and before its last,
    resume it, and check it ends on the uninterrupted run's curve. A kill that misses (the run
    finished first, or only the final checkpoint was left) tests nothing, so it is retried in a
    fresh directory with a shorter delay; after KILL_TRIES misses the test fails."""
    span = 1.5
    for attempt in range(KILL_TRIES):
        out = tmp_path / f"{tag}{attempt}"
        p = start(out)
        wait_for(lambda: (out / ck.CHECKPOINT_FILE).exists(), p, what="the first checkpoint")
        time.sleep(rng.uniform(0.0, span))
        if p.poll() is not None:  # finished before the kill: nothing tested, try again sooner
            p.communicate()
            span /= 2
            continue
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        if p.returncode == 0:  # it finished between the poll and the kill: a miss, as above
            span /= 2
            continue
        assert p.returncode == -signal.SIGKILL
        recs, state = check_killed_dir(out)
        assert state is not None
        if state["position"]["finished"]:  # killed after the last checkpoint: nothing to resume
            span /= 2
            continue
        break
    else:
        pytest.fail(f"no kill landed between the first and the last checkpoint in {KILL_TRIES} runs")
    killed_at = sum(r["event"] == schema.STEP for r in recs)
    assert state["position"]["step"] <= killed_at, "the kill happened after the checkpoint it resumes from"
    r = run("train", "--quiet", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    recs, tail = lines(out / "run.jsonl")
    assert tail == b""
    resumes = [x for x in recs if x["event"] == schema.RESUME]
    assert len(resumes) == 1 and resumes[0]["step"] == state["position"]["step"]
    assert recs[-1]["event"] == schema.RUN_END and recs[-1]["status"] == "completed"
    assert_same_run(recs, reference)
    torch.load(out / ck.CHECKPOINT_FILE, weights_only=True)
    torch.load(out / "model.pt", weights_only=True)
    return f"killed at step {killed_at}, resumed from {state['position']['step']} (try {attempt + 1})"


def test_sigkill_at_a_random_moment_then_resume_matches_uninterrupted(tmp_path, reference):
    kill_and_resume(tmp_path, reference, random.Random(5), "k")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_sigkill_series(tmp_path, reference, seed):
    kill_and_resume(tmp_path, reference, random.Random(1000 + seed), f"k{seed}")


@pytest.mark.slow
def test_sigkill_before_any_checkpoint_keeps_the_log_and_resume_says_why(tmp_path):
    out = tmp_path / "early"
    p = start(out, "--set", "checkpoint_every=0")
    wait_for(lambda: n_steps(out / "run.jsonl") >= 2, p, what="two steps")
    p.kill()
    p.communicate(timeout=60)
    recs, state = check_killed_dir(out)
    assert state is None and sum(r["event"] == schema.STEP for r in recs) >= 2
    r = run("train", "--resume", str(out))
    assert r.returncode == 3 and "no checkpoint.pt to resume from" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_and_exits_interrupted_then_resumes(tmp_path, reference, sig, code):
    out = tmp_path / sig.name
    p = start(out, "--set", "checkpoint_every=0")  # the only checkpoint is the signal's
    wait_for(lambda: n_steps(out / "run.jsonl") >= 4, p, what="four steps")
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert f"moh train --resume {out}" in err and "Traceback" not in err
    recs, tail = lines(out / "run.jsonl")
    assert tail == b""
    end = recs[-1]
    assert end["event"] == schema.RUN_END and end["status"] == "interrupted"
    state = torch.load(out / ck.CHECKPOINT_FILE, weights_only=True)
    logged = [r["step"] for r in recs if r["event"] == schema.STEP]
    assert state["position"]["step"] == logged[-1] == end["steps"], "the step in flight was finished, then saved"
    if sig == signal.SIGTERM:  # resume once per parametrisation pair is enough for the suite's time
        return
    r = run("train", "--quiet", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    recs, _ = lines(out / "run.jsonl")
    kinds = [x["event"] for x in recs]
    assert kinds.count(schema.RUN_START) == 1 and kinds.count(schema.RESUME) == 1
    assert_same_run(recs, reference)


def test_nonfinite_skip_alerts_and_completes_and_report_says_nonfinite(tmp_path):
    out = tmp_path / "skip"
    r = run("train", "--quiet", "--out", str(out), *ARGS, "--set", "inject_nonfinite_at_step=3",
            "--set", "pretrain_epochs=1", "--set", "instruct_epochs=1")
    assert r.returncode == 0, r.stderr
    recs, _ = lines(out / "run.jsonl")
    alert = [x for x in recs if x["event"] == schema.ALERT and x["code"] == "nonfinite"]
    assert len(alert) == 1 and alert[0]["level"] == "warning" and alert[0]["step"] == 3
    bad = [x for x in recs if x["event"] == schema.STEP and x["skipped"]]
    assert [x["step"] for x in bad] == [3] and bad[0]["loss"] == "NaN"
    assert recs[-1]["status"] == "completed"
    rep = run("report", str(out / "run.jsonl"), "--format", "json")
    assert rep.returncode in (0, 1), rep.stderr
    codes = {f["code"] for f in json.loads(rep.stdout)["findings"]}
    assert "nonfinite" in codes


def test_nonfinite_stop_fails_with_exit_1_and_keeps_the_evidence(tmp_path):
    out = tmp_path / "stop"
    r = run("train", "--quiet", "--out", str(out), *ARGS, "--set", "inject_nonfinite_at_step=3",
            "--set", "nonfinite=stop")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    recs, _ = lines(out / "run.jsonl")
    assert [x["level"] for x in recs if x["event"] == schema.ALERT and x["code"] == "nonfinite"] == ["error"]
    assert [x["step"] for x in recs if x["event"] == schema.STEP][-1] == 3
    assert recs[-1]["event"] == schema.RUN_END and recs[-1]["status"] == "failed" and recs[-1]["steps"] == 3
    assert not (out / "model.pt").exists()


def test_resume_errors_are_one_clear_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("train", "--resume", str(empty))
    assert r.returncode == 3 and r.stderr.strip().splitlines() == [
        f"error: {empty}: no checkpoint.pt to resume from (the run was killed before its first checkpoint; "
        f"see checkpoint_every); start it again with --overwrite"]


@pytest.mark.slow
def test_resume_errors_more(tmp_path):
    r = run("train", "--resume", str(tmp_path / "missing"))
    assert r.returncode == 3 and "no such run directory" in r.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ck.CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 not a zip")
    r = run("train", "--resume", str(broken))
    assert r.returncode == 3 and "not a readable moh checkpoint" in r.stderr and "Traceback" not in r.stderr
    r = run("train", "--resume", str(broken), "--overwrite")
    assert r.returncode == 2 and "--resume" in r.stderr


@pytest.mark.slow
def test_resume_refuses_config_changes_and_a_completed_run(tmp_path):
    out = tmp_path / "done"
    train(Config(**{**SMALL, "pretrain_epochs": 1, "instruct_epochs": 0}), out)
    r = run("train", "--resume", str(out))
    assert r.returncode == 3 and "already completed" in r.stderr
    # an unfinished checkpoint: rewrite the position as a checkpoint in the middle would have it
    state = torch.load(out / ck.CHECKPOINT_FILE, weights_only=True)
    state["position"]["finished"] = False
    ck.atomic_save(state, out / ck.CHECKPOINT_FILE)
    r = run("train", "--resume", str(out), "--lr", "0.5")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("config error: lr: cannot change on --resume")
    r = run("train", "--resume", str(out), "--set", "pretrain_epochs=3")
    assert r.returncode == 2 and "pretrain_epochs: cannot change" in r.stderr
    p = run("train", "--out", str(out), "--quiet", *ARGS)
    assert p.returncode == 2 and f"--resume {out}" in p.stderr and "--overwrite" in p.stderr


# --- in-process units ----------------------------------------------------------------------------


def test_atomic_save_never_leaves_a_broken_file(tmp_path):
    path = tmp_path / "c.pt"
    ck.atomic_save({"a": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        ck.atomic_save({"a": torch.zeros(3), "b": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["c.pt"], "temp file removed"
    mode = os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_append_cuts_a_torn_tail(tmp_path):
    s = JsonlSink(tmp_path)
    s.write({"event": "alert", "step": 0, "level": "info", "code": "x", "message": "m"})
    s.close()
    with open(tmp_path / "run.jsonl", "ab") as f:
        f.write(b'{"event":"step","st')
    s = JsonlSink(tmp_path, append=True)
    assert s.torn_bytes == len(b'{"event":"step","st')
    s.write({"event": "alert", "step": 1, "level": "info", "code": "y", "message": "n"})
    s.close()
    recs, tail = lines(tmp_path / "run.jsonl")
    assert [r["code"] for r in recs] == ["x", "y"] and tail == b""


def test_resume_config_rules():
    saved = Config(**SMALL).to_dict()
    cfg = ck.resume_config(saved, {"threads": 2, "log_every": 5, "seed": SMALL["seed"]})
    assert cfg.threads == 2 and cfg.log_every == 5 and cfg.n_layers == 1
    from moh.config import ConfigError

    with pytest.raises(ConfigError, match="^seed: cannot change on --resume"):
        ck.resume_config(saved, {"seed": 1})


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(3)
    torch.manual_seed(3)
    ck.atomic_save({"rng": ck.rng_state()}, tmp_path / "r.pt")
    a = (random.random(), torch.rand(2))
    ck.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    b = (random.random(), torch.rand(2))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
