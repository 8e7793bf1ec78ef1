"""The telemetry contract: record kinds, their fields, column names and JSON encoding of `run.jsonl`.

This is the one module shared by the engine (`moh/`) and the diagnostics (`analyze/`), so it
must stay free of torch, pandas and anything heavy. Every field a writer emits or a reader
expects is defined here once, as a `Field` in the definition of its record kind (`RECORDS`,
`LAYER`, ...); every other name in this module is derived from those definitions:

- the required-field tuples (`STEP_FIELDS`, `LAYER_FIELDS`, ...) and `missing_fields`;
- the loader's columns: a numeric step field is a column of its name, a dict field one column
  per key under a prefix (`grad_norms` -> `grad.<group>`), a numeric per-layer field a column of
  the layer frame (`LAYER_COLUMNS`);
- `moh/telemetry.schema.json` (`python -m moh.schema --write` regenerates it from here; a test
  fails when the file and the definitions differ) and the field tables of docs/telemetry.md
  (a test checks them against the definitions).

Adding a per-layer statistic is one `Field(...)` line in `LAYER` (plus the code that computes it).

Encoding rules (why: the file must stay valid JSON whatever the numbers do):
- one JSON object per line, UTF-8, `\\n` line ends, flushed as each record is written;
- non-finite floats are written as the strings "NaN", "Infinity" and "-Infinity" (strict JSON
  has no such tokens); readers turn them back into floats with `decode_number`;
- a routing field that does not apply (e.g. a threshold under the `dense` router) is null or
  absent, never a fake 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

import orjson

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

# --- values a field may hold -----------------------------------------------------------------
SOURCE_MOH = "moh"
# run_start.producer (issue 12): `moh report` judges a log whose producer is not `moh train` with
# the generic criteria (analyze/generic_criteria.toml), not the engine's two-phase targets.
PRODUCER_TRAIN = "moh train"
PRODUCER_MONITOR = "moh.monitor"
SOURCE_RUSTGPT = "rustgpt"
PHASE_PRETRAIN = "pretrain"
PHASE_INSTRUCT = "instruct"
PHASES = (PHASE_PRETRAIN, PHASE_INSTRUCT)
ALERT_LEVELS = ("info", "warning", "error")
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"
RUN_STATUSES = (STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED)

# semantics["heads"]: how a per-layer head figure was obtained.
HEADS_HARD_COUNT = "hard_count"          # number of heads the hard mask selected, per token
HEADS_SOFT_WEIGHT_SUM = "soft_weight_sum"  # sum of soft gate weights (not a count)
# semantics["grad_norm"]: when the logged total norm was measured.
GRAD_NORM_PRE_CLIP = "pre_clip"
GRAD_NORM_POST_CLIP = "post_clip"
# semantics["grad_norm_clip"]: the clipping threshold (float) or None when clipping is off.
# semantics["grad_norm_reduction"]: "per_step" (one optimizer step) or "epoch_mean".
DEFAULT_SEMANTICS = {
    "heads": HEADS_HARD_COUNT,
    "grad_norm": GRAD_NORM_PRE_CLIP,
    "grad_norm_reduction": "per_step",
}

# Parameter groups with their own gradient norm (`grad_norms`); the routing ones are those a
# broken straight-through path starves (optimizer groups and the router_grad_zero rule).
GRAD_GROUPS = ("embedding", "attention", "ffn", "router", "complexity", "threshold")
ROUTING_GRAD_GROUPS = ("router", "complexity", "threshold")
# Auxiliary loss terms (`aux`, `aux_weighted`) and the config key of each term's weight.
AUX_WEIGHT_KEYS = {"load_balance": "lb_weight", "z": "z_weight",
                   "complexity": "complexity_weight", "budget": "budget_weight",
                   "entropy": "entropy_weight"}
AUX_TERMS = tuple(AUX_WEIGHT_KEYS)


# --- field definitions ------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One key of a record. `kind` says what it holds and so how it is loaded and checked:

    num       a number, a tagged non-finite float, or null   -> one float column
    int       an integer >= 0 (step, epoch, layer index)      -> one column (step: the index)
    count     an integer >= 0                                  -> one float column
    time      Unix seconds                                     -> one float column
    seconds   a duration >= 0                                  -> one float column
    bool      true / false                                     -> one float column (0 / 1)
    nums      a list of numbers (one per head, bin, ...)       -> loaded by the field's own code
    str, enum, const, object, records                          -> not a numeric column
    groups    {name: num} over `keys`                          -> one column per key, `prefix<key>`
    """

    name: str
    kind: str
    required: bool = True
    keys: tuple = ()          # enum values, group names, or the sub-fields of an object / records
    prefix: str = ""          # groups: column name prefix
    const: Any = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False    # str / int kinds that may be null
    description: str = ""


