import pytest

from moh.config import Config, ConfigError, load, parse_override


@pytest.mark.parametrize("kw, field", [
    ({"n_heads": 7}, "n_heads"),
    ({"lr": -1e-3}, "lr"),
    ({"router": "sparse"}, "router"),
    ({"tau_max": 1.5}, "tau_max"),
    ({"target_heads": 9.0}, "target_heads"),
    ({"moh_topk": 7, "moh_shared": 2}, "moh_topk"),
    ({"batch_size": 0}, "batch_size"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"nonfinite": "ignore"}, "nonfinite"),
    ({"n_layers": "2"}, "n_layers"),
    ({"lr": float("nan")}, "lr"),
    ({"moh_gates": "reference"}, "moh_gates"),
    ({"entropy_weight": -1e-4}, "entropy_weight"),
    ({"complexity_target": "loss"}, "complexity_target"),
])
def test_bad_values_name_the_field(kw, field):
    with pytest.raises(ConfigError) as e:
        Config(**kw)
    assert str(e.value).startswith(f"{field}:")


def test_unknown_key_is_rejected_from_file_and_flag(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("lrr = 0.1\n")
    with pytest.raises(ConfigError, match="^lrr: unknown config key"):
        load(p)
    with pytest.raises(ConfigError, match="^nope: unknown"):
        parse_override("nope=1")


def test_precedence_defaults_file_flags(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('lr = 0.01\nrouter = "moh"\nseed = 5\n')
    cfg = load(p, lr=0.02, seed=None)
    assert (cfg.lr, cfg.router, cfg.seed, cfg.d_model) == (0.02, "moh", 5, Config().d_model)


def test_resolved_toml_round_trips(tmp_path):
    cfg = Config(router="dense", lr=0.004, data="/some/where", tie_embeddings=False)
    p = tmp_path / "resolved.toml"
    p.write_text(cfg.to_toml())
    assert load(p) == cfg


def test_override_is_typed_by_the_field():
    assert parse_override("lr=1e-3") == ("lr", 1e-3)
    assert parse_override("n_layers=3") == ("n_layers", 3)
    assert parse_override("tie_embeddings=false") == ("tie_embeddings", False)
    with pytest.raises(ConfigError, match="^n_layers: expected int"):
        parse_override("n_layers=two")


def test_resuming_a_checkpoint_from_before_moh_gates_keeps_the_paper_gates():
    from moh.checkpoint import resume_config

    saved = Config(router="moh").to_dict()
    del saved["moh_gates"]  # a checkpoint written before the key existed
    assert resume_config(saved, {}).moh_gates == "paper"
    assert resume_config(Config(router="moh").to_dict(), {}).moh_gates == "released"


def test_old_complexity_objective_stays_reachable_from_flags():
    """The default objective is the difficulty target (issue 18); the one before it is two --set
    flags away, and the flags really change both fields (not a no-op on an equal default)."""
    default = Config()
    assert (default.complexity_target, default.complexity_weight) == ("entropy_rank", 1.0)
    old = load(None, **dict(parse_override(s) for s in ("complexity_target=heads", "complexity_weight=0.1")))
    assert (old.complexity_target, old.complexity_weight) == ("heads", 0.1)
