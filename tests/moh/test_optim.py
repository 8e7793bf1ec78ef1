"""moh.optim.AdamW must be torch.optim.AdamW(fused=True), bit for bit: the trainer swapped it in
only to avoid torch.optim's 2.8 s torch._dynamo import at every process start."""

from __future__ import annotations

import copy

import torch

from moh.config import Config
from moh.model import LM
from moh.optim import AdamW, clip_, grad_norms, make_optimizer, named_groups, set_lr


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
    params = [p for ps in groups.values() for p in ps]
    for x, lr in zip(batches, lrs):
        set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)
        _, loss_sum, _ = model(x[:, :-1], targets=x[:, 1:])
        (loss_sum / x[:, 1:].numel()).backward()
        total, _ = grad_norms(groups)
        clip_(params, total, cfg.grad_clip)
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
