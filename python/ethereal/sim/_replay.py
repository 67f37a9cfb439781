"""Recorded streams: find a fixture by name, split it into frames, assemble the Message."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import orjson

BUNDLED = Path(__file__).with_name("recorded")
_NAME_OK = re.compile(r"^[A-Za-z0-9_.\-]+$")


class Recording:
    __slots__ = ("_message", "frames", "name", "raw")

    def __init__(self, name: str, raw: bytes) -> None:
        self.name = name
        self.raw = raw
        # frames keep their terminating blank line so b"".join(frames) == raw
        parts = raw.split(b"\n\n")
        frames = [p + b"\n\n" for p in parts[:-1]]
        if parts[-1]:
            frames.append(parts[-1])
        self.frames = frames
        self._message: bytes | None = None

    def message(self) -> bytes:
        if self._message is None:
            self._message = orjson.dumps(assemble(self.raw))
        return self._message


def assemble(raw: bytes) -> dict[str, Any]:
    """The non-streaming Message a recorded stream adds up to (what the SDKs accumulate)."""
    msg: dict[str, Any] = {}
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, list[str]] = {}
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        ev = orjson.loads(line[5:])
        t = ev.get("type")
        if t == "message_start":
            msg = dict(ev["message"])
            msg["content"] = []
        elif t == "content_block_start":
            blk = dict(ev["content_block"])
            blocks[ev["index"]] = blk
            msg.setdefault("content", []).append(blk)
        elif t == "content_block_delta":
            blk = blocks[ev["index"]]
            d = ev["delta"]
            dt = d.get("type")
            if dt == "text_delta":
                blk["text"] = blk.get("text", "") + d["text"]
            elif dt == "input_json_delta":
                partial.setdefault(ev["index"], []).append(d["partial_json"])
            elif dt == "thinking_delta":
                blk["thinking"] = blk.get("thinking", "") + d["thinking"]
            elif dt == "signature_delta":
                blk["signature"] = d["signature"]
            elif dt == "citations_delta":
                blk.setdefault("citations", []).append(d["citation"])
            elif dt == "compaction_delta":
                blk["content"] = (blk.get("content") or "") + (d.get("content") or "")
        elif t == "content_block_stop":
            idx = ev["index"]
            if idx in partial:
                js = "".join(partial.pop(idx))
                blocks[idx]["input"] = orjson.loads(js) if js else {}
        elif t == "message_delta":
            for k, v in ev.get("delta", {}).items():
                msg[k] = v
            usage = msg.setdefault("usage", {})
            for k, v in (ev.get("usage") or {}).items():
                usage[k] = v
    return msg


class Library:
    def __init__(self, fixtures_dir: str | None = None) -> None:
        dirs: list[Path] = []
        env = fixtures_dir or os.environ.get("ETHEREAL_FIXTURES")
        if env:
            base = Path(env)
            dirs += [
                base,
                base / "anthropic" / "recorded" / "sse-extracted",
                base / "sse-extracted",
                base / "anthropic" / "stream-fixtures-sdk-python",
            ]
        dirs.append(BUNDLED)
        self.dirs = dirs
        self._cache: dict[str, Recording | None] = {}

    def get(self, name: str) -> Recording | None:
        if name.endswith((".sse", ".txt")):
            name = name[:-4]
        if name in self._cache:
            return self._cache[name]
        rec = None
        if _NAME_OK.match(name) and ".." not in name:
            for d in self.dirs:
                # .txt: the SDK's hand-written stream fixtures, replayable when ETHEREAL_FIXTURES has them
                for path in (d / (name + ".sse"), d / (name + ".txt")):
                    if path.is_file():
                        rec = Recording(name, path.read_bytes())
                        break
                if rec is not None:
                    break
        if rec is not None:
            self._cache[name] = rec
        return rec

    def names(self) -> list[str]:
        seen: set[str] = set()
        for d in self.dirs:
            if d.is_dir():
                seen.update(p.stem for p in d.glob("*.sse"))
                seen.update(p.stem for p in d.glob("*.txt"))
        return sorted(seen)
