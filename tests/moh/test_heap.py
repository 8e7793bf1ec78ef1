"""moh/heap.py: the run's long-lived objects frozen out of the collector's full passes while
moh train runs, handed back when it ends (however it ends), and a caller's own freeze left alone."""

from __future__ import annotations

import gc

import pytest

from moh import heap
from moh.train import train


def _collected(obj) -> bool:
    """Is obj in one of the collector's generations (not the permanent, frozen one)?"""
    return any(o is obj for o in gc.get_objects())


def test_objects_alive_at_entry_are_frozen_in_the_block_and_given_back_after():
    before = [object()]  # a tracked container
    assert gc.get_freeze_count() == 0 and _collected(before)
    with heap.frozen():
        during = [object()]
        assert gc.get_freeze_count() > 0
        assert not _collected(before) and _collected(during)  # new objects stay collectable
    assert gc.get_freeze_count() == 0 and _collected(before)


def test_a_freeze_the_caller_made_is_the_callers():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with heap.frozen():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen  # not unfrozen by the block
    finally:
        gc.unfreeze()


def test_train_freezes_for_its_loop_and_unfreezes_however_it_ends(tiny_cfg):
    counts = []

    def callback(kind, info):
        if kind == "step":
            counts.append(gc.get_freeze_count())

    train(tiny_cfg(instruct_epochs=0, eval_prompts=0), None, callback=callback)
    assert counts and min(counts) > 10_000  # torch, the model, the corpus: frozen while it trains
    assert gc.get_freeze_count() == 0

    def fail(kind, info):
        if kind == "step":
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        train(tiny_cfg(instruct_epochs=0, eval_prompts=0), None, callback=fail)
    assert gc.get_freeze_count() == 0
