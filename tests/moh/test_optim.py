"""moh.optim.AdamW must be torch.optim.AdamW(fused=True), bit for bit: the trainer swapped it in
only to avoid torch.optim's 2.8 s torch._dynamo import at every process start. The global clip
rides in the fused kernel as its grad_scale, as torch's AMP unscaling does (GradScaler sets
`optimizer.grad_scale`)."""

from __future__ import annotations

import copy

import pytest
import torch

from moh.config import Config
from moh.model import LM
from moh.optim import AdamW, clip_divisor, grad_norms, make_optimizer, named_groups, set_lr


def _model_and_batches(seed: int = 0):
    torch.manual_seed(seed)
    cfg = Config(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_len=16)
    model = LM(cfg, vocab_size=50)
    batches = [torch.randint(0, 50, (4, 17)) for _ in range(6)]
    return cfg, model, batches


def _torch_adamw(model, cfg, lr):
    """make_optimizer's groups, handed to torch's own AdamW instead."""
    ours = make_optimizer(model, cfg, lr)
    groups = [{k: v for k, v in g.items() if k not in ("betas", "eps")} for g in ours.param_groups]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=True)
    set_lr(opt, lr)
    return opt


def _train(model, opt, batches, cfg, lrs):
    groups = named_groups(model)
    for x, lr in zip(batches, lrs):
        set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)
        _, loss_sum, _ = model(x[:, :-1], targets=x[:, 1:])
        (loss_sum / x[:, 1:].numel()).backward()
        total, _ = grad_norms(groups)
        divisor = clip_divisor(total, cfg.grad_clip)
        if isinstance(opt, AdamW):  # the trainer's step
            opt.step(grad_scale=divisor)
        else:  # torch's fused AdamW reads the divisor where GradScaler puts it
            opt.grad_scale = divisor
            opt.step()


def test_same_parameters_and_moments_as_torch_adamw_bit_for_bit():
    cfg, model, batches = _model_and_batches()
    twin = copy.deepcopy(model)
    lrs = [1e-3 * (i + 1) for i in range(len(batches))]  # a changing LR, as in warmup
    ours = make_optimizer(model, cfg, lrs[0])
    theirs = _torch_adamw(twin, cfg, lrs[0])
    _train(model, ours, batches, cfg, lrs)
    _train(twin, theirs, batches, cfg, lrs)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert ours_sd["state"].keys() == theirs_sd["state"].keys()
    for i, st in ours_sd["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(st[key], theirs_sd["state"][i][key]), (i, key)
    assert [g["params"] for g in ours_sd["param_groups"]] == [g["params"] for g in theirs_sd["param_groups"]]


def test_resume_from_a_state_dict_continues_the_same_run():
    """A checkpoint's state_dict (ours, or one torch's AdamW wrote) loaded into a fresh optimizer
    continues exactly where an uninterrupted run goes."""
    cfg, model, batches = _model_and_batches(1)
    lrs = [2e-3] * len(batches)
    whole = copy.deepcopy(model)
    _train(whole, make_optimizer(whole, cfg, lrs[0]), batches, cfg, lrs)

    for writer in (make_optimizer, _torch_adamw):
        first = copy.deepcopy(model)
        opt = writer(first, cfg, lrs[0])
        _train(first, opt, batches[:3], cfg, lrs[:3])
        state = copy.deepcopy(opt.state_dict())
        resumed = make_optimizer(first, cfg, lrs[0])
        resumed.load_state_dict(state)
        _train(first, resumed, batches[3:], cfg, lrs[3:])
        for (name, a), b in zip(first.named_parameters(), whole.parameters()):
            assert torch.equal(a, b), (writer.__name__, name)


def test_zero_grad_and_groups_without_gradients():
    cfg, model, _ = _model_and_batches(2)
    opt = make_optimizer(model, cfg, 1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # no gradients yet: nothing moves, no state
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and not opt.state
    assert isinstance(opt, AdamW)


def test_the_clip_in_the_step_leaves_the_clipped_gradients():
    """clip_divisor + step(grad_scale=): the update of gradients clipped to the global norm, and
    those clipped gradients left in .grad (a later reader sees what the step used)."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])  # global norm 5
    divisor = clip_divisor(torch.tensor(5.0), 1.0)
    assert divisor.item() == pytest.approx(5.0, rel=1e-6)
    AdamW([{"params": [a, b], "weight_decay": 0.0}], lr=0.1, betas=(0.9, 0.999), eps=1e-8).step(grad_scale=divisor)
    assert a.grad.tolist() == pytest.approx([0.6, 0.0]) and b.grad.tolist() == pytest.approx([0.0, 0.8])
    # the first Adam step moves each coordinate with a gradient by lr, against its sign
    assert a.tolist() == pytest.approx([-0.1, 0.0]) and b.tolist() == pytest.approx([0.0, -0.1])


@pytest.mark.parametrize("norm,clip,divisor", [(5.0, 1.0, 5.0), (5.0, 4.9, 5.0 / 4.9), (5.0, 5.1, 1.0),
                                               (5.0, 100.0, 1.0)])
def test_clip_divisor_on_both_sides_of_the_clip(norm, clip, divisor):
    assert clip_divisor(torch.tensor(norm), clip).item() == pytest.approx(divisor, rel=1e-5)


def test_clip_off_is_no_divisor():
    assert clip_divisor(torch.tensor(5.0), 0.0) is None


def test_a_parameter_without_a_gradient_keeps_its_step_count():
    """Parameters stepped together share one step counter; one that sits a step out (no
    gradient) must keep its own count, as in torch's AdamW, and a resumed optimizer must carry
    each count on."""
    cfg, model, batches = _model_and_batches(3)
    twin = copy.deepcopy(model)
    ours, theirs = make_optimizer(model, cfg, 1e-3), _torch_adamw(twin, cfg, 1e-3)
    for step, x in enumerate(batches[:4]):
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad(set_to_none=True)
            _, loss_sum, _ = m(x[:, :-1], targets=x[:, 1:])
            loss_sum.backward()
            if step == 1:  # the position embedding sits this step out
                m.pos_emb.weight.grad = None
            opt.step()
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    steps = {i: float(st["step"]) for i, st in ours_sd["state"].items()}
    assert steps == {i: float(st["step"]) for i, st in theirs_sd["state"].items()}
    assert sorted(set(steps.values())) == [3.0, 4.0]  # the position embedding's count is 3
    resumed = make_optimizer(model, cfg, 1e-3)
    resumed.load_state_dict(copy.deepcopy(ours_sd))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    resumed.step()
    assert {i: float(st["step"]) for i, st in resumed.state_dict()["state"].items()} == \
        {i: v + 1 for i, v in steps.items()}
