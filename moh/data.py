"""Training text: where it comes from (`load_corpus`) and how it becomes batches (`make_batches`).

A corpus has two phases: `pretrain` (plain sentences) and `instruct` (`User: ... Assistant: ...`
pairs). Every example is one line of text ending in the `</s>` marker; `load_corpus` adds the
marker where a source lacks it and collapses runs of whitespace to one space.

Batching is length-bucketed rather than packed: every example starts at position 0 of its own
row (greedy evaluation feeds a prompt at position 0, so training must see the same positions),
and examples of similar length share a batch so that right-padding wastes little compute.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from importlib import resources

import torch

EOS = "</s>"
IGNORE_INDEX = -100  # targets at padding and at each example's last position

# Directory layouts load_corpus understands: (pretrain file, instruct file).
REFERENCE_LAYOUT = ("pretraining_data.json", "chat_training_data.json")  # the Rust trainer's
OWN_LAYOUT = ("pretrain.txt", "instruct.txt")  # ours, as embedded in moh/corpus

_INSTRUCT_RE = re.compile(r"^User:\s*(\S.*?)\s*Assistant:\s*(\S.*)$", re.DOTALL)
_WS_RE = re.compile(r"\s+")


class DataError(Exception):
    """Unusable training data. The message is one line naming the file (and line)."""


@dataclass
class Corpus:
    pretrain: list[str]
    instruct: list[str]
    source: str  # "embedded", or the path the examples were read from
    # Non-fatal notes about the source (e.g. duplicate lines); the engine may log them.
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pretrain) + len(self.instruct)

    def texts(self) -> list[str]:
        """All examples of both phases (what a tokenizer is fitted on)."""
        return [*self.pretrain, *self.instruct]


# --- examples --------------------------------------------------------------------------------


def normalize(example: str) -> str:
    """One space between words, and a trailing `</s>` if absent."""
    text = _WS_RE.sub(" ", example).strip()
    if not text.endswith(EOS):
        text = f"{text} {EOS}"
    return text


def split_prompt(example: str) -> tuple[str, str] | None:
    """`"User: q Assistant: a </s>"` -> `("User: q Assistant:", "a </s>")`; None otherwise.

    The split falls on whitespace, so for the word tokenizer
    `encode(prompt) + encode(answer) == encode(example)`. An answer made of `</s>` alone does
    not count as an instruction example.
    """
    m = _INSTRUCT_RE.match(example.strip())
    if m is None:
        return None
    question, answer = m.group(1), m.group(2).strip()
    if not answer.replace(EOS, "").strip():
        return None
    return f"User: {question} Assistant:", answer


def is_instruction(example: str) -> bool:
    return split_prompt(example) is not None


# --- loading ---------------------------------------------------------------------------------


def load_corpus(path: str | os.PathLike | None) -> Corpus:
    """Read a corpus; None gives the embedded default. Raises DataError on unusable input.

    - None: `moh/corpus/pretrain.txt` + `moh/corpus/instruct.txt` from the installed package.
    - A directory: the reference layout (`pretraining_data.json` + `chat_training_data.json`)
      or ours (`pretrain.txt` + `instruct.txt`); either file of a pair may be absent, but not
      both. Each file holds one phase; every line of the instruct file must be a pair.
    - A file: a JSON array of strings, JSONL objects with a "text" string, or plain text with
      one example per line (blank lines skipped). Instruction-shaped examples go to the
      instruct phase, the rest to pretrain.
    """
    if path is None:
        root = resources.files("moh") / "corpus"
        pre_name, ins_name = (f"moh/corpus/{name}" for name in OWN_LAYOUT)
        pre = _parse_text(root.joinpath(OWN_LAYOUT[0]).read_text("utf-8"), pre_name)
        ins = _parse_text(root.joinpath(OWN_LAYOUT[1]).read_text("utf-8"), ins_name)
        _check_instruct(ins, ins_name)
        return Corpus([normalize(t) for t, _ in pre], [normalize(t) for t, _ in ins], "embedded")

    path = os.fspath(path)
    if os.path.isdir(path):
        return _load_dir(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory")
    examples = [normalize(t) for t, _ in _read_examples(path)]
    corpus = Corpus(
        pretrain=[e for e in examples if not is_instruction(e)],
        instruct=[e for e in examples if is_instruction(e)],
        source=path,
    )
    _add_notes(corpus)
    return corpus


def _load_dir(path: str) -> Corpus:
    found = {
        layout: [os.path.join(path, name) for name in layout]
        for layout in (REFERENCE_LAYOUT, OWN_LAYOUT)
    }
    present = {k: [p if os.path.exists(p) else None for p in v] for k, v in found.items()}
    usable = [k for k, v in present.items() if any(v)]
    if not usable:
        names = " or ".join(" + ".join(layout) for layout in found)
        raise DataError(f"{path}: directory holds none of the expected files ({names})")
    if len(usable) > 1:
        raise DataError(f"{path}: directory mixes both layouts; keep one pair of files")
    pre_path, ins_path = present[usable[0]]
    pre = [normalize(t) for t, _ in _read_examples(pre_path)] if pre_path else []
    ins: list[str] = []
    if ins_path:
        raw = _read_examples(ins_path)
        _check_instruct(raw, ins_path)
        ins = [normalize(t) for t, _ in raw]
    corpus = Corpus(pre, ins, path)
    _add_notes(corpus)
    return corpus


def _check_instruct(examples: list[tuple[str, int]], where: str) -> None:
    for text, line in examples:
        if not is_instruction(text):
            raise DataError(
                f"{where}:{line}: not a 'User: ... Assistant: ...' pair: {_clip(text)!r}"
            )


def _add_notes(corpus: Corpus) -> None:
    for name, items in (("pretrain", corpus.pretrain), ("instruct", corpus.instruct)):
        dups = len(items) - len(set(items))
        if dups:
            corpus.notes.append(f"{corpus.source}: {dups} duplicate {name} example(s) kept")


def _read_examples(path: str) -> list[tuple[str, int]]:
    """(example text, 1-based line number) pairs from one file, format sniffed."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if b"\x00" in raw[:8192]:
        raise DataError(f"{path}: looks like a binary file, expected text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 text") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")

    first = text.lstrip()[0]
    if first == "[":
        examples = _parse_json_array(text, path)
    elif first == "{":
        examples = _parse_jsonl(text, path)
    else:
        examples = _parse_text(text, path)
    if not examples:
        raise DataError(f"{path}: no examples (every entry is blank)")
    return examples


