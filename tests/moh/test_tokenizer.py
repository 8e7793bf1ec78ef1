"""Word tokenizer: splitting, ids, round trips, unknown words, serialisation."""

import json

import pytest

from moh.data import load_corpus
from moh.tokenizer import EOS, PAD, SPECIALS, UNK, Tokenizer, split

REFERENCE_DATA = "/work/shared/rustgpt/data"


def test_split_words_punctuation_and_eos():
    assert split("Hello, world! It's 3.5 degrees.</s>") == [
        "Hello", ",", "world", "!", "It", "'", "s", "3", ".", "5", "degrees", ".", "</s>",
    ]


def test_eos_is_one_token_even_without_a_space():
    tok = Tokenizer.fit(["a b </s>"])
    assert tok.encode("a b</s>") == tok.encode("a b </s>")
    assert tok.encode("a b </s>")[-1] == tok.eos_id
    assert tok.tokens(tok.encode("a </s>")) == ["a", EOS]


def test_specials_come_first_then_sorted_tokens():
    tok = Tokenizer.fit(["the cat sat .", "a dog ran !"])
    assert tok.itos[:3] == list(SPECIALS)
    assert (tok.pad_id, tok.unk_id, tok.eos_id) == (0, 1, 2)
    assert tok.itos[3:] == sorted(tok.itos[3:])
    assert tok.vocab_size == 3 + 8


def test_fit_is_independent_of_text_order():
    texts = ["Paris is in France. </s>", "Cats sleep a lot. </s>", "Two plus two equals four. </s>"]
    assert Tokenizer.fit(texts).itos == Tokenizer.fit(texts[::-1]).itos


def test_case_is_kept():
    tok = Tokenizer.fit(["The cat and the dog"])
    assert tok.encode("The")[0] != tok.encode("the")[0]


def test_unknown_words_map_to_unk():
    tok = Tokenizer.fit(["the cat sat </s>"])
    ids = tok.encode("the zebra sat </s>")
    assert ids[1] == tok.unk_id and ids[0] != tok.unk_id
    assert tok.decode(ids) == "the <unk> sat </s>"
    assert tok.encode(tok.decode(ids)) == ids


def test_decode_is_readable():
    text = "User: What is the capital of France? Assistant: Paris is the capital of France. </s>"
    other = "Fire needs heat, fuel and oxygen (usually from the air)."
    tok = Tokenizer.fit([text, other])
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(other)) == other


def test_decode_drops_padding_by_default():
    tok = Tokenizer.fit(["a b </s>"])
    ids = tok.encode("a b </s>") + [tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == "a b </s>"
    assert tok.decode(ids, skip_pad=False).endswith(f"{PAD} {PAD}")


@pytest.mark.parametrize("source", [None, REFERENCE_DATA], ids=["embedded", "reference"])
def test_round_trip_every_corpus_example(source):
    texts = load_corpus(source).texts()
    tok = Tokenizer.fit(texts)
    for text in texts:
        ids = tok.encode(text)
        assert UNK not in tok.tokens(ids)
        assert tok.encode(tok.decode(ids)) == ids, text


def test_reference_vocabulary_size():
    # The Rust trainer reports 3,173 tokens for this corpus: its 3,172 words and marks plus
    # </s>. The same splitting rule gives the same 3,172, plus our three specials.
    tok = Tokenizer.fit(load_corpus(REFERENCE_DATA).texts())
    assert tok.vocab_size - len(SPECIALS) + 1 == 3173


def test_embedded_vocabulary_is_small():
    tok = Tokenizer.fit(load_corpus(None).texts())
    assert tok.vocab_size < 2500


def test_dict_round_trip_through_json():
    tok = Tokenizer.fit(load_corpus(None).texts())
    again = Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.itos == tok.itos
    text = "The heart pumps blood around the body. </s>"
    assert again.encode(text) == tok.encode(text)


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "bpe", "version": 1, "vocab": list(SPECIALS)},
        {"kind": "word", "version": 1, "vocab": "abc"},
        {"kind": "word", "version": 1, "vocab": ["a", "b"]},  # specials missing
        {"kind": "word", "version": 1, "vocab": [*SPECIALS, "a", "a"]},
    ],
)
def test_from_dict_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        Tokenizer.from_dict(bad)
