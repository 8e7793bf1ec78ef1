"""moh.monitor.hf.attach on tiny randomly initialised Mixtral, Qwen2-MoE and OLMoE models built
from configs (nothing is downloaded), trained a few steps; their logs judged by the analyzer."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")

from analyze.findings import find_all  # noqa: E402
from analyze.load import load_run  # noqa: E402
from moh.monitor import Recorder  # noqa: E402
from moh.monitor.hf import attach  # noqa: E402

COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, eos_token_id=None, pad_token_id=None,
              bos_token_id=None)
FAMILIES = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=32)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=8, num_experts_per_tok=2)),
}
STEPS = 8
pytestmark = pytest.mark.slow  # importing transformers alone takes seconds on the 2-core VM


def _train(family, out):
    cfg_name, model_name, extra = FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**COMMON, **extra))
    n_experts = extra.get("num_local_experts", extra.get("num_experts"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with Recorder(out, model=model) as rec:
        layers = attach(model, rec)
        for step in range(1, STEPS + 1):
            x = torch.randint(0, 16, (4, 12))  # a small alphabet: something to learn in 8 steps
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            rec.step(step, loss=loss.item(), lr=3e-3)
            opt.step()
    return model, rec, layers, n_experts


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attach_records_one_load_per_expert_and_judges_without_errors(family, tmp_path):
    model, rec, layers, n_experts = _train(family, tmp_path)
    assert layers == [0, 1]
    recs = [json.loads(line) for line in open(tmp_path / "run.jsonl", encoding="utf-8")]
    assert recs[0]["routing"] == {"unit": "expert", "kind": "topk", "n_units": n_experts, "top_k": 2}
    steps = [r for r in recs if r["event"] == "step"]
    assert len(steps) == STEPS
    for s in steps:
        assert [l["layer"] for l in s["layers"]] == [0, 1]
        for l in s["layers"]:
            assert len(l["head_load"]) == n_experts
            assert sum(l["head_load"]) == pytest.approx(2.0)  # top-2: two experts per token
            assert l["heads_min"] == l["heads_max"] == 2.0
            assert 0 < l["entropy"] <= torch.log(torch.tensor(float(n_experts))).item() + 1e-6
        assert s["grad_norms"]["router"] > 0
    # every router parameter is in the router group, and only router parameters are
    routers = {id(p) for n, p in model.named_parameters() if ".mlp.gate." in n or "shared_expert_gate" in n}
    assert {id(p) for p in rec._groups["router"]} == routers
    findings = find_all(load_run(tmp_path / "run.jsonl"))
    assert [f for f in findings if f.severity == "error"] == []


def test_attach_refuses_a_model_without_moe_blocks(tmp_path):
    with Recorder(tmp_path) as rec:
        with pytest.raises(ValueError, match="no Mixtral"):
            attach(torch.nn.Linear(2, 2), rec)
