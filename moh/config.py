"""Training configuration: one flat dataclass, validated at construction.

Precedence: defaults < TOML file (`--config`) < command-line flags. The defaults train the
embedded corpus in about 27 CPU-seconds (docs/benchmarks.md, "Issue 14"). Every key below
carries a one-line note of its meaning and sensible range; an unknown key or an out-of-range value raises
`ConfigError` whose message starts with the offending field name.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROUTERS = ("dense", "moh", "adaptive")
NONFINITE_POLICIES = ("skip", "stop")
TELEMETRY_TIERS = ("basic", "full")  # full: + per-layer heads_hist and prob_mean (bench/bench_telemetry.py)
DEVICES = ("auto", "cpu", "cuda")
COMPLEXITY_TARGETS = ("heads", "loss_rank", "entropy_rank")  # moh/difficulty.py TARGETS
MOH_GATES = ("released", "paper")  # gate arithmetic of the moh router, see docs/routing.md


class ConfigError(ValueError):
    """A bad configuration value; the message names the field first."""


@dataclass
class Config:
    # --- data and run ---------------------------------------------------------------------
    data: str | None = None  # corpus path (file or directory); None = embedded default corpus
    seed: int = 1337  # seeds init, batching and everything else; same seed => same run.jsonl
    # torch CPU threads, >= 0; 0 = automatic: OMP_NUM_THREADS, else the usable cores (CPU affinity)
    # split between the ranks on this machine (moh/threads.py); measured faster than 1 on 2 cores (docs/benchmarks.md)
    threads: int = 0
    device: str = "auto"  # "auto" (cuda when available, else cpu), "cpu" or "cuda" (rank r: cuda:LOCAL_RANK)
    dist_timeout: float = 300.0  # seconds a rank waits in a collective before failing (torchrun runs), > 0

    # --- model ----------------------------------------------------------------------------
    n_layers: int = 2  # transformer blocks, 1..32
    n_heads: int = 8  # attention heads per block (H), must divide d_model
    d_model: int = 128  # residual width; head dim = d_model / n_heads
    d_ff: int = 512  # MLP hidden width, usually 4 * d_model
    max_len: int = 64  # longest sequence in tokens (longer examples are cut); >= 8
    # output head shares the token embedding matrix; untied (the default) reached loss 0.40 at
    # epoch 16 of 24 on ../shared/rustgpt where tied never did (docs/benchmarks.md, "Issue 14")
    tie_embeddings: bool = False
    dropout: float = 0.0  # dropout on attention output and MLP, 0..0.5 (0: memorise fast)

    # --- router ---------------------------------------------------------------------------
    router: str = "adaptive"  # "dense" (all heads), "moh" (shared + top-k), "adaptive" (top-p + budget)
    k_min: float = 1.0  # adaptive: smallest head budget kappa, 1..n_heads
    tau_min: float = 0.3  # adaptive: lowest threshold tau, 0 < tau_min < tau_max
    tau_max: float = 0.8  # adaptive: highest threshold tau, <= 1
    st_temp_threshold: float = 0.1  # adaptive: surrogate temperature on (tau - cum prob), 0.01..1
    st_temp_budget: float = 1.0  # adaptive: surrogate temperature on (kappa - rank), 0.1..4
    # adaptive: False detaches the gates, so the LM loss never reaches the router or the
    # predictors: the reference trainer's pitfall 1, kept only to produce a broken sample run
    straight_through: bool = True
    moh_shared: int = 2  # moh: shared heads always on, 0..n_heads-1
    moh_topk: int = 2  # moh: routed heads chosen per token, 1..n_heads-moh_shared
    # moh: "released" = the gate arithmetic of the MoH authors' code (top-k gates renormalised
    # and x k, shared x moh_shared, type weights x 2; balance loss H_r sum f P, = k balanced);
    # "paper" = the paper's equations (unscaled softmax gates; balance loss = 1 balanced)
    moh_gates: str = "released"

    # --- auxiliary losses (weights; 0 turns a term off) ---------------------------------
    # load balance; usual 0.01. Scale: moh_gates="released" -> H_r sum f_i P_i (= k when
    # balanced, the MoH code's), otherwise the Switch form (= 1 when balanced)
    lb_weight: float = 0.01
    z_weight: float = 1e-3  # router z-loss mean(logsumexp(logits)^2); usual 1e-3
    # adaptive: complexity predictor -> its target (complexity_target); 1.0 with entropy_rank
    # (the old objective, complexity_target="heads", used 0.1)
    complexity_weight: float = 1.0
    # adaptive: what the complexity predictor is trained toward: "entropy_rank" / "loss_rank" (a
    # head budget from the within-batch rank of the token's predictive entropy / loss,
    # stop-gradient; moh/difficulty.py) or "heads" (the count its own mask used: allocation
    # unrelated to difficulty). entropy_rank is the default because it tracked difficulty best in
    # the A/B and the calibration population (docs/routing.md, "Allocation that tracks
    # difficulty"); the old objective is `--set complexity_target=heads --set complexity_weight=0.1`
    complexity_target: str = "entropy_rank"
    budget_weight: float = 2.0  # adaptive: steer mean hard head count to target_heads, 0..10
    # adaptive: router entropy mean(-sum pi log pi) (Huang et al. use 1e-4); 0 = off, the
    # measured default (docs/routing.md, "Entropy term")
    entropy_weight: float = 0.0
    target_heads: float = 3.5  # adaptive: wanted mean heads per token, 1..n_heads

    # --- optimisation ---------------------------------------------------------------------
    pretrain_epochs: int = 30  # passes over the pre-training sentences, >= 0 (24 left dense short on ../shared/rustgpt)
    instruct_epochs: int = 30  # passes over the instruction pairs, >= 0
    batch_size: int = 32  # pre-training examples per optimizer step (global, all ranks), >= 1
    instruct_batch_size: int = 8  # instruction examples per optimizer step, >= 1 (few pairs: small)
    lr: float = 2e-3  # peak learning rate, > 0 (1e-4..1e-2 at this size; 3e-3 and up were slower)
    instruct_lr: float = 2e-3  # peak learning rate of the instruction phase, > 0
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak, 0..1
    warmup_steps: int = 30  # linear warmup at the start of each phase, >= 0
    router_lr_mult: float = 3.0  # LR multiplier for router + predictors, > 0
    weight_decay: float = 0.1  # AdamW decay on matrices (never router, norms, biases), 0..1
    beta1: float = 0.9  # AdamW beta1, [0, 1)
    beta2: float = 0.98  # AdamW beta2, [0, 1)
    grad_clip: float = 1.0  # global grad-norm clip; 0 = off
    nonfinite: str = "skip"  # non-finite loss/grads: "skip" the step (alert) or "stop" (failed)
    inject_nonfinite_at_step: int = 0  # fault testing: make this step's loss NaN (0 = off, >= 0)
    checkpoint_every: int = 200  # write <out>/checkpoint.pt every N steps (0 = only at the end), >= 0

    # --- telemetry and evaluation ---------------------------------------------------------
    log_every: int = 2  # write a step record every N optimizer steps, >= 1
    telemetry_tier: str = "basic"  # "basic" (schema layer fields) or "full" (+ heads_hist, prob_mean per layer)
    eval_prompts: int = 64  # held instruction prompts completed greedily per eval, >= 0
    eval_max_new_tokens: int = 48  # greedy generation cap per prompt, >= 1

    def __post_init__(self) -> None:
        self._check_types()
        self._check_values()

    # --- validation -------------------------------------------------------------------------
    def _check_types(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            kind = _kind(f.type)
            if v is None and "None" in str(f.type):
                continue
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
                setattr(self, f.name, v)
            if kind is int and isinstance(v, float) and v.is_integer():
                v = int(v)
                setattr(self, f.name, v)
            if not isinstance(v, kind) or isinstance(v, bool) != (kind is bool):
                raise ConfigError(f"{f.name}: expected {kind.__name__}, got {type(v).__name__} {v!r}")
            if kind is float and not math.isfinite(v):
                raise ConfigError(f"{f.name}: must be a finite number, got {v!r}")

    def _check_values(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{name}: {what}, got {getattr(self, name)!r}")

        need(self.threads >= 0, "threads", "must be >= 0")
        need(self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}")
        need(self.dist_timeout > 0, "dist_timeout", "must be > 0 (seconds)")
        need(1 <= self.n_layers <= 32, "n_layers", "must be in 1..32")
        need(self.n_heads >= 1, "n_heads", "must be >= 1")
        need(self.d_model >= 1, "d_model", "must be >= 1")
        need(self.d_model % self.n_heads == 0, "n_heads", f"must divide d_model={self.d_model}")
        need(self.d_ff >= 1, "d_ff", "must be >= 1")
        need(self.max_len >= 8, "max_len", "must be >= 8")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.router in ROUTERS, "router", f"must be one of {', '.join(ROUTERS)}")
        need(1.0 <= self.k_min <= self.n_heads, "k_min", f"must be in [1, n_heads={self.n_heads}]")
        need(0.0 < self.tau_min < self.tau_max, "tau_min", f"must be in (0, tau_max={self.tau_max})")
        need(self.tau_max <= 1.0, "tau_max", "must be <= 1")
        need(self.st_temp_threshold > 0, "st_temp_threshold", "must be > 0")
        need(self.st_temp_budget > 0, "st_temp_budget", "must be > 0")
        need(0 <= self.moh_shared < self.n_heads, "moh_shared", f"must be in [0, n_heads={self.n_heads})")
        need(1 <= self.moh_topk <= self.n_heads - self.moh_shared, "moh_topk",
             f"must be in [1, n_heads - moh_shared = {self.n_heads - self.moh_shared}]")
        need(self.moh_gates in MOH_GATES, "moh_gates", f"must be one of {', '.join(MOH_GATES)}")
        need(self.complexity_target in COMPLEXITY_TARGETS, "complexity_target",
             f"must be one of {', '.join(COMPLEXITY_TARGETS)}")
        for name in ("lb_weight", "z_weight", "complexity_weight", "budget_weight", "entropy_weight"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(1.0 <= self.target_heads <= self.n_heads, "target_heads", f"must be in [1, n_heads={self.n_heads}]")
        need(self.pretrain_epochs >= 0, "pretrain_epochs", "must be >= 0")
        need(self.instruct_epochs >= 0, "instruct_epochs", "must be >= 0")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.instruct_batch_size >= 1, "instruct_batch_size", "must be >= 1")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.instruct_lr > 0, "instruct_lr", "must be > 0")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.router_lr_mult > 0, "router_lr_mult", "must be > 0")
        need(0.0 <= self.weight_decay <= 1.0, "weight_decay", "must be in [0, 1]")
        need(0.0 <= self.beta1 < 1.0, "beta1", "must be in [0, 1)")
        need(0.0 <= self.beta2 < 1.0, "beta2", "must be in [0, 1)")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = off)")
        need(self.nonfinite in NONFINITE_POLICIES, "nonfinite", f"must be one of {', '.join(NONFINITE_POLICIES)}")
        need(self.inject_nonfinite_at_step >= 0, "inject_nonfinite_at_step", "must be >= 0 (0 = off)")
        need(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0 = only at the end)")
        need(self.log_every >= 1, "log_every", "must be >= 1")
        need(self.telemetry_tier in TELEMETRY_TIERS, "telemetry_tier", f"must be one of {', '.join(TELEMETRY_TIERS)}")
        need(self.eval_prompts >= 0, "eval_prompts", "must be >= 0")
        need(self.eval_max_new_tokens >= 1, "eval_max_new_tokens", "must be >= 1")

    # --- building ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every key (what run_start logs and config.toml stores)."""
        return asdict(self)

    def replace(self, **overrides: Any) -> "Config":
        """A new validated Config with `overrides` applied (unknown keys rejected)."""
        return from_dict({**self.to_dict(), **overrides})

    def to_toml(self) -> str:
        """TOML text that `load(path)` reads back to the same Config (None keys omitted)."""
        lines = ["# resolved moh training config (defaults < file < flags)"]
        for k, v in self.to_dict().items():
            if v is None:
                continue
            lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"


