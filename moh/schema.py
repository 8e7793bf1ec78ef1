"""The telemetry contract: record kinds, field names and JSON encoding of `run.jsonl`.

This is the one module shared by the engine (`moh/`) and the diagnostics (`analyze/`), so it
must stay free of torch, pandas and anything heavy. Every name a writer emits or a reader
expects is defined here once; `docs/telemetry.md` explains the meaning of each field and
`moh/telemetry.schema.json` is the machine-checkable form.

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
from typing import Any, Iterable

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

# --- record kinds ("event" field) ---------------------------------------------------------
RUN_START = "run_start"
STEP = "step"
EVAL = "eval"
ALERT = "alert"
RESUME = "resume"
RUN_END = "run_end"
EVENTS = (RUN_START, STEP, EVAL, ALERT, RESUME, RUN_END)

# --- run_start -----------------------------------------------------------------------------
RUN_START_FIELDS = ("event", "schema_version", "run_id", "time", "config", "model", "world_size")
MODEL_FIELDS = ("n_layers", "n_heads", "d_model", "router", "params")
# Optional run_start keys:
#   source     -- "moh" (this engine) or "rustgpt" (imported text log)
#   semantics  -- what the numbers mean, see SEMANTICS_* below
#   backend, device -- distributed backend ("gloo", "nccl", None) and device string
#   data       -- {source, pretrain_examples, instruct_examples, vocab_size, pretrain_tokens,
#                  instruct_tokens, eval_prompts} describing the corpus the run trained on
# Optional "time" (Unix seconds) on alert and eval records too.
SOURCE_MOH = "moh"
SOURCE_RUSTGPT = "rustgpt"

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

# --- step ----------------------------------------------------------------------------------
STEP_FIELDS = (
    "event", "step", "epoch", "phase", "time", "loss", "lm_loss", "lr",
    "grad_norm", "grad_norm_clipped", "grad_norms", "aux", "layers",
)
# Optional step keys: elapsed (s since run start), tokens (tokens in this step, all ranks),
# tokens_per_s, skipped (bool, non-finite step skipped), aux_weighted {term: weight*value}.
GRAD_GROUPS = ("embedding", "attention", "ffn", "router", "complexity", "threshold")
AUX_TERMS = ("load_balance", "z", "complexity", "budget", "entropy")
LAYER_FIELDS = (
    "layer", "heads_mean", "heads_min", "heads_max", "heads_std", "head_load",
    "threshold_mean", "threshold_min", "threshold_max",
    "complexity_mean", "complexity_min", "complexity_max",
    "entropy", "pred_norm",
)
# Optional layer keys: label (e.g. "L5" in imported logs), prob_mean (H mean router
# probabilities), heads_hist (H+1 fractions of tokens using 0..H heads; "full" tier).
LAYER_STATS = tuple(f for f in LAYER_FIELDS if f not in ("layer", "head_load"))

PHASE_PRETRAIN = "pretrain"
PHASE_INSTRUCT = "instruct"

# --- eval / alert / resume / run_end -------------------------------------------------------
EVAL_FIELDS = ("event", "step", "phase", "loss", "exact_match", "samples")
SAMPLE_FIELDS = ("prompt", "expected", "output", "match")
ALERT_FIELDS = ("event", "step", "level", "code", "message")
ALERT_LEVELS = ("info", "warning", "error")
RESUME_FIELDS = ("event", "time", "step", "checkpoint")
# Optional resume keys: run_id (unchanged across resumes), phase, epoch, batch (the next batch).
RUN_END_FIELDS = ("event", "time", "status", "steps", "wall_s")
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"
RUN_STATUSES = (STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED)

REQUIRED_FIELDS = {
    RUN_START: RUN_START_FIELDS,
    STEP: STEP_FIELDS,
    EVAL: EVAL_FIELDS,
    ALERT: ALERT_FIELDS,
    RESUME: RESUME_FIELDS,
    RUN_END: RUN_END_FIELDS,
}

# Fields that legitimately differ between two runs with the same seed.
TIME_FIELDS = frozenset({"time", "elapsed", "wall_s", "tokens_per_s", "run_id"})

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


def encode_record(record: dict) -> str:
    """One line of `run.jsonl` (without the newline); strict JSON, non-finite numbers tagged."""
    return json.dumps(sanitize(record), separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def decode_number(value: Any) -> Any:
    """Turn a tagged non-finite string back into a float; anything else is returned unchanged."""
    if isinstance(value, str) and value in NONFINITE_STRINGS:
        return NONFINITE_STRINGS[value]
    return value


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
