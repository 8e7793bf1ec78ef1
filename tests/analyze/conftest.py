"""Fixtures for the analysis tests: small, real `run.jsonl` files written into tmp_path.

`make_records` builds the records of a plausible healthy adaptive run (or a dense one) with a few
knobs; `write_log` writes them with the schema's encoder. Seeded, so every test is reproducible.
"""

from __future__ import annotations

import gzip
import math
import random
from pathlib import Path

import pytest

from moh import schema


def make_records(n_steps: int = 60, n_layers: int = 2, n_heads: int = 8, *, router: str = "adaptive",
                 phases: tuple[str, ...] = ("pretrain", "instruct"), seed: int = 0,
                 final_loss: float = 0.2, grad: float = 0.5, exact_match: float = 0.95,
                 heads: float = 3.5, semantics: dict | None = None, run_end: bool = True) -> list[dict]:
    rng = random.Random(seed)
    dense = router == "dense"
    start = {
        "event": "run_start", "schema_version": schema.SCHEMA_VERSION, "run_id": f"r{seed}",
        "time": 0.0, "config": {"seed": seed}, "world_size": 1, "source": "moh",
        "model": {"n_layers": n_layers, "n_heads": n_heads, "d_model": 32, "router": router, "params": 1000},
    }
    if semantics is not None:
        start["semantics"] = semantics
    recs = [start]
    per_phase = max(1, n_steps // len(phases))
    for s in range(n_steps):
        phase = phases[min(s // per_phase, len(phases) - 1)]
        frac = s / max(1, n_steps - 1)
        lm = final_loss + (3.0 - final_loss) * math.exp(-6 * frac) + rng.uniform(0, 0.01)
        layers = []
        for li in range(n_layers):
            if dense:
                lay = {"layer": li, "heads_mean": float(n_heads), "heads_min": n_heads, "heads_max": n_heads,
                       "heads_std": 0.0, "head_load": [1.0] * n_heads,
                       **{k: None for k in ("threshold_mean", "threshold_min", "threshold_max",
                                            "complexity_mean", "complexity_min", "complexity_max",
                                            "entropy", "pred_norm")}}
            else:
                thr = 0.5 + 0.05 * frac + 0.001 * li + rng.uniform(0, 1e-3)
                cx = 0.4 + 0.1 * frac + rng.uniform(0, 1e-3)
                hm = heads + rng.uniform(-0.2, 0.2)
                load = [rng.uniform(0.3, 0.6) for _ in range(n_heads)]
                lay = {"layer": li, "heads_mean": hm, "heads_min": 1, "heads_max": min(n_heads, 6),
                       "heads_std": 1.1 + rng.uniform(0, 0.1), "head_load": load,
                       "threshold_mean": thr, "threshold_min": thr - 0.1, "threshold_max": thr + 0.1,
                       "complexity_mean": cx, "complexity_min": cx - 0.2, "complexity_max": cx + 0.2,
                       "entropy": 0.8 - 0.1 * frac, "pred_norm": 1.0 + 0.5 * frac}
            layers.append(lay)
        g = grad * (1 + 0.2 * rng.random())
        recs.append({
            "event": "step", "step": s, "epoch": s // 10, "phase": phase, "time": float(s),
            "loss": lm + (0 if dense else 0.01), "lm_loss": lm, "lr": 1e-3,
            "grad_norm": g, "grad_norm_clipped": min(g, 1.0),
            "grad_norms": {gr: (None if dense and gr in ("router", "complexity", "threshold") else 0.1 + rng.random())
                           for gr in schema.GRAD_GROUPS},
            "aux": {t: (None if dense else 0.01 + 0.001 * rng.random()) for t in schema.AUX_TERMS},
            "layers": layers,
        })
        if phase != phases[-1] and (s + 1) % per_phase == 0 or s == n_steps - 1:
            recs.append({"event": "eval", "step": s, "phase": phase, "loss": lm, "exact_match": exact_match,
                         "samples": [{"prompt": "User: hi", "expected": "hello", "output": "hello",
                                      "match": True}]})
    if run_end:
        recs.append({"event": "run_end", "time": float(n_steps), "status": "completed", "steps": n_steps,
                     "wall_s": float(n_steps)})
    return recs


def write_log(path: Path, records: list[dict], *, gz: bool = False) -> Path:
    text = "".join(schema.encode_record(r) + "\n" for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def healthy_log(tmp_path: Path) -> Path:
    """Structural fixture (hand-built records, known values) for loader tests."""
    return write_log(tmp_path / "healthy" / "run.jsonl", make_records())


def synthetic_log(path: Path, **knobs) -> Path:
    """A realistic run from tests.synthetic (healthy unless a pathology knob is set)."""
    from tests.synthetic import write_synthetic

    return write_synthetic(path, workers=1, **{"n_steps": 200, **knobs})


@pytest.fixture
def good_log(tmp_path: Path) -> Path:
    return synthetic_log(tmp_path / "good" / "run.jsonl")


@pytest.fixture
def dense_log(tmp_path: Path) -> Path:
    return synthetic_log(tmp_path / "dense" / "run.jsonl", router="dense")
