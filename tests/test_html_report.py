"""`moh report/compare --format html` in a real browser (Debian's chromium, headless).

The page is made by the real CLI in a subprocess, loaded with `chromium --headless --dump-dom`
(the DOM after the page's scripts, if any, ran) and screenshotted. Skipped with the reason
when chromium is not installed (`apt-get install -y chromium`; .ci/run installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_logs"
MOH = [sys.executable, "-c", "from cli import main; main()"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")

PAYLOAD = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


def moh(*args) -> subprocess.CompletedProcess:
    return subprocess.run(MOH + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def page(tmp_path: Path, *args) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path / "page.html"
    r = moh(*args, "--format", "html", "-o", out)
    assert r.returncode in (0, 1), r.stderr
    return out, r


def browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"  # own profile: parallel tests do not share a lock
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--virtual-time-budget=3000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def dom(tmp_path: Path, html_file: Path) -> str:
    r = browser(tmp_path, "--dump-dom", html_file.as_uri())
    assert "<body" in r.stdout, r.stderr[-2000:]
    return r.stdout


def findings_of(log: Path) -> set[tuple[str, str]]:
    """(severity, code) of every finding `moh report --format json` makes on the log."""
    r = moh("report", log, "--format", "json")
    return {(f["severity"], f["code"]) for f in json.loads(r.stdout)["findings"]}


def assert_self_contained(text: str) -> None:
    assert not re.search(r"(?i)\b(?:https?|ftp)://", text), re.search(r"(?i)\b(?:https?|ftp)://.{0,60}", text)
    assert not re.search(r"(?i)<(script|link|iframe|img|object|embed)\b|<[a-z][^>]*\s(src|href|on[a-z]+)=|@import", text)


@needs_browser
@pytest.mark.parametrize("sample, verdict", [("healthy_adaptive", "PASS"), ("broken_no_gradient", "FAIL"),
                                             ("broken_unstable_lr", "FAIL")])
def test_page_renders_verdict_and_every_finding(tmp_path, sample, verdict):
    log = SAMPLES / f"{sample}.jsonl"
    html_file, r = page(tmp_path, "report", log)
    assert r.returncode == (0 if verdict == "PASS" else 1)
    text = html_file.read_text(encoding="utf-8")
    assert len(text.encode()) < 3 * 2**20
    assert_self_contained(text)
    assert text.count("<svg") == 6                      # the six figures, inline
    assert "<text" in text                              # SVG text kept as text (searchable)
    rendered = dom(tmp_path, html_file)
    verdict_el = re.search(r'<p id="verdict"[^>]*>([^<]*)</p>', rendered)
    assert verdict_el and verdict_el.group(1).startswith(verdict + ":"), verdict_el
    expected = findings_of(log)
    shown = set(re.findall(r'<li class="finding ([a-z]+)" data-code="([a-z_]+)"', rendered))
    assert shown == expected  # every finding, with its severity, and nothing else


@needs_browser
def test_screenshot_is_not_blank(tmp_path):
    from matplotlib.image import imread

    html_file, _ = page(tmp_path, "report", SAMPLES / "broken_no_gradient.jsonl")
    shot = tmp_path / "shot.png"
    browser(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", html_file.as_uri())
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1280)
    not_white = np.any(img < 0.95, axis=-1).mean()
    assert 0.05 < not_white < 0.9, not_white           # text, tables, figures, on a light page
    red = (img[..., 0] - img[..., 1] > 0.3) & (img[..., 0] - img[..., 2] > 0.3)
    assert red.sum() > 100, red.sum()                   # the FAIL verdict's red text is drawn


def hostile_log(tmp_path: Path) -> Path:
    """The healthy sample with markup in everything a log controls that the page shows."""
    lines = (SAMPLES / "healthy_adaptive.jsonl").read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec["event"] == "run_start":
            rec["config"]["data"] = PAYLOAD
            rec["config"][PAYLOAD] = 1
            rec["data"]["source"] = PAYLOAD
        elif rec["event"] == "eval":
            for s in rec.get("samples") or []:
                s["prompt"], s["output"] = PAYLOAD, "</pre></td></tr></table>" + PAYLOAD
        out.append(json.dumps(rec))
        if i == 5:
            out.append(PAYLOAD)                        # a bad line: its loader note names it
    d = tmp_path / "run <img src=x onerror=document.title=1>"
    d.mkdir()
    (d / "run.jsonl").write_text("\n".join(out) + "\n", encoding="utf-8")
    return d / "run.jsonl"


@needs_browser
@pytest.mark.parametrize("command", ["report", "compare"])
def test_hostile_log_runs_no_script(tmp_path, command):
    log = hostile_log(tmp_path)
    args = [log] if command == "report" else [SAMPLES / "healthy_adaptive.jsonl", log]
    html_file, _ = page(tmp_path, command, *args)
    text = html_file.read_text(encoding="utf-8")
    assert_self_contained(text)
    rendered = dom(tmp_path, html_file)
    title = re.search(r"<title>(.*?)</title>", rendered, re.S).group(1)
    assert "pwned" not in title and title.startswith("moh "), title
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in rendered   # shown as text
    assert "onerror=document.title=1&gt;" in rendered                          # the run name, as text
    assert not re.search(r"<(script|img)\b", rendered)
