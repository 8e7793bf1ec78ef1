"""`moh train` through the real console entry point, in a subprocess."""

import json
import os
import subprocess
import sys

import torch

from moh.train import CHECKPOINT

TINY = ["--set", "n_layers=1", "--set", "d_model=32", "--set", "n_heads=4", "--set", "d_ff=64",
        "--set", "eval_prompts=4", "--set", "eval_max_new_tokens=6", "--epochs", "1", "--log-every", "1"]


def moh(*args, cwd=None):
    cmd = [sys.executable, "-c", "from cli import main; main()", "train", *args]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_smoke_run_writes_log_checkpoint_and_config_and_guards_the_dir(tmp_path):
    out = tmp_path / "run"
    p = moh(*TINY, "--out", str(out), "--router", "adaptive", "--seed", "7")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(out)  # payload: the run directory
    recs = [json.loads(line) for line in open(out / "run.jsonl")]
    assert recs[0]["config"]["seed"] == 7 and recs[-1]["status"] == "completed"
    assert "completed" in p.stderr  # summary goes to stderr
    torch.load(out / CHECKPOINT, weights_only=True)
    assert (out / "config.toml").exists()
    before = (out / "run.jsonl").read_bytes()
    p = moh(*TINY, "--quiet", "--out", str(out))  # a second run must not clobber the first
    assert p.returncode == 2 and "--overwrite" in p.stderr, p.stderr
    assert (out / "run.jsonl").read_bytes() == before


def test_config_error_is_one_line_naming_the_field(tmp_path):
    p = moh("--set", "n_heads=5", "--out", str(tmp_path / "x"))
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == ["config error: n_heads: must divide d_model=128, got 5"]
    bad = tmp_path / "c.toml"
    bad.write_text("learning_rate = 0.1\n")
    p = moh("--config", str(bad), "--out", str(tmp_path / "y"))
    assert p.returncode == 2 and p.stderr.strip() == "config error: learning_rate: unknown config key"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_unreadable_data_exits_3_naming_the_file(tmp_path):
    bad = tmp_path / "corpus.json"
    bad.write_text("[1, 2]")
    p = moh(*TINY, "--data", str(bad), "--out", str(tmp_path / "z"))
    assert p.returncode == 3, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in p.stderr
