"""`moh watch` in a real terminal (tmux): on a log that grows (a writer replaying a sample log,
and a live `moh train`), it shows the step and heads while the log grows, then the verdict, and
exits with the report's code. tmux is installed when missing and possible, else these skip."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_logs"
MOH = f"{shlex.quote(sys.executable)} -c 'from cli import main; main()'"


def _tmux() -> str:
    found = shutil.which("tmux")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "tmux"], capture_output=True, timeout=300)
        found = shutil.which("tmux")
    if found is None:
        pytest.skip("tmux is not installed and could not be installed (apt-get install tmux)")
    return found


class Pane:
    """A detached tmux session running one shell command; its screen as text."""

    def __init__(self, command: str, cwd: Path, width: int = 110, height: int = 45):
        self.tmux = _tmux()
        self.name = f"mohwatch-{uuid.uuid4().hex[:8]}"
        env = f"PYTHONPATH={shlex.quote(str(ROOT))} TERM=xterm-256color"
        # the exit code stays on screen, and the pane stays open to be read
        full = f"cd {shlex.quote(str(cwd))} && {env} {command}; echo EXIT=$?; sleep 600"
        subprocess.run([self.tmux, "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                        full], check=True)

    def text(self) -> str:
        return subprocess.run([self.tmux, "capture-pane", "-p", "-t", self.name], capture_output=True,
                              text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match:
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(pattern, self.text())
            if m:
                return m
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on screen after {timeout} s:\n{self.text()}")

    def close(self) -> None:
        subprocess.run([self.tmux, "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def pane_factory():
    panes = []

    def make(command, cwd):
        p = Pane(command, cwd)
        panes.append(p)
        return p

    yield make
    for p in panes:
        p.close()


def _replay(src: Path, dst: Path, chunks: int, pause: float, stop_before_end: bool = False) -> threading.Thread:
    """Append `src`'s lines to `dst` in `chunks` parts, `pause` s apart (a run as it is written)."""
    lines = src.read_bytes().splitlines(keepends=True)
    if stop_before_end:
        lines = lines[:-1]
    size = -(-len(lines) // chunks)

    def write():
        for i in range(0, len(lines), size):
            with open(dst, "ab") as fh:
                fh.writelines(lines[i:i + size])
            time.sleep(pause)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def _steps_seen(pane: Pane, until: str, timeout: float = 90.0) -> tuple[list[int], list[str]]:
    """Step numbers shown on screen, sampled until `until` appears, and the screens shown while
    the run was still going (no verdict yet)."""
    seen, running, end = [], [], time.time() + timeout
    while time.time() < end:
        screen = pane.text()
        m = re.search(r"step (\d+)/(\d+)", screen)
        if m:
            seen.append(int(m.group(1)))
        if "VERDICT" not in screen:
            running.append(screen)
        if re.search(until, screen):
            return seen, running
        time.sleep(0.15)
    raise AssertionError(f"{until!r} never appeared:\n{pane.text()}")


@pytest.mark.parametrize("name,verdict,code", [("healthy_adaptive.jsonl", "PASS", 0),
                                               ("broken_no_gradient.jsonl", "FAIL", 1)])
def test_watch_follows_a_replayed_log_to_its_verdict(tmp_path, pane_factory, name, verdict, code):
    run = tmp_path / "demo"
    run.mkdir()
    pane = pane_factory(f"{MOH} watch demo --interval 0.2", tmp_path)
    pane.wait_for("waiting for the log")
    writer = _replay(SAMPLES / name, run / "run.jsonl", chunks=12, pause=0.6)
    seen, running = _steps_seen(pane, r"EXIT=\d+")
    writer.join()
    screen = pane.text()
    assert f"EXIT={code}" in screen
    assert f"VERDICT {verdict}" in screen
    # the sample's planned steps: 593 sentences / 32 = 18 x 30 epochs + 64 pairs / 8 = 8 x 30
    assert "step 780/780" in screen and "heads" in screen
    growing = sorted(set(s for s in seen if s < 780))
    assert len(growing) >= 3, seen  # several intermediate steps were on screen while it grew
    # heads while it grew: the mean's line and a row of the per-layer table (layer, heads, min..max)
    assert any(re.search(r"heads\s+\d\.\d", sc) and re.search(r"\n[│ ]+1\s+\d[\d.]*\s+\d+\.\.\d+", sc)
               for sc in running), running[-1]
    assert seen == sorted(seen)
    if code:
        assert "router_grad_zero" in screen
        # shown while the log was still growing, not only in the final report
        assert any("findings so far (early rules)" in sc and "router_grad_zero" in sc for sc in running)


def test_watch_ctrl_c_leaves_cleanly(tmp_path, pane_factory):
    log = tmp_path / "run.jsonl"
    _replay(SAMPLES / "healthy_adaptive.jsonl", log, chunks=1, pause=0, stop_before_end=True).join()
    pane = pane_factory(f"{MOH} watch run.jsonl --interval 0.2", tmp_path)
    pane.wait_for(r"step 780/780")
    assert "EXIT=" not in pane.text()  # no run_end: it keeps following
    pane.keys("C-c")
    pane.wait_for(r"EXIT=130")
    assert "Traceback" not in pane.text()


@pytest.mark.slow
@pytest.mark.parametrize("fault,code", [([], 0), (["--set", "straight_through=false"], 1)])
def test_watch_follows_a_live_moh_train(tmp_path, pane_factory, fault, code):
    """A real training run, watched from its start to its end; the exit code is `moh report`'s
    on the finished log. A model trained for seconds cannot meet the targets of the default
    run (loss, exact match, heads in [3, 4], settled gradient norm), so those criteria are
    switched off for both (the same file for watch and report); the broken run fails on its
    finding (router_grad_zero, an error), not on a criterion."""
    crit = tmp_path / "crit.toml"
    crit.write_text("".join(f"[criteria.{name}]\nenabled = false\n"
                            for name in ("loss", "output_quality", "learning", "average_heads", "grad_norm")))
    run = tmp_path / "live"
    pane = pane_factory(f"{MOH} watch live --criteria crit.toml --interval 0.2", tmp_path)
    pane.wait_for("waiting for the log")
    train = subprocess.Popen(
        [sys.executable, "-c", "from cli import main; main()", "train", "--set", "n_layers=1", "--set", "d_model=32",
         "--set", "n_heads=4", "--set", "d_ff=64", "--set", "eval_prompts=4", "--set", "eval_max_new_tokens=6",
         "--log-every", "1", "--threads", "1", "--pretrain-epochs", "20", "--instruct-epochs", "4",
         "--alert-every", "0", "--out", str(run), *fault],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen, running = _steps_seen(pane, r"EXIT=\d+", timeout=240)
        assert train.wait(timeout=60) == 0
    finally:
        train.kill()
        train.wait()
    screen = pane.text()
    report = subprocess.run([sys.executable, "-c", "from cli import main; main()", "report", str(run),
                             "--criteria", str(crit)], cwd=ROOT, capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert report.returncode == code, report.stdout
    assert f"EXIT={code}" in screen
    assert ("VERDICT PASS" if code == 0 else "VERDICT FAIL") in screen
    total = json.loads((run / "run.jsonl").read_text().splitlines()[-1])["steps"]
    assert f"step {total}/{total}" in screen  # the planned total is the real one
    assert len(set(s for s in seen if s < total)) >= 3, seen
    assert any(re.search(r"heads\s+\d\.\d", sc) and re.search(r"\n[│ ]+0\s+\d[\d.]*\s+\d+\.\.\d+", sc)
               for sc in running), running[-1]
    assert re.search(r"layer\s+heads", screen)
    if code:
        assert any("findings so far (early rules)" in sc and "router_grad_zero" in sc for sc in running)


@pytest.mark.slow
def test_watch_follows_a_killed_and_resumed_moh_train(tmp_path, pane_factory):
    """SIGKILL mid-run (no run_end: the watch keeps following), then `moh train --resume`
    appends a resume record and the rest: the watch shows the resume and ends on the verdict."""
    run = tmp_path / "live"
    pane = pane_factory(f"{MOH} watch live --interval 0.2", tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["--log-every", "1", "--threads", "1", "--alert-every", "0"]
    train = subprocess.Popen(
        [sys.executable, "-c", "from cli import main; main()", "train", "--set", "n_layers=1", "--set", "d_model=32",
         "--set", "n_heads=4", "--set", "d_ff=64", "--set", "eval_prompts=4", "--set", "eval_max_new_tokens=6",
         "--set", "straight_through=false", "--set", "checkpoint_every=5", "--pretrain-epochs", "30",
         "--instruct-epochs", "2", *common, "--out", str(run)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pane.wait_for(r"step (2\d|[3-9]\d|\d{3,})/\d+", timeout=120)  # past a few checkpoints
        train.kill()  # SIGKILL: no run_end, maybe a torn last line
        train.wait()
    finally:
        train.kill()
    time.sleep(1.0)
    assert "EXIT=" not in pane.text() and "running" in pane.text()
    resumed = subprocess.run([sys.executable, "-c", "from cli import main; main()", "train", "--resume", str(run),
                              *common], cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    pane.wait_for(r"EXIT=\d+", timeout=60)
    screen = pane.text()
    total = json.loads((run / "run.jsonl").read_text().splitlines()[-1])["steps"]
    assert f"step {total}/{total}" in screen
    assert "EXIT=1" in screen and "VERDICT FAIL" in screen and "router_grad_zero" in screen
    recs = [json.loads(l) for l in (run / "run.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "resume" for r in recs) == 1


def test_train_progress_bar_on_a_terminal_shows_epoch_total_and_eta(tmp_path, pane_factory):
    pane = pane_factory(f"{MOH} train --set n_layers=1 --set d_model=32 --set n_heads=4 --set d_ff=64 "
                        f"--set eval_prompts=4 --set eval_max_new_tokens=6 --log-every 1 --threads 1 "
                        f"--pretrain-epochs 20 --instruct-epochs 2 --alert-every 0 --out run", tmp_path)
    m = pane.wait_for(r"pretrain\s+epoch\s+(\d+)/20 .*ETA", timeout=120)
    assert 1 <= int(m.group(1)) <= 20
    pane.wait_for(r"EXIT=0", timeout=180)
    screen = pane.text()
    assert re.search(r"instruct\s+epoch\s+2/2 .*\b(\d+)/\1\b", screen), screen  # the bar ends full
    assert "pretrain eval: loss" in screen
