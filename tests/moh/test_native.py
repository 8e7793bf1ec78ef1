"""moh/native.c and its loader: the C kernels against the torch formulation in a real training
step, the build cache, and the fallback when there is no compiler (real child processes)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moh import native
from moh.config import Config
from moh.losses import aux_losses, weighted_total
from moh.model import LM
from tests.moh.native_switch import native_on

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 50
PRINT_STATUS = "from moh import native; native.lib(); print(native.status())"

needs_native = pytest.mark.skipif(not native_on(), reason=f"moh/native.c not loaded: {native.status()}")


def _step(cfg: Config) -> tuple[torch.Tensor, dict, dict, list]:
    """One training step's LM loss, aux terms, parameter gradients and routings."""
    torch.manual_seed(0)
    model = LM(cfg, VOCAB)
    model.train()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(1, VOCAB, (6, 20), generator=g)
    idx[2, 12:] = 0  # right padding
    targets = idx.roll(-1, 1).clone()
    targets[:, -1] = -100
    targets[idx == 0] = -100
    valid = idx != 0
    _, loss_sum, routings = model(idx, targets, valid=valid)  # as a training step: the router's sums
    lm = loss_sum / (targets != -100).sum()
    aux = aux_losses(routings, valid, cfg)
    (lm + weighted_total(aux, cfg)).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return lm.detach(), aux, grads, routings


@needs_native
@pytest.mark.parametrize("kw", [{}, dict(complexity_target="heads", entropy_weight=0.1),
                                dict(straight_through=False), dict(router="moh")],
                         ids=["default", "heads-entropy", "no-st", "moh"])
def test_a_training_step_is_the_same_on_both_paths(kw):
    """The same hard routing, so the same LM loss to the bit; aux terms and gradients within
    float32 rounding (the kernels' exp is libm's, their sums double)."""
    cfg = Config(n_layers=2, n_heads=8, d_model=32, d_ff=64, router=kw.pop("router", "adaptive"), **kw)
    lm_n, aux_n, g_n, r_n = _step(cfg)
    with native.disabled():
        lm_t, aux_t, g_t, r_t = _step(cfg)
    assert torch.equal(lm_n, lm_t)
    for a, b in zip(r_n, r_t):
        assert torch.equal(a.hard, b.hard)
        if a.pred_norm is not None:  # the logged predictor norm, computed by either
            torch.testing.assert_close(a.pred_norm, b.pred_norm, rtol=1e-6, atol=0)
        if a.count is not None:
            assert torch.equal(a.count, b.count)
    for t in aux_t:
        assert (aux_n[t] is None) == (aux_t[t] is None), t
        if aux_t[t] is not None:
            torch.testing.assert_close(aux_n[t], aux_t[t], rtol=2e-6, atol=1e-9, msg=t)
    assert g_n.keys() == g_t.keys()
    for name in g_t:
        scale = float(g_t[name].abs().max())
        torch.testing.assert_close(g_n[name], g_t[name], rtol=1e-4, atol=1e-6 * scale, msg=name)
    routed = [n for n in g_t if n.endswith("router.router.weight") or n.endswith("attn.router.weight")]
    assert routed and all(g_n[n].abs().sum() > 0 for n in routed)


