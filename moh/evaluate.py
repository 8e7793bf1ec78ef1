"""End-of-phase evaluation: teacher-forced loss and greedy exact match on held prompts.

Held prompts are instruction examples split at "Assistant:" (`data.split_prompt`); the model
greedily continues the prompt and the continuation, up to and including the first `</s>`,
must equal the expected answer's token ids exactly. Prompts of equal length are generated as
one batch, so an evaluation costs a few dozen forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .data import split_prompt
from .model import LM
from .tokenizer import Tokenizer


@dataclass
class Held:
    prompt: str
    expected: str  # answer text without the trailing </s>
    prompt_ids: list[int]
    answer_ids: list[int]  # ends with eos


def held_prompts(instruct: list[str], tok: Tokenizer, n: int, max_len: int) -> list[Held]:
    """Up to `n` prompts spread evenly over the instruction set (deterministic)."""
    pairs = [p for p in (split_prompt(t) for t in instruct) if p is not None]
    if n <= 0 or not pairs:
        return []
    if len(pairs) > n:
        pairs = [pairs[i * len(pairs) // n] for i in range(n)]
    out = []
    for prompt, answer in pairs:
        p_ids, a_ids = tok.encode(prompt), tok.encode(answer)
        if len(p_ids) >= max_len:
            continue  # no room to generate anything
        expected = answer.replace("</s>", "").strip()
        out.append(Held(prompt, expected, p_ids, a_ids))
    return out


@torch.no_grad()
def exact_match(model: LM, held: list[Held], tok: Tokenizer, max_new_tokens: int) -> tuple[float | None, list[dict]]:
    """(exact-match rate or None when nothing is held, samples in `held` order)."""
    if not held:
        return None, []
    was_training = model.training
    model.eval()
    outputs: dict[int, list[int]] = {}
    by_len: dict[int, list[int]] = {}
    for i, h in enumerate(held):
        by_len.setdefault(len(h.prompt_ids), []).append(i)
    for _, members in sorted(by_len.items()):
        prompts = torch.tensor([held[i].prompt_ids for i in members], dtype=torch.long,
                               device=next(model.parameters()).device)
        new = model.generate(prompts, max_new_tokens, tok.eos_id).tolist()
        for i, ids in zip(members, new):
            if tok.eos_id in ids:
                ids = ids[: ids.index(tok.eos_id) + 1]
            outputs[i] = ids
    model.train(was_training)
    samples, hits = [], 0
    for i, h in enumerate(held):
        ids = outputs[i]
        match = ids == h.answer_ids
        hits += match
        text = tok.decode([t for t in ids if t != tok.eos_id])
        samples.append({"prompt": h.prompt, "expected": h.expected, "output": text, "match": match})
    return hits / len(held), samples


@torch.no_grad()
def mean_loss(model: LM, batches: list[tuple[torch.Tensor, torch.Tensor]],
              reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float | None:
    """Token-mean LM loss over `batches` (teacher forcing, no dropout).

    `reduce` maps [loss sum, token count] to the job's (an all-reduce SUM under data
    parallelism, where `batches` are this rank's shards); every rank must call it.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = torch.zeros((), device=device), 0
    for idx, targets in batches:
        idx, targets = idx.to(device), targets.to(device)
        _, loss_sum, _ = model(idx, targets)
        total += loss_sum
        count += int((targets != -100).sum())
    model.train(was_training)
    if reduce is not None:
        total, c = reduce(torch.stack([total.double(), torch.tensor(float(count), device=device,
                                                                    dtype=torch.float64)])).unbind()
        total, count = float(total), int(c)
    return float(total) / count if count else None
