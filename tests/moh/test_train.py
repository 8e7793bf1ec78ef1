"""Short real training runs: telemetry validates, same seed => same log, non-finite handling."""

import json
import re
from importlib import resources

import jsonschema
import pytest
import torch

from moh import schema
from moh.config import load
from moh.train import CHECKPOINT, CONFIG_FILE, train


def _records(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def json_schema():
    return json.loads(resources.files("moh").joinpath("telemetry.schema.json").read_text("utf-8"))


@pytest.mark.parametrize("router", ["adaptive", "moh", "dense"])
def test_every_record_validates(tmp_path, tiny_cfg, json_schema, router):
    res = train(tiny_cfg(router=router), tmp_path)
    assert res.status == "completed"
    recs = _records(tmp_path / "run.jsonl")
    validator = jsonschema.Draft202012Validator(json_schema)
    for r in recs:
        validator.validate(r)
        assert schema.missing_fields(r) == []
    kinds = [r["event"] for r in recs]
    assert kinds[0] == schema.RUN_START and kinds[-1] == schema.RUN_END
    assert kinds.count(schema.EVAL) == 2  # one per phase
    cfg = tiny_cfg(router=router)
    want_routing = {"unit": "head", "kind": router, "n_units": cfg.n_heads}
    if router == "moh":  # the tiny config's moh: shared heads + top-k routed ones
        want_routing = {"unit": "head", "kind": "shared_topk" if cfg.moh_shared else "topk",
                        "n_units": cfg.n_heads, "top_k": cfg.moh_topk, "n_shared": cfg.moh_shared}
    assert recs[0]["routing"] == want_routing
    steps = [r for r in recs if r["event"] == schema.STEP]
    layer = steps[-1]["layers"][0]
    grads = steps[-1]["grad_norms"]
    if router == "adaptive":
        assert all(layer[k] is not None for k in schema.LAYER_STATS)
        assert all(grads[g] > 0 for g in ("router", "complexity", "threshold"))
    else:  # routing fields that do not apply are null, never a fake 0
        assert layer["threshold_mean"] is None and layer["complexity_max"] is None
        assert grads["threshold"] is None and steps[-1]["aux"]["budget"] is None
    if router == "dense":
        assert layer["heads_mean"] == 4 and layer["entropy"] is None and grads["router"] is None


def test_schema_file_requires_what_schema_py_requires(json_schema):
    defs = json_schema["$defs"]
    for kind, fields in schema.REQUIRED_FIELDS.items():
        assert set(defs[kind]["required"]) == set(fields), kind
    assert set(defs["layer"]["required"]) == set(schema.LAYER_FIELDS)
    assert set(defs["groups"]["required"]) == set(schema.GRAD_GROUPS)
    assert set(defs["aux"]["required"]) == set(schema.AUX_TERMS)


def _strip_time(recs):
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in schema.TIME_FIELDS}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return [strip(r) for r in recs]


def test_same_seed_same_log_apart_from_time(tmp_path, tiny_cfg):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    train(tiny_cfg(seed=3), a)
    train(tiny_cfg(seed=3), b)
    train(tiny_cfg(seed=4), c)
    ra, rb, rc = (_strip_time(_records(d / "run.jsonl")) for d in (a, b, c))
    assert ra == rb
    assert ra != rc


def test_checkpoint_loads_weights_only_and_config_round_trips(tmp_path, tiny_cfg):
    cfg = tiny_cfg(router="moh")
    train(cfg, tmp_path)
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ck["config"] == cfg.to_dict() and "vocab" in ck["tokenizer"]
    assert all(isinstance(v, torch.Tensor) for v in ck["model"].values())
    assert load(tmp_path / CONFIG_FILE) == cfg


def test_nonfinite_stop_fails_the_run_with_an_alert(tmp_path, tiny_cfg):
    # lr 1e30 blows the weights up within a step or two: a real non-finite loss, no mock
    res = train(tiny_cfg(lr=1e30, warmup_steps=0, grad_clip=0.0, nonfinite="stop"), tmp_path)
    recs = _records(tmp_path / "run.jsonl")
    assert res.status == "failed"
    alerts = [r for r in recs if r["event"] == schema.ALERT and r["code"] == "nonfinite"]
    assert alerts and alerts[0]["level"] == "error"
    assert recs[-1]["event"] == schema.RUN_END and recs[-1]["status"] == "failed"
    assert not (tmp_path / CHECKPOINT).exists()


def test_nonfinite_skip_keeps_going_and_log_stays_strict_json(tmp_path, tiny_cfg):
    res = train(tiny_cfg(lr=1e30, warmup_steps=0, grad_clip=0.0, nonfinite="skip"), tmp_path)
    assert res.status == "completed"
    text = (tmp_path / "run.jsonl").read_text()
    recs = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in log")) for line in text.splitlines()]
    skipped = [r for r in recs if r["event"] == schema.STEP and r.get("skipped")]
    assert skipped and any(isinstance(r["loss"], str) or r["grad_norm"] in schema.NONFINITE_STRINGS for r in skipped)


def test_existing_log_needs_overwrite(tmp_path, tiny_cfg):
    (tmp_path / "run.jsonl").write_text("old\n")
    with pytest.raises(FileExistsError):
        train(tiny_cfg(), tmp_path)
    assert (tmp_path / "run.jsonl").read_text() == "old\n"
    assert train(tiny_cfg(), tmp_path, overwrite=True).status == "completed"


@pytest.mark.parametrize("fmt,says", [(1, "written by an earlier moh (checkpoint format 1"),
                                      (99, "not a moh checkpoint of format 2")])
def test_a_checkpoint_of_another_format_is_refused_with_the_reason(tmp_path, fmt, says):
    """Format 1 held the adaptive router as five tensors: its state cannot fit this model, so a
    resume says which version wrote it instead of failing inside load_state_dict."""
    from moh import checkpoint as ck

    torch.save({"format": fmt, "model": {}}, tmp_path / ck.CHECKPOINT_FILE)
    with pytest.raises(ck.CheckpointError, match=re.escape(says)):
        ck.load(tmp_path)
