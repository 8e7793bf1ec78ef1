"""Success criteria as data: what a criterion is (metric, window, target, where it applies), what
its result holds, and how criteria files are read and merged over `default_criteria.toml`.
Evaluating them on a run is `criteria.py`'s job.
"""

from __future__ import annotations

import functools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moh import schema
DEFAULT_CRITERIA_PATH = Path(__file__).with_name("default_criteria.toml")
# for logs that `moh train` did not write (run_start.producer, see criteria.base_criteria_path)
GENERIC_CRITERIA_PATH = Path(__file__).with_name("generic_criteria.toml")
STATUSES = ("pass", "fail", "warn", "missing")
KINDS = ("value", "stats_logged", "changes", "routing_metric")
WINDOWS = ("final", "last", "max_after_warmup", "every_step", "spike_ratio", "last_over_first")
PHASES = ("all", "each", "last")
SEVERITIES = ("fail", "warn")
_TOL = 1e-6


class CriteriaError(Exception):
    """A criteria file is unreadable or invalid; one-line message naming the file and key."""


@dataclass(frozen=True)
class Criterion:
    name: str
    label: str = ""
    kind: str = "value"
    metric: str | None = None
    fallback: str | None = None
    min_metric: str | None = None
    max_metric: str | None = None
    metrics: tuple[str, ...] = ()
    window: str = "final"
    n: int = 50
    warmup: float = 0.1
    target_min: float | None = None
    target_max: float | None = None
    min_change: float = 1e-6
    phases: str = "all"
    routing: bool = False
    severity: str = "fail"
    enabled: bool = True
    routers: tuple[str, ...] = ()    # router kinds it applies to; () = every router
    sources: tuple[str, ...] = ()    # log sources (run_start.source) it applies to; () = every one
    zero_ok: tuple[str, ...] = ()    # stats_logged: metrics for which identically 0 is correct
    # per router kind, this criterion with that router's overrides applied (from `by_router`)
    by_router: tuple[tuple[str, "Criterion"], ...] = ()

    def for_router(self, router: str | None) -> "Criterion":
        """The criterion as it applies to a run of `router` (its `by_router` table, if any)."""
        return dict(self.by_router).get(router or "", self)

    def not_applicable(self, router: str | None, source: str | None) -> str | None:
        """Why this criterion does not apply to a run of that router and log source, or None."""
        if self.routing and router == "dense":
            return "n/a: dense baseline, no routing"
        if self.routers and router not in self.routers:
            return f"n/a: applies to {'/'.join(self.routers)} routers; this run's router is {router or 'unknown'}"
        if self.sources and (source or "moh") not in self.sources:
            return f"n/a: applies to {'/'.join(self.sources)} logs; this log is from {source}"
        return None

    @property
    def target_text(self) -> str:
        if self.kind == "stats_logged":
            zero = f"; {', '.join(self.zero_ok)} may be 0" if self.zero_ok else ""
            return f"all {len(self.metrics)} present, not all 0{zero}"
        if self.kind == "changes":
            return f"each changes (> {self.min_change:g})"
        lo, hi = self.target_min, self.target_max
        if lo is not None and hi is not None:
            return f"[{lo:g}, {hi:g}]"
        return f"≤ {hi:g}" if hi is not None else f"≥ {lo:g}"

    def window_text(self) -> str:
        return {
            "final": "final value",
            "last": f"mean of last {self.n} logged steps",
            "max_after_warmup": (f"max after warmup ({self.warmup:g} of the phase)" if self.warmup < 1
                                 else f"max after {int(self.warmup)} warmup steps"),
            "every_step": "every logged step",
            "spike_ratio": (f"max / median after warmup ({self.warmup:g} of the phase)" if self.warmup < 1
                            else f"max / median after {int(self.warmup)} warmup steps"),
            "last_over_first": f"mean of last / first {self.n} logged steps (at most a quarter each)",
        }[self.window] if self.kind == "value" else (
            "final 20% of the logged steps" if self.kind == "routing_metric" else "whole run")


