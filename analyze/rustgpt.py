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
"""

from __future__ import annotations

import calendar
import json
import math
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from moh import schema

SOURCE = schema.SOURCE_RUSTGPT
CLIP_VALUE = 100.0           # that trainer clips the global gradient norm at 100 (src/llm.rs)
ASSUMED_N_HEADS = 8          # every RustGPT MoH configuration we know of has 8 heads


class RustLogError(ValueError):
    """The file is not a usable RustGPT training log (no epoch lines, binary, another format)."""


# ---- decoding ----------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _detect_encoding(raw: bytes) -> tuple[str, int]:
    """(codec, bytes of BOM to skip). BOM-less UTF-16 shows up as NULs in every other byte."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return "utf-8", 3
    if raw.startswith(b"\xff\xfe"):
        return "utf-16-le", 2
    if raw.startswith(b"\xfe\xff"):
        return "utf-16-be", 2
    sample = raw[:4096]
    half = len(sample) // 2
    if half >= 2:
        nul_even = sample[0::2].count(0)
        nul_odd = sample[1::2].count(0)
        if nul_odd > 0.3 * half and nul_even < 0.05 * half:
            return "utf-16-le", 0
        if nul_even > 0.3 * half and nul_odd < 0.05 * half:
            return "utf-16-be", 0
    return "utf-8", 0


