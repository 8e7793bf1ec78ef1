"""Synthetic telemetry: realistic `run.jsonl` records with a knob for each pathology.

Tests, examples and the analysis benchmark need logs whose truth is known: a healthy adaptive
run (loss decaying to ~0.2 per phase, pre-clip grad norm ~0.5, ~3.5 of 8 heads per token with a
per-token spread, thresholds ~0.5 and complexity ~0.4 with spread, predictor norms drifting a
little, non-zero auxiliary losses) and the same run with one thing broken. Every knob names the
finding it is meant to provoke (`docs/findings.md`).

    records = generate(n_steps=400, silent_zero=["complexity_mean"], seed=1)
    write_jsonl(records, tmp_path / "run.jsonl")          # via schema.encode_record
    write_synthetic(tmp_path / "big.jsonl", n_steps=200_000, n_layers=8)   # fast path

How it is fast: every quantity is a closed-form function of the step index plus i.i.d. noise,
computed with numpy for a chunk of steps at a time; each step line is one `%`-format of a
template fixed per run (nulls baked in), so a 200,000-step 8x8 log takes seconds, not minutes.
Numbers are written with 6 significant digits (what a float32 engine can honestly claim).
Lines holding a non-finite number take a slow path that writes the schema's string tags.

Records go through the contract: run_start, alert, eval and run_end are built with
`schema.record`; the step template follows the order of the schema's step and layer definitions
and the first step line of every chunk is checked with `schema.record` (a field the schema does
not define, or a required one missing, fails the generator, not a later test).

Torch-free; numpy only. Lives in tests/ (tests and bench/ use it); the analysis package holds no
test-data generator.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from moh import schema

ROUTERS = ("adaptive", "moh", "dense")
RANGE_BASES = ("heads", "threshold", "complexity")  # stats with _mean/_min/_max per token
_CHUNK = 4096  # steps formatted per numpy chunk: bounds memory on 200k-step logs
_T0 = 1_760_000_000.0  # a fixed "wall clock" start so same seed => same file
_STEP_S = 0.25  # simulated seconds per logged step

# Aux weights under the engine's config names (schema.AUX_WEIGHT_KEYS), so findings can read them.
AUX_WEIGHT_KEYS = schema.AUX_WEIGHT_KEYS
# entropy weight 0 as in the engine's defaults: the term is logged raw but does not train
_HEALTHY_AUX_WEIGHTS = {"load_balance": 0.01, "z": 1e-3, "complexity": 0.1, "budget": 0.5, "entropy": 0.0}


@dataclass(frozen=True)
class Synthetic:
    """Knobs of one synthetic run; defaults give a healthy adaptive run of 400 logged steps."""

    n_steps: int = 400                 # logged step records (both phases together)
    n_layers: int = 2
    n_heads: int = 8
    seed: int = 0
    log_every: int = 1                 # optimizer steps between step records
    router: str = "adaptive"           # "adaptive" | "moh" | "dense"
    phases: tuple = (schema.PHASE_PRETRAIN, schema.PHASE_INSTRUCT)
    pretrain_fraction: float = 0.7     # share of the steps in the first phase
    grad_clip: float | None = 1.0      # clip threshold written to config and semantics
    heads_semantics: str = schema.HEADS_HARD_COUNT
    grad_semantics: str = schema.GRAD_NORM_PRE_CLIP
    evals: bool = True                 # an eval record at the end of each phase
    run_end: bool = True
    # --- pathologies ------------------------------------------------------------------------
    silent_zero: tuple = ()            # layer stats written as 0.0 on every step
    missing: tuple = ()                # layer stats / "head_load" / grad groups / aux terms -> null
    constant: tuple = ()               # layer stats frozen at their first value
    degenerate_range: bool | tuple = False  # True = complexity; or bases: per-token min == max == mean
    heads_restate_complexity: bool = False  # heads_mean = k_min + (H - k_min) * complexity_mean
    router_grad_zero: bool = False     # router / complexity / threshold grad norms exactly 0
    grad_explosion: bool = False       # grad norm grows ~1e4x over the last 30% of the run
    clip_saturation: bool = False      # pre-clip norm pinned at 2-3x the clip threshold
    loss_flat: bool = False            # loss never falls
    loss_diverge: bool = False         # loss falls, then climbs back over the last 30%
    nonfinite: bool = False            # a few NaN losses / inf grad norms, skipped, with alerts
    complexity_uninformative: bool = False  # adaptive layers also log the loss alignment stats
                                       # (schema.ALIGNMENT_STATS), near 0: allocation ignores difficulty
    head_collapse: str | None = None   # "min": every token uses k_min heads; "max": all H heads
    dead_heads: int | tuple = 0        # count (last heads) or head indices with load ~0
    load_imbalance: bool = False       # one head takes most of the load
    predictor_growth: bool = False     # predictor weight norms grow ~10x, still rising at the end
    aux_dominates: bool = False        # auxiliary terms weighted to most of the total loss
    vacuous_aux: tuple = ()            # aux terms written as 0.0 on every step
    loss_plateau: bool = False         # loss stalls at ~1.5 (3.75x the 0.40 bar) in each phase
    grad_rising: bool = False          # loss stalls as loss_plateau; grad norm climbs 30 -> 54 per phase
    threshold_pinned: bool = False     # mean threshold at tau_max (0.8), per-token spread ~0.005
    uniform_allocation: bool = False   # every token gets 4 heads: heads_std 0
    budget_miss: bool = False          # mean heads ~1.5 above target_heads (3.5)

    def __post_init__(self) -> None:
        for name in ("silent_zero", "missing", "constant", "vacuous_aux", "phases"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        dr = self.degenerate_range
        object.__setattr__(self, "degenerate_range",
                           ("complexity",) if dr is True else () if dr is False else
                           (dr,) if isinstance(dr, str) else tuple(dr))
        dh = self.dead_heads
        object.__setattr__(self, "dead_heads",
                           tuple(range(self.n_heads - dh, self.n_heads)) if isinstance(dh, int) else tuple(dh))
        if self.n_steps < 1 or self.n_layers < 1 or self.n_heads < 1:
            raise ValueError("n_steps, n_layers, n_heads: must be >= 1")
        if self.router not in ROUTERS:
            raise ValueError(f"router: must be one of {ROUTERS}, got {self.router!r}")
        if self.head_collapse not in (None, "min", "max"):
            raise ValueError(f"head_collapse: must be None, 'min' or 'max', got {self.head_collapse!r}")
        stats = set(schema.LAYER_STATS)
        for name in ("silent_zero", "constant"):
            bad = set(getattr(self, name)) - stats
            if bad:
                raise ValueError(f"{name}: unknown layer stats {sorted(bad)}")
        bad = set(self.missing) - stats - {"head_load"} - set(schema.GRAD_GROUPS) - set(schema.AUX_TERMS)
        if bad:
            raise ValueError(f"missing: unknown names {sorted(bad)}")
        if set(self.vacuous_aux) - set(schema.AUX_TERMS):
            raise ValueError(f"vacuous_aux: unknown aux terms {sorted(set(self.vacuous_aux) - set(schema.AUX_TERMS))}")
        if set(self.degenerate_range) - set(RANGE_BASES):
            raise ValueError(f"degenerate_range: bases must be among {RANGE_BASES}")
        if any(not 0 <= h < self.n_heads for h in self.dead_heads):
            raise ValueError("dead_heads: head index out of range")

    @property
    def k_min(self) -> float:
        return 1.0

    def applies(self, stat: str) -> bool:
        """Whether a layer stat exists for this router (else it is null by design)."""
        if self.router == "dense":
            return stat.startswith("heads_")
        if self.router == "moh":
            return stat.startswith("heads_") or stat == "entropy"
        return True


# ---- simulation: closed-form curves + noise, one chunk of steps at a time ----------------------

class _Sim:
    def __init__(self, cfg: Synthetic):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        L, H = cfg.n_layers, cfg.n_heads
        n = cfg.n_steps
        n_pre = int(round(n * cfg.pretrain_fraction)) if len(cfg.phases) > 1 else n
        n_pre = min(max(n_pre, 1), n)
        self.bounds = [(0, n_pre)] + ([(n_pre, n)] if len(cfg.phases) > 1 and n_pre < n else [])
        self.phase_names = [cfg.phases[i] for i in range(len(self.bounds))]
        # per-layer / per-head parameters of the slow curves
        self.c0 = rng.uniform(0.35, 0.5, L)
        self.t0 = rng.uniform(0.45, 0.55, L)
        self.h0 = rng.uniform(3.3, 3.7, L)
        self.p0 = rng.uniform(0.8, 1.2, L)
        self.e0 = rng.uniform(1.5, 1.7, L)
        self.phi = rng.uniform(0, 2 * np.pi, (6, L))
        self.freq = rng.uniform(1.0, 3.0, (6, L))
        share = rng.dirichlet(np.full(H, 40.0), L)  # mildly uneven head preference (L, H)
        if cfg.load_imbalance:
            share = np.tile(np.array([0.6] + [0.4 / (H - 1)] * (H - 1)) if H > 1 else np.ones(1), (L, 1))
        if cfg.dead_heads:
            share[:, list(cfg.dead_heads)] = 0.0005
            share /= share.sum(1, keepdims=True)
        self.share = share
        self.load_phi = rng.uniform(0, 2 * np.pi, (L, H))

    def phase_of(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(phase index, position within the phase in [0, 1]) for global step indices."""
        ph = np.zeros(idx.shape, dtype=int)
        pos = np.zeros(idx.shape)
        for k, (a, b) in enumerate(self.bounds):
            m = (idx >= a) & (idx < b)
            ph[m] = k
            pos[m] = (idx[m] - a) / max(1, b - a - 1)
        return ph, pos

    def chunk(self, start: int, stop: int) -> dict:
        cfg = self.cfg
        L, H = cfg.n_layers, cfg.n_heads
        idx = np.arange(start, stop)
        m = idx.size
        rng = np.random.default_rng([cfg.seed, 1, start])
        u = idx / max(1, cfg.n_steps - 1)               # position in the whole run, (m,)
        ph, v = self.phase_of(idx)                      # phase and position in it
        U = u[:, None]

        def wave(k: int) -> np.ndarray:  # (m, L) slow per-layer oscillation in [-1, 1]
            return np.sin(2 * np.pi * self.freq[k] * U + self.phi[k])

        out: dict = {"idx": idx, "phase": ph}
        out["step"] = idx * cfg.log_every + cfg.log_every
        out["epoch"] = np.floor(v * 9).astype(int) + 0  # ~10 epochs per phase
        out["time"] = _T0 + idx * _STEP_S
        out["elapsed"] = idx * _STEP_S
        # --- learning rate: warmup 5% then cosine to 10% of the peak, per phase
        peak = np.where(ph == 0, 3e-3, 2e-3)
        warm = np.minimum(1.0, v / 0.05)
        out["lr"] = peak * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * v)))
        # --- loss per phase: exponential decay to ~0.2 with 3% noise
        l0 = np.where(ph == 0, 7.0, 2.5)
        floor = 0.2
        lm = floor + (l0 - floor) * np.exp(-8.0 * v)
        if cfg.loss_flat:
            lm = l0 * (1 - 0.02 * v)
        if cfg.loss_plateau or cfg.grad_rising:
            lm = 1.5 + (l0 - 1.5) * np.exp(-8.0 * v)
        if cfg.loss_diverge:
            rise = np.clip((u - 0.7) / 0.3, 0, 1)
            lm = lm + 3.0 * rise ** 1.5
        lm = lm * np.exp(rng.normal(0, 0.03, m))
        # --- aux terms (raw) and their weights
        dense = cfg.router == "dense"
        aux = {
            "load_balance": 1.0 + 0.2 * np.exp(-5 * u) + np.abs(rng.normal(0, 0.01, m)),
            "z": 1.0 + 3.0 * np.exp(-2 * u) * np.exp(rng.normal(0, 0.05, m)),
            "complexity": 0.002 + 0.02 * np.exp(-3 * u) * np.exp(rng.normal(0, 0.1, m)),
            "budget": 0.0005 + 0.01 * np.exp(-5 * u) * np.exp(rng.normal(0, 0.1, m)),
            # no random draw: the other series keep the values they had before this term existed
            "entropy": 1.2 + 0.8 * np.exp(-3 * u),
        }
        weights = dict(_HEALTHY_AUX_WEIGHTS)
        if cfg.aux_dominates:
            weights = {"load_balance": 1.0, "z": 0.3, "complexity": 1.0, "budget": 1.0, "entropy": 0.0}
        for t in cfg.vacuous_aux:
            aux[t] = np.zeros(m)
        applicable = {t: not dense and (cfg.router == "adaptive" or t in ("load_balance", "z"))
                      for t in schema.AUX_TERMS}
        out["aux"] = {t: (aux[t] if applicable[t] and t not in cfg.missing else None) for t in schema.AUX_TERMS}
        aux_w = {t: weights[t] * aux[t] for t in schema.AUX_TERMS if applicable[t]}
        out["aux_weighted"] = {t: (aux_w[t] if t in aux_w and t not in cfg.missing else None)
                               for t in schema.AUX_TERMS}
        total_aux = sum(aux_w.values()) if aux_w else np.zeros(m)
        out["lm_loss"] = lm
        out["loss"] = lm + total_aux
        # --- gradient norms: ~0.5 after an early bump, 15% lognormal noise
        g = 0.5 * (1 + 3.0 * np.exp(-20 * v)) * np.exp(rng.normal(0, 0.15, m))
        if cfg.grad_explosion:
            g = g * np.exp(np.clip((u - 0.7) / 0.3, 0, 1) * np.log(1e4))
        if cfg.clip_saturation:
            g = (cfg.grad_clip or 1.0) * rng.uniform(2.0, 3.0, m)
        if cfg.grad_rising:
            g = 30.0 * (1 + 0.8 * v) * np.exp(rng.normal(0, 0.05, m))
        out["grad_norm"] = g
        clip = cfg.grad_clip
        out["grad_norm_clipped"] = np.minimum(g, clip) if clip else g.copy()
        frac = {"embedding": 0.35, "attention": 0.55, "ffn": 0.7, "router": 0.08,
                "complexity": 0.03, "threshold": 0.03}
        grads = {}
        for gr, f in frac.items():
            routing = gr in ("router", "complexity", "threshold")
            if routing and (dense or (cfg.router == "moh" and gr != "router")):
                grads[gr] = None
            elif routing and cfg.router_grad_zero:
                grads[gr] = np.zeros(m)
            else:
                grads[gr] = g * f * np.exp(rng.normal(0, 0.1, m))
            if gr in cfg.missing:
                grads[gr] = None
        out["grad_norms"] = grads
        if cfg.grad_semantics == schema.GRAD_NORM_POST_CLIP and clip:
            out["grad_norm"] = out["grad_norm_clipped"]
        # --- per-layer routing statistics, (m, L)
        noise = lambda s: rng.normal(0, s, (m, L))  # noqa: E731
        cm = np.clip(self.c0 + 0.05 * wave(0) + 0.05 * U + noise(0.01), 0.02, 0.98)
        spread = 0.05 + 0.4 * (1 - np.exp(-5 * U))
        cmin = np.clip(cm - spread * (0.55 + noise(0.02)), 0.0, cm)
        cmax = np.clip(cm + spread * (0.6 + noise(0.02)), cm, 1.0)
        tm = np.clip(self.t0 + 0.03 * wave(1) + noise(0.005), 0.35, 0.75)
        tspread = 0.05 + 0.1 * (1 - np.exp(-4 * U))
        tmin = np.clip(tm - tspread * (1 + noise(0.05)), 0.3, tm)
        tmax = np.clip(tm + tspread * (1 + noise(0.05)), tm, 0.8)
        if cfg.threshold_pinned:
            tmax = np.full((m, L), 0.8)
            tm = 0.797 + np.abs(noise(0.001)).clip(0, 0.002) * -1
            tmin = tm - 0.004
        hm = self.h0 + 1.0 * np.exp(-6 * U) + 0.15 * wave(2) + noise(0.05)
        if cfg.router == "moh":
            hm = np.full((m, L), 4.0)  # shared 2 + top-2: every token the same count
        if cfg.heads_restate_complexity:
            hm = cfg.k_min + (H - cfg.k_min) * cm
        if cfg.budget_miss:
            hm = hm + 1.5
        hmin = np.minimum(np.where(rng.random((m, L)) < 0.7, 1.0, 2.0), np.floor(hm))
        hmax = np.maximum(np.minimum(float(H), np.where(rng.random((m, L)) < 0.5, 6.0, 7.0)), np.ceil(hm))
        hstd = 1.1 + 0.1 * wave(3) + noise(0.03)
        if dense:
            hm = np.full((m, L), float(H))
            hmin = hmax = hm
            hstd = np.zeros((m, L))
        if cfg.router == "moh":
            hmin = hmax = hm
            hstd = np.zeros((m, L))
        if cfg.uniform_allocation:
            hm = hmin = hmax = np.full((m, L), 4.0)
            hstd = np.zeros((m, L))
        if cfg.head_collapse == "min":
            hm = hmin = hmax = np.full((m, L), cfg.k_min)
            hstd = np.zeros((m, L))
        elif cfg.head_collapse == "max":
            hm = hmin = hmax = np.full((m, L), float(H))
            hstd = np.zeros((m, L))
        ent = self.e0 - 0.2 * U + 0.03 * wave(4) + noise(0.01)
        pn = self.p0 * (1 + 0.15 * (1 - np.exp(-3 * U))) + 0.002 * wave(5)
        if cfg.predictor_growth:
            pn = self.p0 * (1 + 9.0 * U)
        stats = {
            "heads_mean": hm, "heads_min": hmin, "heads_max": hmax, "heads_std": hstd,
            "threshold_mean": tm, "threshold_min": tmin, "threshold_max": tmax,
            "complexity_mean": cm, "complexity_min": cmin, "complexity_max": cmax,
            "entropy": ent, "pred_norm": pn,
        }
        for base in cfg.degenerate_range:
            stats[f"{base}_min"] = stats[f"{base}_mean"]
            stats[f"{base}_max"] = stats[f"{base}_mean"]
        for s in cfg.constant:
            stats[s] = np.broadcast_to(self._first(s), (m, L)).copy()
        for s in cfg.silent_zero:
            stats[s] = np.zeros((m, L))
        out["layers"] = {s: (stats[s] if cfg.applies(s) and s not in cfg.missing else None) for s in schema.LAYER_STATS}
        if cfg.complexity_uninformative:  # Spearman of complexity / heads with token loss, ~0
            adaptive = cfg.router == "adaptive"
            out["layers"]["complexity_loss_corr"] = (0.05 + noise(0.05)).clip(-1, 1) if adaptive else None
            out["layers"]["heads_loss_corr"] = (0.02 + noise(0.05)).clip(-1, 1) if adaptive else None
        # --- head load: fraction of tokens selecting each head, (m, L, H), sums to heads_mean
        if dense or "head_load" in cfg.missing:
            out["head_load"] = None
        else:
            wobble = 1 + 0.1 * np.sin(2 * np.pi * 2 * u[:, None, None] + self.load_phi) \
                + rng.normal(0, 0.02, (m, L, H))
            sh = self.share[None] * np.clip(wobble, 0.5, 1.5)
            sh /= sh.sum(-1, keepdims=True)
            load = np.minimum(sh * stats["heads_mean"][..., None], 1.0)
            if cfg.head_collapse == "max":
                load = np.ones((m, L, H))
            out["head_load"] = load
        # --- non-finite steps: loss NaN, grad inf, skipped
        out["skipped"] = np.zeros(m, dtype=bool)
        if cfg.nonfinite:
            bad = np.isin(idx, self.nonfinite_steps())
            out["loss"] = np.where(bad, np.nan, out["loss"])
            out["lm_loss"] = np.where(bad, np.nan, out["lm_loss"])
            out["grad_norm"] = np.where(bad, np.inf, out["grad_norm"])
            out["grad_norm_clipped"] = np.where(bad, np.nan, out["grad_norm_clipped"])
            out["skipped"] = bad
        return out

    def _first(self, stat: str) -> np.ndarray:
        """Value of a layer stat at step 0 (what a frozen stat stays at), shape (L,)."""
        plain = Synthetic(**{**_knobs(self.cfg), "constant": (), "silent_zero": (), "missing": ()})
        return _Sim(plain).chunk(0, 1)["layers"][stat][0]

    def nonfinite_steps(self) -> np.ndarray:
        n = self.cfg.n_steps
        return np.unique(np.array([n // 3, n // 3 + 1, (2 * n) // 3]))


def _knobs(cfg: Synthetic) -> dict:
    d = asdict(cfg)
    d["dead_heads"] = tuple(cfg.dead_heads)
    return d


# ---- records -------------------------------------------------------------------------------

def _config(cfg: Synthetic) -> dict:
    weights = ({"load_balance": 1.0, "z": 0.3, "complexity": 1.0, "budget": 1.0, "entropy": 0.0} if cfg.aux_dominates
               else _HEALTHY_AUX_WEIGHTS)
    conf = {
        "seed": cfg.seed, "router": cfg.router, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "d_model": 16 * cfg.n_heads, "k_min": cfg.k_min, "target_heads": 3.5, "tau_min": 0.3,
        "tau_max": 0.8, "lr": 3e-3, "grad_clip": cfg.grad_clip or 0.0, "log_every": cfg.log_every,
    }
    conf.update({AUX_WEIGHT_KEYS[t]: w for t, w in weights.items()})
    return conf


def _run_start(cfg: Synthetic) -> dict:
    return schema.record(
        schema.RUN_START, schema_version=schema.SCHEMA_VERSION,
        run_id=f"synthetic-{cfg.seed}", time=_T0, config=_config(cfg),
        model={"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": 16 * cfg.n_heads,
               "router": cfg.router, "params": 100_000},
        world_size=1, source=schema.SOURCE_MOH,
        semantics={"heads": cfg.heads_semantics, "grad_norm": cfg.grad_semantics,
                   "grad_norm_clip": cfg.grad_clip, "grad_norm_reduction": "per_step"},
        extra={"synthetic": {k: v for k, v in _knobs(cfg).items() if v not in ((), False, None, 0)}},
    )


def _num(x: float) -> str:
    """One number as the schema writes it (non-finite -> tagged string), 6 significant digits."""
    if math.isfinite(x):
        return "%.6g" % x
    return json.dumps(schema.sanitize(float(x)))


_POW10 = 10.0 ** np.arange(23)


def _round_sig(a: np.ndarray, digits: int = 6) -> np.ndarray:
    """Round to about `digits` significant digits so the shortest repr is short.

    The decimal exponent comes from frexp (may be one too small: then a 7th digit is kept);
    m / 10**k with both exact doubles is correctly rounded, i.e. the double nearest the decimal.
    Values >= 10**digits are rounded to integers.
    """
    a = np.asarray(a, dtype=float)
    ok = np.isfinite(a)
    _, e = np.frexp(np.where(ok, a, 1.0))
    k = np.clip(digits - 1 - np.floor((e - 1) * 0.30102999566398120), 0, 22).astype(np.intp)
    p = _POW10[k]
    with np.errstate(invalid="ignore"):
        return np.where(ok, np.round(a * p) / p, a)


class _Template:
    """A step line as one `%s` format string; `cols` collects the value columns in order.

    kinds: "g" float (6 significant digits), "d" integer, "t" time (3 decimals),
    "h" a layer's head-load list (formatted separately, one string per row and layer).
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.kinds: list[str] = []
        self.cols: list = []

    def lit(self, s: str) -> None:
        self.parts.append(s.replace("%", "%%"))

    def val(self, arr, kind: str = "g") -> None:
        if arr is None:
            self.lit("null")
            return
        self.parts.append("%s")
        self.kinds.append(kind)
        self.cols.append(arr)

    def string(self) -> str:
        return "".join(self.parts)


def _step_template(cfg: Synthetic, c: dict, phase: str) -> _Template:
    T = _Template()
    T.lit('{"event":"step","step":'); T.val(c["step"], "d")
    T.lit(',"epoch":'); T.val(c["epoch"], "d")
    T.lit(',"phase":' + json.dumps(phase) + ',"time":'); T.val(c["time"], "t")
    T.lit(',"elapsed":'); T.val(c["elapsed"], "t")
    for k in schema.STEP_SCALARS[3:8]:  # loss, lm_loss, lr, grad_norm, grad_norm_clipped
        T.lit(f',"{k}":'); T.val(c[k])
    for name in schema.STEP_GROUPS:  # grad_norms, aux, aux_weighted
        T.lit(f',"{name}":{{')
        for i, (k, arr) in enumerate(c[name].items()):
            T.lit(("," if i else "") + f'"{k}":'); T.val(arr)
        T.lit("}")
    T.lit(',"layers":[')
    for li in range(cfg.n_layers):
        T.lit(("," if li else "") + '{"layer":%d' % li)
        for s in schema.LAYER_FIELDS[1:]:
            T.lit(f',"{s}":')
            if s == "head_load":
                if c["head_load"] is None:
                    T.lit("null")
                else:
                    T.lit("[")
                    T.val(li, "h")
                    T.lit("]")
            else:
                arr = c["layers"][s]
                T.val(None if arr is None else arr[:, li], "d" if s in ("heads_min", "heads_max") else "g")
        if cfg.complexity_uninformative:
            for s in schema.ALIGNMENT_STATS:
                arr = c["layers"][s]
                T.lit(f',"{s}":')
                T.val(None if arr is None else arr[:, li], "g")
        T.lit("}")
    T.lit('],"skipped":')  # last, so the per-row literal true/false is a suffix
    return T


def _fmt_slow(kind: str, v: float) -> str:
    if kind == "d":
        return "%d" % v
    if kind == "t":
        return "%.3f" % v
    return _num(float(v))


def _dumps_rows(M: np.ndarray) -> list[str]:
    """Rows of a finite float matrix as comma-separated shortest-repr numbers."""
    if M.shape[0] == 0:
        return []
    try:
        import orjson
    except ModuleNotFoundError:  # pragma: no cover - orjson is a dependency; keep working without
        return [",".join(repr(v) for v in row) for row in M.tolist()]
    # orjson writes NaN/inf as null; such rows take the slow path and never use this text
    s = orjson.dumps(M, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return s[2:-2].split("],[")


def _step_lines(cfg: Synthetic, sim: _Sim, start: int, stop: int) -> Iterator[tuple[int, str]]:
    """(step index, line) for a chunk of steps.

    Fast path: the scalar values of the chunk in one (rows, cols) float matrix, rounded in
    numpy, serialised by orjson in one call, split into per-row value strings and `%`-ed into
    the template; head loads likewise as one (rows * layers, heads) matrix. Rows with a
    non-finite value are formatted one by one with the schema's tags.
    """
    c = sim.chunk(start, stop)
    phases = c["phase"]
    L = cfg.n_layers
    for k in np.unique(phases):
        rows = np.nonzero(phases == k)[0]
        n = rows.size
        sub = _select(c, rows)
        T = _step_template(cfg, sub, sim.phase_names[k])
        tmpl = T.string()
        kinds = [kd for kd in T.kinds if kd != "h"]
        M = np.column_stack([np.asarray(a, dtype=float) for a, kd in zip(T.cols, T.kinds) if kd != "h"])
        karr = np.array(kinds)
        M[:, karr == "g"] = _round_sig(M[:, karr == "g"])
        M[:, karr == "t"] = np.round(M[:, karr == "t"], 3)
        M[:, karr == "d"] = np.round(M[:, karr == "d"])
        finite = np.isfinite(M).all(axis=1)
        ints = [j for j, kd in enumerate(kinds) if kd == "d"]
        # where each layer's head-load string goes among the scalar values
        cuts, j = [], 0
        for kd in T.kinds:
            if kd == "h":
                cuts.append(j)
            else:
                j += 1
        if cuts:
            loads = _round_sig(sub["head_load"].reshape(n * L, cfg.n_heads))
            load_txt = _dumps_rows(loads)
        suffix = ["true}" if x else "false}" for x in sub["skipped"].tolist()]
        idx = sub["idx"].tolist()
        for i, (rowtxt, ok) in enumerate(zip(_dumps_rows(M), finite.tolist())):
            if ok:
                vals = rowtxt.split(",")
                for j in ints:
                    vals[j] = vals[j][:-2]  # orjson writes 3.0 for an integral float
            else:
                vals = [_fmt_slow(kd, v) for kd, v in zip(kinds, M[i].tolist())]
            if cuts:
                out, prev = [], 0
                for li, cut in enumerate(cuts):
                    out += vals[prev:cut]
                    out.append(load_txt[i * L + li])
                    prev = cut
                out += vals[prev:]
                vals = out
            yield idx[i], tmpl % tuple(vals) + suffix[i]


def _select(c: dict, rows: np.ndarray) -> dict:
    out = {}
    for k, v in c.items():
        if isinstance(v, dict):
            out[k] = {kk: (None if vv is None else vv[rows]) for kk, vv in v.items()}
        elif v is None:
            out[k] = None
        else:
            out[k] = v[rows]
    return out


def _chunk_lines(cfg: Synthetic, sim: _Sim, start: int, stop: int) -> Iterator[str]:
    """Lines for steps [start, stop), with the alert and eval records that follow them."""
    bad = set(sim.nonfinite_steps().tolist()) if cfg.nonfinite else set()
    ends = {b - 1: k for k, (a, b) in enumerate(sim.bounds)}
    for i, line in _step_lines(cfg, sim, start, stop):
        if i == start:  # the template is fixed per run: checking one line per chunk checks them all
            _check_step(line)
        yield line
        if i in bad:
            yield schema.encode_record(schema.record(
                schema.ALERT, step=int(i * cfg.log_every + cfg.log_every), level="warning",
                code="nonfinite", message="non-finite loss or gradient; step skipped"))
        if i in ends and cfg.evals:
            k = ends[i]
            c = sim.chunk(i, i + 1)
            broken = cfg.loss_flat or cfg.loss_diverge or cfg.loss_plateau or cfg.grad_rising
            yield schema.encode_record(schema.record(
                schema.EVAL, step=int(c["step"][0]), phase=sim.phase_names[k],
                loss=float("%.6g" % c["lm_loss"][0]), exact_match=0.1 if broken else 0.95,
                samples=[{"prompt": "User: what is water made of?",
                          "expected": "Water is made of hydrogen and oxygen .",
                          "output": "Water is made of hydrogen and oxygen .", "match": True}]))


def _check_step(line: str) -> None:
    """The step line is a record of the contract: defined fields only, every required one."""
    rec = json.loads(line)
    rec.pop("event")
    schema.record(schema.STEP, **rec)
    for lay in rec["layers"]:
        schema.layer_row(**lay)


def _chunk_text(knobs: dict, start: int, stop: int) -> str:
    """Worker entry point: the text (with newlines) of one chunk."""
    cfg = Synthetic(**knobs)
    return "".join(line + "\n" for line in _chunk_lines(cfg, _Sim(cfg), start, stop))


def _run_end(cfg: Synthetic) -> dict:
    return schema.record(schema.RUN_END, time=_T0 + cfg.n_steps * _STEP_S, status=schema.STATUS_COMPLETED,
                         steps=cfg.n_steps * cfg.log_every, wall_s=cfg.n_steps * _STEP_S)


def iter_lines(**knobs) -> Iterator[str]:
    """The run's `run.jsonl` lines (without newlines), in order; see `Synthetic` for knobs."""
    cfg = Synthetic(**knobs)
    sim = _Sim(cfg)
    yield schema.encode_record(_run_start(cfg))
    for start in range(0, cfg.n_steps, _CHUNK):
        yield from _chunk_lines(cfg, sim, start, min(cfg.n_steps, start + _CHUNK))
    if cfg.run_end:
        yield schema.encode_record(_run_end(cfg))


def _decode(value):
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return schema.decode_number(value)


def generate(**knobs) -> list[dict]:
    """The run's records as dicts (non-finite numbers as floats, as an engine holds them)."""
    return [_decode(json.loads(line)) for line in iter_lines(**knobs)]


def _open(path: Path):
    return gzip.open(path, "wt", encoding="utf-8") if path.suffix == ".gz" else open(path, "w", encoding="utf-8")


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Write records with `schema.encode_record`, one per line (`.gz` -> gzip)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open(path) as f:
        for r in records:
            f.write(schema.encode_record(r))
            f.write("\n")
    return path


def write_synthetic(path: str | Path, *, workers: int | None = None, **knobs) -> Path:
    """Fast path: stream a synthetic run straight to `path` without building dicts.

    `workers` > 1 formats chunks in that many processes (the output is identical: every chunk's
    noise is seeded by its first step); None = min(8, CPU count) for runs over 50,000 steps.
    """
    path = Path(path)
    cfg = Synthetic(**knobs)
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if cfg.n_steps > 50_000 else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, cfg.n_steps, _CHUNK))
    stops = [min(cfg.n_steps, s + _CHUNK) for s in starts]
    with _open(path) as f:
        f.write(schema.encode_record(_run_start(cfg)) + "\n")
        kn = _knobs(cfg)
        if workers > 1 and len(starts) > 1:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for text in pool.map(_chunk_text, [kn] * len(starts), starts, stops):
                    f.write(text)
        else:
            for a, b in zip(starts, stops):
                f.write(_chunk_text(kn, a, b))
        if cfg.run_end:
            f.write(schema.encode_record(_run_end(cfg)) + "\n")
    return path


__all__ = ["Synthetic", "generate", "iter_lines", "write_jsonl", "write_synthetic"]