def _parse_text(text: str, path: str) -> list[tuple[str, int]]:
    return [(line.strip(), i) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _parse_json_array(text: str, path: str) -> list[tuple[str, int]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of strings")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, str):
            raise DataError(
                f"{path}: item {i} is {type(item).__name__}, expected a string"
            )
        if item.strip():
            out.append((item, i + 1))  # item number stands in for the line
    return out


def _parse_jsonl(text: str, path: str) -> list[tuple[str, int]]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: invalid JSON line ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError(f'{path}:{i}: expected an object with a "text" string')
        if obj["text"].strip():
            out.append((obj["text"], i))
    return out


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# --- batching --------------------------------------------------------------------------------


def make_batches(
    seqs: list[list[int]],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    pad_id: int,
    max_len: int | None = None,
    bucket_batches: int = 64,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches for one epoch: a list of `(idx, targets)`, both `(B, T)` long.

    Deterministic in `(seed, epoch)` and identical on every rank before sharding:
    1. the example order is shuffled;
    2. each pool of `batch_size * bucket_batches` consecutive examples is sorted by length
       (stable, so ties keep their shuffled order) and cut into global batches of
       `batch_size`; a remainder is absorbed by the last batches (sizes differ by at most
       one), so nothing is dropped and no batch is a small leftover (a corpus smaller than
       one batch is a single smaller batch);
    3. the order of the global batches is shuffled.
    Each global batch is right-padded to its longest example; rank `r` of `world_size`
    takes a contiguous slice of its rows (sizes differ by at most one), so concatenating the
    ranks' tensors along dim 0 gives exactly the 1-rank batch. A 2-rank run matches a
    1-rank run when the loss is summed over target tokens and divided by the GLOBAL count of
    targets (all-reduce the count), not averaged per rank.

    `targets[b, t] = idx[b, t + 1]`, and IGNORE_INDEX (-100) at padding and at each
    example's last position. Sequences longer than `max_len` are cut to their first
    `max_len` tokens (the tail, `</s>` included, is dropped); see `count_truncated`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    if not seqs:
        return []
    if len(seqs) < world_size:
        raise ValueError(f"{len(seqs)} sequences cannot feed {world_size} ranks")
    if max_len is not None:
        seqs = [s[:max_len] for s in seqs]

    lengths = [len(s) for s in seqs]
    rng = random.Random(f"moh.make_batches:{seed}:{epoch}")
    order = list(range(len(seqs)))
    rng.shuffle(order)
    pool = batch_size * max(1, bucket_batches)
    for start in range(0, len(order), pool):
        order[start : start + pool] = sorted(order[start : start + pool], key=lengths.__getitem__)
    # (bucket_batches=1 sorts only within each batch: plain random batching, for comparison)

    # n // batch_size contiguous groups whose sizes differ by at most one, the larger ones
    # last: a partial batch is never formed, nothing is dropped, the grouping does not depend
    # on world_size (so every world size sees the same global batches) and no rank is empty.
    n_groups = max(1, len(order) // batch_size)
    base, extra = divmod(len(order), n_groups)
    groups, start = [], 0
    for g in range(n_groups):
        size = base + (g >= n_groups - extra)
        groups.append(order[start : start + size])
        start += size
    rng.shuffle(groups)

    # Pad to the GLOBAL batch's longest example, so the ranks' shards concatenate exactly.
    return [
        _collate([seqs[i] for i in shard(g, rank, world_size)], max(lengths[i] for i in g), pad_id)
        for g in groups
    ]


def shard(group: list, rank: int, world_size: int) -> list:
    """Contiguous slice `rank` of `world_size`; sizes differ by at most one."""
    base, extra = divmod(len(group), world_size)
    start = rank * base + min(rank, extra)
    return group[start : start + base + (rank < extra)]


def _collate(rows: list[list[int]], width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row)
        if n == 0:
            continue
        r = torch.tensor(row, dtype=torch.long)
        idx[b, :n] = r
        targets[b, : n - 1] = r[1:]
    return idx, targets


def count_truncated(seqs: list[list[int]], max_len: int | None) -> int:
    """How many sequences `make_batches(max_len=...)` would cut (worth an alert if > 0)."""
    return 0 if max_len is None else sum(len(s) > max_len for s in seqs)


def padding_efficiency(batches: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> float:
    """Real tokens / all positions over `batches` (1.0 = no padding at all)."""
    total = sum(idx.numel() for idx, _ in batches)
    if total == 0:
        return 1.0
    real = sum(int((idx != pad_id).sum()) for idx, _ in batches)
    return real / total
