"""Word-level tokenizer: words, each ASCII punctuation mark, and the `</s>` end marker.

Splitting rule (the same one the reference Rust trainer uses, so its corpus tokenizes the same
way): whitespace separates words, and every ASCII punctuation character is a token of its own,
wherever it appears ("don't" -> "don", "'", "t"; "3.5" -> "3", ".", "5"). The special tokens
`<pad>`, `<unk>` and `</s>` are recognised whole in the text, so `</s>` is one token, not four.

Case is kept ("The" and "the" are different tokens). Why: exact-match evaluation compares
decoded text with the expected answer, and the reference corpus tokenizer keeps case too; the
embedded corpus is written so that its vocabulary stays small anyway (about 2k words).

Ids are deterministic: the specials come first (`<pad>`=0, `<unk>`=1, `</s>`=2), then the
fitted tokens in sorted (code point) order, so the same texts always give the same ids.
"""

from __future__ import annotations

import re
import string
from typing import Iterable

PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
SPECIALS = (PAD, UNK, EOS)

_PUNCT = re.escape(string.punctuation)
# specials | a run of characters that are neither whitespace nor ASCII punctuation | one mark
_TOKEN_RE = re.compile(
    "|".join(re.escape(s) for s in SPECIALS) + rf"|[^\s{_PUNCT}]+|[{_PUNCT}]"
)

# Decoding puts no space before closing marks and none after opening ones. Any choice here
# round-trips, because punctuation is always split off again; only two adjacent word tokens
# need the space between them.
_NO_SPACE_BEFORE = set(".,!?;:%)]}")
_NO_SPACE_AFTER = set("([{$")


def split(text: str) -> list[str]:
    """Text -> token strings (before the vocabulary lookup)."""
    return _TOKEN_RE.findall(text)


class Tokenizer:
    """A fixed word-level vocabulary: token string <-> id."""

    def __init__(self, vocab: Iterable[str]):
        tokens = list(vocab)
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with the specials {SPECIALS}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary has duplicate tokens")
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.pad_id = self.stoi[PAD]
        self.unk_id = self.stoi[UNK]
        self.eos_id = self.stoi[EOS]

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @classmethod
    def fit(cls, texts: list[str]) -> "Tokenizer":
        """Vocabulary of every token in `texts`: specials first, then sorted tokens."""
        seen: set[str] = set()
        for text in texts:
            seen.update(split(text))
        seen.difference_update(SPECIALS)
        return cls([*SPECIALS, *sorted(seen)])

    def encode(self, text: str) -> list[int]:
        """Text -> ids; tokens outside the vocabulary become `unk_id`."""
        unk = self.unk_id
        return [self.stoi.get(tok, unk) for tok in split(text)]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def decode(self, ids: Iterable[int], *, skip_pad: bool = True) -> str:
        """Ids -> readable text; `encode(decode(ids)) == ids` for ids without padding.

        Padding ids are dropped unless `skip_pad=False`; `</s>` and `<unk>` are kept as text.
        """
        out: list[str] = []
        prev = ""
        for i in ids:
            i = int(i)
            if skip_pad and i == self.pad_id:
                continue
            tok = self.itos[i]
            if out and tok not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER:
                out.append(" ")
            out.append(tok)
            prev = tok
        return "".join(out)

    def to_dict(self) -> dict:
        """JSON-safe form; `Tokenizer.from_dict(t.to_dict())` gives the same ids."""
        return {"kind": "word", "version": 1, "lowercase": False, "vocab": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        if not isinstance(d, dict) or d.get("kind") != "word" or d.get("version") != 1:
            raise ValueError("not a word tokenizer dict (expected kind='word', version=1)")
        vocab = d.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise ValueError("tokenizer dict: 'vocab' must be a list of strings")
        return cls(vocab)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
