"""`Recorder`: routing telemetry for any PyTorch model with routed heads or experts, written as
`run.jsonl` through the same writer and the same record definitions as `moh train`, so
`moh report / plot / compare` judge it like an engine run.

`moh train` itself writes through this class (moh/train.py): there is one telemetry path.

Per optimizer step, the recorder sees
- each routed layer's selection (and optionally router probabilities, threshold, complexity)
  from forward hooks (`watch`) or explicit calls (`routing`). A layer seen once in a step is
  held (detached) until `step()` and reduced there by `routing.layer_stats` on one process,
  or by `moh.layer_sums` sums all-reduced over ranks under torch.distributed: the engine's
  arithmetic, so its logs are unchanged. A layer seen again in the same step (gradient
  accumulation) is reduced to mergeable sums at once, so nothing per token piles up, and
  nothing per token survives `step()`;
- the gradients, in `grad_norms()` or `step()` after backward and before clipping: one norm
  per parameter group (`moh.optim.grad_norms`, the engine's);
- optionally the step's per-token LM loss (`step(token_loss=...)`), for the rank correlation
  of routing against loss per layer (moh/alignment.py).
Under torch.distributed every rank calls the same methods; the statistics are all-reduced on
logged steps (the engine's collectives) and rank 0 alone writes.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from .. import distributed, layer_sums, schema
from ..alignment import FIELDS as ALIGNMENT_FIELDS
from ..alignment import loss_alignment
from ..optim import GradNorms, GroupNorms
from ..routing import Routing, layer_stats
from ..telemetry import JsonlSink, Sink
from . import groups as grouping
from . import stacked
from .rows import layer_rows

Extract = Callable[[nn.Module, tuple, Any], "Mapping[str, Any] | None"]
_AUX_TERMS = frozenset(schema.AUX_TERMS)


def _rank() -> int:
    d = torch.distributed
    return d.get_rank() if d.is_available() and d.is_initialized() else 0


def _world() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def _float(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach()
    return float(x)


def _scalar(t: torch.Tensor) -> torch.Tensor:
    """A one-element tensor as a 0-d one, dispatching nothing it does not need (a reshape is an
    operator call: ~5 us inside a training step)."""
    return t if t.dim() == 0 else t.reshape(())


def floats(xs: list[Any]) -> list[float | None]:
    """`_float` of each value, the floating-point one-element tensors among them read from the
    device in ONE copy (a record has ~20 such scalars; each read alone is a dispatched copy and
    a sync, ~5-10 us inside a training step: docs/benchmarks.md, "Eighth session"). The same
    values: stacking promotes to the widest floating dtype among them, which holds every
    narrower value exactly. Tensors on another device than the first, or not floating point,
    are read one by one."""
    out: list[Any] = [x if isinstance(x, torch.Tensor) else _float(x) for x in xs]
    batch = [i for i, x in enumerate(out) if isinstance(x, torch.Tensor)]
    if batch:
        first = out[batch[0]]
        together = [i for i in batch if out[i].numel() == 1 and out[i].is_floating_point()
                    and out[i].device == first.device]
        if len(together) > 1:
            with torch.no_grad():  # no graph, so no detach of each loss-side scalar (an operator each)
                values = torch.stack([_scalar(out[i]) for i in together]).tolist()
            for i, v in zip(together, values):
                out[i] = v
        for i in batch:
            if isinstance(out[i], torch.Tensor):
                out[i] = _float(out[i])
    return out


def _infer_d_model(model: nn.Module | None) -> int | None:
    """Width of the model's first embedding (else the first linear layer's input)."""
    if model is None:
        return None
    for kind, attr in ((nn.Embedding, "embedding_dim"), (nn.Linear, "in_features")):
        for m in model.modules():
            if isinstance(m, kind):
                return int(getattr(m, attr))
    return None


class Recorder:
    """Context manager writing `out_dir/run.jsonl` for a routed model (docs/monitor.md).

    unit        "head" or "expert": what the model routes (the findings word it so).
    kind        routing scheme (schema.ROUTING_KINDS); default "topk" when `top_k` is given,
                else "custom".
    n_units     units per layer when known up front: run_start is written at once (else at
                the first step record, once a routing has shown the count).
    model       the module whose gradients `grad_norms()` / `step()` measure (None: none).
    config      any JSON-able mapping, logged as run_start's `config`.
    groups      group name -> predicate on qualified parameter names, tried before the
                defaults of `moh.monitor.groups`.
    log_every   write a step record every this many steps (and any step with a non-finite
                loss, a skipped step, or one marked by `force_log()`); routing is kept only
                for the forward passes of a step that will be written.
    full        also log `heads_hist` and `prob_mean` per layer (the engine's "full" tier).
    grad_clip   the norm the caller clips gradients to (run_start.semantics; None: no clipping).
    run_info    further run_start fields (e.g. `data`, `device`); a `model` mapping there
                updates the inferred model block.
    sinks       further sinks (moh.telemetry.Sink) that receive every record, e.g. a live
                display; out_dir None writes no file.
    producer    what wrote the log (run_start.producer): `moh report` judges any producer but
                "moh train" with the generic criteria (docs/monitor.md).
    resume      continue an earlier run's log: {"step": last step done, "run_id": its id, and
                any further `resume` record fields: checkpoint, phase, epoch, batch}. The log is appended to after a `resume`
                record (no new run_start); a torn last line a kill left is cut off and
                reported as an alert.
    """

    def __init__(self, out_dir: str | os.PathLike | None, *, model: nn.Module | None = None, unit: str = "expert",
                 kind: str | None = None, top_k: int | None = None, n_shared: int | None = None,
                 n_units: int | None = None, config: Mapping[str, Any] | None = None,
                 groups: Mapping[str, Callable[[str], bool]] | None = None, log_every: int = 1, full: bool = False,
                 overwrite: bool = False, d_model: int | None = None, grad_clip: float | None = None,
                 run_info: Mapping[str, Any] | None = None, sinks: tuple[Sink, ...] | list[Sink] = (),
                 resume: Mapping[str, Any] | None = None, producer: str = schema.PRODUCER_MONITOR):
        kind = kind or ("topk" if top_k else "custom")
        if unit not in schema.UNITS:
            raise ValueError(f"unit must be one of {schema.UNITS}, not {unit!r}")
        if kind not in schema.ROUTING_KINDS:
            raise ValueError(f"kind must be one of {schema.ROUTING_KINDS}, not {kind!r}")
        if int(log_every) < 1:
            raise ValueError(f"log_every must be >= 1, not {log_every}")
        self.unit, self.kind, self.top_k, self.n_shared = unit, kind, top_k, n_shared
        self.model, self.config = model, dict(config or {})
        self.log_every, self.full = int(log_every), bool(full)
        self.d_model = d_model or _infer_d_model(model)
        self.grad_clip = grad_clip
        self.run_info = dict(run_info or {})
        self.producer = str(producer)
        self.is_main = _rank() == 0
        self._sinks: list[Sink] = []
        if self.is_main:
            if out_dir is not None:
                self._sinks.append(JsonlSink(out_dir, overwrite=overwrite, append=resume is not None))
            self._sinks.extend(sinks)
        self.path = getattr(self._sinks[0], "path", None) if self._sinks else None
        self._groups = grouping.named_groups(model, groups) if model is not None else {}
        self._grad_norms = GradNorms(self._groups)  # the table read once
        self.n_units: int | None = None if n_units is None else int(n_units)
        # layer -> this step's routing: (Routing, valid) for a layer seen once, Sums after that
        self._acc: dict[int, tuple[Routing, torch.Tensor] | layer_sums.Sums] = {}
        self._layers: set[int] = set()
        self._hooks: list = []
        self._ones: torch.Tensor | None = None  # routing()'s default `valid`, never written to
        self._held: list[dict] = []  # records waiting for run_start (see _write)
        self._norms: tuple[torch.Tensor, dict] | None = None  # grad_norms() of the step in progress
        self._forced = False
        self._closed = False
        self.t0 = time.time()
        self._last_step: int | None = None if resume is None else int(resume["step"])
        self.run_id = uuid.uuid4().hex[:12] if resume is None else str(resume["run_id"])
        if resume is not None:
            self._started = True  # the log already has its run_start
            # `checkpoint` (the file resumed from) is required; "" where the caller has none
            rest = {"checkpoint": "", **{k: v for k, v in resume.items() if k not in ("step", "run_id")}}
            self._emit(schema.record(schema.RESUME, time=self.t0, step=self._last_step, run_id=self.run_id, **rest))
            torn = getattr(self._sinks[0], "torn_bytes", 0) if self._sinks else 0
            if torn:
                self.alert(self._last_step, "warning", "torn_line",
                           f"cut {torn} bytes of a torn last line (the run was killed while writing it)")
        else:
            self._started = False
            if self.n_units is not None:
                self._start()

    # --- routing -----------------------------------------------------------------------------

    def watch(self, module: nn.Module, layer: int, extract: Extract) -> None:
        """Record `extract(module, inputs, output)` (a mapping with `selected` and optionally
        `probs`, `threshold`, `complexity`, `valid`; None = nothing this time) after every forward
        pass of `module`. The hook returns nothing: the module's output is unchanged."""
        def hook(mod, inputs, output):
            if not self._wanted():
                return None
            got = extract(mod, inputs, output)
            if got is not None:
                self.routing(layer, **got)
            return None
        self._hooks.append(module.register_forward_hook(hook))

    def routing(self, layer: int, *, selected: torch.Tensor, probs: torch.Tensor | None = None,
                threshold: torch.Tensor | None = None, complexity: torch.Tensor | None = None,
                valid: torch.Tensor | None = None, pred_norm: torch.Tensor | None = None) -> None:
        """Add one forward pass of `layer`: `selected` bool (..., n_units), the units each token
        uses; `probs` (..., n) router probabilities; `threshold`, `complexity` per token (...);
        `valid` bool (...) tokens to count (default all); `pred_norm` a 0-d router scalar
        logged as is (e.g. the norm of the router's predictor weights). Ignored under
        torch.no_grad() (an evaluation forward is not part of a training step) and on steps
        that will not be logged."""
        if not self._wanted():
            return
        if selected.dim() < 1:
            raise ValueError("selected must have a trailing unit dimension (..., n_units)")
        n = int(selected.shape[-1])
        if self.n_units is None:
            self.n_units = n
        elif n != self.n_units:
            raise ValueError(f"layer {layer}: {n} units selected, earlier routing had {self.n_units}")
        lead = selected.shape[:-1]
        if valid is None:  # one all-true mask shared by the step's layers (stacked.rows needs one)
            ones = self._ones
            if ones is None or ones.shape != lead or ones.device != selected.device:
                ones = self._ones = torch.ones(lead, dtype=torch.bool, device=selected.device)
            valid = ones

        # held as given, not detached (a detach is an operator: ~4 us each inside a step, five
        # a layer): everything made from them runs under no_grad, and nothing of the step's
        # graph is held past step()
        def det(t, dtype=None):
            if t is None or dtype is None or t.dtype == dtype:
                return t
            with torch.no_grad():
                return t.to(dtype)
        r = Routing(hard=det(selected, torch.bool), probs=det(probs, torch.float32),
                    tau=det(threshold), complexity=det(complexity), pred_norm=det(pred_norm))
        valid = valid if valid.dtype == torch.bool else valid.bool()
        layer = int(layer)
        self._layers.add(layer)
        seen = self._acc.get(layer)
        if seen is None:
            self._acc[layer] = (r, valid)
        else:  # accumulation: from here on this layer is a running sum
            with torch.no_grad():
                if isinstance(seen, tuple):
                    seen = layer_sums.partial(*seen, self.full)
                self._acc[layer] = seen.merge(layer_sums.partial(r, valid, self.full))

    def force_log(self) -> None:
        """Write the step in progress (the one whose `step()` comes next) whatever `log_every`
        says, e.g. the last step of a run; routing seen from now on in this step is kept. After
        `grad_norms()`, call it before clipping: the per-group norms are measured here then."""
        self._forced = True
        if self._norms is not None:
            self._norms[1].measure()

    def _wanted(self) -> bool:
        if self._closed or not torch.is_grad_enabled():
            return False
        if self._forced:
            return True
        nxt = None if self._last_step is None else self._last_step + 1
        return nxt is None or nxt % self.log_every == 0

    # --- records ----------------------------------------------------------------------------

    def _emit(self, rec: dict) -> None:
        for s in self._sinks:
            s.write(rec)

    def _write(self, rec: dict, *, final: bool = False) -> None:
        """Write `rec`, after run_start. An eval or alert that comes before any routing was seen
        waits in memory (run_start must say how many units there are: the rules judge loads
        against it) until the first step record or the end of the run."""
        if not final and self.n_units is None and rec["event"] != schema.STEP:
            self._held.append(rec)
            return
        self._start()
        held, self._held = self._held, []
        for r in held:
            self._emit(r)
        self._emit(rec)

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        params = None if self.model is None else sum(p.numel() for p in self.model.parameters())
        routing = {"unit": self.unit, "kind": self.kind, "n_units": self.n_units}
        routing |= {k: v for k, v in (("top_k", self.top_k), ("n_shared", self.n_shared)) if v is not None}
        extra = dict(self.run_info)
        # `model` needs n_layers, n_heads and d_model >= 1. A run that ends (or logs a step)
        # before any routing was seen has none to report: 1 there, and routing.n_units is null.
        model = {"n_layers": max(len(self._layers), 1), "n_heads": self.n_units or 1,
                 "d_model": self.d_model or 1, "router": self.kind, "params": params}
        model.update(extra.pop("model", None) or {})
        self._emit(schema.record(
            schema.RUN_START, schema_version=schema.SCHEMA_VERSION, run_id=self.run_id, time=self.t0,
            config=self.config, model=model, world_size=_world(), source=schema.SOURCE_MOH,
            semantics={**schema.DEFAULT_SEMANTICS, "grad_norm_clip": self.grad_clip},
            **extra, routing=schema.routing_info(**routing), producer=self.producer,
        ))

    def grad_norms(self) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        """The total gradient norm and one per parameter group (tensors, no host sync), from
        `.grad` now: call after backward and before clipping (the norm to clip with). The step
        record uses these values, so `step()` may then come after clipping and optimizer.step()."""
        if not self._groups:
            raise ValueError("grad_norms() needs the Recorder's model=")
        # the fused tensors' row norms (their groups) only for a step that will be logged;
        # force_log() after this call measures them then
        self._norms = self._grad_norms(rows=self._wanted())
        return self._norms

    def step(self, step: int, *, loss: float, lm_loss: float | None = None, lr: float | None = None,
             epoch: int = 0, phase: str = schema.PHASE_PRETRAIN, aux: Mapping[str, float] | None = None,
             aux_weighted: Mapping[str, float | None] | None = None,
             aux_weights: Mapping[str, float] | None = None, tokens: int | None = None,
             grad_norm_clipped: float | None = None, skipped: bool | None = None,
             token_loss: torch.Tensor | None = None, has_target: torch.Tensor | None = None) -> dict | None:
        """End optimizer step `step`: write its record if it is a logged step (returned; None
        otherwise) and start the next. Call after backward and before clipping, or after
        `grad_norms()` at any point of the step.

        aux / aux_weighted  auxiliary loss terms (schema.AUX_TERMS), raw (floats or one-element
            tensors) and times their weight;
        aux_weights         instead of aux_weighted: each term's weight, the record's aux_weighted
            then weight * aux (Python floats, from the same host read as every other scalar);
        grad_norm_clipped   the norm after clipping, where the caller clips;
        skipped             the optimizer step was skipped (e.g. non-finite gradients): logged;
        token_loss, has_target  the per-token LM loss of the step's forward pass: `has_target`
            bool in the routing's leading shape marks the tokens with a loss, `token_loss` (N,)
            their losses in row-major order (token_loss None: not measured this step). Adds each
            layer's rank correlation of its routing with the loss (complexity_loss_corr,
            heads_loss_corr; null where undefined, and after accumulation)."""
        step = int(step)
        self._last_step = step
        acc, self._acc = self._acc, {}
        norms, self._norms = self._norms, None
        forced, self._forced = self._forced, False
        loss_f = _float(loss)
        finite_loss = loss_f is not None and math.isfinite(loss_f)
        if step % self.log_every and finite_loss and not forced and not skipped:
            return None
        if aux_weighted is not None and aux_weights is not None:
            raise ValueError("give aux_weighted or aux_weights, not both")
        unknown = sorted(t for t in aux or () if t not in _AUX_TERMS)
        if unknown:
            raise ValueError(f"unknown aux terms {unknown}; known: {schema.AUX_TERMS}")
        if norms is None:
            norms = self._grad_norms() if self._groups else (None, {g: None for g in schema.GRAD_GROUPS})
        norm, per = norms
        layers = self._layer_rows(acc, token_loss, has_target)
        # every scalar of the record in one host read (the group norms in their own where they
        # are in one CPU tensor already)
        per_f = per.floats() if isinstance(per, GroupNorms) else None
        by_group = [] if per_f is not None else [per[g] for g in per]
        aux_, weighted = aux or {}, aux_weighted or {}
        values = floats([lm_loss, lr, norm, grad_norm_clipped, *by_group,
                         *(aux_.get(t) for t in schema.AUX_TERMS), *(weighted.get(t) for t in schema.AUX_TERMS)])
        lm_loss_f, lr_f, norm_f, clipped_f = values[:4]
        at = 4 + len(by_group)
        if per_f is None:
            per_f = dict(zip(per, values[4:at]))
        aux_f = dict(zip(schema.AUX_TERMS, values[at:at + len(schema.AUX_TERMS)]))
        weighted_f = dict(zip(schema.AUX_TERMS, values[at + len(schema.AUX_TERMS):]))
        if aux_weights is not None:
            weighted_f = {t: None if aux_f[t] is None or t not in aux_weights else aux_weights[t] * aux_f[t]
                          for t in schema.AUX_TERMS}
        optional: dict[str, Any] = {}
        if aux_weighted is not None or aux_weights is not None:
            optional["aux_weighted"] = weighted_f
        optional["layers"] = layers
        if tokens is not None:
            optional["tokens"] = int(tokens)
        if skipped is not None:
            optional["skipped"] = bool(skipped)
        now = time.time()
        rec = schema.record(
            schema.STEP, step=step, epoch=int(epoch), phase=phase, time=now,
            elapsed=now - self.t0, loss=loss_f,
            lm_loss=loss_f if lm_loss is None else lm_loss_f, lr=lr_f,
            grad_norm=norm_f, grad_norm_clipped=clipped_f, grad_norms=per_f, aux=aux_f, **optional,
        )
        self._write(rec)
        return rec

    def _layer_rows(self, acc: dict, token_loss: torch.Tensor | None,
                    has_target: torch.Tensor | None) -> list[dict]:
        """The per-layer fields of the step, over every rank's tokens, one host sync.

        One process, a layer seen once: `routing.layer_stats` (float32, as `moh train` has
        always logged), computed for all layers at once by `stacked.rows` when their shapes
        match (the same values to the bit, a fraction of the operator calls). Under torch.distributed: the sums of every layer (moh/layer_sums.py)
        all-reduced with one SUM and one MAX collective, so means are token-weighted over the
        job and a rank without real tokens adds nothing. After accumulation: the merged sums."""
        order = sorted(acc)
        parts = [acc[li] for li in order]
        if _world() == 1 and all(isinstance(p, tuple) for p in parts):
            # every layer seen once with matching shapes: all layers' reductions at once, the
            # same values (moh/monitor/stacked.py); None = not stackable, reduce per layer
            rows = stacked.rows(parts, order, self.full, has_target, token_loss)
            if rows is not None:
                return rows
        with torch.no_grad():  # (the routing is held as given: no graph from its statistics)
            return self._layer_rows_reduced(parts, order, token_loss, has_target)

    def _layer_rows_reduced(self, parts: list, order: list[int], token_loss: torch.Tensor | None,
                            has_target: torch.Tensor | None) -> list[dict]:
        """_layer_rows layer by layer, or over ranks: layer_stats, or the sums all-reduced."""
        if _world() > 1:
            sums = [layer_sums.partial(*p, self.full) if isinstance(p, tuple) else p for p in parts]
            stats = [layer_sums.finish(s) for s in layer_sums.reduce(sums, distributed.sum_, distributed.max_)]
        else:
            stats = [layer_stats(*p, full=self.full) if isinstance(p, tuple) else layer_sums.finish(p)
                     for p in parts]
        if has_target is not None:  # the caller measures alignment: its fields are in every row
            if parts and all(isinstance(p, tuple) for p in parts):
                gather = distributed.gather_columns if _world() > 1 else None
                corr = loss_alignment([p[0] for p in parts], has_target, token_loss, gather=gather)
            else:  # accumulated: the loss of one forward pass does not pair with the sums
                corr = [{f: None for f in ALIGNMENT_FIELDS} for _ in parts]
            stats = [s | c for s, c in zip(stats, corr)]
        return layer_rows(stats, order)

    def eval(self, step: int, *, loss: float | None, exact_match: float | None = None,
             phase: str = schema.PHASE_PRETRAIN, samples: list[dict] | None = None) -> dict:
        """An evaluation record (held-out loss; exact match and samples where the caller has
        them); returned."""
        rec = schema.record(schema.EVAL, step=int(step), phase=phase, loss=_float(loss),
                            exact_match=_float(exact_match), samples=list(samples or []), time=time.time())
        self._write(rec)
        return rec

    def alert(self, step: int, level: str, code: str, message: str) -> None:
        """An alert record (level: info, warning or error), shown by `moh report`."""
        if level not in schema.ALERT_LEVELS:
            raise ValueError(f"alert level must be one of {schema.ALERT_LEVELS}, not {level!r}")
        self._write(schema.record(schema.ALERT, step=int(step), level=level, code=str(code),
                                  message=str(message), time=time.time()))

    # --- lifetime ---------------------------------------------------------------------------

    def sync(self) -> None:
        """fsync the log (e.g. before a checkpoint: the log then holds every step up to it even
        after a power loss)."""
        for s in self._sinks:
            if hasattr(s, "sync"):
                s.sync()

    def close(self, status: str = schema.STATUS_COMPLETED, steps: int | None = None) -> None:
        """Remove the hooks, write `run_end` (`steps`: default the last step seen) and close the
        sinks (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for h in self._hooks:
            h.remove()
        try:
            self._write(schema.record(schema.RUN_END, time=time.time(), status=status,
                                      steps=(self._last_step or 0) if steps is None else int(steps),
                                      wall_s=time.time() - self.t0), final=True)
        finally:
            for s in self._sinks:
                s.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            status = schema.STATUS_COMPLETED
        elif issubclass(exc_type, KeyboardInterrupt):
            status = schema.STATUS_INTERRUPTED
        else:
            status = schema.STATUS_FAILED
        self.close(status)
        return False  # never swallow the exception
