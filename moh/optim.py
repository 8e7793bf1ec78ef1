"""AdamW parameter groups, warmup + cosine schedule, gradient norms and global clipping.

Parameter groups for telemetry (schema.GRAD_GROUPS), by name:
  embedding  token/position embeddings (= the tied output head) and the final LayerNorm
  attention  qkv and output projections and the pre-attention LayerNorm
  ffn        MLP and the pre-MLP LayerNorm
  router     router weights (adaptive W_r; moh W_r, W_s, W_h)
  complexity complexity predictor (adaptive: rows of the router's one matrix and bias, by
             its `grad_rows`, moh/row_blocks.py)
  threshold  threshold predictor (adaptive, likewise)
Optimizer groups: matrices of the main model decay; biases, norms and everything routing
(router + predictors, with `router_lr_mult`) do not.
"""

from __future__ import annotations

import array
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

from . import native, schema
from .config import Config
from .lazy_values import LazyValues
from .row_blocks import RowBlock, group_members

GRAD_GROUPS = schema.GRAD_GROUPS
ROUTING_GROUPS = schema.ROUTING_GRAD_GROUPS


def grad_group(name: str) -> str:
    """Telemetry group of a parameter, from its qualified name in `model.LM`. (The adaptive
    router's one matrix splits into router, complexity and threshold rows by its `grad_rows`:
    `named_groups`; here, for the optimizer's grouping, it is all routing.)"""
    if ".attn.router." in name:
        return "router"
    if ".attn." in name or ".ln1." in name:
        return "attention"
    if ".mlp." in name or ".ln2." in name:
        return "ffn"
    return "embedding"  # tok_emb, pos_emb, lm_head (tied to tok_emb or not), ln_f


def named_groups(model: nn.Module) -> dict[str, list]:
    """Group name -> parameters (and `RowBlock`s of a fused one: the adaptive router's rows),
    every group key present, possibly empty."""
    return group_members(model, grad_group, GRAD_GROUPS)


