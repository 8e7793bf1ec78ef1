"""Corpus loading (every input format and its failures) and length-bucketed batching."""

import json
import os
from importlib import resources

import pytest
import torch

from moh.data import (
    IGNORE_INDEX,
    DataError,
    count_truncated,
    load_corpus,
    make_batches,
    padding_efficiency,
    split_prompt,
)
from moh.tokenizer import Tokenizer

REFERENCE_DATA = "/work/shared/rustgpt/data"
PAIR = "User: What do cows eat? Assistant: Cows eat grass and give milk."
SENTENCE = "Cows eat grass and give milk."


# --- the embedded corpus ----------------------------------------------------------------------


def _embedded_lines(name):
    return (resources.files("moh") / "corpus" / name).read_text("utf-8").splitlines()


def test_embedded_corpus_sizes():
    corpus = load_corpus(None)
    assert corpus.source == "embedded"
    assert len(corpus.pretrain) >= 500
    assert len(corpus.instruct) >= 50
    assert all(e.endswith(" </s>") and e.count("</s>") == 1 for e in corpus.texts())


@pytest.mark.parametrize("name", ["pretrain.txt", "instruct.txt"])
def test_embedded_files_have_no_duplicate_or_blank_lines(name):
    lines = _embedded_lines(name)
    assert all(line.strip() == line and line for line in lines)
    assert len(set(lines)) == len(lines)


def test_embedded_pretrain_sentences_are_short_and_end_with_a_period():
    for line in _embedded_lines("pretrain.txt"):
        assert 6 <= len(line.split()) <= 16, line
        assert line.endswith(".") and line[0].isupper(), line
        assert split_prompt(line) is None


def test_embedded_instruct_pairs_have_short_answers_and_distinct_questions():
    prompts = []
    for line in _embedded_lines("instruct.txt"):
        prompt, answer = split_prompt(line)
        assert 5 <= len(answer.split()) <= 15, line
        prompts.append(prompt)
    assert len(set(prompts)) == len(prompts)


def test_embedded_answers_are_taught_in_pretraining():
    # The instruction phase recalls facts the pretraining phase taught, word for word.
    pretrain = set(_embedded_lines("pretrain.txt"))
    answers = [split_prompt(line)[1] for line in _embedded_lines("instruct.txt")]
    assert all(a in pretrain for a in answers)


# --- other sources ----------------------------------------------------------------------------


def test_reference_data_dir_loads():
    corpus = load_corpus(REFERENCE_DATA)
    assert (len(corpus.pretrain), len(corpus.instruct)) == (833, 53)
    assert all(e.endswith(" </s>") and e.count("</s>") == 1 for e in corpus.texts())


def test_own_layout_dir(tmp_path):
    (tmp_path / "pretrain.txt").write_text(f"{SENTENCE}\n\nThe sky is blue.\n")
    (tmp_path / "instruct.txt").write_text(f"{PAIR}\n")
    corpus = load_corpus(str(tmp_path))
    assert corpus.pretrain == [f"{SENTENCE} </s>", "The sky is blue. </s>"]
    assert corpus.instruct == [f"{PAIR} </s>"]
    assert corpus.source == str(tmp_path)


def test_dir_with_only_a_pretrain_file(tmp_path):
    (tmp_path / "pretraining_data.json").write_text(json.dumps([SENTENCE]))
    corpus = load_corpus(tmp_path)
    assert (corpus.pretrain, corpus.instruct) == ([f"{SENTENCE} </s>"], [])


def test_json_array_file_splits_by_shape(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([SENTENCE + " </s>", PAIR, "  ", "Two  plus\ntwo is four."]))
    corpus = load_corpus(str(path))
    assert corpus.pretrain == [f"{SENTENCE} </s>", "Two plus two is four. </s>"]
    assert corpus.instruct == [f"{PAIR} </s>"]


def test_jsonl_file(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": SENTENCE, "id": 1}, {"text": PAIR}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    corpus = load_corpus(str(path))
    assert corpus.pretrain == [f"{SENTENCE} </s>"]
    assert corpus.instruct == [f"{PAIR} </s>"]


def test_plain_text_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text(f"\ufeff{SENTENCE}\r\n\r\n{PAIR} </s>\r\n")
    corpus = load_corpus(str(path))
    assert corpus.pretrain == [f"{SENTENCE} </s>"]
    assert corpus.instruct == [f"{PAIR} </s>"]


def test_duplicates_are_kept_and_noted(tmp_path):
    path = tmp_path / "dups.txt"
    path.write_text(f"{SENTENCE}\n{SENTENCE}\n")
    corpus = load_corpus(str(path))
    assert len(corpus.pretrain) == 2
    assert corpus.notes and "duplicate" in corpus.notes[0]


# --- bad inputs -------------------------------------------------------------------------------


def _write(tmp_path, name, content):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("empty.txt", "", "empty"),
        ("blank.txt", "  \n\n \n", "empty"),
        ("binary.bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("latin1.txt", "caf\xe9 ok\n".encode("latin-1"), ":1: not valid UTF-8"),
        ("broken.json", '[\n"a",\n"b"\n', "invalid JSON"),
        ("numbers.json", "[1, 2, 3]", "item 0 is int"),
        ("blanks.json", '["", "  "]', "no examples"),
        ("bad.jsonl", '{"text": "fine"}\n{"text": 3}\n', ":2:"),
        ("broken.jsonl", '{"text": "fine"}\n{"text": \n', ":2: invalid JSON"),
    ],
)
def test_bad_files_raise_one_line_data_error_naming_the_file(tmp_path, name, content, fragment):
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        load_corpus(str(path))
    message = str(info.value)
    assert name in message and fragment in message
    assert "\n" not in message


