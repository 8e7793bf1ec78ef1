"""The adaptive router's fused paths equal the reference formulation (value and gradient)."""

import pytest
import torch

from moh.routing import fused_linear
from tests.moh.native_switch import both_kernels, native_on  # noqa: F401 (fixture)
from tests.moh.records import Records

pytestmark = pytest.mark.usefixtures("both_kernels")


def test_fused_linear_matches_separate_linears():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(4, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 16, generator=g, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(1, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w1, w2, b2: fused_linear(x, [w1, w2], [None, b2]), (x, w1, w2, b2))
    ref = torch.cat([x @ w1.T, x @ w2.T + b2], -1)
    torch.testing.assert_close(fused_linear(x, [w1, w2], [None, b2]), ref)


def test_full_telemetry_tier_adds_heads_hist_and_prob_mean(tiny_cfg):
    from moh import schema
    from moh.train import train

    for router, tier in (("adaptive", "full"), ("dense", "full"), ("adaptive", "basic")):
        sink = Records()
        train(tiny_cfg(router=router, telemetry_tier=tier, instruct_epochs=0, eval_prompts=0), None, sink=sink)
        steps = [r for r in sink.records if r["event"] == schema.STEP]
        assert steps and not any(schema.missing_fields(r) for r in steps)
        for layer in steps[-1]["layers"]:
            if tier == "basic":
                assert "heads_hist" not in layer and "prob_mean" not in layer
                continue
            hist = layer["heads_hist"]
            assert len(hist) == 4 + 1 and abs(sum(hist) - 1) < 1e-5
            mean_from_hist = sum(k * f for k, f in enumerate(hist))
            assert abs(mean_from_hist - layer["heads_mean"]) < 1e-4
            if router == "dense":
                assert layer["prob_mean"] is None and hist[-1] == 1.0
            else:
                assert len(layer["prob_mean"]) == 4 and abs(sum(layer["prob_mean"]) - 1) < 1e-5


# ------------------------------------------------------------------------------------------------
# _AdaptiveRoute (the node AdaptiveRouter.forward runs) against route_reference (plain autograd)

OUTPUTS = ("gates", "hard", "probs", "c", "kappa", "tau", "count")


def _router(**kw):
    from moh.config import Config
    from moh.routing import AdaptiveRouter

    return AdaptiveRouter(Config(n_heads=8, d_model=32, **kw))


def _projections(seed: int, dtype, saturate: bool, B: int = 3, T: int = 7, H: int = 8):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(B, T, H + 2, generator=g, dtype=dtype) * 2
    if saturate:  # a third of the tokens at sigmoid 0, a third at 1: tau lands just outside
        # [tau_lo, tau_hi] and is clamped there; the rest stay inside (both sides of the clamp)
        u = torch.rand(B, T, generator=g)
        far = torch.where(u < 1 / 3, -40.0, 40.0).to(dtype)
        out[..., H + 1] = torch.where(u < 2 / 3, far, out[..., H + 1])
    return out


def _route(router, out, fast: bool, weights: dict[str, torch.Tensor]):
    """Outputs and d(sum_k weights_k * output_k)/d out, through the node or the reference."""
    from moh.route_fast import _AdaptiveRoute

    x = out.clone().requires_grad_()
    res = dict(zip(OUTPUTS, _AdaptiveRoute.apply(x, router) if fast else router.route_reference(x)))
    loss = sum((res[k] * w).sum() for k, w in weights.items() if res[k].requires_grad)
    grad = torch.autograd.grad(loss, x)[0] if isinstance(loss, torch.Tensor) else torch.zeros_like(x)
    out = {k: v.detach() for k, v in res.items()}
    out["requires_grad"] = tuple(v.requires_grad for v in res.values())  # detached gates stay detached
    return out, grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("saturate", [False, True], ids=["tau_free", "tau_clamped"])
@pytest.mark.parametrize("straight_through", [True, False])
@pytest.mark.parametrize("which", ["all", "gates", "probs", "c", "kappa", "tau", "count"])
def test_adaptive_route_node_matches_the_reference(dtype, saturate, straight_through, which):
    router = _router(straight_through=straight_through).to(dtype)
    out = _projections(3, dtype, saturate)
    if saturate:  # the case must really clamp, or the clamp's side of the gradient goes untested
        s = torch.sigmoid(out[..., 9])
        assert ((0.3 + 0.5 * s < router.tau_lo) | (0.3 + 0.5 * s > router.tau_hi)).any()
    g = torch.Generator().manual_seed(7)
    names = [k for k in OUTPUTS if k != "hard"] if which == "all" else [which]
    weights = {k: torch.randn(out.shape[:-1] + ((8,) if k in ("gates", "probs") else ()), generator=g,
                              dtype=dtype) for k in names}
    ref, g_ref = _route(router, out, False, weights)
    new, g_new = _route(router, out, True, weights)
    for k in OUTPUTS:  # forward: the same bits; moh/native.c's exp is libm's, not aten's:
        # its float32 softmax and sigmoids (and what follows from them) are within a few ulps
        if k in ("probs", "c", "kappa", "tau") and dtype == torch.float32 and native_on():
            torch.testing.assert_close(new[k], ref[k], rtol=4e-7, atol=0, msg=k)
        else:  # the selection, given those values: the same decisions
            assert torch.equal(ref[k], new[k]), k
    assert ref["requires_grad"] == new["requires_grad"]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_new, g_ref, **tol)
    if which in ("gates", "count") and not straight_through:
        assert g_ref.abs().sum() == 0  # detached gates: nothing flows, in either implementation
    else:
        assert g_ref.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("straight_through", [True, False])
