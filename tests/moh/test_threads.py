"""`threads = 0` (the default) resolves to the idle usable cores split between the local ranks."""

import os
import shutil
import subprocess
import sys

import pytest

from moh import threads
from moh.config import Config

# busy=0: an idle machine (the load-average part is tested on its own below)
PRINT_RESOLVED = "from moh import threads; print(threads.resolve(0, busy=0), threads.resolve(3))"


def _resolved(env_extra: dict, prefix: list[str] = ()) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_WORLD_SIZE"} | env_extra
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


def test_automatic_leaves_the_busy_cores_to_the_other_work():
    cores = threads.usable_cores()
    assert threads.resolve(0, busy=0) == cores
    assert threads.resolve(0, busy=1) == max(1, cores - 1)
    assert threads.resolve(0, busy=cores) == 1  # every core busy: one thread, never 0
    assert threads.resolve(0, busy=cores + 7) == 1
    assert threads.resolve(2, busy=cores + 7) == 2  # an explicit count is never second-guessed


def test_busy_cores_is_the_whole_part_of_the_load_average():
    before = int(os.getloadavg()[0])
    got = threads.busy_cores()
    after = int(os.getloadavg()[0])
    assert min(before, after) <= got <= max(before, after)


def test_train_sets_the_resolved_count(tiny_cfg):
    import torch

    from moh.train import train

    before = torch.get_num_threads()
    try:
        lo = threads.resolve(0)
        train(tiny_cfg(threads=0, pretrain_epochs=1, instruct_epochs=0, eval_prompts=0))
        hi = threads.resolve(0)  # the load average may move during the run
        assert min(lo, hi) <= torch.get_num_threads() <= max(lo, hi)
        train(tiny_cfg(threads=1, pretrain_epochs=1, instruct_epochs=0, eval_prompts=0))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
