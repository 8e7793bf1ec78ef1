"""The training loop: pre-training on sentences, then instruction tuning on User/Assistant pairs.

    python -m moh.train [--config FILE.toml] [key=value ...]     (or `moh train`, see cli.py)

Every record goes to one telemetry sink (see telemetry.py); progress display is a callback.
The loop is written to be rank-aware later (torchrun): the LM loss is a token SUM divided by
the token count (to become the global count), rank 0 is the only writer, and batches come
from `data.make_batches(rank=, world_size=)`. DDP itself is not implemented here.

Host syncs: one bool per step (is the loss/grad norm finite, needed to skip a bad step);
every other `.item()`/`.tolist()` happens on logging steps only.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import schema
from .config import Config
from .data import Corpus, count_truncated, load_corpus, make_batches
from .evaluate import exact_match, held_prompts, mean_loss
from .losses import TERMS, WEIGHT_KEYS, aux_losses, weighted_total
from .model import LM
from .optim import clip_, grad_norms, lr_at, make_optimizer, named_groups, set_lr
from .routing import layer_stats
from .telemetry import JsonlSink, NullSink, Sink
from .tokenizer import Tokenizer

CHECKPOINT = "model.pt"
CONFIG_FILE = "config.toml"

Callback = Callable[[str, dict], None]


@dataclass
class Result:
    status: str  # schema.RUN_STATUSES
    steps: int
    wall_s: float
    out_dir: str | None
    last_step: dict[str, dict] = field(default_factory=dict)  # phase -> its last step record
    evals: list[dict] = field(default_factory=list)
    message: str = ""


class _Stop(Exception):
    """Non-finite values under `nonfinite = "stop"`: end the run with status failed."""


def _f(t: torch.Tensor | float | None) -> float | None:
    return None if t is None else float(t.detach() if isinstance(t, torch.Tensor) else t)


_LIST_STATS = ("head_load", "heads_hist", "prob_mean")  # per-head / per-count lists
_FULL_TIER_STATS = ("heads_hist", "prob_mean")  # optional layer keys (telemetry_tier = "full")


def _rows(stats: list[dict[str, Any]]) -> list[dict]:
    """Per-layer stat tensors -> JSON-ready dicts, with one host sync for all of them."""
    flat: list[torch.Tensor] = []
    for s in stats:
        for v in s.values():
            if v is not None:
                flat.append(v.reshape(-1).float())
    values = torch.cat(flat).tolist() if flat else []
    pos, rows = 0, []
    for i, s in enumerate(stats):
        row: dict[str, Any] = {"layer": i}
        for k, v in s.items():
            if v is None:
                row[k] = None
                continue
            n = v.numel()
            chunk = values[pos : pos + n]
            pos += n
            row[k] = chunk if k in _LIST_STATS else chunk[0]
        rows.append({f: row.get(f) for f in schema.LAYER_FIELDS}
                    | {k: row[k] for k in _FULL_TIER_STATS if k in row})
    return rows


def train(cfg: Config, out_dir: str | os.PathLike | None = None, *, sink: Sink | None = None,
          callback: Callback | None = None, overwrite: bool = False, corpus: Corpus | None = None) -> Result:
    """Train per `cfg`; write run.jsonl, config.toml and model.pt into `out_dir` (None = no files).

    Raises config/data errors before anything is written; on KeyboardInterrupt or any other
    exception a `run_end` record (interrupted/failed) is written and the exception re-raised.
    A non-finite step under `nonfinite="stop"` returns a Result with status "failed".
    """
    t0 = time.time()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    corpus = corpus if corpus is not None else load_corpus(cfg.data)
    tok = Tokenizer.fit(corpus.texts())
    pre_seqs = [tok.encode(t) for t in corpus.pretrain]
    ins_seqs = [tok.encode(t) for t in corpus.instruct]
    model = LM(cfg, tok.vocab_size)
    held = held_prompts(corpus.instruct, tok, cfg.eval_prompts, cfg.max_len)

    files: list[Sink] = []
    if out_dir is not None:
        files.append(JsonlSink(out_dir, overwrite=overwrite))
    log = _Log(files, sink, t0)
    cb = callback or (lambda kind, info: None)

    run_id = uuid.uuid4().hex[:12]
    log.write({
        "event": schema.RUN_START, "schema_version": schema.SCHEMA_VERSION, "run_id": run_id,
        "time": t0, "config": cfg.to_dict(),
        "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
                  "router": cfg.router, "params": model.num_params()},
        "world_size": 1, "source": schema.SOURCE_MOH,
        "semantics": {**schema.DEFAULT_SEMANTICS, "grad_norm_clip": cfg.grad_clip or None},
        "backend": None, "device": "cpu",
        "data": {"source": corpus.source, "pretrain_examples": len(pre_seqs),
                 "instruct_examples": len(ins_seqs), "vocab_size": tok.vocab_size,
                 "pretrain_tokens": sum(map(len, pre_seqs)), "instruct_tokens": sum(map(len, ins_seqs)),
                 "eval_prompts": len(held)},
    })
    for note in corpus.notes:
        log.alert(0, "info", "data_note", note)
    n_cut = count_truncated(pre_seqs + ins_seqs, cfg.max_len)
    if n_cut:
        log.alert(0, "warning", "truncated", f"{n_cut} examples longer than max_len={cfg.max_len} tokens were cut")

    result = Result(status=schema.STATUS_COMPLETED, steps=0, wall_s=0.0,
                    out_dir=None if out_dir is None else os.fspath(out_dir))
    step = 0
    try:
        phases = [(schema.PHASE_PRETRAIN, pre_seqs, cfg.pretrain_epochs, cfg.lr, cfg.batch_size),
                  (schema.PHASE_INSTRUCT, ins_seqs, cfg.instruct_epochs, cfg.instruct_lr, cfg.instruct_batch_size)]
        for phase, seqs, epochs, peak, bsz in phases:
            if epochs == 0 or not seqs:
                if epochs and not seqs:
                    log.alert(step, "warning", "empty_phase", f"no {phase} examples in {corpus.source}; phase skipped")
                continue
            step = _run_phase(model, cfg, tok, seqs, held, phase, epochs, peak, bsz, step, log, cb, result)
        if out_dir is not None:
            torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "tokenizer": tok.to_dict(),
                        "step": step, "vocab_size": tok.vocab_size},
                       os.path.join(out_dir, CHECKPOINT))
            with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
                f.write(cfg.to_toml())
    except _Stop as e:
        result.status, result.message = schema.STATUS_FAILED, str(e)
    except KeyboardInterrupt:
        result.status = schema.STATUS_INTERRUPTED
        raise
    except BaseException as e:
        result.status, result.message = schema.STATUS_FAILED, f"{type(e).__name__}: {e}"
        raise
    finally:
        result.steps, result.wall_s = step, time.time() - t0
        log.write({"event": schema.RUN_END, "time": time.time(), "status": result.status,
                   "steps": step, "wall_s": result.wall_s})
        log.close()
        cb("end", {"status": result.status, "steps": step, "wall_s": result.wall_s})
    return result


class _Log:
    """Rank-0 writer: the run's files plus an optional extra sink."""

    def __init__(self, files: list[Sink], extra: Sink | None, t0: float):
        self.sinks = files + ([extra] if extra is not None else [])
        self.t0 = t0

    def write(self, record: dict) -> None:
        for s in self.sinks:
            s.write(record)

    def alert(self, step: int, level: str, code: str, message: str) -> None:
        self.write({"event": schema.ALERT, "step": step, "level": level, "code": code,
                    "message": message, "time": time.time()})

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def _run_phase(model: LM, cfg: Config, tok: Tokenizer, seqs: list[list[int]], held: list,
               phase: str, epochs: int, peak: float, bsz: int, step: int, log: _Log, cb: Callback,
               result: Result) -> int:
    opt = make_optimizer(model, cfg, peak)  # fresh moments per phase
    groups = named_groups(model)
    params = [p for p in model.parameters()]
    phase_seed = cfg.seed + (0 if phase == schema.PHASE_PRETRAIN else 7919)
    batches = make_batches(seqs, bsz, seed=phase_seed, epoch=0, pad_id=tok.pad_id, max_len=cfg.max_len)
    total = epochs * len(batches)
    cb("phase_start", {"phase": phase, "total_steps": total, "epochs": epochs})
    model.train()
    i = 0  # step within the phase
    for epoch in range(epochs):
        if epoch:
            batches = make_batches(seqs, bsz, seed=phase_seed, epoch=epoch,
                                   pad_id=tok.pad_id, max_len=cfg.max_len)
        for idx, targets in batches:
            step += 1
            lr = lr_at(i, total, peak, cfg.warmup_steps, cfg.min_lr_ratio)
            set_lr(opt, lr)
            valid = idx != tok.pad_id  # (B, T) real tokens (routing stats, aux losses)
            _, loss_sum, routings = model(idx, targets)
            n_tok = (targets != -100).sum()  # global count under DDP (all-reduce) later
            lm_loss = loss_sum / n_tok
            aux = aux_losses(routings, valid, cfg)
            aux_total = weighted_total(aux, cfg)
            loss = lm_loss if aux_total is None else lm_loss + aux_total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm, per_group = grad_norms(groups)
            finite = bool(torch.isfinite(loss) & torch.isfinite(norm))  # the one per-step sync
            clipped = norm
            if finite:
                clipped = clip_(params, norm, cfg.grad_clip)
                opt.step()
            else:
                what = f"non-finite loss or gradient at step {step} ({phase}, epoch {epoch})"
                if cfg.nonfinite == "stop":
                    log.alert(step, "error", "nonfinite", what + "; stopping (nonfinite=stop)")
                    raise _Stop(what)
                log.alert(step, "warning", "nonfinite", what + "; step skipped (nonfinite=skip)")
                opt.zero_grad(set_to_none=True)
            i += 1
            last = i == total
            if step % cfg.log_every == 0 or last or not finite:
                rec = {
                    "event": schema.STEP, "step": step, "epoch": epoch, "phase": phase, "time": time.time(),
                    "elapsed": time.time() - log.t0,
                    "loss": _f(loss), "lm_loss": _f(lm_loss), "lr": lr,
                    "grad_norm": _f(norm), "grad_norm_clipped": _f(clipped) if finite else None,
                    "grad_norms": {g: _f(v) for g, v in per_group.items()},
                    "aux": {t: _f(aux[t]) for t in TERMS},
                    "aux_weighted": {t: (None if aux[t] is None else
                                         getattr(cfg, WEIGHT_KEYS[t]) * _f(aux[t])) for t in TERMS},
                    "layers": _rows([layer_stats(r, valid, full=cfg.telemetry_tier == "full") for r in routings]),
                    "tokens": int(n_tok), "skipped": not finite,
                }
                log.write(rec)
                result.last_step[phase] = rec
                heads = [l["heads_mean"] for l in rec["layers"]]
                cb("step", {"phase": phase, "epoch": epoch, "step": step, "i": i, "total": total,
                            "loss": rec["loss"], "heads": sum(heads) / len(heads)})
            else:
                cb("step", {"phase": phase, "epoch": epoch, "step": step, "i": i, "total": total})
    ev_loss = mean_loss(model, batches)
    em, samples = exact_match(model, held, tok, cfg.eval_max_new_tokens)
    rec = {"event": schema.EVAL, "step": step, "phase": phase, "loss": ev_loss, "exact_match": em,
           "samples": samples, "time": time.time()}
    log.write(rec)
    result.evals.append(rec)
    cb("eval", rec)
    return step


def main(argv: list[str] | None = None) -> int:
    """`python -m moh.train [--config FILE] [--out DIR] [key=value ...]`; see `moh train` for more."""
    import argparse

    from .config import ConfigError, load, parse_override
    from .data import DataError

    ap = argparse.ArgumentParser(prog="python -m moh.train", description=main.__doc__)
    ap.add_argument("--config")
    ap.add_argument("--out")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    a = ap.parse_args(argv)
    try:
        cfg = load(a.config, **dict(parse_override(o) for o in a.overrides))
        res = train(cfg, a.out, overwrite=a.overwrite)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (DataError, FileExistsError) as e:
        print(f"data error: {e}", file=sys.stderr)
        return 3
    print(f"{res.status}: {res.steps} steps in {res.wall_s:.1f}s", file=sys.stderr)
    return 0 if res.status == schema.STATUS_COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