def make_optimizer(model: nn.Module, cfg: Config, lr: float) -> "AdamW":
    decay, no_decay, routing = [], [], []
    for name, p in model.named_parameters():
        if grad_group(name) in ROUTING_GROUPS:
            routing.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:  # biases and LayerNorm gains
            no_decay.append(p)
    param_groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0, "name": "no_decay"},
        {"params": routing, "weight_decay": 0.0, "lr_mult": cfg.router_lr_mult, "name": "routing"},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    opt = AdamW(param_groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    set_lr(opt, lr)
    return opt


class AdamW:
    """AdamW (decoupled weight decay) doing what torch.optim.AdamW(fused=True) does for float
    tensors without amsgrad: one `torch._fused_adamw_` call per group, so runs are bit-identical
    to it (tests/moh/test_optim.py).

    Why fused: on CPU the foreach kernels loop over the parameters one dispatched op at a time,
    ~12 ops x ~45 tensors per step; the fused kernel is one call per group. Measured at the
    default size, 1 thread: 3.6 ms -> 0.9 ms per step (docs/benchmarks.md). It rounds a few
    elements 1 ulp differently from the foreach arithmetic, nothing more.

    Why not torch.optim.AdamW itself: its first use imports torch._dynamo, 2.8 s of every
    `moh train` process start (every torchrun rank too) on the 2-core machine, for nothing this
    trainer uses. `state_dict()` has torch's layout ({"state": {index: {step, exp_avg,
    exp_avg_sq}}, "param_groups": [... "params": [indices]]}), so checkpoints stay tensors and
    plain containers (torch.load(weights_only=True)).
    """

    def __init__(self, param_groups: list[dict], *, lr: float, betas: tuple[float, float], eps: float):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": 0.0}
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in param_groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self, grad_scale: torch.Tensor | None = None) -> None:
        """One update of every parameter with a gradient. `grad_scale` (a 0-d float32 tensor on
        the parameters' device, or None): each gradient is divided by it inside the fused
        kernel, which also leaves the divided gradient in `.grad` (torch's AMP unscaling; here
        the global clip, `clip_divisor`). The same as clipping the gradients first, up to the
        rounding of g / d against g * (1 / d), and one dispatched operation per parameter
        fewer: ~5 us each in a step on CPU (docs/benchmarks.md, "Seventh session")."""
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            if len(params) < len(g["params"]):  # a parameter sits this step out: its count stays
                for p in g["params"]:
                    if p.grad is None and p in self.state:
                        self.state[p]["step"] = self.state[p]["step"].clone()
            fresh = [p for p in params if p not in self.state]
            # the fused kernel reads the step count on the parameter's device (CUDA too)
            counters = {p.device: torch.zeros((), device=p.device) for p in fresh}
            for p in fresh:
                self.state[p] = {"step": counters[p.device], "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
            by_kind: dict[tuple, list[torch.Tensor]] = {}  # foreach ops take one device and dtype
            for p in params:
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            for ps in by_kind.values():
                self._update(ps, g, grad_scale)

    def _update(self, params: list[torch.Tensor], g: dict, grad_scale: torch.Tensor | None) -> None:
        (beta1, beta2) = g["betas"]
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        # the fused kernel reads the incremented count. Parameters stepped together share one
        # counter tensor, so this is one add, not one per parameter (~2.5 us each in a step)
        torch._foreach_add_(list({id(t): t for t in steps}.values()), 1.0)
        torch._fused_adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                            [s["exp_avg_sq"] for s in states], [], steps, lr=g["lr"], beta1=beta1,
                            beta2=beta2, weight_decay=g["weight_decay"], eps=g["eps"],
                            amsgrad=False, maximize=False, grad_scale=grad_scale)

    def state_dict(self) -> dict:
        index: dict[torch.Tensor, int] = {}
        groups = []
        for g in self.param_groups:
            ids = [index.setdefault(p, len(index)) for p in g["params"]]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[p]: {k: v.clone() for k, v in st.items()} for p, st in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        """Moments and step counts of a checkpoint written by `state_dict` (or torch's AdamW)."""
        params = [p for g in self.param_groups for p in g["params"]]
        saved = [len(g["params"]) for g in sd["param_groups"]]
        if saved != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"optimizer state for parameter groups of sizes {saved} does not fit this model")
        group_of = {p: gi for gi, g in enumerate(self.param_groups) for p in g["params"]}
        counters: dict[tuple, torch.Tensor] = {}  # shared again: a group's equal counts, one tensor
        self.state = {}
        for i, st in sd["state"].items():
            p = params[int(i)]
            step = torch.as_tensor(st["step"], dtype=torch.float32)
            step = counters.setdefault((group_of[p], p.device, float(step)), step.to(p.device).clone())
            self.state[p] = {"step": step, "exp_avg": st["exp_avg"].to(p).clone(),
                             "exp_avg_sq": st["exp_avg_sq"].to(p).clone()}
        for g, sg in zip(self.param_groups, sd["param_groups"]):
            g["lr"] = sg.get("lr", g["lr"])