def test_json_object_is_not_an_array(tmp_path):
    # A lone object is read as JSONL; its lack of "text" is the error.
    path = _write(tmp_path, "obj.json", '{"data": ["a"]}')
    with pytest.raises(DataError, match=r"obj\.json:1: expected an object with a \"text\""):
        load_corpus(str(path))


def test_missing_path():
    with pytest.raises(DataError, match="no/such/corpus.txt: no such file"):
        load_corpus("no/such/corpus.txt")


def test_dir_without_known_files(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(DataError, match="none of the expected files"):
        load_corpus(str(tmp_path))


def test_dir_mixing_layouts(tmp_path):
    (tmp_path / "pretrain.txt").write_text(SENTENCE)
    (tmp_path / "chat_training_data.json").write_text(json.dumps([PAIR]))
    with pytest.raises(DataError, match="mixes both layouts"):
        load_corpus(str(tmp_path))


def test_instruct_file_line_that_is_not_a_pair(tmp_path):
    (tmp_path / "pretrain.txt").write_text(SENTENCE)
    (tmp_path / "instruct.txt").write_text(f"{PAIR}\n\nJust a sentence.\n")
    expected = r"instruct\.txt:3: not a 'User: \.\.\. Assistant: \.\.\.' pair"
    with pytest.raises(DataError, match=expected):
        load_corpus(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = _write(tmp_path, "secret.txt", SENTENCE)
    path.chmod(0)
    with pytest.raises(DataError, match="secret.txt: cannot read"):
        load_corpus(str(path))


# --- split_prompt -----------------------------------------------------------------------------


def test_split_prompt():
    assert split_prompt("User: What is ice? Assistant: Ice is frozen water. </s>") == (
        "User: What is ice? Assistant:",
        "Ice is frozen water. </s>",
    )
    assert split_prompt("  User:What is ice?Assistant:Frozen water.") == (
        "User: What is ice? Assistant:",
        "Frozen water.",
    )


@pytest.mark.parametrize(
    "text",
    [
        "Ice is frozen water. </s>",
        "User: hi </s>",
        "User: hi Assistant: </s>",
        "User: Assistant: yes",
        "Note: User: q Assistant: a",
    ],
)
def test_split_prompt_rejects_non_pairs(text):
    assert split_prompt(text) is None


@pytest.mark.parametrize("source", [None, REFERENCE_DATA], ids=["embedded", "reference"])
def test_prompt_and_answer_tokens_concatenate_to_the_example(source):
    corpus = load_corpus(source)
    tok = Tokenizer.fit(corpus.texts())
    for example in corpus.instruct:
        prompt, answer = split_prompt(example)
        assert tok.encode(prompt) + tok.encode(answer) == tok.encode(example)


# --- batching ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_seqs():
    corpus = load_corpus(None)
    tok = Tokenizer.fit(corpus.texts())
    return [tok.encode(t) for t in corpus.texts()], tok.pad_id


def _rows(batches, pad_id):
    """Each batch row as the unpadded token list it holds."""
    return [tuple(t for t in row.tolist() if t != pad_id) for idx, _ in batches for row in idx]


def test_batches_hold_every_example_once_from_position_zero(embedded_seqs):
    seqs, pad = embedded_seqs
    batches = make_batches(seqs, 16, seed=0, epoch=0, pad_id=pad)
    assert sorted(_rows(batches, pad)) == sorted(tuple(s) for s in seqs)
    for idx, targets in batches:
        assert idx.dtype == targets.dtype == torch.long and idx.shape == targets.shape
        for row, tgt in zip(idx, targets):
            n = int((row != pad).sum())
            assert (row[:n] != pad).all()  # left-aligned: the example starts at position 0
            assert torch.equal(tgt[: n - 1], row[1:n])
            assert (tgt[n - 1 :] == IGNORE_INDEX).all()


def test_batches_are_deterministic_per_seed_and_epoch(embedded_seqs):
    seqs, pad = embedded_seqs
    a = make_batches(seqs, 16, seed=3, epoch=1, pad_id=pad)
    b = make_batches(seqs, 16, seed=3, epoch=1, pad_id=pad)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    c = make_batches(seqs, 16, seed=3, epoch=2, pad_id=pad)
    d = make_batches(seqs, 16, seed=4, epoch=1, pad_id=pad)
    assert _rows(a, pad) != _rows(c, pad) and _rows(a, pad) != _rows(d, pad)


@pytest.mark.parametrize(
    "n, batch_size, world_size", [(657, 16, 2), (657, 16, 4), (33, 8, 2), (37, 8, 4), (5, 4, 4)]
)
def test_rank_shards_are_disjoint_and_concatenate_to_the_one_rank_batch(n, batch_size, world_size):
    seqs = [[3 + (i % 50)] * (2 + (i * 7) % 19) for i in range(n)]
    kw = dict(seed=1, epoch=2, pad_id=0)
    full = make_batches(seqs, batch_size, **kw)
    shards = [
        make_batches(seqs, batch_size, rank=r, world_size=world_size, **kw) for r in range(world_size)
    ]
    assert all(len(s) == len(full) for s in shards)
    for b, (idx, targets) in enumerate(full):
        parts = [s[b] for s in shards]
        assert all(p[0].shape[0] >= 1 for p in parts)  # no rank is ever idle
        assert torch.equal(torch.cat([p[0] for p in parts]), idx)
        assert torch.equal(torch.cat([p[1] for p in parts]), targets)
    assert sum(idx.shape[0] for idx, _ in full) == n  # nothing dropped, even the remainder


def test_two_ranks_give_the_one_rank_loss_with_global_token_normalisation(embedded_seqs):
    seqs, pad = embedded_seqs
    torch.manual_seed(0)
    logits_of = torch.nn.Embedding(2000, 2000)  # a bigram "model": enough to compare losses
    one = make_batches(seqs, 16, seed=0, epoch=0, pad_id=pad)[0]
    two = [
        make_batches(seqs, 16, seed=0, epoch=0, rank=r, world_size=2, pad_id=pad)[0] for r in (0, 1)
    ]

    def ce_sum(idx, tgt):
        return torch.nn.functional.cross_entropy(
            logits_of(idx).flatten(0, 1), tgt.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )

    count = sum(int((t != IGNORE_INDEX).sum()) for _, t in two)
    assert count == int((one[1] != IGNORE_INDEX).sum())
    sharded = sum(ce_sum(*b) for b in two) / count
    assert torch.allclose(sharded, ce_sum(*one) / count, rtol=1e-6)


@pytest.mark.parametrize("batch_size", [8, 16, 32])
def test_padding_efficiency_of_the_embedded_corpus(embedded_seqs, batch_size):
    # Regression: spreading a remainder's longest examples over short batches once halved
    # the efficiency at batch size 32 while 16 (remainder 1) looked fine.
    seqs, pad = embedded_seqs
    kw = dict(seed=0, epoch=0, pad_id=pad)
    bucketed = padding_efficiency(make_batches(seqs, batch_size, **kw), pad)
    unbucketed = padding_efficiency(make_batches(seqs, batch_size, bucket_batches=1, **kw), pad)
    assert bucketed >= 0.9  # measured 0.98 / 0.97 / 0.95
    assert bucketed > unbucketed + 0.2  # random batches of this corpus pad about half


def test_batch_sizes_differ_by_at_most_one():
    for n in (5, 16, 17, 31, 47, 657):
        batches = make_batches([[3, 4]] * n, 16, seed=0, epoch=0, pad_id=0)
        sizes = [idx.shape[0] for idx, _ in batches]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
        assert len(sizes) == max(1, n // 16)  # the remainder is absorbed, never its own batch


def test_max_len_truncates_from_the_end():
    seqs = [list(range(3, 13)), [3, 4, 5]]
    batches = make_batches(seqs, 2, seed=0, epoch=0, pad_id=0, max_len=4)
    assert count_truncated(seqs, 4) == 1 and count_truncated(seqs, None) == 0
    idx, targets = batches[0]
    assert idx.shape == (2, 4)
    assert sorted(_rows(batches, 0)) == [(3, 4, 5), (3, 4, 5, 6)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=6, world_size=4), "not divisible"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=4, rank=2, world_size=2), "rank"),
        (dict(batch_size=4, max_len=1), "max_len"),
    ],
)
def test_bad_batch_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_batches([[3, 4]] * 8, seed=0, epoch=0, pad_id=0, **kwargs)


def test_no_sequences_no_batches():
    assert make_batches([], 4, seed=0, epoch=0, pad_id=0) == []
    assert padding_efficiency([], 0) == 1.0
