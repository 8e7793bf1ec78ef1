"""`attach(model, rec)`: record the expert routing of a Hugging Face transformers MoE model.

Supported families: Mixtral, Qwen2-MoE and OLMoE (any size: the hooks go by module structure,
not by dimensions), with transformers 5 (`pip install -e '.[hf]'`; tested with 5.24.0). Each
family's decoder layer holds a `...SparseMoeBlock` whose `gate` is the router, a
`...TopKRouter` returning (logits, top-k weights, top-k expert indices); transformers 4.x had an
nn.Linear there and is not supported (attach raises). The hook on the gate records, per layer,
the experts each token was sent to (`selected`) and the router's softmax probabilities (`probs`).
Qwen2-MoE's always-on shared expert is not routed and is not among the recorded units; its `shared_expert_gate` counts as a router parameter.

Every position of the batch is counted (padding too: the router sees flattened hidden states
with no attention mask).
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from .recorder import Recorder

_BLOCK = re.compile(r"(Mixtral|Qwen2Moe|Olmoe)SparseMoeBlock$")
_LAYER = re.compile(r"layers\.(\d+)\.")


def moe_blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(layer index, MoE block) for every supported sparse MoE block of `model`, by layer."""
    out = []
    for name, m in model.named_modules():
        if _BLOCK.search(type(m).__name__) and isinstance(getattr(m, "gate", None), nn.Module):
            hit = _LAYER.search(name + ".")
            out.append((int(hit.group(1)) if hit else len(out), m))
    return sorted(out, key=lambda t: t[0])


def _top_k(block: nn.Module) -> int:
    k = getattr(block, "top_k", None) or getattr(block.gate, "top_k", None)
    if k is None:
        raise ValueError(f"{type(block).__name__}: cannot tell how many experts a token uses (no top_k)")
    return int(k)


def _extract(block: nn.Module):
    """The recorder's extract for one block's gate: expert mask and probabilities per token."""
    def extract(gate, inputs, output):
        logits, idx = output[0], output[2]  # (logits, top-k weights, top-k indices)
        logits = logits.reshape(-1, logits.shape[-1])
        probs = logits.detach().float().softmax(-1)
        selected = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, idx.reshape(len(probs), -1), True)
        return {"selected": selected, "probs": probs}
    return extract


def attach(model: nn.Module, rec: Recorder) -> list[int]:
    """Hook the router of every supported MoE block of `model` into `rec`; the layer indices.

    Also tells the recorder what is routed (unit expert, kind topk, top_k) unless its run_start
    is already written. Raises ValueError when `model` has no supported MoE block."""
    blocks = moe_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__}: no Mixtral, Qwen2-MoE or OLMoE sparse MoE block found")
    if not rec._started:
        rec.unit, rec.kind, rec.top_k = "expert", "topk", _top_k(blocks[0][1])
    for _, block in blocks:
        if isinstance(block.gate, nn.Linear):
            raise ValueError(f"{type(block).__name__}: a Linear gate (transformers 4.x); "
                             "moh.monitor.hf needs transformers 5")
    for layer, block in blocks:
        rec.watch(block.gate, layer=layer, extract=_extract(block))
    return [layer for layer, _ in blocks]
