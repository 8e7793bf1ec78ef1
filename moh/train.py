"""The training loop: pre-training on sentences, then instruction tuning on User/Assistant pairs.

    python -m moh.train [--config FILE.toml] [key=value ...]     (or `moh train`, see cli.py)

Every record is written through `moh.monitor.Recorder`, the same path a user's own routed model
uses (docs/monitor.md): routing statistics, gradient norms, evals, alerts, run_start/run_end,
resume. Progress display is a callback.
Data parallel under torchrun (`torchrun --nproc_per_node=N -m moh.train ...`, see
moh/distributed.py and docs/distributed.md): each rank trains on its slice of every global
batch through DistributedDataParallel; losses are formed from all-reduced token sums, so a
step is the 1-rank step whatever N is; rank 0 is the only writer.

Host syncs: one bool per step (is the loss/grad norm finite, needed to skip a bad step);
every other `.item()`/`.tolist()` happens on logging steps only.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import checkpoint as ckpt
from . import distributed, heap, native, schema, threads
from .atomic import replacing
from .config import Config
from .data import Corpus, count_truncated, load_corpus, make_batches
from .evaluate import exact_match, held_prompts, mean_loss
from .losses import TERMS, WEIGHT_KEYS, aux_objective
from .model import IGNORE_INDEX, LM
from .monitor import Recorder
from .optim import AdamW, clip_divisor, grad_group, lr_at, make_optimizer, set_lr
from .telemetry import Monitor, Sink
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


def _kernels(device: torch.device) -> str:
    """run_start's `kernels`: which formulation of the router's per-token work runs."""
    if device.type != "cpu":
        return f"torch ({device.type}: moh/native.c is for CPU)"
    native.lib()
    return native.status()


def _routing(cfg: Config) -> dict:
    """The Recorder's routing description (run_start's `routing` block): the engine routes
    attention heads."""
    if cfg.router == "moh":
        return {"kind": "shared_topk" if cfg.moh_shared else "topk", "top_k": cfg.moh_topk,
                "n_shared": cfg.moh_shared}
    return {"kind": cfg.router}


def _engine_groups() -> dict[str, Callable[[str], bool]]:
    """The engine's gradient-norm groups (`optim.grad_group`, by parameter name) as Recorder
    predicates, in schema order."""
    return {g: (lambda name, g=g: grad_group(name) == g) for g in schema.GRAD_GROUPS}


def train(cfg: Config, out_dir: str | os.PathLike | None = None, *, sink: Sink | None = None,
          callback: Callback | None = None, overwrite: bool = False, corpus: Corpus | None = None,
          resume: dict | None = None, monitor: Monitor | None = None, stop_on: str | None = None) -> Result:
    """Train per `cfg`; write run.jsonl, config.toml and model.pt into `out_dir` (None = no files).

    Checkpoints (moh/checkpoint.py) go to `out_dir`/checkpoint.pt every `cfg.checkpoint_every`
    steps, on SIGINT/SIGTERM and at the end. `resume` is a checkpoint from `checkpoint.load`
    (with `cfg` from `checkpoint.resume_config`): the run continues from its position and
    appends to `out_dir`'s log after a `resume` record. A first SIGINT/SIGTERM (main thread)
    finishes the current step, writes a checkpoint and raises `checkpoint.Interrupted` (a
    KeyboardInterrupt carrying `signum`) after the run_end record; a second abandons at once.

    Raises config/data errors before anything is written; on KeyboardInterrupt or any other
    exception a `run_end` record (interrupted/failed) is written and the exception re-raised.
    A non-finite step under `nonfinite="stop"` returns a Result with status "failed".

    `monitor` (rank 0 only) sees every record and, after each logged step, returns alerts, which
    are written as `alert` records and passed to `callback("alert", ...)`; an alert at level
    `stop_on` ("error" or "warning") or above ends the run like a non-finite stop (failed).
    """
    if stop_on is not None and stop_on not in _STOP_LEVELS:
        raise ValueError(f"stop_on must be one of {', '.join(_STOP_LEVELS)}, not {stop_on!r}")
    t0 = time.time()
    torch.set_num_threads(threads.resolve(cfg.threads))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    info = _dist_setup(cfg)
    corpus = corpus if corpus is not None else load_corpus(cfg.data)
    tok = Tokenizer.fit(corpus.texts())
    pre_seqs = [tok.encode(t) for t in corpus.pretrain]
    ins_seqs = [tok.encode(t) for t in corpus.instruct]
    model = LM(cfg, tok.vocab_size).to(info.device)
    held = held_prompts(corpus.instruct, tok, cfg.eval_prompts, cfg.max_len)
    digest = ckpt.corpus_digest(corpus.texts())
    if resume is not None:
        if resume["tokenizer"] != tok.to_dict() or resume.get("corpus_sha256") != digest:
            raise ckpt.CheckpointError(f"the corpus ({corpus.source}) is not the one the checkpoint was "
                                       f"trained on; --resume needs the same data")
        model.load_state_dict(resume["model"])
        ckpt.set_rng_state(resume["rng"])

    at = None if resume is None else resume["position"]
    # rank 0 writes run.jsonl (plus the extra sink and the monitor); every rank records, since
    # the statistics are reduced over ranks
    rec = Recorder(
        None if out_dir is None else out_dir, model=model, unit=schema.UNIT_HEAD, n_units=cfg.n_heads,
        **_routing(cfg), config=cfg.to_dict(), groups=_engine_groups(), log_every=cfg.log_every,
        full=cfg.telemetry_tier == "full", overwrite=overwrite, grad_clip=cfg.grad_clip or None,
        run_info={"model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
                            "router": cfg.router, "params": model.num_params()},
                  "backend": info.backend, "device": str(info.device), "kernels": _kernels(info.device),
                  "data": {"source": corpus.source, "pretrain_examples": len(pre_seqs),
                           "instruct_examples": len(ins_seqs), "vocab_size": tok.vocab_size,
                           "pretrain_tokens": sum(map(len, pre_seqs)),
                           "instruct_tokens": sum(map(len, ins_seqs)), "eval_prompts": len(held)}},
        sinks=[s for s in (sink, monitor) if s is not None], producer=schema.PRODUCER_TRAIN,
        resume=None if at is None else {
            "step": at["step"], "run_id": resume["run_id"],
            "checkpoint": os.path.join(os.fspath(out_dir), ckpt.CHECKPOINT_FILE) if out_dir else "",
            "phase": at.get("phase_name"), "epoch": at["epoch"], "batch": at["batch"]})
    log = _Log(rec, monitor if info.is_main else None, stop_on)
    cb = (callback if info.is_main else None) or (lambda kind, info: None)
    run_id = rec.run_id
    if at is None:
        for note in corpus.notes:
            log.alert(0, "info", "data_note", note)
        n_cut = count_truncated(pre_seqs + ins_seqs, cfg.max_len)
        if n_cut:
            log.alert(0, "warning", "truncated", f"{n_cut} examples longer than max_len={cfg.max_len} tokens were cut")

    def save(opt: AdamW | None, p_idx: int, epoch: int, batch: int, i: int, step: int,
             finished: bool = False) -> None:
        """Checkpoint at a position: phase index, next (epoch, batch), steps done in phase / in all."""
        if out_dir is None:
            return
        log.sync()  # the log holds every step up to the checkpoint, even after a power loss
        ckpt.save(out_dir, {
            "model": model.state_dict(), "optimizer": None if opt is None else opt.state_dict(),
            "rng": ckpt.rng_state(), "config": cfg.to_dict(), "tokenizer": tok.to_dict(),
            "corpus_sha256": digest, "run_id": run_id,
            "position": {"phase": p_idx, "phase_name": phase_names[p_idx] if p_idx < len(phase_names) else None,
                         "epoch": epoch, "batch": batch, "i": i, "step": step, "finished": finished}})

    result = Result(status=schema.STATUS_COMPLETED, steps=0, wall_s=0.0,
                    out_dir=None if out_dir is None else os.fspath(out_dir))
    step = 0 if at is None else at["step"]
    phases = [(schema.PHASE_PRETRAIN, pre_seqs, cfg.pretrain_epochs, cfg.lr, cfg.batch_size),
              (schema.PHASE_INSTRUCT, ins_seqs, cfg.instruct_epochs, cfg.instruct_lr, cfg.instruct_batch_size)]
    phase_names = [p[0] for p in phases]
    stop = ckpt.GracefulStop().__enter__()  # handlers restored in `finally`
    frozen = heap.frozen()  # set up: what lives now lives for the run, out of full GC passes (moh/heap.py)
    frozen.__enter__()
    try:
        for p_idx, (phase, seqs, epochs, peak, bsz) in enumerate(phases):
            if at is not None and p_idx < at["phase"]:
                continue  # done before the checkpoint
            if epochs == 0 or not seqs:
                if epochs and not seqs:
                    log.alert(step, "warning", "empty_phase", f"no {phase} examples in {corpus.source}; phase skipped")
                continue
            here = at if at is not None and p_idx == at["phase"] else None
            step = _run_phase(model, cfg, tok, seqs, held, phase, epochs, peak, bsz, step, log, cb, result,
                              info, p_idx=p_idx, at=here, opt_state=None if here is None else resume["optimizer"],
                              save=save, stop=stop)
            if stop.agreed(info.device) is not None:  # a signal during the phase's evaluation
                save(None, p_idx + 1, 0, 0, 0, step)
                raise ckpt.Interrupted(stop.requested)
        if out_dir is not None and info.is_main:
            ckpt.atomic_save({"model": model.state_dict(), "config": cfg.to_dict(), "tokenizer": tok.to_dict(),
                              "step": step, "vocab_size": tok.vocab_size},
                             os.path.join(out_dir, CHECKPOINT))
            _write_text(os.path.join(out_dir, CONFIG_FILE), cfg.to_toml())
            save(None, len(phases), 0, 0, 0, step, finished=True)
        distributed.barrier(info)  # no rank leaves before rank 0's files are written
    except _Stop as e:
        result.status, result.message = schema.STATUS_FAILED, str(e)
    except KeyboardInterrupt:
        result.status = schema.STATUS_INTERRUPTED
        raise
    except BaseException as e:
        result.status, result.message = schema.STATUS_FAILED, f"{type(e).__name__}: {e}"
        raise
    finally:
        stop.__exit__(None, None, None)
        frozen.__exit__(None, None, None)
        step = max(step, result.steps)  # _run_phase counts steps in result.steps as it goes
        result.steps, result.wall_s = step, time.time() - t0
        ending = result.status != schema.STATUS_COMPLETED  # an exception may be on its way out
        try:  # on a full disk the run_end cannot be written either: keep the first error
            rec.close(result.status, steps=step)
        except OSError:
            if not ending:
                raise
        cb("end", {"status": result.status, "steps": step, "wall_s": result.wall_s})
        if info.owns_group:
            distributed.teardown()
    return result


def _dist_setup(cfg: Config) -> distributed.DistInfo:
    """Rank info (joins torchrun's process group); config errors for what N ranks cannot run."""
    from .config import ConfigError

    try:
        info = distributed.setup(cfg.device, cfg.dist_timeout)
    except distributed.DistError as e:
        raise ConfigError(str(e)) from None
    for key in ("batch_size", "instruct_batch_size"):
        if getattr(cfg, key) % info.world_size:
            if info.owns_group:
                distributed.teardown()
            raise ConfigError(f"{key}: {getattr(cfg, key)} (global) is not divisible by the world size "
                              f"{info.world_size}")
    return info


_STOP_LEVELS = ("error", "warning")  # stop_on: this level or a more severe one ends the run


class _Log:
    """The run's Recorder plus the optional monitor, whose early-rule alerts after each logged
    step are written through the Recorder (rank 0: the monitor also receives every record as
    one of the Recorder's sinks)."""

    def __init__(self, rec: Recorder, monitor: Monitor | None = None, stop_on: str | None = None):
        self.rec = rec
        self.monitor, self.stop_on = monitor, stop_on

    def check(self, step: int, cb: Callback) -> str | None:
        """The monitor's new alerts after a logged step, written and reported; the message to
        stop with when one reaches `stop_on`."""
        if self.monitor is None:
            return None
        stop = None
        try:
            alerts = self.monitor.check(step)
        except Exception as e:  # noqa: BLE001 -- a fault in the checks must not end the training
            self.monitor = None
            alerts = [("warning", "alerts_off", f"the early-rule checks failed and are off for the rest "
                                                f"of the run ({type(e).__name__}: {e})")]
        for level, code, message in alerts:
            self.alert(step, level, code, message)
            cb("alert", {"step": step, "level": level, "code": code, "message": message})
            if self.stop_on is not None and _STOP_LEVELS.index(self.stop_on) >= (
                    _STOP_LEVELS.index(level) if level in _STOP_LEVELS else len(_STOP_LEVELS)):
                stop = stop or f"{code} at step {step}: {message}; stopping (--stop-on {self.stop_on})"
        return stop

    def alert(self, step: int, level: str, code: str, message: str) -> None:
        self.rec.alert(step, level, code, message)

    def sync(self) -> None:
        self.rec.sync()


def _write_text(path: str, text: str) -> None:
    with replacing(path, durable=True) as f:
        f.write(text.encode("utf-8"))


def _run_phase(model: LM, cfg: Config, tok: Tokenizer, seqs: list[list[int]], held: list,
               phase: str, epochs: int, peak: float, bsz: int, step: int, log: _Log, cb: Callback,
               result: Result, info: distributed.DistInfo = distributed.DistInfo(), *, p_idx: int = 0, at: dict | None = None, opt_state: dict | None = None,
               save: Callable[..., None] | None = None, stop: ckpt.GracefulStop | None = None) -> int:
    """One phase; `at` (a checkpoint position in this phase) resumes it at (epoch, batch, i)
    with `opt_state`. After each step: a checkpoint every cfg.checkpoint_every steps, and on a
    requested stop a checkpoint then `checkpoint.Interrupted`."""
    net = distributed.wrap(model, info)  # DDP when distributed (forward + gradient averaging)
    reduce = distributed.sum_autograd if info.distributed else None
    opt = make_optimizer(model, cfg, peak)  # fresh moments per phase
    start_epoch, start_batch, i = (at["epoch"], at["batch"], at["i"]) if at is not None else (0, 0, 0)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    rec = log.rec
    aux_weights = {t: getattr(cfg, WEIGHT_KEYS[t]) for t in TERMS}  # the step record's aux_weighted
    phase_seed = cfg.seed + (0 if phase == schema.PHASE_PRETRAIN else 7919)
    shard = {"rank": info.rank, "world_size": info.world_size}
    first = min(start_epoch, epochs - 1)  # a resume at the phase's end only re-runs its eval
    batches = make_batches(seqs, bsz, seed=phase_seed, epoch=first, pad_id=tok.pad_id, max_len=cfg.max_len, **shard)
    total = epochs * len(batches)
    cb("phase_start", {"phase": phase, "total_steps": total, "epochs": epochs})
    model.train()
    for epoch in range(start_epoch, epochs):
        if epoch != first:
            batches = make_batches(seqs, bsz, seed=phase_seed, epoch=epoch,
                                   pad_id=tok.pad_id, max_len=cfg.max_len, **shard)
        skip = start_batch if epoch == start_epoch else 0
        for b, (idx, targets) in enumerate(batches[skip:], start=skip):
            step += 1
            lr = lr_at(i, total, peak, cfg.warmup_steps, cfg.min_lr_ratio)
            set_lr(opt, lr)
            idx, targets = idx.to(info.device), targets.to(info.device)
            valid = idx != tok.pad_id  # (B, T) real tokens (routing stats, aux losses)
            logged = step % cfg.log_every == 0 or i + 1 == total  # and the last step of the phase
            token_loss, loss_sum, routings = net(idx, targets, token_losses=logged, valid=valid)
            n_tok = (targets != -100).sum()
            if reduce is not None:  # the job's token-loss sum and target count (all ranks)
                loss_sum, n_tok = reduce(torch.stack([loss_sum, n_tok.to(loss_sum.dtype)])).unbind()
            lm_loss = loss_sum / n_tok
            aux, aux_total = aux_objective(routings, valid, cfg, reduce=reduce)
            loss = lm_loss if aux_total is None else lm_loss + aux_total
            if step == cfg.inject_nonfinite_at_step:  # fault testing (config.py): a NaN loss and NaN grads
                loss = loss * float("nan")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if logged:  # before grad_norms(): the record's per-group norms are measured with it
                rec.force_log()
            norm, _ = rec.grad_norms()  # per group too, for the step record
            finite = bool(torch.isfinite(loss) & torch.isfinite(norm))  # the one per-step sync
            divisor = None  # the global clip, applied inside the optimizer's fused kernel
            failed = None
            if finite:
                divisor = clip_divisor(norm, cfg.grad_clip)
                opt.step(grad_scale=divisor)
            else:
                what = f"non-finite loss or gradient at step {step} ({phase}, epoch {epoch})"
                if cfg.nonfinite == "stop":
                    log.alert(step, "error", "nonfinite", what + "; stopping (nonfinite=stop)")
                    failed = what  # raised once the step record (the evidence) is logged
                else:
                    log.alert(step, "warning", "nonfinite", what + "; step skipped (nonfinite=skip)")
                rec.force_log()  # a skipped step is logged: its group norms measured before the gradients go
                opt.zero_grad(set_to_none=True)
            i += 1
            result.steps = step  # what run_end reports if the phase ends by an exception
            written = None
            if logged or not finite:  # (forced above: before grad_norms(), or before zero_grad())
                for li, r in enumerate(routings):
                    rec.routing(li, selected=r.hard, probs=r.probs, threshold=r.tau, complexity=r.complexity,
                                valid=valid, pred_norm=r.pred_norm)
                # the aux terms as tensors: the recorder reads them with the record's other scalars
                # (one host read) and weights the floats
                written = rec.step(
                    step, loss=loss, lm_loss=lm_loss, lr=lr, epoch=epoch, phase=phase, aux=aux,
                    aux_weights=aux_weights,
                    grad_norm_clipped=(norm if divisor is None else norm / divisor) if finite else None,
                    tokens=int(n_tok), skipped=not finite, token_loss=token_loss, has_target=targets != IGNORE_INDEX)
            else:
                rec.step(step, loss=loss)  # not logged: the recorder's step bookkeeping only
            if written is not None:
                result.last_step[phase] = written
                heads = [l["heads_mean"] for l in written["layers"]]
                cb("step", {"phase": phase, "epoch": epoch, "step": step, "i": i, "total": total,
                            "epochs": epochs, "loss": written["loss"], "heads": sum(heads) / len(heads)})
                if failed is None:
                    failed = log.check(step, cb)
            else:
                cb("step", {"phase": phase, "epoch": epoch, "step": step, "i": i, "total": total, "epochs": epochs})
            if failed is not None:
                raise _Stop(failed)
            requested = stop is not None and stop.agreed(info.device) is not None
            if save is not None and (requested or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                nxt = (epoch, b + 1) if b + 1 < len(batches) else (epoch + 1, 0)
                save(opt, p_idx, *nxt, i, step)
            if requested:
                raise ckpt.Interrupted(stop.requested)
    ev_loss = mean_loss(model, batches, reduce=distributed.sum_ if info.distributed else None)
    # greedy completions: each rank completes its slice of the held prompts, rank 0 gathers
    _, mine = exact_match(model, distributed.shard(held, info), tok, cfg.eval_max_new_tokens)
    samples = [s for part in distributed.gather_objects(mine, info) for s in part]
    em = sum(s["match"] for s in samples) / len(samples) if samples else None
    ev = rec.eval(step, loss=ev_loss, exact_match=em, phase=phase, samples=samples)
    result.evals.append(ev)
    cb("eval", ev)
    return step


def main(argv: list[str] | None = None) -> int:
    """`python -m moh.train [--config FILE] [--out DIR] [key=value ...]`; see `moh train` for more."""
    import argparse

    from .config import ConfigError, load, parse_override
    from .config import given as from_file
    from .data import DataError
    from .launch import exit_for

    ap = argparse.ArgumentParser(prog="python -m moh.train", description=main.__doc__)
    ap.add_argument("--config")
    ap.add_argument("--out")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    a = ap.parse_args(argv)
    try:
        given = dict(parse_override(o) for o in a.overrides)
        resume = None
        if a.resume is not None:  # every rank reads the checkpoint; rank 0 alone writes
            resume = ckpt.load(a.resume)
            cfg = ckpt.resume_config(resume["config"], from_file(a.config, **given))
            a.out = a.resume
        else:
            cfg = load(a.config, **given)
        res = train(cfg, a.out, overwrite=a.overwrite, resume=resume)
    except (ConfigError, ckpt.CheckpointError, DataError) as e:
        code, message = exit_for(e)
        print(message, file=sys.stderr)
        return code
    except ckpt.Interrupted as e:
        if distributed.env_rank() == 0:  # every rank stopped after the same step; one message
            print(f"interrupted ({e}); resume with --resume {a.out}", file=sys.stderr)
        return 128 + e.signum
    except FileExistsError as e:  # run.jsonl in --out without --overwrite
        print(f"data error: {e}", file=sys.stderr)
        return 3
    except Exception as e:
        why = distributed.peer_failure(e)
        if why is None:
            raise
        print(why, file=sys.stderr)
        return 1
    if distributed.env_rank() == 0:
        print(f"{res.status}: {res.steps} steps in {res.wall_s:.1f}s", file=sys.stderr)
    return 0 if res.status == schema.STATUS_COMPLETED else 1


if __name__ == "__main__":  # torchrun's workers (`moh train --nproc N`) start here
    code = main()  # an exception takes the normal way out, with its traceback
    # By now train() has closed the log, written its files atomically and destroyed the process
    # group. The interpreter's own teardown adds nothing but a hazard: freeing objects that gloo's
    # worker threads still reference once aborted a rank that had completed its run (SIGABRT,
    # "terminate called without an active exception", CI 2026-11-30 under load), failing the job.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