def test_adaptive_route_node_clamp_that_bites(straight_through, dtype):
    """Narrowed bounds clamp tau where the sigmoid is far from saturated, so the clamp's zero
    gradient is a large difference, not a 1e-8 one (the real bounds only clamp rounding).
    float32 is what moh/native.c runs."""
    router = _router(straight_through=straight_through).to(dtype)
    router.tau_lo, router.tau_hi = 0.45, 0.65  # tau_min + 0.5 s: clamped for s < 0.3 or s > 0.7
    out = _projections(11, dtype, saturate=False)
    s = torch.sigmoid(out[..., 9])
    assert ((s < 0.3) | (s > 0.7)).any() and ((s > 0.3) & (s < 0.7)).any()
    w = torch.randn(out.shape[:-1], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for which in ("tau", "gates"):
        weights = {which: w.unsqueeze(-1).expand(*w.shape, 8) if which == "gates" else w}
        ref, g_ref = _route(router, out, False, weights)
        new, g_new = _route(router, out, True, weights)
        if dtype == torch.float64 or not native_on():
            assert torch.equal(ref["tau"], new["tau"])
        else:  # libm's exp in the sigmoid
            torch.testing.assert_close(new["tau"], ref["tau"], rtol=4e-7, atol=0)
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(g_new, g_ref, rtol=tol, atol=tol)


def test_adaptive_router_forward_runs_the_node_with_the_reference_values():
    router = _router()
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    r = router(x)
    gates, hard, probs, c, kappa, tau, count = router.route_reference(
        torch.cat([x @ router.w_r.T, (x @ router.w_c + router.b_c)[..., None], (x @ router.w_t + router.b_t)[..., None]], -1))
    for got, want in ((r.gates, gates), (r.hard, hard), (r.probs, probs), (r.complexity, c),
                      (r.kappa, kappa), (r.tau, tau), (r.count, count)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert r.pred_norm is not None and not r.pred_norm.requires_grad


def test_row_softmax_is_softmax_at_two_threads():
    from moh.route_fast import row_softmax

    x = torch.randn(40, 30, 8, generator=torch.Generator().manual_seed(0))  # 1200 rows: parallel
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(row_softmax(x[..., :8]), x.softmax(-1))
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scalars_give_the_bits_of_python_numbers(dtype):
    from moh.route_fast import scalars

    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0), dtype=dtype) * 3
    values = (0.1, 0.3, 0.5, 7.0, 1 / 3, 3.5, 64)
    for v, t in zip(values, scalars(values, dtype, x.device)):
        assert torch.equal(x * v, x * t) and torch.equal(x / v, x / t)
        assert torch.equal(v + x, t + x) and torch.equal(x - v, x - t)


# ------------------------------------------------------------------------------------------------
# fused_projections (the attention's fused matmul) against separate matmuls


@pytest.mark.parametrize("C,K", [(128, 10), (32, 6)])
def test_fused_projections_are_the_separate_matmuls(C, K):
    """The q, k, v columns are the bits of the qkv matmul alone (what the dense model computes),
    the router's those of its own; gradients as through separate matmuls, each weight's
    contiguous (AccumulateGrad keeps it without a copy)."""
    import torch.nn.functional as F

    from moh.route_fast import fused_projections

    g = torch.Generator().manual_seed(C + K)
    x = torch.randn(4, 9, C, generator=g)
    # qkv, then the adaptive router's layout: one (K, C) matrix whose first K - 2 rows (W_r)
    # have no bias, its bias in parts (zeros, then b_c and b_t)
    params = [torch.randn(3 * C, C, generator=g), torch.randn(3 * C, generator=g),
              torch.randn(K, C, generator=g), torch.randn(2, generator=g)]
    w_out = torch.randn(4, 9, 3 * C + K, generator=g)

    def run(fast):
        xs = x.clone().requires_grad_()
        w_qkv, b_qkv, w_r, b_r = (p.clone().requires_grad_() for p in params)
        if fast:
            blocks = fused_projections(xs, [w_qkv, w_r], [b_qkv, torch.zeros(K - 2), b_r], [C, C, C, K])
        else:
            qkv = F.linear(xs, w_qkv, b_qkv)
            router = torch.cat([F.linear(xs, w_r[:K - 2]), F.linear(xs, w_r[K - 2:], b_r)], -1)
            blocks = [*qkv.split(C, -1), router]
        ps = (w_qkv, b_qkv, w_r, b_r)
        (torch.cat(blocks, -1) * w_out).sum().backward()
        return [t.detach() for t in blocks], [xs.grad] + [p.grad for p in ps]

    b_ref, d_ref = run(False)
    b_new, d_new = run(True)
    assert [t.shape[-1] for t in b_new] == [C, C, C, K]
    assert all(torch.equal(a, b) for a, b in zip(b_ref[:3], b_new[:3]))
    torch.testing.assert_close(b_new[3], b_ref[3], rtol=1e-5, atol=1e-5)  # a wider matmul: its rounding
    for a, b in zip(d_ref, d_new):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-4)
        assert b.is_contiguous()
