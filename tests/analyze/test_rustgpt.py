"""analyze.rustgpt: reference trainer text logs -> telemetry records.

Two sources of input: the three real logs in ../shared/rustgpt/logs (read at test time, never
copied; skipped when absent), and hand-made logs generated here from a seeded RNG, whose expected
values are the numbers the generator printed.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from analyze import rustgpt
from moh import schema

SHARED = Path(__file__).resolve().parents[3] / "shared" / "rustgpt"
LOGS = SHARED / "logs"
CHAT = SHARED / "data" / "chat_training_data.json"
needs_shared = pytest.mark.skipif(not LOGS.is_dir(), reason=f"reference logs not present at {LOGS}")


def shared_logs() -> list[Path]:
    return sorted(LOGS.glob("*.txt")) if LOGS.is_dir() else []


def steps_of(records):
    return [r for r in records if r["event"] == schema.STEP]


# ---- the real logs ------------------------------------------------------------------------------


def scan_epoch_lines(path: Path) -> dict[str, list[tuple[int, str, str]]]:
    """Independent oracle: (epoch, loss text, grad_norm text) per phase, by a plain regex scan."""
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        text = raw.decode("utf-16")
    else:
        text = raw.decode("utf-8", errors="replace")
    text = re.sub(r"\x1b\[[\d;]*m", "", text)
    phases: dict[str, list] = {}
    phase = "pretrain"
    for line in text.splitlines():
        if "INSTRUCTION TUNING" in line:
            phase = "instruct"
        m = re.search(r"Training epoch completed.* epoch=(\d+) loss=(\S+) grad_norm=(\S+)", line)
        if m:
            phases.setdefault(phase, []).append((int(m[1]), m[2], m[3]))
    return phases


@needs_shared
@pytest.mark.parametrize("path", shared_logs(), ids=lambda p: p.name[:7])
def test_shared_log_matches_text(path):
    records = list(rustgpt.iter_records(path))
    expected = scan_epoch_lines(path)
    assert expected, "oracle found no epoch lines"
    steps = steps_of(records)
    for phase, rows in expected.items():
        got = [s for s in steps if s["phase"] == phase]
        assert len(got) == len(rows), phase
        for i in (0, -1):
            epoch, loss, grad_norm = rows[i]
            assert got[i]["epoch"] == epoch
            assert got[i]["loss"] == float(loss)
            assert got[i]["grad_norm"] == float(grad_norm)
    assert set(s["phase"] for s in steps) == set(expected)
    assert [s["step"] for s in steps] == list(range(len(steps)))
    for rec in records:
        assert schema.missing_fields(rec) == [], rec["event"]
        json.loads(schema.encode_record(rec))
    start = records[0]
    assert start["source"] == schema.SOURCE_RUSTGPT
    assert start["semantics"]["heads"] == schema.HEADS_SOFT_WEIGHT_SUM
    assert start["semantics"]["grad_norm"] == schema.GRAD_NORM_POST_CLIP
    assert start["semantics"]["grad_norm_clip"] == 100.0


@needs_shared
@pytest.mark.parametrize("path", shared_logs(), ids=lambda p: p.name[:7])
def test_shared_log_heads_restate_complexity(path):
    """The documented placement keeps redundancy visible: mean h == 1 + 7 * complexity_mean."""
    for s in steps_of(rustgpt.iter_records(path)):
        heads = [lay["heads_mean"] for lay in s["layers"]]
        # h printed with 2 decimals, complexity with 3: 7 * 0.0005 + 0.005 of slack
        assert abs(sum(heads) / len(heads) - (1 + 7 * s["complexity_mean"])) <= 0.0086


@needs_shared
def test_shared_logs_end_and_samples():
    killed = LOGS / "75af5a0_trm_adaptive_100epoch_v3_log.txt"
    records = list(rustgpt.iter_records(killed))
    assert records[-1]["event"] == schema.STEP, "a killed run has no run_end"
    assert not any(r["event"] == schema.EVAL for r in records)

    full = LOGS / "e70e746_build_run_after_fix.txt"
    records = list(rustgpt.iter_records(full, corpus=CHAT))
    assert records[-1]["event"] == schema.RUN_END
    assert records[-1]["steps"] == len(steps_of(records))
    ev = [r for r in records if r["event"] == schema.EVAL]
    assert len(ev) == 1 and ev[0]["samples"][0]["prompt"].startswith("User:")
    assert ev[0]["samples"][0]["match"] is True and ev[0]["exact_match"] == 1.0
    # 14-layer stack; WARN lines give per-position norms, attached to a later epoch line
    with_grads = [s for s in steps_of(records) if s.get("grad_norms_source") == "layerwise_warn"]
    assert with_grads and all(s["grad_norms_batches"] >= 1 for s in with_grads)
    assert {"embedding", "attention", "ffn"} <= set(with_grads[0]["grad_norms"])

    trm = LOGS / "f440076_trm_adaptive_improved_10epoch_log.txt"
    records = list(rustgpt.iter_records(trm, corpus=CHAT))
    steps = steps_of(records)
    assert records[0]["model"]["n_layers"] == 1, "a TRM's shared layer is printed twice, counted once"
    assert all([lay["label"] for lay in s["layers"]] == ["L1"] for s in steps)
    assert all(s["aux"] == {"entropy_weight": 0.0} for s in steps)
    assert any(s["complexity_min"] == s["complexity_max"] for s in steps)
    assert all(s["grad_norms_source"] == "lars" for s in steps)
    assert [r for r in records if r["event"] == schema.EVAL][0]["samples"][0]["match"] is False


@needs_shared
@pytest.mark.parametrize("path", shared_logs(), ids=lambda p: p.name[:7])
def test_shared_log_sniffed_from_head(path):
    with open(path, "rb") as f:
        assert rustgpt.sniff(f.read(65536))


# ---- hand-made variants ---------------------------------------------------------------------

BASE = datetime(2025, 10, 21, 17, 40, 0, tzinfo=timezone.utc)
OPTIONAL = ("warmup", "dynw", "conf", "trm", "unknown", "warn", "lars")


def _line(rng, *, epoch, t, n_layers, opts, ansi) -> tuple[str, dict]:
    """One epoch line in the trainer's format and the values it prints."""
    c = round(rng.uniform(0.05, 0.95), 3)
    lo, hi = round(c - 0.04, 3), round(c + 0.04, 3)
    heads = [round(1 + 7 * c + rng.uniform(-0.3, 0.3), 2) for _ in range(n_layers)]
    thr = [round(rng.uniform(0.3, 0.8), 2) for _ in range(n_layers)]
    exp = {
        "epoch": epoch, "loss": float(f"{rng.uniform(0.1, 9):.6f}"), "grad_norm": float(f"{rng.uniform(0.1, 120):.6f}"),
        "lr": float(f"{rng.uniform(1e-6, 1e-3):.6e}"), "heads": heads, "thr": thr, "complexity": (c, lo, hi),
        "labels": [f"L{1 + 4 * i}" for i in range(n_layers)], "time": (BASE.timestamp() + t),
    }
    stamp = datetime.fromtimestamp(BASE.timestamp() + t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    parts = [" | ".join(f"{lab}: {h:.2f}h@{p:.2f}p" for lab, h, p in zip(exp["labels"], heads, thr))]
    parts[0] = "MoH " + parts[0]
    if "dynw" in opts:
        exp["dynw"] = round(rng.uniform(0, 0.1), 2)
        parts.append(f"DynW: {exp['dynw']:.2e}")
    parts.append(f"ThreshRange: [{min(thr):.2f}-{max(thr):.2f}]")
    if "conf" in opts:
        exp["conf"] = (round(rng.uniform(0.5, 1), 3), round(rng.uniform(0, 0.5), 3), round(rng.uniform(0, 20), 1))
        parts.append(f"ConfAvg: {exp['conf'][0]:.3f} | ConfMin: {exp['conf'][1]:.3f} | Fallback: {exp['conf'][2]:.1f}%")
    exp["pred_norm"] = round(rng.uniform(1, 20), 4)
    parts.append(f"PredNorm: {exp['pred_norm']:.4f}")
    parts.append(f"Complexity: {c:.3f} [{lo:.3f}-{hi:.3f}]")
    parts.append("Temp: 5.49 [5.02-5.99]")
    if "unknown" in opts:
        exp["unknown"] = round(rng.uniform(0, 3), 2)
        parts.append(f"NewStat: {exp['unknown']:.2f}")
    if "trm" in opts:
        exp["trm_s0"] = round(rng.uniform(0, 1), 2)
        parts.append(f"TRM: Attn[S0:{exp['trm_s0']:.2f},S1:0.01] FFN[S0:0.02,S1:0.02] Depth: avg=10.0 [9-11]")
    warm = f" (warmup {epoch + 1}/15)" if "warmup" in opts else ""
    if ansi:
        tail = " ".join(f"\x1b[3m{k}\x1b[0m\x1b[2m=\x1b[0m{v}" for k, v in
                        (("epoch", epoch), ("loss", exp["loss"]), ("grad_norm", exp["grad_norm"]), ("learning_rate", exp["lr"])))
        prefix = f"\x1b[2m{stamp}\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mllm::llm\x1b[0m\x1b[2m:\x1b[0m "
    else:
        tail = f"epoch={epoch} loss={exp['loss']} grad_norm={exp['grad_norm']} learning_rate={exp['lr']}"
        prefix = f"{stamp}  INFO llm::llm: "
    return f"{prefix}Training epoch completed{warm} | " + " | ".join(parts) + " " + tail, exp


NOISE = [
    "warning: unused import: `Axis`", "  --> src\\trm.rs:1:34", "   |", "",
    "Adding word: </s> to encoding: 43", "%% garbage | Foo: bar | epoch=7 loss=oops", "\x07\x1b[1mbold\x1b[0m",
    "=== PRE-TRAINING MODEL ===",
]


def make_log(n_layers=3, *, opts=(), banner=True, noise=False, ansi=False, n_pre=4, n_inst=3, seed=0,
             samples=False) -> tuple[str, list[dict]]:
    rng = random.Random(seed)
    out = ["    Finished `release` profile [optimized] target(s) in 3.39s", "=== PRE-TRAINING MODEL ==="]
    expected = []
    t = 0.0
    for phase, n in (("pretrain", n_pre), ("instruct", n_inst)):
        if phase == "instruct" and banner:
            out += ["", "=== INSTRUCTION TUNING ===", "Instruction tuning on 53 examples for 3 epochs with learning rate 0.0001"]
        for epoch in range(n):
            t += round(rng.uniform(0.2, 3.0), 6)
            if noise:
                out.append(rng.choice(NOISE))
            nbatch = 0
            if "warn" in opts:
                nbatch = 2
                for _ in range(nbatch):
                    out.append(f"{BASE.isoformat()}  WARN llm::llm: Layer-wise gradient norms: "
                               + "[" + ", ".join(f'"L{i}: {rng.uniform(0, 9):.2f}"' for i in range(4)) + "]")
            if "lars" in opts:
                nbatch = 3
                for _ in range(nbatch):
                    for i, kind in enumerate(("Embeddings", "TinyRecursiveModel", "RMSNorm")):
                        out.append(f'{BASE.isoformat()}  INFO llm::llm: Bidirectional LARS layer_idx={i} '
                                   f'layer_type="{kind}" grad_norm={rng.uniform(0, 9)} base_lr=1e-5 scale=1.0')
            line, exp = _line(rng, epoch=epoch, t=t, n_layers=n_layers, opts=opts, ansi=ansi)
            exp.update(phase=phase, batches=nbatch)
            out.append(line)
            expected.append(exp)
    if samples:
        out += ["", "=== AFTER TRAINING ===", "Input: User: How do mountains form?",
                "Output: Assistant : Mountains are formed through tectonic forces or volcanism over long geological time periods </s>",
                "Input: User: Which planet is closest to the sun?", "Output: Assistant : Jupiter </s>",
                "Input: User: Is this prompt in no corpus at all?", "Output: Assistant : no </s>", "======"]
    return "\n".join(out) + "\n", expected


def encode(text: str, encoding: str, crlf: bool) -> bytes:
    if crlf:
        text = text.replace("\n", "\r\n")
    if encoding == "utf-8-sig":
        return text.encode("utf-8-sig")
    if encoding == "utf-16-le-bom":
        return "\ufeff".encode("utf-16-le") + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return "\ufeff".encode("utf-16-be") + text.encode("utf-16-be")
    return text.encode(encoding)


def import_bytes(tmp_path, data: bytes, name="run.log", **kw):
    p = tmp_path / name
    p.write_bytes(data)
    notes: list = []
    return list(rustgpt.iter_records(p, notes=notes, **kw)), notes


def check(records, expected, *, opts=()):
    steps = steps_of(records)
    assert len(steps) == len(expected)
    for s, e in zip(steps, expected):
        assert (s["phase"], s["epoch"], s["loss"], s["grad_norm"], s["lr"]) == (
            e["phase"], e["epoch"], e["loss"], e["grad_norm"], e["lr"])
        # the printed loss includes the load-balance term: it is not the LM loss
        assert s["lm_loss"] is None and s["grad_norm_clipped"] is None
        assert s["time"] == pytest.approx(e["time"], abs=1e-6)
        assert [lay["label"] for lay in s["layers"]] == e["labels"]
        assert [lay["layer"] for lay in s["layers"]] == list(range(len(e["labels"])))
        assert [lay["heads_mean"] for lay in s["layers"]] == e["heads"]
        assert [lay["threshold_mean"] for lay in s["layers"]] == e["thr"]
        assert (s["complexity_mean"], s["complexity_min"], s["complexity_max"]) == e["complexity"]
        assert s["thresh_range_min"] == min(e["thr"]) and s["thresh_range_max"] == max(e["thr"])
        assert s["pred_norm"] == e["pred_norm"]
        assert ("warmup" in s) == ("warmup" in opts)
        if "warmup" in opts:
            assert (s["warmup"], s["warmup_total"]) == (e["epoch"] + 1, 15)
        assert s["aux"] == ({"entropy_weight": e["dynw"]} if "dynw" in opts else {})
        if "conf" in opts:
            assert (s["conf_avg"], s["conf_min"], s["fallback"], s["fallback_unit"]) == (*e["conf"], "%")
        else:
            assert "conf_avg" not in s and "fallback" not in s
        if "unknown" in opts:
            assert s["extra"]["NewStat"] == e["unknown"]
        if "trm" in opts:
            assert s["trm"]["attn"]["S0"] == e["trm_s0"] and s["trm"]["depth"] == {"avg": 10.0, "min": 9.0, "max": 11.0}
        else:
            assert "trm" not in s
        if e["batches"]:
            assert s["grad_norms_batches"] == e["batches"]
            assert len(s["grad_norms_layers"]) in (3, 4)
        else:
            assert "grad_norms_batches" not in s and s["grad_norms"] is None
    for rec in records:
        assert schema.missing_fields(rec) == []


@pytest.mark.parametrize("n_layers", range(1, 13))
def test_variant_layer_counts(tmp_path, n_layers):
    opts = OPTIONAL[: n_layers % (len(OPTIONAL) + 1)]  # a different mix of optional fields per count
    text, expected = make_log(n_layers, opts=opts, seed=n_layers)
    records, notes = import_bytes(tmp_path, text.encode())
    check(records, expected, opts=opts)
    assert records[0]["model"]["n_layers"] == n_layers
    assert notes == []


@pytest.mark.parametrize("opt", OPTIONAL)
@pytest.mark.parametrize("present", [True, False])
def test_variant_optional_field(tmp_path, opt, present):
    opts = (opt,) if present else tuple(o for o in OPTIONAL if o != opt)
    text, expected = make_log(4, opts=opts, seed=hash(opt) % 1000)
    records, _ = import_bytes(tmp_path, text.encode())
    check(records, expected, opts=opts)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16-le-bom", "utf-16-be-bom", "utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_variant_encodings(tmp_path, encoding, crlf):
    text, expected = make_log(3, opts=("warmup", "dynw", "trm"), ansi=True, noise=True, seed=7)
    data = encode(text, encoding, crlf)
    records, _ = import_bytes(tmp_path, data)
    check(records, expected, opts=("warmup", "dynw", "trm"))
    assert rustgpt.sniff(data[:4096])


def test_variant_garbage_and_ansi_between_lines(tmp_path):
    text, expected = make_log(5, opts=OPTIONAL, noise=True, ansi=True, seed=3)
    records, _ = import_bytes(tmp_path, text.encode())
    check(records, expected, opts=OPTIONAL)
    assert records[0]["import"]["noise_lines"] > 0


def test_variant_missing_banner_restart_is_instruct(tmp_path):
    text, expected = make_log(2, banner=False, seed=5)
    records, notes = import_bytes(tmp_path, text.encode())
    check(records, expected)
    assert any("without a banner" in n for n in notes)


def test_variant_truncated_last_line_dropped(tmp_path):
    text, expected = make_log(3, seed=11)
    cut = text.rstrip("\n")
    cut = cut[: cut.rindex("learning_rate=") + len("learning_rate=")]  # killed mid-write
    for enc in ("utf-8", "utf-16-le-bom"):
        records, notes = import_bytes(tmp_path, encode(cut, enc, crlf=False))
        check(records, expected[:-1])
        assert any("truncated" in n for n in notes)
        assert records[-1]["event"] == schema.STEP, "no run_end for a run that did not finish"


def test_variant_odd_byte_utf16_and_unterminated_complete_line(tmp_path):
    text, expected = make_log(3, seed=12)
    data = encode(text.rstrip("\n"), "utf-16-le-bom", crlf=True) + b"\x00"  # last line complete, no line end
    records, notes = import_bytes(tmp_path, data[:-1] + b"")  # even length
    check(records, expected)
    assert any("no line end" in n for n in notes)
    records, _ = import_bytes(tmp_path, data)  # odd length: a dangling byte is dropped
    check(records, expected)


def test_variant_samples_matched_against_corpus(tmp_path):
    text, expected = make_log(3, samples=True, seed=13)
    corpus = tmp_path / "chat.json"
    corpus.write_text(json.dumps([
        "User: How do mountains form? Assistant: Mountains are formed through tectonic forces or volcanism"
        " over long geological time periods </s>",
        "User: Which planet is closest to the sun? Assistant: Mercury is the planet closest to the sun. </s>",
    ]))
    records, _ = import_bytes(tmp_path, text.encode(), corpus=corpus)
    ev = [r for r in records if r["event"] == schema.EVAL]
    assert len(ev) == 1
    assert [s["match"] for s in ev[0]["samples"]] == [True, False, None]
    assert ev[0]["exact_match"] == 0.5
    assert ev[0]["step"] == steps_of(records)[-1]["step"]
    end = records[-1]
    assert end["event"] == schema.RUN_END and end["status"] == schema.STATUS_COMPLETED
    assert end["wall_s"] == pytest.approx(expected[-1]["time"] - expected[0]["time"])


def test_wall_time_per_epoch_and_phase(tmp_path):
    text, expected = make_log(2, seed=17)
    records, _ = import_bytes(tmp_path, text.encode())
    steps = steps_of(records)
    assert steps[0]["epoch_s"] is None  # nothing timestamped before the first epoch line
    for prev, cur, e_prev, e_cur in zip(steps, steps[1:], expected, expected[1:]):
        assert cur["epoch_s"] == pytest.approx(e_cur["time"] - e_prev["time"], abs=1e-6)
        assert cur["elapsed"] == pytest.approx(e_cur["time"] - expected[0]["time"], abs=1e-6)
    phases = {p["phase"]: p for p in records[0]["import"]["phases"]}
    inst = [e for e in expected if e["phase"] == "instruct"]
    assert phases["instruct"]["epochs"] == len(inst)
    assert phases["instruct"]["wall_s"] == pytest.approx(inst[-1]["time"] - expected[len(expected) - len(inst) - 1]["time"])


def test_nonfinite_values_survive_encoding(tmp_path):
    text, expected = make_log(2, n_pre=2, n_inst=0, seed=19)
    text = text.replace(f"loss={expected[-1]['loss']}", "loss=NaN")
    records, _ = import_bytes(tmp_path, text.encode())
    assert math.isnan(steps_of(records)[-1]["loss"])
    assert '"loss":"NaN"' in schema.encode_record(steps_of(records)[-1])


# ---- errors and sniffing ----------------------------------------------------------------------


CRASHED_BUILD = """   Compiling llm v0.1.0 (C:\\src\\RustGPT)
error[E0425]: cannot find value `x` in this scope
 --> src\\head_router.rs:12:5
error: could not compile `llm` (lib) due to 1 previous error
"""


@pytest.mark.parametrize("content, message", [
    (CRASHED_BUILD.encode(), "without any 'Training epoch completed'"),
    (bytes(range(256)) * 64, "binary file"),
    (b"just some notes\nnothing here\n", "not a RustGPT training log"),
    (b"", "not a RustGPT training log"),
    (b'{"event":"run_start","schema_version":1}\n', "telemetry JSONL"),
])
def test_unusable_input_is_one_clear_error(tmp_path, content, message):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(rustgpt.RustLogError, match=re.escape(message)):
        list(rustgpt.iter_records(p))


def test_sniff_rejects_other_kinds():
    assert not rustgpt.sniff(b'{"event":"run_start","schema_version":1}\n')
    assert not rustgpt.sniff(bytes(range(256)))
    assert not rustgpt.sniff(b"hello world\n")
    assert not rustgpt.sniff(b"")
    text, _ = make_log(1)
    assert rustgpt.sniff(text.encode("utf-16-be")[:1001])  # cut mid code unit


def test_import_log_is_atomic(tmp_path):
    dst = tmp_path / "out" / "run.jsonl"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(CRASHED_BUILD.encode())
    with pytest.raises(rustgpt.RustLogError):
        rustgpt.import_log(bad, dst)
    assert not dst.exists() and (not dst.parent.exists() or list(dst.parent.iterdir()) == [])
    dst.parent.mkdir()
    dst.write_text("previous\n")
    with pytest.raises(rustgpt.RustLogError):
        rustgpt.import_log(bad, dst)
    assert dst.read_text() == "previous\n", "a failed import leaves an existing file untouched"

    good = tmp_path / "good.txt"
    text, expected = make_log(3, samples=True, seed=23)
    good.write_bytes(text.encode("utf-16"))
    counts = rustgpt.import_log(good, dst)
    lines = dst.read_text(encoding="utf-8").splitlines()
    recs = [json.loads(line) for line in lines]
    assert counts["steps"] == len(expected) == len(steps_of(recs))
    assert counts["phases"] == {"pretrain": 4, "instruct": 3} and counts["completed"]
    assert [r["event"] for r in recs][:1] == ["run_start"] and recs[-1]["event"] == "run_end"
    assert sorted(os.listdir(dst.parent)) == ["run.jsonl"]


def test_reader_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, analyze.rustgpt as r; r.load_examples(None); assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- through the loader: a text log and its import look the same -------------------------------


def _frames(run):
    return {name: getattr(run, name) for name in ("steps", "layers", "head_load", "evals", "samples", "alerts")}


@needs_shared
@pytest.mark.parametrize("path", shared_logs(), ids=lambda p: p.name[:7])
def test_loader_text_log_equals_imported_jsonl(tmp_path, path):
    import pandas as pd

    from analyze import loader  # a plain import: a broken loader fails here, it is never skipped

    direct = loader.load_run(path)
    dst = tmp_path / "run.jsonl"
    rustgpt.import_log(path, dst)
    imported = loader.load_run(dst)
    for name, frame in _frames(direct).items():
        pd.testing.assert_frame_equal(frame, _frames(imported)[name], obj=name)
    assert direct.meta == imported.meta and direct.end == imported.end
    assert len(direct.steps) == len(steps_of(rustgpt.iter_records(path)))


# ---- the command -----------------------------------------------------------------------------


def _run_import(*args):
    from typer.testing import CliRunner

    import cli

    app = cli.app
    lone = len(app.registered_commands) == 1 and not app.registered_groups and app.registered_callback is None
    prefix = [] if lone else ["import"]  # typer runs a lone command as the app itself
    return CliRunner().invoke(app, [*prefix, *map(str, args)])


def test_cli_import_writes_jsonl_and_maps_errors_to_exit_3(tmp_path):
    log = tmp_path / "train.log"
    text, expected = make_log(3, samples=True, seed=29)
    log.write_bytes(encode(text, "utf-16-le-bom", crlf=True))
    dst = tmp_path / "run.jsonl"
    res = _run_import(log, "-o", dst)
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in dst.read_text().splitlines()]
    assert len(steps_of(recs)) == len(expected)

    bad = tmp_path / "crash.log"
    bad.write_bytes(CRASHED_BUILD.encode())
    res = _run_import(bad, "-o", tmp_path / "bad.jsonl")
    assert res.exit_code == 3, res.output
    assert "Training epoch completed" in res.output and not (tmp_path / "bad.jsonl").exists()
    res = _run_import(tmp_path / "absent.log", "-o", tmp_path / "x.jsonl")
    assert res.exit_code == 3, res.output
    res = _run_import(log, "-o", tmp_path / "y.jsonl", "--input-format", "csv")
    assert res.exit_code == 2, res.output


def _has_command(name: str) -> bool:
    import cli

    return any((c.name or c.callback.__name__) == name for c in cli.app.registered_commands)


@needs_shared
@pytest.mark.parametrize("path", shared_logs(), ids=lambda p: p.name[:7])
def test_report_text_log_equals_imported_jsonl(tmp_path, path):
    assert _has_command("report")  # never skipped: a missing command is a failure
    from typer.testing import CliRunner

    import cli

    dst = tmp_path / "run.jsonl"
    rustgpt.import_log(path, dst)
    runner = CliRunner()
    direct = runner.invoke(cli.app, ["report", str(path), "--format", "json"])
    imported = runner.invoke(cli.app, ["report", str(dst), "--format", "json"])
    assert direct.exit_code in (0, 1), direct.output
    assert imported.exit_code == direct.exit_code, imported.output
    a, b = json.loads(direct.stdout), json.loads(imported.stdout)
    assert a["verdict"] == b["verdict"]
    assert a["criteria"] == b["criteria"]
    key = lambda f: (f["code"], f["severity"], f["layer"], json.dumps(f["evidence"], sort_keys=True))  # noqa: E731
    assert sorted(map(key, a["findings"])) == sorted(map(key, b["findings"]))