def _f(name, kind, **kw) -> Field:
    return Field(name, kind, **kw)


def _opt(name, kind, **kw) -> Field:
    return Field(name, kind, required=False, **kw)


MODEL = (
    _f("n_layers", "int", minimum=1), _f("n_heads", "int", minimum=1), _f("d_model", "int", minimum=1),
    _f("router", "str"), _f("params", "int", nullable=True),
)
DATA = (
    _opt("source", "str"), _opt("pretrain_examples", "count"), _opt("instruct_examples", "count"),
    _opt("vocab_size", "count"), _opt("pretrain_tokens", "count"), _opt("instruct_tokens", "count"),
    _opt("eval_prompts", "count"),
)
# One entry of a step's `layers`. A numeric field here is a column of the loader's layer frame.
LAYER = (
    _f("layer", "int"),
    _opt("label", "str", description="e.g. \"L5\" in imported logs"),
    _f("heads_mean", "num"), _f("heads_min", "num"), _f("heads_max", "num"), _f("heads_std", "num"),
    _f("head_load", "nums", nullable=True, description="H fractions: share of tokens using head i"),
    _f("threshold_mean", "num"), _f("threshold_min", "num"), _f("threshold_max", "num"),
    _f("complexity_mean", "num"), _f("complexity_min", "num"), _f("complexity_max", "num"),
    _f("entropy", "num"), _f("pred_norm", "num"),
    _opt("prob_mean", "nums", nullable=True, description="H mean router probabilities (\"full\" tier)"),
    _opt("heads_hist", "nums", nullable=True,
         description="H+1 fractions of tokens using 0..H heads (\"full\" tier); read by no rule or "
                     "figure yet: the loader notes that it leaves it out"),
    # Does the allocation track difficulty (issue 11; older logs lack them: readers say n/a):
    # Spearman rank correlation over the logged step's target tokens of each token's complexity /
    # hard head count with its LM loss (moh/alignment.py). Null for routers without a per-token
    # budget (dense, moh) and where undefined (a constant series: every token the same count).
    _opt("complexity_loss_corr", "num", minimum=-1, maximum=1,
         description="Spearman(token complexity, token LM loss) over the step's target tokens"),
    _opt("heads_loss_corr", "num", minimum=-1, maximum=1,
         description="Spearman(token hard head count, token LM loss) over the step's target tokens"),
)
# The loss-alignment fields above, by name (the engine fills them on logged steps).
ALIGNMENT_STATS = ("complexity_loss_corr", "heads_loss_corr")
# What a run routes (run_start's `routing`; issue 12): attention heads or experts, by which
# scheme. Logs written before it lack the block; readers then take the engine's `model.router`.
UNIT_HEAD = "head"
UNIT_EXPERT = "expert"
UNITS = (UNIT_HEAD, UNIT_EXPERT)
ROUTING_KINDS = ("adaptive", "topk", "shared_topk", "dense", "custom")
ROUTING = (
    _f("unit", "enum", keys=UNITS, description="what is routed: attention heads or experts"),
    _f("kind", "enum", keys=ROUTING_KINDS, description="the routing scheme"),
    _f("n_units", "int", minimum=1, nullable=True,
       description="heads or experts per layer (null: none seen before the run ended)"),
    _opt("top_k", "int", minimum=1, description="units chosen per token (topk, shared_topk)"),
    _opt("n_shared", "int", description="always-on units (shared_topk)"),
)
SAMPLE = (_f("prompt", "str"), _f("expected", "str"), _f("output", "str"), _f("match", "bool"))