def set_lr(opt: AdamW, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_mult"]


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from `peak` to `min_ratio * peak`.

    `step` counts from 0 within a phase of `total` optimizer steps.
    """
    warmup = min(warmup, max(total - 1, 0))
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    span = max(total - 1 - warmup, 1)
    frac = min((step - warmup) / span, 1.0)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


class GradNorms:
    """The gradient norms of a fixed group table, {group: parameters and `RowBlock`s}: call it
    after backward for (total L2 norm, one per group: 0 for a group whose parameters got no
    gradient, None for a group with no parameters). A fused tensor split into `RowBlock`s
    counts once in the total.

    The table is read once here, as every tensor operation or Python loop costs microseconds
    inside a step (docs/benchmarks.md, "Seventh session"). A call is one `_foreach_norm` over
    every gradient, its square and sum (the total, which the clip needs). The per-group norms
    (`GroupNorms`) are measured all at once: at the call with `rows`, else at
    `GroupNorms.measure()` or the first read (a step that will not be logged does none of this
    work). On the CPU one pass of native.c group_norms sums each group's tensor squares and
    fused rows' squares in double; elsewhere torch ops do (the fused tensors' row norms, their
    squares, a product with a 0/1 membership matrix made here), the same values to float32
    rounding. They are the norms of the gradients when measured, whatever happens to the
    gradients later (clipping, which the optimizer does in place), so measure() must come before
    any in-place change to read the values the step had.
    """

    def __init__(self, groups: Mapping[str, list]):
        self.groups = groups
        self.params: list[torch.Tensor] = []  # every tensor once, in table order
        at: dict[int, int] = {}
        for members in groups.values():
            for m in members:
                p = m.param if isinstance(m, RowBlock) else m
                if id(p) not in at:
                    at[id(p)] = len(self.params)
                    self.params.append(p)
        fused = {id(m.param) for ms in groups.values() for m in ms if isinstance(m, RowBlock)}
        self.fused = [i for i, p in enumerate(self.params) if id(p) in fused]
        # columns of the summed vector: each tensor's square, then each fused tensor's rows
        first_row, col = {}, len(self.params)
        for i in self.fused:
            first_row[i], col = col, col + self.params[i].shape[0]
        self.columns = col
        self.members: dict[str, list[int]] = {}
        for g, ms in groups.items():
            self.members[g] = [first_row[at[id(m.param)]] + r for m in ms if isinstance(m, RowBlock)
                               for r in range(m.start, m.stop)]
            self.members[g] += [at[id(m)] for m in ms if not isinstance(m, RowBlock)]
        self._membership: torch.Tensor | None = None
        # the same table for native.c group_norms: each group's columns, one after the other
        self._starts = array.array("q", [0])
        self._cols = array.array("q")
        for cols in self.members.values():
            self._cols.extend(cols)
            self._starts.append(len(self._cols))
        self._rows = array.array("q", [self.params[i].shape[0] for i in self.fused])
        self._widths = array.array("q", [self.params[i].numel() // max(self.params[i].shape[0], 1)
                                         for i in self.fused])
        # group_norms' output and its double scratch (one per fused row), read out as floats
        self._out = array.array("f", bytes(4 * len(self.members)))
        self._scratch = array.array("d", bytes(8 * (self.columns - len(self.params))))

    def membership(self, device: torch.device) -> torch.Tensor:
        """(groups, columns) 0/1: which squares each group sums."""
        if self._membership is None or self._membership.device != device:
            m = torch.zeros(len(self.members), self.columns, device=device)
            for k, cols in enumerate(self.members.values()):
                m[k, cols] = 1.0
            self._membership = m
        return self._membership

    def _row_norms(self, grads: list[torch.Tensor], raw: list) -> list[torch.Tensor]:
        """Each fused tensor's row norms (rows,) from its gradient now (zeros without one)."""
        return [_row_norms(grads[i]) if raw[i] is not None else grads[i].new_zeros(self.params[i].shape[0])
                for i in self.fused]

    def __call__(self, rows: bool = True) -> tuple[torch.Tensor, Mapping[str, torch.Tensor | None]]:
        raw = [p.grad for p in self.params]
        grads = raw
        if not any(g is not None for g in raw):
            total = torch.zeros((), device=_device(self.groups))
            return total, GroupNorms(self.groups, lambda g: None if not self.groups[g] else total)
        if any(g is None or g.dtype != torch.float32 for g in raw):  # (a zero stands in for none)
            zero = next(g for g in raw if g is not None).new_zeros((), dtype=torch.float32)
            grads = [zero if g is None else g.float() for g in raw]
        squares = torch.stack(torch._foreach_norm(grads)).square()  # (tensors,)
        total = squares.sum().sqrt()
        measured: list = []  # every group's norm once measured: floats (C) or a (groups,) tensor
        per_group: dict[str, torch.Tensor] = {}

        def measure() -> None:
            """Every group's norm from the gradients as they are now (once)."""
            if measured:
                return
            values = self._measure_c(squares, grads, raw)
            if values is None:  # the torch formulation
                row_norms = self._row_norms(grads, raw)
                # (one dispatch squares every row vector: _foreach_pow by 2 is square(), bit for bit)
                cols = torch.cat([squares, *torch._foreach_pow(row_norms, 2)]) if row_norms else squares
                values = (self.membership(cols.device) @ cols).sqrt()
            measured.append(values)

        def norm_of(group: str) -> torch.Tensor | None:
            if not self.groups[group]:
                return None
            measure()  # every group at once, on the first read
            if not per_group:
                values = measured[0]
                per_group.update(zip(self.members, values.unbind() if isinstance(values, torch.Tensor)
                                     else (torch.tensor(v) for v in values)))
            return per_group[group]

        def as_floats() -> dict[str, float | None] | None:
            measure()
            values = measured[0]
            if isinstance(values, torch.Tensor):
                if not values.is_cpu:
                    return None
                values = values.tolist()
            return {g: v if self.groups[g] else None for g, v in zip(self.members, values)}

        # measured now or at measure(): the optimizer's clip divides the gradients in place
        # later, and the groups are only wanted on logged steps
        if rows:
            measure()
        return total, GroupNorms(self.groups, norm_of, measure, as_floats)

    def _measure_c(self, squares: torch.Tensor, grads: list[torch.Tensor], raw: list) -> list[float] | None:
        """Every group's norm (float32 values as Python floats, in group order), by native.c
        group_norms where it can take the gradients (float32, contiguous, on the CPU), else None
        (the torch formulation): one pass instead of the row norms, their squares, a
        concatenation, the membership product and the square root (~100 us a logged step inside
        a training step). Each group's squares are summed in double and square-rooted once: the
        torch formulation's values to float32 rounding (here the fused rows' squares never go
        through a rounded norm)."""
        fused = [grads[i] if raw[i] is not None else None for i in self.fused]
        if not squares.is_cpu or any(g is not None and (not g.is_cpu or not g.is_contiguous()
                                                        or g.numel() != self._rows[j] * self._widths[j])
                                     for j, g in enumerate(fused)):
            return None  # (a gradient of another size than the table's parameter: never read past it)
        kernels = native.lib()
        if kernels is None:
            return None
        addresses = array.array("q", [0 if g is None else g.data_ptr() for g in fused])
        kernels.group_norms(len(self.params), squares.data_ptr(), len(fused), _address(addresses),
                            _address(self._rows), _address(self._widths), len(self.members),
                            _address(self._starts), _address(self._cols), _address(self._scratch),
                            _address(self._out))
        return self._out.tolist()


