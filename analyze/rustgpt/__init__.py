"""Read the reference RustGPT trainer's text logs as telemetry records (`moh import`, direct `moh report LOG`).

Entry points: `sniff(head)` says whether bytes look like such a log; `iter_records(path)` yields
schema records (`run_start`, one `step` per epoch line, `eval`, `run_end`); `import_log(src, dst)`
writes them as `run.jsonl` atomically. A log without epoch lines, or a file of another kind,
raises `RustLogError` (the CLI maps it to exit code 3).

Decoding: UTF-8 (BOM or not), UTF-16 LE/BE with or without BOM (BOM-less detected from where the
NUL bytes sit), CRLF/LF/CR, ANSI colour codes stripped; any line that is not one of the shapes
below is noise (cargo output, banners, vocabulary dumps) and skipped.

Where each part of an epoch line goes (docs/telemetry.md, "Imported logs", says the same):

  <RFC3339>  INFO llm::llm: Training epoch completed (warmup k/K) | MoH L1: 4.70h@0.55p | L5: ...
      | DynW: 0.00e0 | ThreshRange: [a-b] | PredNorm: x | Complexity: m [lo-hi] | Temp: m [lo-hi]
      | TRM: Attn[S0:..] FFN[S0:..] Depth: avg=10.0 [10-10] epoch=0 loss=.. grad_norm=.. learning_rate=..

  timestamp            step.time (unix s), step.elapsed (s since the log's first timestamp),
                       step.epoch_s (s since the previous epoch line; first epoch: since an earlier
                       timestamped line if any, else null)
  (warmup k/K)         step.warmup = k, step.warmup_total = K (absent after warm-up)
  L{i}: {h}h@{p}p      step.layers[j] = {layer: j, label: "L{i}", heads_mean: h, threshold_mean: p,
                       every other schema.LAYER_FIELDS null}. A label printed twice with the same
                       values (a TRM's one shared layer) is one layer.
  DynW                 step.aux["entropy_weight"] (the entropy-loss weight; aux = {} without DynW)
  ThreshRange          step.thresh_range_min / thresh_range_max (min/max across layers of the
                       per-layer mean thresholds -- not per-token)
  PredNorm             step.pred_norm           (model-wide values: one per line, not per layer)
  Complexity m [a-b]   step.complexity_mean / complexity_min / complexity_max (over tokens)
  Temp m [a-b]         step.temperature_mean / temperature_min / temperature_max
  ConfAvg/ConfMin/Fallback  step.conf_avg / conf_min / fallback (a trailing % kept as printed number,
                       `fallback_unit: "%"`)
  TRM: ...             step.trm = {"attn": {"S0": .01, ..}, "ffn": {..}, "depth": {"avg", "min", "max"}}
  epoch/loss/grad_norm/learning_rate   step.epoch / loss / grad_norm / lr (lm_loss null: that loss
                       includes the load-balance term; grad_norm_clipped null)
  any other `Key: value` part, or other `k=v` field  step.extra[key] (numbers parsed, else the text)

Top-level step fields named like a schema.LAYER_STATS entry (complexity_mean, complexity_min,
complexity_max, pred_norm) are model-wide values of that stat; `run_start.semantics
["model_wide_stats"]` lists them so criteria/findings can use them where the layers carry null.
Redundancy is visible as mean_j(layers[j].heads_mean) == 1 + 7 * complexity_mean (within print
rounding), a degenerate range as complexity_min == complexity_max.

Gradient lines between two epoch lines belong to the later one (the epoch line is printed at the
end of its epoch):
  WARN ... Layer-wise gradient norms: ["L0: 87.02", ...]   (only on some batches)
  INFO ... Bidirectional LARS layer_idx=i layer_type="T" grad_norm=g ...   (every batch)
They give step.grad_norms_layers {"L{i}": mean over those batches}, step.grad_norms
{group: mean over those batches of the group's L2 norm} for layers whose type maps to a
schema.GRAD_GROUPS group (Embeddings -> embedding, *SelfAttention -> attention, SwiGLU/FeedForward
-> ffn), step.grad_norms_batches (how many batches) and step.grad_norms_source ("lars" or
"layerwise_warn"). L{i} is the position in the model's layer list, as in the MoH labels.

`Input:`/`Output:` pairs after `=== AFTER TRAINING ===` become one `eval` record; a sample's
`match` is exact token-sequence equality (that trainer's tokenizer: whitespace, each ASCII
punctuation character, `</s>`; one trailing `</s>` ignored) against the corpus answer when the
prompt is in a known corpus (the embedded moh/corpus/instruct.txt, or `corpus=`), else null.
A `run_end` (status completed) is emitted only when that banner shows the run finished.

Importer remarks (truncated last line, unattached gradient lines, malformed lines) are returned in
`notes` and stored in `run_start.import.notes`.

The package: `text` (decoding, sniffing, value parsers), `corpus` (expected answers of samples),
`parse` (the parser, record assembly through moh/schema.py, entry points).
"""

from .corpus import load_examples, match_sample, tokenize
from .parse import import_log, iter_records, parse, parse_epoch_line
from .text import ASSUMED_N_HEADS, CLIP_VALUE, SOURCE, RustLogError, decode, parse_time, parse_value, sniff

__all__ = ["ASSUMED_N_HEADS", "CLIP_VALUE", "SOURCE", "RustLogError", "decode", "import_log", "iter_records",
           "load_examples", "match_sample", "parse", "parse_epoch_line", "parse_time", "parse_value", "sniff",
           "tokenize"]