RUN_START = "run_start"
STEP = "step"
EVAL = "eval"
ALERT = "alert"
RESUME = "resume"
RUN_END = "run_end"

RECORDS: dict[str, tuple[Field, ...]] = {
    RUN_START: (
        _f("event", "const", const=RUN_START), _f("schema_version", "const", const=SCHEMA_VERSION),
        _f("run_id", "str"), _f("time", "time"), _f("config", "object"), _f("model", "object", keys=MODEL),
        _f("world_size", "int", minimum=1),
        _opt("source", "enum", keys=(SOURCE_MOH, SOURCE_RUSTGPT)),
        _opt("semantics", "object", description="what the numbers mean: DEFAULT_SEMANTICS' keys"),
        _opt("backend", "str", nullable=True), _opt("device", "str", nullable=True),
        _opt("kernels", "str", description="moh train: 'native' when the router's CPU kernels "
             "(moh/native.c) ran, else why their torch formulation did (values equal up to rounding)"),
        _opt("data", "object", keys=DATA),
        _opt("routing", "object", keys=ROUTING, description="what is routed and how (issue 12)"),
        _opt("producer", "str", description="what wrote the log: PRODUCER_TRAIN for `moh train`, "
             "PRODUCER_MONITOR (or the caller's name) for moh.monitor.Recorder on a user's model; "
             "absent in logs written before it existed (moh train and imported logs)"),
    ),
    STEP: (
        _f("event", "const", const=STEP), _f("step", "int"), _f("epoch", "int"),
        _f("phase", "enum", keys=PHASES), _f("time", "time"),
        _opt("elapsed", "seconds", description="s since run start"),
        _f("loss", "num"), _f("lm_loss", "num"), _f("lr", "num"),
        _f("grad_norm", "num"), _f("grad_norm_clipped", "num"),
        _f("grad_norms", "groups", keys=GRAD_GROUPS, prefix="grad."),
        _f("aux", "groups", keys=AUX_TERMS, prefix="aux."),
        _opt("aux_weighted", "groups", keys=AUX_TERMS, prefix="aux_weighted.",
             description="weight * aux per term"),
        _f("layers", "records", keys=LAYER),
        _opt("tokens", "count", description="target tokens in this step, all ranks"),
        _opt("tokens_per_s", "num"),
        _opt("skipped", "bool", description="true: the step was skipped for non-finite values"),
    ),
    EVAL: (
        _f("event", "const", const=EVAL), _f("step", "int"), _f("phase", "enum", keys=PHASES),
        _opt("time", "time"), _f("loss", "num"),
        _f("exact_match", "num", minimum=0, maximum=1, description="null: no instruction pairs"),
        _f("samples", "records", keys=SAMPLE),
    ),
    ALERT: (
        _f("event", "const", const=ALERT), _f("step", "int"), _f("level", "enum", keys=ALERT_LEVELS),
        _f("code", "str"), _f("message", "str"), _opt("time", "time"),
    ),
    RESUME: (
        _f("event", "const", const=RESUME), _f("time", "time"), _f("step", "int"), _f("checkpoint", "str"),
        _opt("run_id", "str"), _opt("phase", "enum", keys=PHASES), _opt("epoch", "int"), _opt("batch", "int"),
    ),
    RUN_END: (
        _f("event", "const", const=RUN_END), _f("time", "time"), _f("status", "enum", keys=RUN_STATUSES),
        _f("steps", "int"), _f("wall_s", "seconds"),
    ),
}
EVENTS = tuple(RECORDS)


# --- derived names ---------------------------------------------------------------------------

def _required(fields: Iterable[Field]) -> tuple[str, ...]:
    return tuple(f.name for f in fields if f.required)