@needs_native
@pytest.mark.parametrize("heads", [4, 6, 12, 16])
def test_every_head_count_branch_of_the_kernels_matches_torch(heads):
    """native.c's route kernels run with the head count as a compile-time constant at 4, 8 and
    16 heads and generic loops otherwise (BY_HEADS): each branch (8 above) must route and
    differentiate as the torch path does."""
    cfg = Config(n_layers=1, n_heads=heads, d_model=48, d_ff=64, k_min=1.0, target_heads=min(3.5, heads))
    lm_n, _, g_n, r_n = _step(cfg)
    with native.disabled():
        lm_t, _, g_t, r_t = _step(cfg)
    assert torch.equal(lm_n, lm_t) and torch.equal(r_n[0].hard, r_t[0].hard)
    assert 1 < float(r_n[0].count.mean()) < heads  # a real selection, not all or one head
    for name in g_t:
        scale = float(g_t[name].abs().max())
        torch.testing.assert_close(g_n[name], g_t[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


def _batch():
    idx = torch.randint(1, VOCAB, (6, 20), generator=torch.Generator().manual_seed(1))
    idx[2, 12:] = 0  # right padding
    targets = idx.roll(-1, 1).clone()
    targets[:, -1] = -100
    targets[idx == 0] = -100
    return idx, targets


@needs_native
def test_the_route_kernel_sums_what_the_aux_kernels_would():
    """With the real-token mask in its forward pass the adaptive router's node makes the layer's
    token sums itself (`Routing.sums`, [f, P, z, count, entropy]): the reference formulas' values,
    and the same aux terms and gradients as the aux kernels' own per-token path; for another
    mask object the objective does not use them."""
    from moh.losses import _layer_sums

    cfg = Config(n_layers=2, n_heads=8, d_model=32, d_ff=64, entropy_weight=0.3)  # every term's gradient
    results = []
    for use_sums in (True, False):
        torch.manual_seed(0)
        model = LM(cfg, VOCAB)
        idx, targets = _batch()
        valid = idx != 0
        _, loss_sum, routings = model(idx, targets, valid=valid if use_sums else None)
        assert all((r.sums is not None) == use_sums for r in routings)
        if use_sums:  # against the torch formulas on the routing's own tensors
            w = valid.float()
            for r in routings:
                ref, _ = _layer_sums(r.hard, r.probs, r.logits, r.kappa, r.count, w, r.kappa, w, False)
                H = r.hard.shape[-1]
                expect = torch.cat([ref[: 2 * H + 1], ref[2 * H + 2: 2 * H + 4]])  # no complexity sums
                torch.testing.assert_close(r.sums.detach(), expect.detach(), rtol=2e-6, atol=1e-5)
        aux = aux_losses(routings, valid, cfg)
        weighted_total(aux, cfg).backward()
        results.append((aux, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (aux_s, g_s), (aux_t, g_t) = results
    for t in aux_t:
        torch.testing.assert_close(aux_s[t], aux_t[t], rtol=1e-6, atol=1e-9, msg=t)
    for name in g_t:
        torch.testing.assert_close(g_s[name], g_t[name], rtol=1e-4, atol=1e-6 * float(g_t[name].abs().max()), msg=name)

    # another mask (one more token left out): the router's sums are not this mask's
    torch.manual_seed(0)
    model = LM(cfg, VOCAB)
    idx, targets = _batch()
    _, _, routings = model(idx, targets, valid=idx != 0)
    other = (idx != 0).clone()
    other[0, 0] = False
    got = aux_losses(routings, other, cfg)
    want = aux_losses(routings, other, cfg, reference=True)
    for t in want:
        torch.testing.assert_close(got[t], want[t], rtol=2e-6, atol=1e-9, msg=t)
    assert abs(got["z"].item() - aux_s["z"].item()) > 1e-6  # the mask changed the terms


@needs_native
def test_a_nan_logit_gives_the_torch_selection():
    """A NaN probability compares false both ways: the C sort must still place every head once
    (else the mask would read uninitialised slots). Both paths make every probability of that
    token NaN and keep rank 0 only; the other tokens are untouched."""
    from moh.routing import AdaptiveRouter

    router = AdaptiveRouter(Config(n_heads=8, d_model=32))
    out = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(0))
    out[0, 1, 3] = float("nan")
    with torch.no_grad():
        r = router(torch.zeros(2, 3, 32), proj=out)
        with native.disabled():
            ref = router(torch.zeros(2, 3, 32), proj=out)
    assert r.probs[0, 1].isnan().all()
    assert r.hard[0, 1].tolist() == [True] + [False] * 7 and float(r.count[0, 1]) == 1.0
    assert torch.equal(r.hard, ref.hard) and torch.equal(r.count, ref.count)


def _child(env_extra: dict, code: str = PRINT_STATUS) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MOH_NATIVE", "CC")} | env_extra
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_without_a_compiler_the_torch_path_runs(tmp_path):
    # `false` exits 1 like a compiler that fails; nothing is left in the cache
    done = _child({"CC": "false", "MOH_NATIVE_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("torch fallback (OSError: false "), done.stdout
    assert not any((tmp_path / "cache").glob("*"))


def test_an_unusable_cache_directory_falls_back_to_torch(tmp_path):
    # a regular file where the cache directory should be: mkdir fails (as root too)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = _child({"MOH_NATIVE_CACHE": str(blocker / "cache")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("torch fallback (") and "Error" in done.stdout, done.stdout


def test_moh_native_0_turns_the_kernels_off(tmp_path):
    done = _child({"MOH_NATIVE": "0", "MOH_NATIVE_CACHE": str(tmp_path)})
    assert done.stdout.strip() == "off (MOH_NATIVE=0)"
    assert not any(tmp_path.glob("*"))


@needs_native
def test_concurrent_first_uses_build_one_library(tmp_path):
    """Two processes that find an empty cache at once (torchrun ranks) both load the kernels,
    and the cache ends with one complete library and no temporary file."""
    env = {k: v for k, v in os.environ.items() if k not in ("MOH_NATIVE", "CC")} | {"MOH_NATIVE_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", PRINT_STATUS], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == ["native", "native"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("native-") and files[0].endswith(".so"), files
    built = (tmp_path / files[0]).stat().st_mtime_ns
    assert _child({"MOH_NATIVE_CACHE": str(tmp_path)}).stdout.strip() == "native"
    assert (tmp_path / files[0]).stat().st_mtime_ns == built  # loaded, not rebuilt


@needs_native
def test_a_build_prunes_other_libraries_built_over_a_week_ago(tmp_path):
    """Each edit of native.c leaves a library behind: after a build, another digest's library
    older than native.STALE_AFTER_S goes, a younger one (another checkout's) and files that are
    not libraries stay."""
    stale, recent, other = (tmp_path / n for n in ("native-0123456789abcdef.so", "native-fedcba9876543210.so",
                                                   "notes.txt"))
    for f in (stale, recent, other):
        f.write_bytes(b"x")
    week_ago = time.time() - native.STALE_AFTER_S - 60
    os.utime(stale, (week_ago, week_ago))
    os.utime(other, (week_ago, week_ago))
    assert _child({"MOH_NATIVE_CACHE": str(tmp_path)}).stdout.strip() == "native"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert stale.name not in left and recent.name in left and other.name in left
    assert len([n for n in left if n.startswith("native-") and n.endswith(".so")]) == 2  # + the new build


def test_moh_train_names_its_kernels_and_trains_without_a_compiler(tmp_path):
    """A real `moh train` without a compiler: the run completes on the torch path and its
    run_start record says so."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("MOH_NATIVE",)}
    env |= {"CC": "false", "MOH_NATIVE_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, "-c", "import cli; cli.main()", "train", "--quiet", "--out", str(out), "--threads", "1"]
    for k, v in dict(n_layers=1, d_model=32, d_ff=64, pretrain_epochs=1, instruct_epochs=0, eval_prompts=0).items():
        args += ["--set", f"{k}={v}"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    start = json.loads((out / "run.jsonl").read_text().splitlines()[0])
    assert start["event"] == "run_start" and start["kernels"].startswith("torch fallback (OSError")


@needs_native
def test_rank_quantiles_are_the_torch_bits():
    """The C merge sort and tie averaging against moh/alignment.py's average_ranks: the same
    float32 values for sizes around the merge widths, with and without ties; with NaNs (runs of
    their own, sorted last) the numbers' quantiles still agree."""
    from moh.difficulty import rank_quantiles

    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 7, 8, 9, 64, 431, 1000):
        for ties in (False, True):
            x = torch.randn(n, generator=g)
            x = (x * 2).round() if ties else x
            with native.disabled():
                want = rank_quantiles(x)
            assert torch.equal(rank_quantiles(x), want), (n, ties)
    x = torch.tensor([0.5, float("nan"), -1.0, 0.5, float("nan"), 2.0])
    got = rank_quantiles(x)
    # ranks 0..5 over n - 1 = 5: -1.0 first (0), the two 0.5 share ranks 1 and 2 (1.5 / 5),
    # 2.0 is rank 3 (3 / 5), the NaNs take 4 and 5 (0.8, 1.0), as float32
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731
    assert got[[0, 2, 3, 5]].tolist() == [f32(0.3), 0.0, f32(0.3), f32(0.6)]
    assert sorted(got[[1, 4]].tolist()) == [f32(0.8), 1.0]


@needs_native
def test_average_ranks_of_a_table_are_the_torch_bits():
    """The loss-alignment table (1 + K rows of N tokens) ranked row by row in C: the same
    float64 half-integers as the torch sort and tie averaging, ties and a constant row included."""
    from moh.alignment import average_ranks

    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 5, 16, 333):
        table = torch.randn(5, n, generator=g)
        table[1] = table[1].round()  # ties
        table[2] = 7.0  # constant: every token shares the middle rank
        with native.disabled():
            want = average_ranks(table)
        got = average_ranks(table)
        assert got.dtype == torch.float64 and torch.equal(got, want), n
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]


@needs_native
def test_the_radix_sort_orders_every_kind_of_float_as_the_torch_sort():
    """native.c's rank sort (a radix sort of float keys) against the torch sort and tie
    averaging: both signs, -0.0 tying with 0.0, infinities, subnormals, NaNs of either sign
    (last, each a run of its own), rows whose values share their top bytes (passes skipped),
    and sizes up to thousands (every byte of the key used)."""
    from moh.alignment import average_ranks

    g = torch.Generator().manual_seed(8)
    neg_nan = torch.tensor([-4194303], dtype=torch.int32).view(torch.float32)[0].item()  # bits 0xFFC00001
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, float("inf"), -float("inf"), float("nan"), neg_nan,
                            0.5, -0.5, 3.4e38, -3.4e38, 0.25])
    rows = [special, torch.cat([special, special.flip(0)]),
            1.0 + torch.rand(700, generator=g),  # one exponent: the top bytes are shared
            torch.randn(5000, generator=g) * 1e3,
            (torch.randn(3000, generator=g) * 4).round() / 8]  # many ties, negative: not counted
    rows[3][::97] = float("nan")
    for row in rows:
        with native.disabled():
            want = average_ranks(row)
        got = average_ranks(row)
        nan = row.isnan()
        assert torch.equal(got[~nan], want[~nan]), row[:6]
        # the NaNs take the last ranks: in position order here, in the order torch's unstable
        # sort leaves them there
        assert got[nan].tolist() == sorted(want[nan].tolist()) == list(range(len(row) - int(nan.sum()), len(row)))
    # known answer: -inf, -3.4e38, -0.5, -1e-45, then 0 and -0 tie (ranks 4, 5 -> 4.5), 1e-45,
    # 0.25, 0.5, 3.4e38, inf, and the NaNs in position order
    assert average_ranks(special).tolist() == [4.5, 4.5, 6.0, 3.0, 10.0, 0.0, 11.0, 12.0, 8.0, 2.0, 9.0, 1.0, 7.0]


@needs_native
def test_small_integer_rows_are_ranked_by_counting_with_the_sorts_bits():
    """Head counts (small non-negative integers) take native.c's counting pass; a row with any
    other value (negative, fractional, 128 or more, NaN) the merge sort. Both against the torch
    sort and tie averaging, at the edges of the counting range."""
    from moh.alignment import average_ranks

    g = torch.Generator().manual_seed(5)
    counts = torch.randint(0, 9, (300,), generator=g).float()
    rows = [counts, counts * 15.875, counts.clone(), counts.clone(), counts.clone(), counts.clone(),
            torch.full((300,), 127.0), torch.tensor([0.0, -0.0, 3.0, 0.0, 127.0, 1.0])]
    rows[2][7] = 127.0  # the largest value counted
    rows[3][7] = 128.0  # one past it: sorted
    rows[4][7] = -1.0
    rows[5][7] = float("nan")
    for row in rows:
        with native.disabled():
            want = average_ranks(row)
        assert torch.equal(average_ranks(row), want), row[:8]
    # known answer: 0, -0.0 and 0 tie (ranks 0..2 -> 1.0), then 1.0, 3.0, 127.0
    assert average_ranks(rows[-1]).tolist() == [1.0, 1.0, 4.0, 1.0, 5.0, 3.0]


@needs_native
def test_spearman_rows_in_one_c_pass_are_the_torch_bits():
    """alignment.spearman_rows: the C pass (ranks, centring, dot products, square root,
    clamp) against the torch formulation for the loss-alignment table's shapes, with ties,
    head counts, a constant row (NaN), a NaN loss and a perfectly (anti)correlated row (the
    clamp's edges)."""
    from moh.alignment import spearman_rows

    g = torch.Generator().manual_seed(7)
    for n in (2, 3, 17, 224, 1001):
        loss = torch.rand(n, generator=g)
        table = torch.stack([loss, torch.rand(n, generator=g), torch.randint(0, 9, (n,), generator=g).float(),
                             (torch.randn(n, generator=g) * 2).round(), torch.full((n,), 3.0), loss * 2, -loss])
        with native.disabled():
            want = spearman_rows(table)
        got = spearman_rows(table)
        assert got.dtype == torch.float64 and got.shape == (6,), n
        assert torch.equal(got.nan_to_num(9.0), want.nan_to_num(9.0)), (n, got, want)
        assert bool(got[3].isnan()) and got[4].item() == 1.0 and got[5].item() == -1.0
        table[0, 0] = float("nan")
        with native.disabled():
            want = spearman_rows(table)
        assert torch.equal(spearman_rows(table).nan_to_num(9.0), want.nan_to_num(9.0)), n
    assert spearman_rows(torch.rand(1, 5, generator=g)).shape == (0,)
    # known answer: ranks [0, 1, 2] against [2, 0, 1] -> 1 - 6 * (4 + 1 + 1) / (3 * 8) = -0.5
    assert spearman_rows(torch.tensor([[1.0, 2.0, 3.0], [5.0, 1.0, 2.0]])).tolist() == [-0.5]


@needs_native
def test_spearman_rows_at_reads_the_marked_tokens_as_the_gathered_table_would():
    """alignment.spearman_rows_at (the C pass that selects the target tokens itself) against
    spearman_rows of the table built by indexing: the same bits for masks with few and most
    tokens marked, strided inputs, ties and head counts; a token count that does not match the
    mask raises; float64 rows are not the kernel's (None: the caller's torch path)."""
    from moh.alignment import spearman_rows, spearman_rows_at

    g = torch.Generator().manual_seed(11)
    for n_all, share in ((40, 0.1), (300, 0.9), (300, 1.0)):
        has = torch.rand(n_all, generator=g) < share
        has[:2] = True
        y = torch.rand(int(has.sum()), generator=g)
        a = torch.rand(n_all, 3, generator=g).t()  # strided rows
        b = torch.randint(0, 9, (2, n_all), generator=g).float()
        a[1] = (a[1] * 4).round()
        got = spearman_rows_at(y, [*a, *b], has)
        want = spearman_rows(torch.cat([y[None], a[:, has], b[:, has]]))
        assert got.shape == (5,) and torch.equal(got.nan_to_num(9.0), want.nan_to_num(9.0)), n_all
    with pytest.raises(ValueError, match="5 token values for 2 marked tokens"):
        spearman_rows_at(torch.rand(5), [torch.rand(4), torch.rand(4)], torch.tensor([True, False, True, False]))
    with pytest.raises(ValueError, match="2 token values for 3 marked tokens"):  # (never read past the table)
        spearman_rows_at(torch.rand(2), [torch.rand(4), torch.rand(4)], torch.tensor([True, True, True, False]))
    assert spearman_rows_at(torch.rand(2), [torch.rand(4, dtype=torch.float64), torch.rand(4)],
                            torch.tensor([True, False, True, False])) is None
    assert spearman_rows_at(torch.rand(2), [torch.rand(5)], torch.tensor([True, False, True, False])) is None
    # known answer: tokens 0, 2, 3 marked; a reads [1, 3, 2] against y [1, 2, 3] -> 0.5,
    # b reads [5, 1, 1] (a tie) -> -sqrt(3) / 2
    got = spearman_rows_at(torch.tensor([1.0, 2.0, 3.0]), [torch.tensor([1.0, 9.0, 3.0, 2.0]),
                           torch.tensor([5.0, 0.0, 1.0, 1.0])], torch.tensor([True, False, True, True]))
    assert got[0].item() == 0.5 and abs(got[1].item() + 3 ** 0.5 / 2) < 1e-15


def test_the_ctypes_signatures_match_the_c_declarations():
    """ctypes cannot see a C prototype: an argument added on one side only would be passed
    as garbage. Every exported function of moh/native.c against native.SIGNATURES."""
    import ctypes
    import re

    c_types = {"int64_t": ctypes.c_int64, "int": ctypes.c_int, "float": ctypes.c_float, "double": ctypes.c_double}
    declared = {}
    for name, params in re.findall(r"^void (\w+)\(([^)]*)\)\s*\{", native.SOURCE.read_text(), re.M):
        args = [" ".join(p.split()) for p in params.split(",")]
        declared[name] = [ctypes.c_void_p if "*" in a else c_types[a.rsplit(" ", 1)[0].replace("const ", "")]
                          for a in args]
    assert declared == native.SIGNATURES
    assert re.search(r"#define MAX_HEADS (\d+)", native.SOURCE.read_text()).group(1) == str(native.MAX_HEADS)
