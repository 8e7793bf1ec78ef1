"""Training faults for real: run `moh train` in subprocesses, inject each fault, print Markdown rows.

    python bench/fault_train.py [--kills N] [--seed S] > /tmp/train_faults.md

Faults: SIGKILL at N seeded random moments (each followed by `--resume` and compared with an
uninterrupted run), SIGKILL while a checkpoint is being written, SIGKILL before the first
checkpoint, SIGINT, SIGTERM, a second SIGINT, non-finite loss (injected and a real divergence)
under both policies, a full disk (RLIMIT_FSIZE) while logging and while checkpointing, and the
resume refusals. Rows show what came back: exit code, records kept, the stderr line, checkpoint.
Then the cost figures behind the design (flush vs fsync per record, one checkpoint write).
Exit status 1 when any fault broke the contract.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from moh import checkpoint as ck  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.train import train  # noqa: E402

SMALL = dict(n_layers=1, d_model=32, n_heads=4, d_ff=64, max_len=64, eval_prompts=4, eval_max_new_tokens=6,
             batch_size=32, instruct_batch_size=16, warmup_steps=2, pretrain_epochs=2, instruct_epochs=2,
             log_every=1, threads=1, seed=11, checkpoint_every=3)
# a model whose checkpoint takes long enough to write that a kill can land inside the write
BIG = {**SMALL, "n_layers": 4, "d_model": 256, "n_heads": 8, "d_ff": 1024, "checkpoint_every": 1,
       "pretrain_epochs": 1, "instruct_epochs": 1}


def sets(cfg: dict) -> list[str]:
    return [a for k, v in cfg.items() for a in ("--set", f"{k}={v}")]


def moh(*args: str) -> list[str]:
    exe = ROOT / ".venv" / "bin" / "moh"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-c", "from cli import main; main()", *args]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def popen(out: Path, cfg: dict, *extra: str, fsize: int | None = None) -> subprocess.Popen:
    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.Popen(moh("train", "--quiet", "--out", str(out), *sets(cfg), *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=limit)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(moh(*args), capture_output=True, text=True, env=ENV, timeout=600)


def read_log(path: Path) -> tuple[list[dict], int, str]:
    """(records of complete lines, torn tail bytes, problem or '')."""
    if not path.exists():
        return [], 0, "no log"
    data = path.read_bytes()
    body, _, tail = data.rpartition(b"\n")
    recs = []
    for i, line in enumerate(body.split(b"\n") if body else [], 1):
        try:
            recs.append(json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))))
        except ValueError as e:
            return recs, len(tail), f"line {i} invalid: {e}"
    steps = [r["step"] for r in recs if r["event"] == "step"]
    first_resume = next((i for i, r in enumerate(recs) if r["event"] == "resume"), len(recs))
    before = [r["step"] for r in recs[:first_resume] if r["event"] == "step"]
    if before != list(range(1, len(before) + 1)):
        return recs, len(tail), "steps not contiguous"
    return recs, len(tail), ""


def ck_state(out: Path) -> tuple[dict | None, str]:
    p = out / ck.CHECKPOINT_FILE
    if not p.exists():
        return None, "none"
    try:
        s = torch.load(p, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a broken checkpoint is what we look for
        return None, f"BROKEN ({type(e).__name__})"
    return s, f"step {s['position']['step']}" + (" (final)" if s["position"]["finished"] else "")


def losses(recs: list[dict]) -> dict[int, float]:
    out = {}
    for r in recs:
        if r["event"] == "step":
            v = r["loss"]
            out[r["step"]] = float(v) if not isinstance(v, str) else float(v.replace("Infinity", "inf"))
    return out


def wait(pred, p: subprocess.Popen, timeout: float = 300, poll: float = 0.01) -> bool:
    t = time.time()
    while not pred():
        if p.poll() is not None or time.time() - t > timeout:
            return False
        time.sleep(poll)
    return True


def n_steps(path: Path) -> int:
    try:
        return path.read_bytes().count(b'"event":"step"')
    except FileNotFoundError:
        return 0


def first_err(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


ROWS: list[str] = []
BAD: list[str] = []


def row(fault: str, how: str, code, kept: str, msg: str, ckpt: str, ok: bool, why: str = "") -> None:
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    ROWS.append(f"| {cell(fault)} | {cell(how)} | {code} | {cell(kept)} | `{cell(msg[:200])}` | {cell(ckpt)} | "
                f"{'ok' if ok else 'BROKEN: ' + cell(why)} |")
    if not ok:
        BAD.append(f"{fault}: {why}")


def kept_text(recs: list[dict], torn: int) -> str:
    steps = [r["step"] for r in recs if r["event"] == "step"]
    last = recs[-1]["event"] + (f" {recs[-1].get('status')}" if recs and recs[-1]["event"] == "run_end" else "") \
        if recs else "-"
    return f"{len(recs)} lines, steps 1..{max(steps) if steps else 0}, last `{last}`" + \
        (f", torn tail {torn} B" if torn else "")


def rel_diff(a: dict[int, float], ref: dict[int, float]) -> float:
    if sorted(a) != sorted(ref):
        return math.inf
    return max(abs(a[s] - ref[s]) / abs(ref[s]) for s in ref)


def main(argv: list[str]) -> int:
    kills = int(argv[argv.index("--kills") + 1]) if "--kills" in argv else 8
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 2024
    rng = random.Random(seed)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fault_train."))
    ref_dir = work / "ref"
    train(Config(**SMALL), ref_dir)
    ref = losses(read_log(ref_dir / "run.jsonl")[0])
    n_ref = len(ref)

    # 1. SIGKILL at random moments, then resume
    diffs, torn_total, done = [], 0, 0
    for k in range(kills):
        out = work / f"kill{k}"
        p = popen(out, SMALL)
        wait(lambda: n_steps(out / "run.jsonl") >= 1, p)
        time.sleep(rng.uniform(0.0, 1.5))
        if p.poll() is not None:
            continue
        p.send_signal(signal.SIGKILL)
        p.communicate()
        recs, torn, prob = read_log(out / "run.jsonl")
        torn_total += bool(torn)
        state, ckd = ck_state(out)
        n_logged = sum(r["event"] == "step" for r in recs)
        okk = not prob and "BROKEN" not in ckd and (state is None or state["position"]["step"] <= n_logged)
        if state is None:
            r = run("train", "--resume", str(out))
            row(f"SIGKILL #{k + 1} (before the first checkpoint)", f"random moment, seed {seed}",
                f"-9, then resume {r.returncode}", kept_text(recs, torn), first_err(r.stderr), ckd,
                okk and r.returncode == 3 and "no checkpoint.pt" in r.stderr, prob or "resume answer")
            continue
        if state["position"]["finished"]:  # the kill landed as the process was exiting
            r = run("train", "--resume", str(out))
            row(f"SIGKILL #{k + 1} after the run completed", f"random moment, seed {seed}",
                f"-9, then resume {r.returncode}", kept_text(recs, torn), first_err(r.stderr).replace(str(work) + "/", ""),
                ckd, okk and r.returncode == 3 and "already completed" in r.stderr, prob or "resume answer")
            continue
        r = run("train", "--quiet", "--resume", str(out))
        after, torn2, prob2 = read_log(out / "run.jsonl")
        d = rel_diff(losses(after), ref)
        diffs.append(d)
        done += 1
        okk = okk and r.returncode == 0 and not prob2 and d <= 1e-4
        row(f"SIGKILL #{k + 1} at step {n_logged} of {n_ref}", f"random moment (seed {seed}), then `--resume`",
            f"-9, then resume {r.returncode}", kept_text(recs, torn),
            f"resumed from step {state['position']['step']}; final loss rel. diff vs uninterrupted {d:.1e}",
            ckd, okk, prob or prob2 or f"rc {r.returncode} diff {d}")

    # 2. SIGKILL inside a checkpoint write (bigger model, checkpoint every step)
    out = work / "killwrite"
    p = popen(out, BIG)
    # the kill lands while a checkpoint replaces an existing one (the temp file of the 2nd+ write)
    caught = wait(lambda: out.exists() and (out / ck.CHECKPOINT_FILE).exists()
                  and any(n.endswith(".tmp") for n in os.listdir(out)), p, poll=0.0005)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    stale = [n for n in os.listdir(out) if n.endswith(".tmp")]
    recs, torn, prob = read_log(out / "run.jsonl")
    state, ckd = ck_state(out)
    r = run("train", "--quiet", "--resume", str(out))
    left = [n for n in os.listdir(out) if n.endswith(".tmp")]
    row("SIGKILL during a checkpoint write", "4-layer d=256 model, checkpoint_every=1; kill when the temp file "
        f"appears ({'caught mid-write' if caught and stale else 'not caught this time'})", f"-9, then resume {r.returncode}",
        kept_text(recs, torn), f"temp files after kill: {len(stale)}, after resume: {len(left)}", ckd,
        not prob and "BROKEN" not in ckd and r.returncode == 0 and not left, prob or "broken/leftover")

    # 3. signals
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = work / sig.name
        p = popen(out, SMALL, "--set", "checkpoint_every=0")
        wait(lambda: n_steps(out / "run.jsonl") >= 5, p)
        p.send_signal(sig)
        _, err = p.communicate()
        recs, torn, prob = read_log(out / "run.jsonl")
        state, ckd = ck_state(out)
        last = [x["step"] for x in recs if x["event"] == "step"][-1]
        r = run("train", "--quiet", "--resume", str(out))
        d = rel_diff(losses(read_log(out / "run.jsonl")[0]), ref)
        okk = (p.returncode == code and not prob and recs[-1].get("status") == "interrupted" and state is not None
               and state["position"]["step"] == last and r.returncode == 0 and d <= 1e-4)
        row(f"{sig.name}", "signal after 5 logged steps (checkpoint_every=0), then `--resume`",
            f"{p.returncode}, then resume {r.returncode}", kept_text(recs, torn),
            first_err(err).replace(str(work) + "/", "") + f" (resume: rel. diff {d:.1e})",
            ckd, okk, f"rc {p.returncode} diff {d}")
    out = work / "twice"
    p = popen(out, SMALL, "--set", "checkpoint_every=0")
    wait(lambda: n_steps(out / "run.jsonl") >= 5, p)
    p.send_signal(signal.SIGINT)
    time.sleep(0.05)  # the first is handled (a flag); the second lands mid-step
    p.send_signal(signal.SIGINT)
    _, err = p.communicate()
    recs, torn, prob = read_log(out / "run.jsonl")
    state, ckd = ck_state(out)
    row("SIGINT twice", "a second SIGINT 50 ms after the first", p.returncode, kept_text(recs, torn),
        first_err(err).replace(str(work) + "/", ""), ckd,
        p.returncode == 130 and not prob and recs[-1].get("status") == "interrupted", prob or f"rc {p.returncode}")

    # 4. non-finite values
    one = {**SMALL, "pretrain_epochs": 1, "instruct_epochs": 1}
    for how, extra, policy, want in (
            ("`inject_nonfinite_at_step=3`", {"inject_nonfinite_at_step": 3}, "skip", 0),
            ("`inject_nonfinite_at_step=3`", {"inject_nonfinite_at_step": 3}, "stop", 1),
            ("real divergence: `lr=1e30 grad_clip=0 warmup_steps=0`",
             {"lr": 1e30, "grad_clip": 0.0, "warmup_steps": 0}, "stop", 1)):
        out = work / f"nf-{policy}-{len(extra)}"
        r = subprocess.run(moh("train", "--quiet", "--out", str(out), *sets({**one, **extra, "nonfinite": policy})),
                           capture_output=True, text=True, env=ENV)
        recs, torn, prob = read_log(out / "run.jsonl")
        alerts = [x for x in recs if x["event"] == "alert" and x["code"] == "nonfinite"]
        rep = run("report", str(out / "run.jsonl"), "--format", "json")
        codes = {f["code"] for f in json.loads(rep.stdout)["findings"]} if rep.stdout.strip() else set()
        msg = (alerts[0]["message"] if alerts else "no alert") + f"; `moh report`: {'nonfinite' in codes and 'nonfinite' or 'no nonfinite'}"
        row(f"non-finite loss, nonfinite={policy}", how, r.returncode, kept_text(recs, torn), msg, ck_state(out)[1],
            r.returncode == want and not prob and bool(alerts) and "nonfinite" in codes, prob or f"rc {r.returncode}")

    # 5. full disk while training (RLIMIT_FSIZE: writes past it fail with EFBIG)
    for what, size, every in (("log", 40_000, 0), ("checkpoint", 30_000, 2)):
        out = work / f"full-{what}"
        cfg = {**SMALL, "checkpoint_every": every}
        p = popen(out, cfg, fsize=size)
        _, err = p.communicate()
        recs, torn, prob = read_log(out / "run.jsonl")
        state, ckd = ck_state(out)
        stale = [n for n in os.listdir(out) if n.endswith(".tmp")]
        row(f"disk full while writing the {what}", f"RLIMIT_FSIZE {size // 1000} kB (checkpoint_every={every})",
            p.returncode,
            kept_text(recs, torn), first_err(err).replace(str(work) + "/", ""),
            ckd + (f", {len(stale)} temp files left" if stale else ""),
            p.returncode == 3 and not prob and not torn and "Traceback" not in err and not stale and "BROKEN" not in ckd,
            prob or f"rc {p.returncode}")

    # 6. refusals
    empty = work / "empty"
    empty.mkdir()
    r = run("train", "--resume", str(empty))
    row("`--resume` a directory without a checkpoint", "empty directory", r.returncode, "-",
        first_err(r.stderr).replace(str(work) + "/", ""), "none", r.returncode == 3, "rc")
    bad = work / "badck"
    bad.mkdir()
    (bad / ck.CHECKPOINT_FILE).write_bytes(os.urandom(4096))
    r = run("train", "--resume", str(bad))
    row("`--resume` with a corrupt checkpoint.pt", "4 KiB of random bytes", r.returncode, "-",
        first_err(r.stderr).replace(str(work) + "/", ""), "unreadable", r.returncode == 3 and "Traceback" not in r.stderr, "rc")
    out = work / "SIGINT"  # interrupted above, then completed by the resume
    r = run("train", "--resume", str(out))
    row("`--resume` a completed run", "resume twice", r.returncode, "-", first_err(r.stderr).replace(str(work) + "/", ""),
        ck_state(out)[1], r.returncode == 3, "rc")
    out = work / "kill0" if (work / "kill0").exists() else work / "SIGTERM"
    state = torch.load(out / ck.CHECKPOINT_FILE, weights_only=True)
    state["position"]["finished"] = False
    ck.atomic_save(state, out / ck.CHECKPOINT_FILE)
    r = run("train", "--resume", str(out), "--set", "pretrain_epochs=5")
    row("`--resume` with a changed config key", "`--set pretrain_epochs=5`", r.returncode, "-",
        first_err(r.stderr), "unchanged", r.returncode == 2, "rc")
    r = run("train", "--quiet", "--out", str(out), *sets(SMALL))
    row("`moh train` into an existing run directory", "same `--out` again, no `--resume`/`--overwrite`", r.returncode,
        "log untouched", first_err(r.stderr).replace(str(work) + "/", ""), "unchanged", r.returncode == 2, "rc")

    print("| Fault | How injected | Exit | Records kept (complete lines) | Message / observation | Checkpoint after | Contract |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(ROWS))
    if diffs:
        print(f"\n{done} kill-and-resume runs: largest final-loss relative difference {max(diffs):.1e} "
              f"(tolerance 1e-4); {torn_total} of {kills} kills left a torn last line (cut on resume).")
    print(f"{len(ROWS)} faults in {time.perf_counter() - t0:.0f} s; {len(BAD)} broke the contract.")
    costs(work)
    return 1 if BAD else 0


def costs(work: Path) -> None:
    """Cost of per-record fsync vs flush, and of one checkpoint at the default model size."""
    line = json.dumps({"x": [0.123456789] * 300}) + "\n"
    res = {}
    for mode in ("flush", "fsync"):
        with open(work / mode, "w") as f:
            n, t = 300, time.perf_counter()
            for _ in range(n):
                f.write(line)
                f.flush()
                if mode == "fsync":
                    os.fsync(f.fileno())
            res[mode] = (time.perf_counter() - t) / n * 1e3
    from moh.model import LM
    from moh.optim import make_optimizer

    cfg = Config(checkpoint_every=0, pretrain_epochs=1, instruct_epochs=0, eval_prompts=0)
    out = work / "cost"
    train(cfg, out)
    recs = read_log(out / "run.jsonl")[0]
    last = [x for x in recs if x["event"] == "step"][-1]
    per_step = last["elapsed"] / last["step"] * 1e3
    vocab = recs[0]["data"]["vocab_size"]
    model = LM(cfg, vocab)
    opt = make_optimizer(model, cfg, cfg.lr)
    sum((p * p).sum() for p in model.parameters()).backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": ck.rng_state(),
             "config": cfg.to_dict()}
    t = time.perf_counter()
    for _ in range(5):
        ck.atomic_save(state, work / "c.pt")
    one = (time.perf_counter() - t) / 5 * 1e3
    size = os.path.getsize(work / "c.pt") / 1e6
    print(f"\nCosts on this machine: a {len(line)} B record written + flushed {res['flush']:.3f} ms, + fsync "
          f"{res['fsync']:.3f} ms; one default-size checkpoint (model + AdamW state, {size:.1f} MB) {one:.0f} ms incl. fsync; "
          f"a default-config step {per_step:.0f} ms => checkpoint_every=200 costs {one / (200 * per_step) * 100:.2f}% "
          f"of training time.")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
