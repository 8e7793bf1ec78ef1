"""Training learns (issue 15 item 3): a tiny real run per router must lower the LM loss by a
stated margin, and the routing parameters (router, threshold and complexity predictors) must
move away from their initial values.

The sample logs are recorded files and cannot notice an engine regression (a learning rate
scaled by 1e-6, a gradient path cut, an optimizer step that does nothing); these runs can.
Measured (2-core VM, load ~3.6): 36 pre-training steps, ~1.2 s per router; the LM loss goes
from ~7.42 at step 1 to ~6.0 (mean of the last 3 steps) for every router; every routing
tensor moves by at least ~0.3 in L2 norm.
"""

from __future__ import annotations

import pytest
import torch

from moh.train import CHECKPOINT, train
from tests.moh.records import Records

EPOCHS = 4  # 36 optimizer steps of batch 64 on the embedded corpus
MIN_DROP = 1.0  # nats: LM loss at step 1 minus the mean of the last 3 steps (measured ~1.4)
MIN_MOVE = 0.05  # L2 norm of (trained - initial) for every routing tensor (measured >= ~0.3)


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path / CHECKPOINT, weights_only=True)["model"]


# name -> the row blocks that must each move (None: the whole tensor). The adaptive router keeps
# W_r, w_c and w_t in one matrix and b_c, b_t in one vector: each part is checked on its own,
# so a predictor whose gradient was cut cannot hide in the matrix's norm.
ADAPTIVE_ROWS = {"router.weight": {"W_r": slice(0, -2), "w_c": slice(-2, -1), "w_t": slice(-1, None)},
                 "router.bias": {"b_c": slice(0, 1), "b_t": slice(1, 2)}}


@pytest.mark.parametrize("router,moving", [
    ("adaptive", ADAPTIVE_ROWS),
    ("moh", {k: None for k in ("router.router.weight", "router.shared.weight", "router.mix.weight")}),
    ("dense", {}),
])
def test_a_tiny_run_learns_and_moves_its_routing_parameters(tmp_path, tiny_cfg, router, moving):
    cfg = tiny_cfg(router=router, pretrain_epochs=EPOCHS, instruct_epochs=0, eval_prompts=0)
    # the same config with no epochs writes the initial weights through the same code path
    train(cfg.replace(pretrain_epochs=0), tmp_path / "init")
    sink = Records()
    res = train(cfg, tmp_path / "run", sink=sink)
    assert res.status == "completed" and len(sink.steps) == 36

    losses = [s["lm_loss"] for s in sink.steps]
    drop = losses[0] - sum(losses[-3:]) / 3
    assert drop >= MIN_DROP, f"{router}: LM loss fell by only {drop:.3f} nats ({losses[0]:.3f} -> {losses[-1]:.3f})"

    before, after = _weights(tmp_path / "init"), _weights(tmp_path / "run")
    routing = sorted(k for k in before if ".attn.router." in k)
    expected = sorted(f"blocks.{i}.attn.{m}" for i in range(cfg.n_layers) for m in moving)
    assert routing == expected  # every routing tensor is checked, and there is none for dense
    for k in routing:
        parts = moving[k.split(".attn.", 1)[1]] or {"all": slice(None)}
        for part, rows in parts.items():
            moved = float((after[k][rows] - before[k][rows]).norm())
            assert moved >= MIN_MOVE, f"{k} ({part}) moved by only {moved:.2e}"
