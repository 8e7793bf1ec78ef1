"""analyze.groupscan.counts_until and analyze.run.layer_block: the shortcuts the criteria, findings
and plots take on long logs must give what the plain full computations give."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from analyze.findings import find_all
from analyze.criteria import evaluate, load_criteria
from analyze.groupscan import counts_until
from analyze.loader import load_run
from analyze.run import layer_block


def _flags(values):
    return lambda s: values[s] != 0


@pytest.mark.parametrize("seed", range(8))
def test_counts_until_is_exact_below_target_and_a_bound_above(seed):
    rng = np.random.default_rng(seed)
    n, n_groups = int(rng.integers(1, 400_000)), int(rng.integers(1, 9))
    group = rng.integers(0, n_groups, n).astype(np.int16)
    values = (rng.random(n) < rng.choice([0.0, 1e-5, 0.3])).astype(np.int8)
    silent = int(rng.integers(0, n_groups))
    values[group == silent] = 0  # one group that never has a true flag: forces a full scan
    target = int(rng.choice([1, 5, 1000]))
    full = np.bincount(group[values != 0], minlength=n_groups)
    got = counts_until(_flags(values), group, np.arange(n_groups), target)
    assert len(got) == int(group.max()) + 1
    for g in range(len(got)):
        if full[g] < target:
            assert got[g] == full[g]
        else:
            assert target <= got[g] <= full[g]


def test_counts_until_stops_early_when_every_group_is_settled():
    group = np.tile(np.arange(4, dtype=np.int16), 1_000_000)
    seen = []

    def flags(s):
        seen.append(s)
        return np.ones(s.stop - s.start, bool)

    got = counts_until(flags, group, np.arange(4))
    assert len(seen) == 1 and seen[0].stop < len(group) and (got >= 1).all()


def test_layer_block_recognises_only_the_repeated_layout():
    steps = np.repeat(np.arange(1, 6), 3)
    good = pd.DataFrame({"step": steps, "layer": np.tile([0, 1, 2], 5)})
    assert layer_block(good) == [0, 1, 2]
    assert layer_block(good.iloc[:-1]) is None  # the last step lacks a layer
    swapped = good.copy()
    swapped.loc[4, "layer"], swapped.loc[5, "layer"] = 2, 1  # same set, other order in one step
    assert layer_block(swapped) is None
    repeated = good.copy()
    repeated.loc[7, "step"] = 2  # a step number that goes back
    assert layer_block(repeated) is None
    assert layer_block(good.iloc[:0]) is None


def test_findings_and_criteria_do_not_depend_on_the_layer_layout(tmp_path):
    """The same run with the layer rows of each step in a random order (still in step order, but
    no repeated block: the general paths) gives the same findings and criteria as the loader's
    layout (strided per-layer views)."""
    from tests.synthetic import iter_lines

    p = tmp_path / "run.jsonl"
    p.write_text("\n".join(iter_lines(n_steps=600, seed=2, nonfinite=True, grad_explosion=True)) + "\n")
    run = load_run(p, workers=1)
    assert layer_block(run.layers) is not None
    rng = np.random.default_rng(0)
    order = np.lexsort((rng.random(len(run.layers)), run.layers["step"].to_numpy()))
    shuffled = dataclasses.replace(run, layers=run.layers.iloc[order].reset_index(drop=True))
    assert layer_block(shuffled.layers) is None
    assert find_all(shuffled) == find_all(run)
    assert evaluate(shuffled, load_criteria()) == evaluate(run, load_criteria())
    from analyze import plots

    for family in ("thresholds", "heads"):  # decimated per layer: strided views vs a groupby
        a = plots.write_figures(run, tmp_path / "block", families=[family], jobs=1)[0]
        b = plots.write_figures(shuffled, tmp_path / "general", families=[family], jobs=1)[0]
        assert a.read_bytes() == b.read_bytes(), family