REQUIRED_FIELDS = {kind: _required(fields) for kind, fields in RECORDS.items()}
OPTIONAL_FIELDS = {kind: tuple(f.name for f in fields if not f.required) for kind, fields in RECORDS.items()}
RUN_START_FIELDS = REQUIRED_FIELDS[RUN_START]
STEP_FIELDS = REQUIRED_FIELDS[STEP]
EVAL_FIELDS = REQUIRED_FIELDS[EVAL]
ALERT_FIELDS = REQUIRED_FIELDS[ALERT]
RESUME_FIELDS = REQUIRED_FIELDS[RESUME]
RUN_END_FIELDS = REQUIRED_FIELDS[RUN_END]
MODEL_FIELDS = _required(MODEL)
SAMPLE_FIELDS = _required(SAMPLE)
LAYER_FIELDS = _required(LAYER)

_SCALAR_KINDS = frozenset({"num", "count", "time", "seconds", "bool"})
# Per-layer scalar statistics: the layer frame's columns, in definition order. The required
# ones are what every engine step carries (rules expect them of an adaptive run).
LAYER_COLUMNS = tuple(f.name for f in LAYER if f.kind in _SCALAR_KINDS)
LAYER_STATS = tuple(f.name for f in LAYER if f.kind in _SCALAR_KINDS and f.required)
LAYER_LEFT_OUT = tuple(f.name for f in LAYER if f.name == "heads_hist")  # logged, not loaded (see LAYER)

# Step fields by how the loader reads them: structured (its own code), scalar (a column of the
# same name; a wrong type is worth a note), groups (one column per key under a prefix).
STEP_STRUCTURED = frozenset({"event", "step", "phase", "layers"})
STEP_SCALARS = tuple(f.name for f in RECORDS[STEP] if f.name not in STEP_STRUCTURED and f.kind != "groups")
STEP_GROUPS = {f.name: f.prefix for f in RECORDS[STEP] if f.kind == "groups"}
# Every column of the steps frame a step record can fill, in definition order.
STEP_COLUMNS = STEP_SCALARS + tuple(f.prefix + k for f in RECORDS[STEP] if f.kind == "groups" for k in f.keys)


def grad_column(group: str) -> str:
    """The steps-frame column of `grad_norms[group]`."""
    return STEP_GROUPS["grad_norms"] + group


def aux_column(term: str, weighted: bool = False) -> str:
    """The steps-frame column of `aux[term]` (or `aux_weighted[term]`)."""
    return STEP_GROUPS["aux_weighted" if weighted else "aux"] + term


# Fields that legitimately differ between two runs with the same seed.
TIME_FIELDS = frozenset({"time", "elapsed", "wall_s", "tokens_per_s", "run_id"})


# --- building and checking records -------------------------------------------------------------

_KNOWN = {kind: frozenset(f.name for f in fields) for kind, fields in RECORDS.items()}
_KNOWN_LAYER = frozenset(f.name for f in LAYER)


def record(kind: str, *, extra: dict | None = None, **fields: Any) -> dict:
    """A record of `kind` with `fields` in the order given; raises ValueError on an unknown
    kind, an unknown field or a missing required one (a writer's bug, caught where it is made).
    `extra`: further keys, appended in their order after `fields` (keys already set are skipped):
    optional fields, or keys a producer carries beyond the contract (an importer's provenance),
    which readers ignore."""
    if kind not in RECORDS:
        raise ValueError(f"unknown record kind {kind!r}")
    rec = {"event": kind, **fields}
    unknown = [k for k in rec if k not in _KNOWN[kind]]
    missing = [k for k in REQUIRED_FIELDS[kind] if k not in rec]
    if unknown or missing:
        raise ValueError(f"{kind} record: unknown fields {unknown}, missing fields {missing}")
    if extra:
        rec.update((k, v) for k, v in extra.items() if k not in rec)
    return rec


