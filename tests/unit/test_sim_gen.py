"""Pure parts of the simulated API: token table, directives, prompt cache, schema inputs, replay assembly."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

try:
    import ethereal.sim  # noqa: F401
except ImportError:  # running without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from ethereal.sim import _gen
from ethereal.sim._replay import BUNDLED, Library, Recording, assemble

FIXTURES = sorted(BUNDLED.glob("*.sse"))


def test_token_windows_average_four_chars() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        n = rng.randint(5, 400)
        off = rng.randrange(_gen.TABLE_SIZE)
        chars = sum(len(t) for t in _gen.take_tokens(off, n))
        assert abs(chars - 4 * n) <= 4
    assert len(_gen.take_tokens(_gen.TABLE_SIZE - 3, 10)) == 10  # wraps around


def test_group_tokens_first_piece() -> None:
    pieces = _gen.group_tokens(_gen.take_tokens(123, 30), 5)
    assert not pieces[0].startswith(" ") and pieces[0][0].isupper()
    assert all(p.startswith(" ") for p in pieces[1:])


def test_directives() -> None:
    d = _gen.parse_directives(
        "please sim:replay foo-bar.0 and sim:tokens=12 sim:fault=429,retry_after=3 sim:stop"
    )
    assert d == {"replay": "foo-bar.0", "tokens": "12", "fault": "429,retry_after=3", "stop": ""}
    assert _gen.parse_directives("nothing here") == {}
    text, has_tr = _gen.last_user_text(
        [
            {"role": "user", "content": "first sim:tokens=5"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "r"},
                    {"type": "text", "text": "more"},
                ],
            },
        ]
    )
    assert text == "more" and has_tr


def test_input_token_rule() -> None:
    req = {
        "system": "s" * 40,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 41}]}],
    }
    assert _gen.count_input_chars(req) == 81
    cache = _gen.PromptCache()
    assert cache.account(req, "m", False) == (21, 0, 0, 0)


def test_prompt_cache_segments() -> None:
    cache = _gen.PromptCache()
    req = {
        "tools": [
            {
                "name": "t",
                "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ],
        "system": [{"type": "text", "text": "a" * 4000, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "q" * 400}],
    }
    tool_chars = len(json.dumps(req["tools"][0], separators=(",", ":")))
    inp, c5, c1, read = cache.account(req, "m", True)
    assert read == 0 and c1 == tool_chars // 4 and c5 == (tool_chars + 4000) // 4 - c1
    assert inp + c5 + c1 == (tool_chars + 4400 + 3) // 4
    again = cache.account(req, "m", True)
    assert again == (inp, 0, 0, c5 + c1)
    other_model = cache.account(req, "other", True)
    assert other_model[3] == 0
    req["system"][0]["text"] = "b" * 4000
    _inp2, c5b, c1b, read2 = cache.account(req, "m", True)
    assert read2 == c1 and c1b == 0 and c5b == c5
    cache.min_tokens = 10_000
    cache.clear()
    assert cache.account(req, "m", True)[1:] == (0, 0, 0)


def test_tool_input_from_schema() -> None:
    schema = {
        "type": "object",
        "required": ["s", "n", "i", "b", "e", "arr", "obj", "opt"],
        "properties": {
            "s": {"type": "string", "maxLength": 5},
            "n": {"type": "number"},
            "i": {"type": "integer", "minimum": 3, "maximum": 4},
            "b": {"type": "boolean"},
            "e": {"enum": ["x", "y"]},
            "arr": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            "obj": {"type": "object", "properties": {"z": {"type": "string"}}},
            "opt": {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]},
            "never": {"type": "string"},
        },
    }
    v = _gen.tool_input({"name": "t", "input_schema": schema}, random.Random(1))
    assert set(v) == {"s", "n", "i", "b", "e", "arr", "obj", "opt"}
    assert isinstance(v["s"], str) and len(v["s"]) <= 5
    assert isinstance(v["n"], float) and v["i"] in (3, 4)
    assert isinstance(v["b"], bool) and v["e"] in ("x", "y")
    assert len(v["arr"]) == 2 and all(isinstance(x, int) for x in v["arr"])
    assert set(v["obj"]) == {"z"} and v["opt"] == "2025-06-01"
    pieces = _gen.split_json(json.dumps(v), random.Random(2))
    assert pieces[0] == "" and "".join(pieces) == json.dumps(v)


def test_plan_budget_and_stop() -> None:
    req = {"max_tokens": 7, "messages": [{"role": "user", "content": "x"}]}
    p = _gen.plan_response(req, "m", 42, {"tokens": "50"}, False, (1, 0, 0, 0))
    assert p.stop_reason == "max_tokens" and p.output_tokens <= 7
    req = {"max_tokens": 1000, "messages": [], "thinking": {"type": "enabled", "budget_tokens": 1024}}
    p = _gen.plan_response(req, "m", 42, {"thinking": "5000"}, False, (1, 0, 0, 0))
    assert p.blocks[0][0] == _gen.THINKING and _gen.ctok("".join(p.blocks[0][1])) <= 1000


def test_signature_shape() -> None:
    import base64

    sig = _gen.signature(random.Random(5))
    assert sig.startswith("E") and len(base64.b64decode(sig)) >= 180


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_recordings_split_and_assemble(path: Path) -> None:
    raw = path.read_bytes()
    rec = Recording(path.stem, raw)
    assert b"".join(rec.frames) == raw
    msg = assemble(raw)
    assert msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["stop_reason"] in ("end_turn", "tool_use", "pause_turn", "max_tokens")
    assert msg["content"] and all("type" in b for b in msg["content"])
    for b in msg["content"]:
        if b["type"] == "tool_use":
            assert isinstance(b["input"], dict)


def test_library_lookup(tmp_path: Path) -> None:
    (tmp_path / "mine.sse").write_bytes(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    lib = Library(str(tmp_path))
    assert lib.get("mine") is not None and lib.get("mine.sse") is not None
    assert lib.get(FIXTURES[0].stem) is not None  # falls back to the bundled copies
    assert lib.get("../etc/passwd") is None and lib.get("missing") is None
    assert "mine" in lib.names()