@dataclass(frozen=True)
class Result:
    name: str
    label: str
    status: str
    value: Any                   # float | [lo, hi] | int | {metric: change} | None
    target: str
    layer: int | None = None
    phase: str | None = None
    window: str = ""
    metric: str | None = None
    detail: str = ""
    applicable: bool = True

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "status": self.status,
                "value": _jsonable(self.value), "target": self.target, "layer": self.layer,
                "phase": self.phase, "window": self.window, "metric": self.metric,
                "detail": self.detail, "applicable": self.applicable}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


# ---- loading criteria files ----------------------------------------------------------------

_KEYS = {"label", "kind", "metric", "fallback", "min_metric", "max_metric", "metrics", "window", "n",
         "warmup", "target", "min_change", "phases", "routing", "severity", "enabled", "routers",
         "sources", "zero_ok", "by_router"}
# the engine's routers, then the kinds a moh.monitor log names (run_start.model.router)
ROUTER_KINDS = tuple(dict.fromkeys(("dense", "moh", "adaptive") + schema.ROUTING_KINDS))


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CriteriaError(f"{path}: no such criteria file") from None
    except IsADirectoryError:
        raise CriteriaError(f"{path}: is a directory, not a criteria file") from None
    except PermissionError:
        raise CriteriaError(f"{path}: permission denied") from None
    except tomllib.TOMLDecodeError as e:
        raise CriteriaError(f"{path}: invalid TOML ({e})") from None
    except UnicodeDecodeError:
        raise CriteriaError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise CriteriaError(f"{path}: cannot read ({e.strerror or e})") from None