def layer_row(**fields: Any) -> dict:
    """One `layers` entry: every required field (None where not given), then the optional ones
    given; unknown fields raise ValueError."""
    unknown = [k for k in fields if k not in _KNOWN_LAYER]
    if unknown:
        raise ValueError(f"layer entry: unknown fields {unknown}")
    row = {f: fields.get(f) for f in LAYER_FIELDS}
    row.update((k, v) for k, v in fields.items() if k not in row)
    return row


_KNOWN_ROUTING = frozenset(f.name for f in ROUTING)


def routing_info(**fields: Any) -> dict:
    """run_start's `routing` block; unknown or missing fields and a unit or kind outside
    UNITS / ROUTING_KINDS raise ValueError."""
    unknown = [k for k in fields if k not in _KNOWN_ROUTING]
    missing = [f.name for f in ROUTING if f.required and f.name not in fields]
    if unknown or missing:
        raise ValueError(f"routing block: unknown fields {unknown}, missing fields {missing}")
    if fields["unit"] not in UNITS:
        raise ValueError(f"routing unit must be one of {UNITS}, not {fields['unit']!r}")
    if fields["kind"] not in ROUTING_KINDS:
        raise ValueError(f"routing kind must be one of {ROUTING_KINDS}, not {fields['kind']!r}")
    return dict(fields)


def missing_fields(record: dict) -> list[str]:
    """Required fields absent from `record` (unknown event -> ["event"])."""
    required: Iterable[str] | None = REQUIRED_FIELDS.get(record.get("event"))  # type: ignore[arg-type]
    if required is None:
        return ["event"]
    missing = [f for f in required if f not in record]
    if record.get("event") == STEP:
        for i, layer in enumerate(record.get("layers") or []):
            missing += [f"layers[{i}].{f}" for f in LAYER_FIELDS if f not in layer]
    return missing


# --- encoding ------------------------------------------------------------------------------
NONFINITE_STRINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _finite_or_tag(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def sanitize(value: Any) -> Any:
    """Return `value` with every non-finite float replaced by its string tag (recursively)."""
    if isinstance(value, float):
        return _finite_or_tag(value)
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value


def _all_finite(value: Any) -> bool:
    """No non-finite float at any depth of `value` (x - x is 0.0 for a finite float, NaN for
    NaN and the infinities). ~8 us for a step record, a fifth of json.dumps's time."""
    if isinstance(value, float):
        return value - value == 0.0
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, (list, tuple)):
        return True
    for v in value:
        if type(v) is float:  # the common leaf, without the call
            if v - v != 0.0:
                return False
        elif isinstance(v, (float, dict, list, tuple)) and not _all_finite(v):
            return False
    return True


def encode_line(record: dict) -> bytes:
    """One line of `run.jsonl`, UTF-8 with its newline; strict JSON, non-finite numbers tagged.

    orjson when every float is finite (it writes NaN and the infinities as null, which would
    lose the tag): a step record in ~10 us instead of json's ~45 (issue 14: the record's share
    of a run). Its floats are the shortest text that reads back to the same float, as json's
    are, in another notation where they are tiny or huge (0.0000466 for 4.66e-05): the same
    values. What orjson refuses (an int beyond 64 bits, a float subclass, a non-str key)
    goes through json as before."""
    if _all_finite(record):
        try:
            return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:
            pass
    return (encode_record(record) + "\n").encode("utf-8")


def encode_record(record: dict) -> str:
    """One line of `run.jsonl` as json writes it (without the newline); strict JSON,
    non-finite numbers tagged. `encode_line` is the faster writer's form of it."""
    try:  # the common record is all finite: no copy through sanitize() (half the encode time)
        return json.dumps(record, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except ValueError:  # a non-finite float somewhere: tag it
        return json.dumps(sanitize(record), separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def decode_number(value: Any) -> Any:
    """Turn a tagged non-finite string back into a float; anything else is returned unchanged."""
    if isinstance(value, str) and value in NONFINITE_STRINGS:
        return NONFINITE_STRINGS[value]
    return value


if __name__ == "__main__":  # python -m moh.schema [--write | --check]
    from .schema_json import main

    raise SystemExit(main())