def decode(raw: bytes) -> tuple[str, str]:
    """Bytes of a log -> (text with LF line ends and no ANSI codes, encoding name)."""
    codec, skip = _detect_encoding(raw)
    body = raw[skip:]
    if codec.startswith("utf-16") and len(body) % 2:
        body = body[:-1]  # a file cut mid code unit
    text = body.decode(codec, errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    return text, codec + ("-bom" if skip else "")


def _looks_binary(raw: bytes) -> bool:
    sample = raw[:65536]
    if not sample:
        return False
    codec, skip = _detect_encoding(sample)
    if codec.startswith("utf-16"):
        return False
    text = sample[skip:].decode("utf-8", errors="replace")
    bad = sum(1 for ch in text if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\x1b\x0c"))
    return bad > 0.05 * len(text)


_SNIFF_MARKERS = (
    "Training epoch completed", "llm::llm", "MODEL ARCHITECTURE SUMMARY", "=== PRE-TRAINING MODEL ===",
    "=== INSTRUCTION TUNING ===", "Adding word: ", "`llm` (lib)", "Running `target",
)


def sniff(head: bytes) -> bool:
    """Is this (the first few KiB of) a RustGPT trainer text log? Decided from content only.

    64 KiB of head is plenty: even a log that starts with cargo output names the `llm` crate
    within its first 10 KB.
    """
    if not head:
        return False
    text, _ = decode(head)
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        return False  # JSON / JSONL telemetry
    return any(m in text for m in _SNIFF_MARKERS)


# ---- small parsers ---------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|NaN|nan|inf|-inf|Infinity)"
_NUM_RE = re.compile(rf"^{_NUM}$")
_RANGE_RE = re.compile(rf"^\[({_NUM})\s*-\s*({_NUM})\]$")
_MEAN_RANGE_RE = re.compile(rf"^({_NUM})\s*\[({_NUM})\s*-\s*({_NUM})\]$")
_PCT_RE = re.compile(rf"^({_NUM})\s*%$")
_LAYER_RE = re.compile(rf"^L(\d+):\s*({_NUM})h(?:@({_NUM})p)?$")
_TS_RE = re.compile(
    r"^\s*(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?")
_WARMUP_RE = re.compile(r"^\s*\(warmup (\d+)/(\d+)\)")
_TAIL_RE = re.compile(r"(?:^|\s)epoch=")
_LW_RE = re.compile(rf'"L(\d+):\s*({_NUM})"')
_LARS_RE = re.compile(rf'layer_idx=(\d+)\s+layer_type="([^"]*)"\s+grad_norm=({_NUM})')
_RUN_PLAN_RE = re.compile(
    rf"^(Pre-training|Instruction tuning) on (\d+) examples for (\d+) epochs with learning rate ({_NUM})")
_CONFIG_RE = re.compile(r"^\s+(?:- )?([A-Za-z][A-Za-z0-9 ()/-]*?):\s+(\S.*?)\s*$")
_STACK_RE = re.compile(r"^\s+(\d+):\s+([A-Za-z]\w*)\s*$")


def _num(s: str) -> float:
    s = s.strip()
    return float("inf") if s == "Infinity" else float(s)


def parse_value(text: str):
    """A printed value: number, `n%`, `[a-b]`, `m [a-b]`, else the stripped text."""
    s = text.strip()
    if _NUM_RE.match(s):
        return _num(s)
    m = _MEAN_RANGE_RE.match(s)
    if m:
        return {"mean": _num(m[1]), "min": _num(m[2]), "max": _num(m[3])}
    m = _RANGE_RE.match(s)
    if m:
        return {"min": _num(m[1]), "max": _num(m[2])}
    m = _PCT_RE.match(s)
    if m:
        return {"value": _num(m[1]), "unit": "%"}
    return s


def parse_time(line: str) -> float | None:
    """Unix seconds of the RFC3339 stamp that starts `line`, or None."""
    m = _TS_RE.match(line)
    if not m:
        return None
    t = calendar.timegm((int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), 0, 0, 0))
    if m[7]:
        t += float(m[7])
    tz = m[8]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        t -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return t


def _snake(key: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key.strip())
    return re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()


def _parse_trm(text: str) -> dict:
    """`Attn[S0:0.01,..] FFN[S0:0.01,..] Depth: avg=10.0 [10-10]` -> nested dict (raw kept)."""
    out: dict = {}
    for name, body in re.findall(r"(\w+)\[([^\]]*)\]", text):
        items = {}
        for item in body.split(","):
            k, sep, v = item.partition(":")
            if sep:
                items[k.strip()] = _num(v) if _NUM_RE.match(v.strip()) else v.strip()
        out[name.lower()] = items
    m = re.search(rf"Depth:\s*avg=({_NUM})\s*\[({_NUM})-({_NUM})\]", text)
    if m:
        out["depth"] = {"avg": _num(m[1]), "min": _num(m[2]), "max": _num(m[3])}
    out["raw"] = text.strip()
    return out


_PAT_STACK_GROUPS = (
    ("embedding", ("Embeddings", "Embedding", "TokenEmbedding")),
    ("attention", ("MultiHeadSelfAttention", "SelfAttention", "MultiHeadAttention")),
    ("ffn", ("SwiGLU", "FeedForward", "FFN")),
)


def _group_of(layer_type: str | None) -> str | None:
    for group, names in _PAT_STACK_GROUPS:
        if layer_type in names:
            return group
    return None


# ---- corpus matching ------------------------------------------------------------------------

_PUNCT = frozenset(string.punctuation)


def tokenize(text: str) -> list[str]:
    """That trainer's tokenizer: whitespace, each ASCII punctuation character, and `</s>`."""
    tokens: list[str] = []
    for word in text.replace("</s>", " </s> ").split():
        if word == "</s>":
            tokens.append(word)
            continue
        cur = ""
        for ch in word:
            if ch in _PUNCT:
                if cur:
                    tokens.append(cur)
                    cur = ""
                tokens.append(ch)
            else:
                cur += ch
        if cur:
            tokens.append(cur)
    return tokens


def _strip_eos(tokens: list[str]) -> list[str]:
    return tokens[:-1] if tokens and tokens[-1] == "</s>" else tokens


def _read_examples(text: str) -> list[str]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(stripped)
        return [x for x in data if isinstance(x, str)]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def load_examples(corpus: str | os.PathLike | None) -> list[str]:
    """Instruction examples to match samples against: `corpus` (if given) first, then the embedded one.

    A prompt found in `corpus` is matched against that answer even if the embedded corpus has the
    same prompt. The embedded file is read without importing `moh.data` (which needs torch).
    """
    examples: list[str] = []
    if corpus is not None:
        path = Path(corpus)
        if path.is_dir():  # a corpus directory: the reference layout or ours
            found = [path / n for n in ("chat_training_data.json", "instruct.txt") if (path / n).is_file()]
            if not found:
                raise RustLogError(f"corpus directory {path} has no chat_training_data.json or instruct.txt")
            path = found[0]
        try:
            examples += _read_examples(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as e:
            raise RustLogError(f"cannot read corpus {corpus}: {e}") from e
    try:
        from importlib import resources
        ref = resources.files("moh").joinpath("corpus/instruct.txt")
        if ref.is_file():
            examples += _read_examples(ref.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, OSError, ValueError):
        pass
    return examples


def match_sample(prompt: str, output: str, examples: list[str]) -> tuple[str | None, bool | None]:
    """(expected answer, exact match) for one sample; (None, None) when no example has the prompt."""
    p = tokenize(prompt)
    if not p:
        return None, None
    for ex in examples:
        t = tokenize(ex)
        if t[: len(p)] == p and len(t) > len(p):
            expected = t[len(p):]
            return " ".join(expected), _strip_eos(tokenize(output)) == _strip_eos(expected)
    return None, None


# ---- the parser -------------------------------------------------------------------------------

@dataclass
class _Grads:
    """Per-batch layer gradient norms seen since the last epoch line."""
    source: str | None = None
    batches: list = field(default_factory=list)   # [{position: (type|None, norm)}]
    _lars_open: dict | None = None

    def add_warn(self, norms: dict[int, float], stack: list[str]) -> None:
        if self.source == "lars":
            return  # LARS covers every batch; the warning subset adds nothing
        self.source = "layerwise_warn"
        self.batches.append({i: (stack[i] if i < len(stack) else None, g) for i, g in norms.items()})

    def add_lars(self, idx: int, layer_type: str, norm: float) -> None:
        if self.source != "lars":
            self.source, self.batches, self._lars_open = "lars", [], None
        # layer_idx restarting (or repeating) marks the next batch
        if self._lars_open is None or idx in self._lars_open:
            self._lars_open = {}
            self.batches.append(self._lars_open)
        self._lars_open[idx] = (layer_type, norm)

    def summary(self) -> dict:
        if not self.batches:
            return {}
        per_layer: dict[int, list] = {}
        per_group: dict[str, list] = {}
        for batch in self.batches:
            sq: dict[str, float] = {}
            for i, (ltype, g) in batch.items():
                per_layer.setdefault(i, []).append(g)
                group = _group_of(ltype)
                if group:
                    sq[group] = sq.get(group, 0.0) + g * g
            for group, s in sq.items():
                per_group.setdefault(group, []).append(math.sqrt(s))
        return {
            "grad_norms": {g: sum(v) / len(v) for g, v in per_group.items()} or None,
            "grad_norms_layers": {f"L{i}": sum(v) / len(v) for i, v in sorted(per_layer.items())},
            "grad_norms_batches": len(self.batches),
            "grad_norms_source": self.source,
        }


_KNOWN_PARTS = {
    "ThreshRange": ("thresh_range_min", "thresh_range_max"),
    "Complexity": ("complexity_mean", "complexity_min", "complexity_max"),
    "Temp": ("temperature_mean", "temperature_min", "temperature_max"),
    "PredNorm": ("pred_norm",),
    "ConfAvg": ("conf_avg",),
    "ConfMin": ("conf_min",),
    "Fallback": ("fallback",),
}
_TAIL_NAMES = {"epoch": "epoch", "loss": "loss", "grad_norm": "grad_norm", "learning_rate": "lr"}


def _put(rec: dict, key: str, value) -> None:
    """Store a parsed `Key: value` part under its documented step field(s)."""
    names = _KNOWN_PARTS[key]
    if isinstance(value, float) and len(names) == 1:
        rec[names[0]] = value
    elif isinstance(value, dict) and "unit" in value and len(names) == 1:
        rec[names[0]] = value["value"]
        rec[names[0] + "_unit"] = value["unit"]
    elif isinstance(value, dict) and len(names) == 3 and "mean" in value:
        rec[names[0]], rec[names[1]], rec[names[2]] = value["mean"], value["min"], value["max"]
    elif isinstance(value, dict) and len(names) == 3:  # range only, no mean printed
        rec[names[1]], rec[names[2]] = value["min"], value["max"]
    elif isinstance(value, dict) and len(names) == 2 and "min" in value:
        rec[names[0]], rec[names[1]] = value["min"], value["max"]
    else:
        rec.setdefault("extra", {})[key] = value


def parse_epoch_line(line: str) -> dict | None:
    """One `Training epoch completed` line (ANSI-free) -> step fields; None if it lacks `epoch=`/`loss=`."""
    at = line.find("Training epoch completed")
    body = line[at + len("Training epoch completed"):]
    tail_at = _TAIL_RE.search(body)
    if not tail_at:
        return None
    head, tail = body[: tail_at.start()], body[tail_at.start():]
    rec: dict = {"time": parse_time(line)}
    extra: dict = {}
    for token in tail.split():
        k, sep, v = token.partition("=")
        if not sep:
            continue
        if k in _TAIL_NAMES:
            try:
                rec[_TAIL_NAMES[k]] = int(v) if k == "epoch" else _num(v)
            except ValueError:
                return None
        else:
            extra[k] = parse_value(v)
    if "epoch" not in rec or "loss" not in rec:
        return None
    m = _WARMUP_RE.match(head)
    if m:
        rec["warmup"], rec["warmup_total"] = int(m[1]), int(m[2])
        head = head[m.end():]
    layers: list[dict] = []
    seen: dict[str, tuple] = {}
    for part in head.split("|"):
        part = part.strip()
        if not part:
            continue
        if part.startswith("MoH "):
            part = part[4:].lstrip()
        lm = _LAYER_RE.match(part)
        if lm:
            label = f"L{lm[1]}"
            vals = (_num(lm[2]), _num(lm[3]) if lm[3] else None)
            if seen.get(label) == vals:
                continue  # a TRM prints its one shared layer twice
            seen.setdefault(label, vals)
            layers.append(schema.layer_row(layer=len(layers), label=label, heads_mean=vals[0],
                                           threshold_mean=vals[1]))
            continue
        key, sep, value = part.partition(":")
        key = key.strip()
        if not sep:
            extra.setdefault("unparsed", []).append(part)
        elif key == "TRM":
            rec["trm"] = _parse_trm(value)
        elif key == "DynW":
            v = parse_value(value)
            rec["aux"] = {"entropy_weight": v} if isinstance(v, float) else {}
            if not isinstance(v, float):
                extra[key] = v
        elif "/" in key and key.replace("/", "").isalnum() and value.count("/") == key.count("/"):
            for k, v in zip(key.split("/"), value.split("/")):  # e.g. `ConfAvg/ConfMin: 0.8/0.2`
                if k in _KNOWN_PARTS:
                    _put(rec, k, parse_value(v))
                else:
                    extra[k] = parse_value(v)
        elif key in _KNOWN_PARTS:
            _put(rec, key, parse_value(value))
        else:
            extra[key] = parse_value(value)
    rec["layers"] = layers
    if extra:
        rec.setdefault("extra", {}).update(extra)
    return rec


def _split_lines(text: str) -> tuple[list[str], bool]:
    """Lines of `text` and whether the last one was terminated by a line end."""
    terminated = text.endswith("\n")
    lines = text.split("\n")
    if terminated:
        lines.pop()
    return lines, terminated


def _config_value(v: str):
    v = v.strip()
    if _NUM_RE.match(v):
        f = _num(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    return v


def parse(raw: bytes, *, name: str = "log", examples: list[str] | None = None) -> list[dict]:
    """All records of one log, in file order. Raises RustLogError when there is no epoch line."""
    text, encoding = decode(raw)
    lines, terminated = _split_lines(text)
    notes: list[str] = []
    steps: list[dict] = []
    config: dict = {}
    summary: dict = {}
    stack: list[str] = []
    before_samples: list[dict] = []
    after_samples: list[dict] = []
    grads = _Grads()
    phase = schema.PHASE_PRETRAIN
    section = None          # last `=== ... ===` banner
    in_summary = False
    pending_input: str | None = None
    first_time: float | None = None
    last_time: float | None = None
    finished = False
    n_noise = 0

    for lineno, line in enumerate(lines, 1):
        if "Training epoch completed" in line:
            rec = parse_epoch_line(line)
            last_line = lineno == len(lines)
            if rec is None or (last_line and not terminated and ("grad_norm" not in rec or "lr" not in rec)):
                notes.append(f"line {lineno}: {'truncated' if last_line and not terminated else 'malformed'}"
                             " epoch line skipped")
                continue
            if last_line and not terminated:
                notes.append(f"line {lineno}: last line has no line end; parsed because all its fields are present")
            for k in ("grad_norm", "lr"):
                if k not in rec:
                    rec[k] = None
                    notes.append(f"line {lineno}: epoch line without {k}")
            if steps and rec["epoch"] <= steps[-1]["epoch"] and phase == steps[-1]["phase"]:
                if phase == schema.PHASE_PRETRAIN:
                    phase = schema.PHASE_INSTRUCT
                    notes.append(f"line {lineno}: epoch restarted at {rec['epoch']} without a banner; "
                                 "taken as the start of instruction tuning")
                else:
                    notes.append(f"line {lineno}: epoch restarted at {rec['epoch']} within instruction tuning")
            rec["phase"] = phase
            rec.update(grads.summary())
            grads = _Grads()
            t = rec["time"]
            if t is not None:
                if first_time is None:
                    first_time = t
                rec["epoch_s"] = (t - last_time) if last_time is not None else None
                last_time = t
            steps.append(rec)
            continue
        if "Layer-wise gradient norms" in line:
            norms = {int(i): _num(g) for i, g in _LW_RE.findall(line)}
            if norms:
                grads.add_warn(norms, stack)
            t = parse_time(line)
        elif "Bidirectional LARS" in line:
            m = _LARS_RE.search(line)
            if m:
                grads.add_lars(int(m[1]), m[2], _num(m[3]))
            t = parse_time(line)
        else:
            t = None
            s = line.strip()
            if s.startswith("===") and s.endswith("===") and len(s) > 6:
                section = s.strip("= ").upper()
                if section == "INSTRUCTION TUNING":
                    phase = schema.PHASE_INSTRUCT
                elif section == "AFTER TRAINING":
                    finished = True
                in_summary = False
                continue
            if "MODEL ARCHITECTURE SUMMARY" in s:
                in_summary = True
                continue
            if s.startswith("Input:"):
                pending_input = s[len("Input:"):].strip()
                continue
            if s.startswith("Output:") and pending_input is not None:
                sample = {"prompt": pending_input, "output": s[len("Output:"):].strip()}
                (after_samples if finished else before_samples).append(sample)
                pending_input = None
                continue
            m = _RUN_PLAN_RE.match(s)
            if m:
                key = schema.PHASE_PRETRAIN if m[1] == "Pre-training" else schema.PHASE_INSTRUCT
                config[key] = {"examples": int(m[2]), "epochs": int(m[3]), "lr": _num(m[4])}
                continue
            if in_summary:
                sm = _STACK_RE.match(line)
                if sm:
                    stack.append(sm[2])
                    continue
                cm = _CONFIG_RE.match(line)
                if cm:
                    summary.setdefault(cm[1].strip(), _config_value(cm[2]))
                    continue
            if s.startswith("Total parameters:"):
                summary.setdefault("Total Parameters", _config_value(s.split(":", 1)[1]))
            elif s.startswith("Network architecture:") and not stack:
                stack = [x.strip() for x in s.split(":", 1)[1].split(",")]
            elif s:
                n_noise += 1
        if t is not None and first_time is None:
            first_time = t
    if not steps:
        if _looks_binary(raw):
            raise RustLogError(f"{name}: binary file, not a RustGPT training log")
        if text.lstrip().startswith("{"):
            raise RustLogError(f"{name}: telemetry JSONL, not a text log (nothing to import)")
        if any(m in text for m in _SNIFF_MARKERS):
            raise RustLogError(f"{name}: RustGPT log without any 'Training epoch completed' line "
                               "(a failed build, or a run stopped before its first epoch)")
        raise RustLogError(f"{name}: not a RustGPT training log (no 'Training epoch completed' lines)")
    if grads.batches:
        notes.append(f"{len(grads.batches)} batch(es) of layer gradient norms after the last epoch line "
                     "were not attached (that epoch never completed)")

    t0 = first_time
    for i, rec in enumerate(steps):
        rec["step"] = i
        if rec["time"] is not None and t0 is not None:
            rec["elapsed"] = rec["time"] - t0
            if rec.get("epoch_s") is None and i == 0 and rec["time"] > t0:
                rec["epoch_s"] = rec["time"] - t0
    phases = []
    for ph in (schema.PHASE_PRETRAIN, schema.PHASE_INSTRUCT):
        recs = [r for r in steps if r["phase"] == ph]
        if not recs:
            continue
        times = [r["time"] for r in recs if r["time"] is not None]
        durations = [r["epoch_s"] for r in recs if r.get("epoch_s") is not None]
        phases.append({
            "phase": ph, "epochs": len(recs), "first_step": recs[0]["step"], "last_step": recs[-1]["step"],
            "first_epoch": recs[0]["epoch"], "last_epoch": recs[-1]["epoch"],
            "planned_epochs": config.get(ph, {}).get("epochs"),
            "wall_s": sum(durations) if durations else None,
            "end_time": times[-1] if times else None,
        })
    return _assemble(steps, phases, config, summary, stack, before_samples, after_samples, finished,
                     examples or [], notes, name=name, encoding=encoding, n_noise=n_noise, t0=t0,
                     n_lines=len(lines))


def _assemble(steps, phases, config, summary, stack, before, after, finished, examples, notes, *,
              name, encoding, n_noise, t0, n_lines) -> list[dict]:
    labels = []
    for rec in steps:
        for layer in rec["layers"]:
            if layer["label"] not in labels:
                labels.append(layer["label"])
    n_heads = None
    for key in ("Total Heads", "Query Heads"):  # "8 (all are routing candidates)" -> 8
        m = re.match(r"\d+", str(summary.get(key, "")))
        if m:
            n_heads = int(m[0])
            break
    heads_assumed = n_heads is None
    model_wide = [k for k in schema.LAYER_STATS if any(k in r for r in steps)]
    semantics = {
        "heads": schema.HEADS_SOFT_WEIGHT_SUM,
        "heads_target": "1 + 7 * complexity_mean (soft weights rescaled to the complexity-derived target)",
        "grad_norm": schema.GRAD_NORM_POST_CLIP,
        "grad_norm_clip": CLIP_VALUE,
        "grad_norm_reduction": "epoch_mean",
        "loss": "epoch mean, includes the load-balance term",
        "step": "epoch index across phases (one step record per epoch line)",
        "model_wide_stats": model_wide,
        "n_heads_assumed": heads_assumed,
        "layer_labels": "L{i} = position of the attention layer in the model's layer list",
    }
    if any(r.get("grad_norms_source") for r in steps):
        semantics["grad_norms"] = ("mean over the epoch's batches that logged per-layer norms "
                                   "(grad_norms_source, grad_norms_batches); clipping state unknown")
    run_start = schema.record(
        schema.RUN_START,
        schema_version=schema.SCHEMA_VERSION,
        run_id=f"rustgpt-{Path(name).stem}",
        time=t0,
        config={**config, **({"summary": summary} if summary else {}), **({"layer_stack": stack} if stack else {})},
        model={
            "n_layers": len(labels),
            "n_heads": n_heads if not heads_assumed else ASSUMED_N_HEADS,
            "d_model": summary.get("Embedding Dimension"),
            "router": "adaptive" if labels else None,
            "params": summary.get("Total Parameters"),
        },
        world_size=1,
        source=SOURCE,
        semantics=semantics,
        extra={"import": {
            "file": Path(name).name, "encoding": encoding, "lines": n_lines, "noise_lines": n_noise,
            "phases": phases, "notes": notes,
            "samples_before_training": before,
        }},
    )
    out = [run_start]
    for rec in steps:
        # the rest of the parsed line follows in its order: optional contract fields (elapsed) and
        # what the text log adds beyond the contract (model-wide stats, TRM/DynW lines)
        out.append(schema.record(
            schema.STEP, step=rec["step"], epoch=rec["epoch"], phase=rec["phase"],
            time=rec["time"], loss=rec["loss"], lm_loss=None, lr=rec["lr"],
            grad_norm=rec["grad_norm"], grad_norm_clipped=None,
            grad_norms=rec.pop("grad_norms", None), aux=rec.pop("aux", {}), layers=rec["layers"],
            extra=rec))
    last = steps[-1]
    if after:
        samples = []
        for s in after:
            expected, match = match_sample(s["prompt"], s["output"], examples)
            samples.append({"prompt": s["prompt"], "expected": expected, "output": s["output"], "match": match})
        known = [s["match"] for s in samples if s["match"] is not None]
        out.append(schema.record(
            schema.EVAL, step=last["step"], phase=last["phase"], loss=None,
            exact_match=(sum(known) / len(known)) if known else None, samples=samples,
        ))
    if finished:
        end_time = last["time"]
        out.append(schema.record(
            schema.RUN_END, time=end_time, status=schema.STATUS_COMPLETED,
            steps=len(steps),
            wall_s=(end_time - t0) if end_time is not None and t0 is not None else None,
        ))
    return out


def iter_records(path: str | os.PathLike, *, corpus: str | os.PathLike | None = None,
                 notes: list | None = None) -> Iterator[dict]:
    """Schema records of one RustGPT text log, in order; importer remarks appended to `notes`.

    The file is read whole (logs are a few MB at most; decoding UTF-16 needs the bytes anyway).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise RustLogError(f"{p}: cannot read: {e.strerror or e}") from e
    records = parse(raw, name=str(p), examples=load_examples(corpus))
    if notes is not None:
        notes.extend(records[0]["import"]["notes"])
    yield from records


def import_log(src: str | os.PathLike, dst: str | os.PathLike, *, corpus=None,
               notes: list | None = None) -> dict:
    """Convert a text log to `run.jsonl` at `dst`, atomically (temp file + rename).

    Returns counts {"steps", "phases": {phase: epochs}, "evals", "completed"}; nothing is left
    at `dst` when parsing fails.
    """
    records = list(iter_records(src, corpus=corpus, notes=notes))
    from .atomic import atomic_output  # raises OutputError (an OSError) naming dst

    with atomic_output(dst) as f:
        for rec in records:
            f.write(schema.encode_record(rec).encode("utf-8"))
            f.write(b"\n")
    phases: dict[str, int] = {}
    for r in records:
        if r["event"] == schema.STEP:
            phases[r["phase"]] = phases.get(r["phase"], 0) + 1
    return {
        "steps": sum(phases.values()), "phases": phases,
        "evals": sum(r["event"] == schema.EVAL for r in records),
        "completed": records[-1]["event"] == schema.RUN_END,
    }
