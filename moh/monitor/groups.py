"""Which gradient-norm group a parameter of someone else's model belongs to, by its name.

The engine knows its own parameter names (`moh.optim.grad_group`); a recorded model's names are
whatever its author chose, so the defaults go by common words and a `groups=` argument
(group name -> predicate on the qualified parameter name) overrides them. The first group whose
predicate accepts a name wins, user groups before the defaults.

One tensor can also hold several groups' parameters in its rows (a fused projection): its
module declares `grad_rows` (moh/row_blocks.py) and each block of rows counts toward its own
group.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import torch.nn as nn

from .. import schema
from ..row_blocks import group_members

Predicate = Callable[[str], bool]


def _words(*words: str) -> Predicate:
    # whole dotted/underscored name parts: "gate" matches "moe.gate.weight" and "gate_proj"
    # but not "aggregate"
    pat = re.compile(r"(?:^|[._])(?:" + "|".join(words) + r")(?:$|[._\d])")
    return lambda name: bool(pat.search(name))


# Order matters: a router inside an attention block is still `router`. Mixtral-style expert MLPs
# name their gate projection `gate_proj` / `w1`..`w3`, so `gate` alone would take an expert's
# weights: the router words exclude `gate_proj` and `gate_up_proj`.
_ROUTER = _words("router", "gate", "gating", "routers", "gates")
_NOT_ROUTER = _words("gate_proj", "gate_up_proj")
DEFAULT_GROUPS: dict[str, Predicate] = {
    "router": lambda n: _ROUTER(n) and not _NOT_ROUTER(n),
    "complexity": _words("complexity"),
    "threshold": _words("threshold"),
    "embedding": _words("emb", "embed", "embedding", "embeddings", "embed_tokens", "wte", "wpe", "tok_emb",
                        "pos_emb", "lm_head", "unembed", "ln_f", "final_norm", "norm_f"),
    "attention": _words("attn", "attention", "self_attn", "q_proj", "k_proj", "v_proj", "o_proj", "qkv"),
    # everything else (experts, MLPs, norms inside blocks) is the feed-forward side
}
FALLBACK_GROUP = "ffn"


def group_of(name: str, groups: Mapping[str, Predicate] | None = None) -> str:
    """The group of the parameter called `name`: the first user group that accepts it, else the
    first default group, else `ffn`."""
    for table in (groups or {}, DEFAULT_GROUPS):
        for g, pred in table.items():
            if pred(name):
                return g
    return FALLBACK_GROUP


def named_groups(model: nn.Module, groups: Mapping[str, Predicate] | None = None) -> dict[str, list]:
    """Group name -> parameters that require a gradient (and `RowBlock`s). Every schema group is
    a key (empty where no parameter falls in it, which the record logs as null), then any user
    group."""
    keys = list(schema.GRAD_GROUPS) + [g for g in (groups or {}) if g not in schema.GRAD_GROUPS]
    return group_members(model, lambda name: group_of(name, groups), keys)