def _build(name: str, spec: dict, defaults: dict, where: str) -> Criterion:
    def bad(msg: str) -> CriteriaError:
        return CriteriaError(f"{where}: [criteria.{name}] {msg}")

    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise bad(f"unknown key '{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
    kw: dict[str, Any] = {"name": name, "label": spec.get("label", name.replace("_", " ").capitalize())}
    for key, typ in (("kind", str), ("metric", str), ("fallback", str), ("min_metric", str),
                     ("max_metric", str), ("window", str), ("phases", str), ("severity", str),
                     ("label", str), ("routing", bool), ("enabled", bool)):
        if key in spec:
            if not isinstance(spec[key], typ):
                raise bad(f"'{key}' must be a {typ.__name__}, not {spec[key]!r}")
            kw[key] = spec[key]
    for key in ("n", "warmup", "min_change"):
        val = spec.get(key, defaults.get(key))
        if val is None:
            continue
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
            raise bad(f"'{key}' must be a non-negative number, not {val!r}")
        kw[key] = val
    if "n" in kw:
        if kw["n"] < 1 or kw["n"] != int(kw["n"]):
            raise bad(f"'n' must be a whole number >= 1, not {kw['n']!r}")
        kw["n"] = int(kw["n"])
    if "metrics" in spec:
        m = spec["metrics"]
        if not isinstance(m, list) or not m or not all(isinstance(x, str) for x in m):
            raise bad("'metrics' must be a non-empty list of column names")
        kw["metrics"] = tuple(m)
    for key in ("routers", "sources", "zero_ok"):
        if key in spec:
            m = spec[key]
            if not isinstance(m, list) or not all(isinstance(x, str) for x in m):
                raise bad(f"'{key}' must be a list of names")
            kw[key] = tuple(m)
    bad_router = [r for r in kw.get("routers", ()) if r not in ROUTER_KINDS]
    if bad_router:
        raise bad(f"'routers' names an unknown router '{bad_router[0]}' (known: {', '.join(ROUTER_KINDS)})")
    if "by_router" in spec:
        by = spec["by_router"]
        if not isinstance(by, dict) or not all(isinstance(v, dict) for v in by.values()):
            raise bad("'by_router' must be a table of tables, e.g. [criteria.x.by_router.moh]")
        unknown_r = [r for r in by if r not in ROUTER_KINDS]
        if unknown_r:
            raise bad(f"'by_router' names an unknown router '{unknown_r[0]}' (known: {', '.join(ROUTER_KINDS)})")
        base = {k: v for k, v in spec.items() if k != "by_router"}
        nested = [r for r, v in by.items() if "by_router" in v]
        if nested:
            raise bad(f"'by_router.{nested[0]}' cannot hold another 'by_router'")
        kw["by_router"] = tuple((r, _build(name, {**base, **v}, defaults, where)) for r, v in by.items())
    if "target" in spec:
        t = spec["target"]
        if not isinstance(t, dict) or not t or set(t) - {"min", "max"}:
            raise bad("'target' must be a table with 'min' and/or 'max', e.g. { max = 0.4 }")
        for k, v in t.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise bad(f"target.{k} must be a number, not {v!r}")
        kw["target_min"], kw["target_max"] = t.get("min"), t.get("max")
        if kw["target_min"] is not None and kw["target_max"] is not None and kw["target_min"] > kw["target_max"]:
            raise bad("target.min is greater than target.max")
    c = Criterion(**kw)
    for attr, allowed in (("kind", KINDS), ("window", WINDOWS), ("phases", PHASES), ("severity", SEVERITIES)):
        if getattr(c, attr) not in allowed:
            raise bad(f"'{attr}' must be one of {', '.join(allowed)}, not {getattr(c, attr)!r}")
    if c.enabled:
        if c.kind in ("value", "routing_metric"):
            if not c.metric:
                raise bad("needs a 'metric'")
            if c.target_min is None and c.target_max is None:
                raise bad("needs a 'target', e.g. { max = 0.4 }")
        elif not c.metrics:
            raise bad(f"kind '{c.kind}' needs 'metrics'")
    return c


def _merge_specs(base: dict, override: dict, where: str) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for name, spec in override.items():
        if not isinstance(spec, dict):
            raise CriteriaError(f"{where}: 'criteria.{name}' must be a table")
        if name in out:
            merged = {**out[name], **spec}
            if "target" in spec:
                merged["target"] = spec["target"]  # a new target replaces, never mixes bounds
            out[name] = merged
        else:
            out[name] = dict(spec)
    return out


def _split(doc: dict, where: str) -> tuple[dict, dict, bool]:
    unknown = sorted(set(doc) - {"defaults", "criteria", "replace"})
    if unknown:
        raise CriteriaError(f"{where}: unknown top-level key '{unknown[0]}' (known: criteria, defaults, replace)")
    defaults = doc.get("defaults", {})
    crit = doc.get("criteria", {})
    replace_ = doc.get("replace", False)
    if not isinstance(defaults, dict) or set(defaults) - {"n", "warmup", "min_change"}:
        raise CriteriaError(f"{where}: [defaults] may only set n, warmup, min_change")
    if not isinstance(crit, dict):
        raise CriteriaError(f"{where}: 'criteria' must be a table of tables")
    if not isinstance(replace_, bool):
        raise CriteriaError(f"{where}: 'replace' must be true or false")
    return defaults, crit, replace_


def load_criteria(path: str | Path | None = None, base: str | Path | None = None) -> list[Criterion]:
    """The default criteria (`base`: DEFAULT_CRITERIA_PATH, or GENERIC_CRITERIA_PATH for logs
    `moh train` did not write), with the file at `path` (if any) merged over them. Enabled ones only."""
    base = Path(DEFAULT_CRITERIA_PATH if base is None else base)
    base_defaults, base_crit, _ = _split(_read_toml(base), str(base))
    defaults, specs, where = base_defaults, base_crit, str(base)
    if path is not None:
        where = str(path)
        user_defaults, user_crit, replace_ = _split(_read_toml(Path(path)), where)
        defaults = {**({} if replace_ else base_defaults), **user_defaults}
        specs = _merge_specs({} if replace_ else base_crit, user_crit, where)
    out = [_build(name, spec, defaults, where) for name, spec in specs.items()]
    out = [c for c in out if c.enabled]
    if not out:
        raise CriteriaError(f"{where}: no enabled criteria")
    return out


@functools.lru_cache(maxsize=None)
def default_target(name: str) -> tuple[float | None, float | None]:
    """(min, max) of the default criterion `name`: what figures draw and rules compare against,
    read from default_criteria.toml rather than copied."""
    c = next(c for c in load_criteria() if c.name == name)
    return c.target_min, c.target_max
