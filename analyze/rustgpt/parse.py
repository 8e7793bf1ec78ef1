"""The parser: epoch lines, banners and gradient lines into step records, assembled through
moh/schema.py into run_start / step / eval / run_end; `iter_records` and `import_log`."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from moh import schema

from .corpus import load_examples, match_sample
from .text import (_CONFIG_RE, _LARS_RE, _LAYER_RE, _LW_RE, _NUM_RE, _RUN_PLAN_RE, _SNIFF_MARKERS, _STACK_RE,
                   _TAIL_RE, _WARMUP_RE, ASSUMED_N_HEADS, CLIP_VALUE, SOURCE, RustLogError, _group_of,
                   _looks_binary, _num, _parse_trm, decode, parse_time, parse_value)

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
    from ..atomic import atomic_output  # raises OutputError (an OSError) naming dst

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
