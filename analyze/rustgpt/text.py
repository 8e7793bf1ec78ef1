"""Decoding a reference trainer log (encodings, ANSI colour, binary detection, `sniff`) and the
small value parsers its lines need (numbers, ranges, timestamps, TRM blocks, layer groups)."""

from __future__ import annotations

import calendar
import re

from moh import schema

SOURCE = schema.SOURCE_RUSTGPT
CLIP_VALUE = 100.0           # that trainer clips the global gradient norm at 100 (src/llm.rs)
ASSUMED_N_HEADS = 8          # every RustGPT MoH configuration we know of has 8 heads


class RustLogError(ValueError):
    """The file is not a usable RustGPT training log (no epoch lines, binary, another format)."""


# ---- decoding ----------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _detect_encoding(raw: bytes) -> tuple[str, int]:
    """(codec, bytes of BOM to skip). BOM-less UTF-16 shows up as NULs in every other byte."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return "utf-8", 3
    if raw.startswith(b"\xff\xfe"):
        return "utf-16-le", 2
    if raw.startswith(b"\xfe\xff"):
        return "utf-16-be", 2
    sample = raw[:4096]
    half = len(sample) // 2
    if half >= 2:
        nul_even = sample[0::2].count(0)
        nul_odd = sample[1::2].count(0)
        if nul_odd > 0.3 * half and nul_even < 0.05 * half:
            return "utf-16-le", 0
        if nul_even > 0.3 * half and nul_odd < 0.05 * half:
            return "utf-16-be", 0
    return "utf-8", 0


def decode(raw: bytes) -> tuple[str, str]:
    """Bytes of a log -> (text with LF line ends and no ANSI codes, encoding name)."""
    codec, skip = _detect_encoding(raw)
    body = raw[skip:]
    if codec.startswith("utf-16") and len(body) % 2:
        body = body[:-1]  # a file cut mid code unit
    text = body.decode(codec, errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    return text, codec + ("-bom" if skip else "")


def _looks_binary(raw: bytes) -> bool:
    sample = raw[:65536]
    if not sample:
        return False
    codec, skip = _detect_encoding(sample)
    if codec.startswith("utf-16"):
        return False
    text = sample[skip:].decode("utf-8", errors="replace")
    bad = sum(1 for ch in text if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\x1b\x0c"))
    return bad > 0.05 * len(text)


_SNIFF_MARKERS = (
    "Training epoch completed", "llm::llm", "MODEL ARCHITECTURE SUMMARY", "=== PRE-TRAINING MODEL ===",
    "=== INSTRUCTION TUNING ===", "Adding word: ", "`llm` (lib)", "Running `target",
)


def sniff(head: bytes) -> bool:
    """Is this (the first few KiB of) a RustGPT trainer text log? Decided from content only.

    64 KiB of head is plenty: even a log that starts with cargo output names the `llm` crate
    within its first 10 KB.
    """
    if not head:
        return False
    text, _ = decode(head)
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        return False  # JSON / JSONL telemetry
    return any(m in text for m in _SNIFF_MARKERS)


# ---- small parsers ---------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|NaN|nan|inf|-inf|Infinity)"
_NUM_RE = re.compile(rf"^{_NUM}$")
_RANGE_RE = re.compile(rf"^\[({_NUM})\s*-\s*({_NUM})\]$")
_MEAN_RANGE_RE = re.compile(rf"^({_NUM})\s*\[({_NUM})\s*-\s*({_NUM})\]$")
_PCT_RE = re.compile(rf"^({_NUM})\s*%$")
_LAYER_RE = re.compile(rf"^L(\d+):\s*({_NUM})h(?:@({_NUM})p)?$")
_TS_RE = re.compile(
    r"^\s*(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?")
_WARMUP_RE = re.compile(r"^\s*\(warmup (\d+)/(\d+)\)")
_TAIL_RE = re.compile(r"(?:^|\s)epoch=")
_LW_RE = re.compile(rf'"L(\d+):\s*({_NUM})"')
_LARS_RE = re.compile(rf'layer_idx=(\d+)\s+layer_type="([^"]*)"\s+grad_norm=({_NUM})')
_RUN_PLAN_RE = re.compile(
    rf"^(Pre-training|Instruction tuning) on (\d+) examples for (\d+) epochs with learning rate ({_NUM})")
_CONFIG_RE = re.compile(r"^\s+(?:- )?([A-Za-z][A-Za-z0-9 ()/-]*?):\s+(\S.*?)\s*$")
_STACK_RE = re.compile(r"^\s+(\d+):\s+([A-Za-z]\w*)\s*$")


def _num(s: str) -> float:
    s = s.strip()
    return float("inf") if s == "Infinity" else float(s)


def parse_value(text: str):
    """A printed value: number, `n%`, `[a-b]`, `m [a-b]`, else the stripped text."""
    s = text.strip()
    if _NUM_RE.match(s):
        return _num(s)
    m = _MEAN_RANGE_RE.match(s)
    if m:
        return {"mean": _num(m[1]), "min": _num(m[2]), "max": _num(m[3])}
    m = _RANGE_RE.match(s)
    if m:
        return {"min": _num(m[1]), "max": _num(m[2])}
    m = _PCT_RE.match(s)
    if m:
        return {"value": _num(m[1]), "unit": "%"}
    return s


def parse_time(line: str) -> float | None:
    """Unix seconds of the RFC3339 stamp that starts `line`, or None."""
    m = _TS_RE.match(line)
    if not m:
        return None
    t = calendar.timegm((int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), 0, 0, 0))
    if m[7]:
        t += float(m[7])
    tz = m[8]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        t -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return t


def _snake(key: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key.strip())
    return re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()


def _parse_trm(text: str) -> dict:
    """`Attn[S0:0.01,..] FFN[S0:0.01,..] Depth: avg=10.0 [10-10]` -> nested dict (raw kept)."""
    out: dict = {}
    for name, body in re.findall(r"(\w+)\[([^\]]*)\]", text):
        items = {}
        for item in body.split(","):
            k, sep, v = item.partition(":")
            if sep:
                items[k.strip()] = _num(v) if _NUM_RE.match(v.strip()) else v.strip()
        out[name.lower()] = items
    m = re.search(rf"Depth:\s*avg=({_NUM})\s*\[({_NUM})-({_NUM})\]", text)
    if m:
        out["depth"] = {"avg": _num(m[1]), "min": _num(m[2]), "max": _num(m[3])}
    out["raw"] = text.strip()
    return out


_PAT_STACK_GROUPS = (
    ("embedding", ("Embeddings", "Embedding", "TokenEmbedding")),
    ("attention", ("MultiHeadSelfAttention", "SelfAttention", "MultiHeadAttention")),
    ("ffn", ("SwiGLU", "FeedForward", "FFN")),
)


def _group_of(layer_type: str | None) -> str | None:
    for group, names in _PAT_STACK_GROUPS:
        if layer_type in names:
            return group
    return None
