"""Training throughput and MFU: tokens/s and achieved FLOP/s against this machine's matmul peak.

    .venv/bin/python bench/bench_throughput.py [--steps 60] [--router adaptive] [--data DIR]
        [--device cpu|cuda] [--set key=value ...] [--no-profile]

In one process, one after the other:
1. the peak: fp32 `torch.mm` of n x n matrices, n in 256..2048, at the thread count the engine
   uses (config `threads`, moh/threads.py); FLOPs 2 n^3 per product, best size's median of 5
   timings (on cuda also bf16);
2. the training step of moh.train (bench/_engine.Trainer: forward, aux losses, backward, grad
   norms, clip, AdamW) over the pre-training batches of the default config, `--steps` timed
   after 10 warm-up steps: wall and CPU time, real (non-pad) tokens and target tokens per second;
3. the FLOPs of those very steps, counted by `torch.utils.flop_counter.FlopCounterMode` while
   re-running them: matrix products (mm, addmm, bmm) and scaled-dot-product attention, forward
   and backward, on the padded shapes the step computes (padding included; SDPA counted over the
   full T x T, the causal half is not subtracted). Elementwise work, norms, softmax, the optimizer
   and the router's per-token selection are not counted: they are the overhead MFU shows;
4. MFU = counted FLOPs / timed wall seconds / peak; also per CPU second (counted FLOPs / the
   steps' process CPU seconds, over the peak's FLOPs per CPU second), which time-slicing by other
   jobs on a shared machine does not deflate;
5. (unless --no-profile) torch.profiler over 10 steps: the top operators by self CPU time and
   the share of self time in matrix-product / attention kernels against everything else.
JSON: bench/results/bench_throughput.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from _engine import Trainer, load_avg, table, write_json  # noqa: E402
from moh import threads  # noqa: E402
from moh.config import Config, parse_override  # noqa: E402

# operators whose self time is a matrix product or the attention kernel (profile split)
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::linear", "aten::matmul",
              "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention",
              "aten::_efficient_attention_backward", "aten::_flash_attention_backward",
              "aten::_scaled_dot_product_efficient_attention_backward",
              "aten::_scaled_dot_product_flash_attention_backward")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, sizes=(256, 512, 1024, 2048), reps: int = 5) -> dict:
    """Best-size median FLOP/s of n x n x n products (2 n^3 FLOPs each)."""
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        inner = max(1, int(2e9 // (2 * n ** 3))) if device == "cpu" else max(10, int(2e11 // (2 * n ** 3)))
        torch.mm(a, b)
        _sync(device)
        times, cpus = [], []
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            for _ in range(inner):
                torch.mm(a, b)
            _sync(device)
            times.append((time.perf_counter() - t) / inner)
            cpus.append((time.process_time() - c) / inner)
        per_size[n] = (2 * n ** 3 / statistics.median(times), 2 * n ** 3 / statistics.median(cpus))
    best = max(per_size, key=lambda n: per_size[n][0])
    return {"flops_per_s": per_size[best][0], "flops_per_cpu_s": per_size[best][1], "best_n": best,
            "per_size": {n: v[0] for n, v in per_size.items()}}


def count_flops(tr: Trainer, batches: list) -> int:
    with FlopCounterMode(display=False) as counter:
        for b in batches:
            tr.step(b)
    return counter.get_total_flops()


def profile_steps(tr: Trainer, batches: list) -> tuple[str, float, float]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as p:
        for b in batches:
            tr.step(b)
    ev = p.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    mm = sum(e.self_cpu_time_total for e in ev if e.key in MATMUL_OPS)
    return ev.table(sort_by="self_cpu_time_total", row_limit=25), mm / total if total else 0.0, total / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--router", default="adaptive")
    ap.add_argument("--data", default=None)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-profile", action="store_true")
    a = ap.parse_args(argv)

    cfg = Config(router=a.router, data=a.data, device=a.device, **dict(parse_override(s) for s in a.set))
    torch.set_num_threads(threads.resolve(cfg.threads))
    load0 = load_avg()
    peak = {"fp32": matmul_peak(a.device, torch.float32)}
    if a.device == "cuda":
        peak["bf16"] = matmul_peak(a.device, torch.bfloat16)

    tr = Trainer(cfg)
    if a.device == "cuda":
        tr.model.to(a.device)  # parameters move in place: the optimizer (lazy state) keeps them
        tr.batches = [(i.to(a.device), t.to(a.device)) for i, t in tr.batches]
    pad = tr.tok.pad_id
    seq = [tr.batches[i % len(tr.batches)] for i in range(10 + a.steps)]
    warm, timed = seq[:10], seq[10:]
    for b in warm:
        tr.step(b)
    _sync(a.device)
    t, c = time.perf_counter(), time.process_time()
    for b in timed:
        tr.step(b)
    _sync(a.device)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    real = sum(int((i != pad).sum()) for i, _ in timed)
    targets = sum(int((y != -100).sum()) for _, y in timed)
    padded = sum(i.numel() for i, _ in timed)
    flops = count_flops(tr, timed)
    load1 = load_avg()
    achieved = flops / wall
    mfu = {k: achieved / v["flops_per_s"] for k, v in peak.items()}
    # the same ratio per CPU second (both sides): what a machine shared with other jobs still shows
    mfu_cpu = {k: flops / cpu / v["flops_per_cpu_s"] for k, v in peak.items()}

    rows = [["threads", torch.get_num_threads()], ["router", a.router],
            ["timed steps", a.steps], ["wall s / CPU s", f"{wall:.2f} / {cpu:.2f}"],
            ["ms per step (wall)", 1e3 * wall / a.steps],
            ["real tokens / s", real / wall], ["target tokens / s", targets / wall],
            ["padding share of computed positions", 1 - real / padded],
            ["counted FLOPs per step (fwd + bwd)", flops / a.steps],
            ["achieved GFLOP/s", achieved / 1e9]]
    for k, v in peak.items():
        rows.append([f"{k} matmul peak GFLOP/s (n = {v['best_n']})", v["flops_per_s"] / 1e9])
        rows.append([f"MFU vs {k} peak (wall)", f"{100 * mfu[k]:.1f} %"])
        rows.append([f"  the same per CPU second (step CPU s vs matmul CPU s)", f"{100 * mfu_cpu[k]:.1f} %"])
    print(f"device {a.device}, load avg {load0[0]:.2f} -> {load1[0]:.2f}")
    print(table(["figure", "value"], rows))
    payload = {"config": cfg.to_dict(), "threads": torch.get_num_threads(), "steps": a.steps, "wall_s": wall,
               "cpu_s": cpu, "real_tokens": real, "target_tokens": targets, "padded_positions": padded,
               "flops": flops, "achieved_flops_per_s": achieved, "peak": peak, "mfu": mfu, "mfu_cpu": mfu_cpu,
               "loadavg_start": load0,
               "counted": "FlopCounterMode: mm/addmm/bmm + SDPA (full T x T), forward + backward, padded shapes",
               "command": "bench/bench_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if not a.no_profile:
        text, share, total_s = profile_steps(tr, seq[:10])
        print(f"\ntorch.profiler, 10 steps: {total_s:.2f} s of self CPU time, {100 * share:.1f} % in "
              f"matrix-product / attention operators ({', '.join(o for o in MATMUL_OPS[:4])}, SDPA)\n{text}")
        payload.update(profile=text, profile_matmul_share=share, profile_self_cpu_s=total_s)
    print(f"wrote {write_json('bench_throughput' + ('_cuda' if a.device == 'cuda' else ''), payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