def _address(a: array.array) -> int:
    """The address of an array's items for a C argument (never read when it has none)."""
    return a.buffer_info()[0]


class GroupNorms(LazyValues):
    """The per-group norms of one `GradNorms` call, made on first read. `measure()` measures
    them now where the call did not (rows=False), e.g. before a clip when a step turns out to
    be logged after all. `floats()`: all of them as Python floats from one read."""

    def __init__(self, keys, value_of, measure: Callable[[], None] = lambda: None,
                 as_floats: Callable[[], "dict[str, float | None] | None"] = lambda: None):
        super().__init__(keys, value_of)
        self.measure = measure
        self._as_floats = as_floats

    def floats(self) -> dict[str, float | None] | None:
        """{group: norm as a float, None for a group without parameters}, read from the one CPU
        tensor that holds them all (no tensor per group, no stacking: ~25 us of a logged step);
        None where they are elsewhere (read them one by one, as `recorder.floats` batches)."""
        return self._as_floats()


def grad_norms(groups: Mapping[str, list]) -> tuple[torch.Tensor, Mapping[str, torch.Tensor | None]]:
    """`GradNorms(groups)()`: once. A training loop keeps the `GradNorms` (it reads the table once)."""
    return GradNorms(groups)()


def _device(groups: dict[str, list[torch.Tensor]]) -> torch.device:
    return next((p.device for ps in groups.values() for p in ps), torch.device("cpu"))


def clip_divisor(total: torch.Tensor, max_norm: float) -> torch.Tensor | None:
    """What to divide every gradient by so their global norm `total` is at most `max_norm`:
    max(1, (total + 1e-6) / max_norm), a 0-d tensor (no host sync), for `AdamW.step(grad_scale=)`;
    None when clipping is off (max_norm <= 0). The clipped norm is `total / divisor`."""
    if max_norm <= 0:
        return None
    return ((total + 1e-6) / max_norm).clamp(min=1.0)


def _row_norms(g: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each row (dim 0) of a gradient: (rows,); a 1-d one's rows are its
    elements, whose norms are their magnitudes."""
    return g.abs() if g.dim() == 1 else torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim())))
