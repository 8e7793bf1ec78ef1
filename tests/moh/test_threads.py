"""`threads = 0` (the default) resolves to OMP_NUM_THREADS, else the usable cores split between
the local ranks; never to anything that depends on the machine's load."""

import os
import shutil
import subprocess
import sys

import pytest

from moh import threads
from moh.config import Config

PRINT_RESOLVED = "from moh import threads; print(threads.resolve(0), threads.resolve(3))"


def _resolved(env_extra: dict, prefix: list[str] = ()) -> tuple[int, int]:
    """resolve(0) and resolve(3) in a real child process with a controlled environment."""
    drop = ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")  # the suite's conftest sets the latter
    env = {k: v for k, v in os.environ.items() if k not in drop} | env_extra
    out = subprocess.run([*prefix, sys.executable, "-c", PRINT_RESOLVED], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_default_is_automatic():
    assert Config().threads == 0


def test_automatic_is_the_affinity_set_in_a_plain_process():
    cores = len(os.sched_getaffinity(0))
    assert _resolved({}) == (cores, 3)  # an explicit count is kept as given


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset")
def test_automatic_follows_a_narrowed_affinity_not_cpu_count():
    # a real process pinned to one core: os.cpu_count() still says every core
    assert _resolved({}, ["taskset", "-c", "0"]) == (1, 3)


def test_automatic_splits_the_cores_between_local_ranks():
    cores = len(os.sched_getaffinity(0))
    assert _resolved({"LOCAL_WORLD_SIZE": "2"})[0] == max(1, cores // 2)
    assert _resolved({"LOCAL_WORLD_SIZE": str(cores * 4)})[0] == 1  # never 0
    assert _resolved({"LOCAL_WORLD_SIZE": "junk"})[0] == cores  # a bad value: one rank


def test_omp_num_threads_wins_over_the_cores_but_not_over_an_explicit_count():
    cores = len(os.sched_getaffinity(0))
    assert _resolved({"OMP_NUM_THREADS": "5"}) == (5, 3)
    assert _resolved({"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "1"}) == (1, 3)
    for bad in ("0", "-2", "two", ""):  # not a positive count: ignored, the cores decide
        assert _resolved({"OMP_NUM_THREADS": bad}) == (cores, 3), bad


def test_automatic_does_not_follow_the_load():
    # a busy machine must not change the count (same command, same run.jsonl): the answer in a
    # child is the same while this process keeps a core busy as it is on its own
    quiet = _resolved({})
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = _resolved({})
    finally:
        burner.kill()
        burner.wait()
    assert busy == quiet


def test_train_sets_the_resolved_count(tiny_cfg, monkeypatch):
    import torch

    from moh.train import train

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        train(tiny_cfg(threads=0, pretrain_epochs=1, instruct_epochs=0, eval_prompts=0))
        assert torch.get_num_threads() == 2
        train(tiny_cfg(threads=1, pretrain_epochs=1, instruct_epochs=0, eval_prompts=0))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
