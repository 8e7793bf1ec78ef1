"""bench/mutation.py's own contract: a stale or ambiguous snippet is an error (never a silent skip),
the catalogue is well formed, and an unknown --only name is a usage error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # bench scripts import their siblings by name

import mutants  # noqa: E402
import mutation  # noqa: E402


def _mutant(original: str, replacement: str = "B"):
    return mutants.Mutant("x", "kind", "f.py", original, replacement, "breaks", ("t.py",))


def test_mutate_replaces_the_one_occurrence():
    assert mutation.mutate("a = 1\nb = 2\n", _mutant("b = 2", "b = 3")) == "a = 1\nb = 3\n"


@pytest.mark.parametrize("text,count", [("nothing here", 0), ("b = 2; b = 2", 2)])
def test_absent_or_repeated_snippet_is_an_error(text, count):
    with pytest.raises(mutation.SnippetError, match=f"found {count} times"):
        mutation.mutate(text, _mutant("b = 2"))


def test_catalogue_is_well_formed():
    ms = mutants.MUTANTS
    ids = [m.id for m in ms]
    assert len(ids) == len(set(ids))
    for m in ms:
        assert m.original != m.replacement and m.original and m.breaks and m.tests, m.id
        assert m.file and all(t.startswith("tests/") for t in m.tests), m.id
    # (whether each snippet is still in its file is the benchmark's business: a stale one is
    # reported there as an error, so a refactoring elsewhere never breaks this fast test)
    # the kinds of bug issue 15 names are all in the catalogue
    named = {"budget_rank_le", "heads_min_is_max", "threshold_min_max_swapped", "lr_times_1e-6",
             "router_grad_zero_never_error", "load_cv_0.8", "dead_share_0.01", "loss_drop_3pct",
             "collapse_fraction_0.5"}
    assert named <= set(ids)
    assert all(m.equivalent for m in ms if m.kind == "equivalent")


def test_unknown_mutant_name_is_a_usage_error(capsys):
    assert mutation.main(["--only", "no_such_mutant"]) == 2
    assert "no mutant named no_such_mutant" in capsys.readouterr().err