def _kind(annotation: Any) -> type:
    text = str(annotation)
    for name, t in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text.startswith(name):
            return t
    raise TypeError(f"unsupported config annotation {annotation!r}")  # pragma: no cover


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


KEYS = tuple(f.name for f in fields(Config))


def from_dict(d: dict[str, Any]) -> Config:
    unknown = [k for k in d if k not in KEYS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config key")
    return Config(**d)


def load(path: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Defaults, then the TOML file at `path` (flat keys), then `overrides` (None = not given)."""
    return from_dict(given(path, **overrides))


def given(path: str | os.PathLike | None = None, **overrides: Any) -> dict[str, Any]:
    """Only the keys the TOML file at `path` and `overrides` set (no defaults, not validated);
    what `moh train --resume` compares with the checkpoint's config."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"config: cannot read {os.fspath(path)} ({e.strerror or e})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config: {os.fspath(path)} is not valid TOML ({e})") from None
        except UnicodeDecodeError:  # a binary file: tomllib decodes before it parses
            raise ConfigError(f"config: {os.fspath(path)} is not valid TOML (not UTF-8 text)") from None
        for k, v in values.items():
            if isinstance(v, dict):
                raise ConfigError(f"{k}: tables are not supported; use flat keys (see `moh train --help`)")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` (from `--set`) -> (key, typed value), typed after the field's annotation."""
    if "=" not in item:
        raise ConfigError(f"{item}: expected key=value")
    key, raw = (s.strip() for s in item.split("=", 1))
    if key not in KEYS:
        raise ConfigError(f"{key}: unknown config key")
    field = next(f for f in fields(Config) if f.name == key)
    kind = _kind(field.type)
    if raw.lower() in ("none", "null") and "None" in str(field.type):
        return key, None
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return key, raw.lower() in ("true", "1")
        return key, kind(raw)
    except ValueError:
        raise ConfigError(f"{key}: expected {kind.__name__}, got {raw!r}") from None
