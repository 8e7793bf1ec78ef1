"""Matching the trainer's sample outputs against the corpus to say what the expected answer was."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

from .text import RustLogError

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
