"""A straightforward pure-Python Anthropic SSE → ``chat.completion.chunk`` translator.

The reference the native ``ChatTranslator`` (rust/ethereal-core/src/openai_chat.rs) is
checked against, byte for byte, and the baseline of ``loadtest/bench_translate.py``. It
is written the way one would write it in Python without thinking about speed: a line
splitter, ``json.loads`` per event, a dict per output chunk and ``json.dumps`` for it.

One simplification: the native translator estimates output tokens when a stream never
reports them; the reference does not (it only matters for the usage chunk of a stream
whose ``message_delta`` lacks ``output_tokens``).
"""

from __future__ import annotations

import json
from typing import Any

SIGNATURE_PREFIX = "eth1~"
_OPENAI_ERRORS = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "permission_error": ("invalid_request_error", "model_not_allowed"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "overloaded_error": ("server_error", "overloaded"),
    "timeout_error": ("server_error", "timeout"),
}
_FINISH = {"max_tokens": "length", "model_context_window_exceeded": "length", "refusal": "content_filter"}
_USAGE_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _usage_counts(usage: dict[str, Any]) -> dict[str, int | None]:
    """One event's counts (summed over ``iterations`` when present); None = not reported."""
    iterations = usage.get("iterations")
    rows = iterations if isinstance(iterations, list) and iterations else None
    counts: dict[str, int | None] = {}
    if rows is None:
        for name in _USAGE_FIELDS:
            counts[name] = usage.get(name)
        split = usage.get("cache_creation")
    else:
        for name in _USAGE_FIELDS:
            counts[name] = sum(r.get(name) or 0 for r in rows)
        splits = [r["cache_creation"] for r in rows if isinstance(r.get("cache_creation"), dict)]
        split = None
        if splits:
            split = {k: sum(s.get(k) or 0 for s in splits)
                     for k in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")}
    if isinstance(split, dict):
        counts["split_5m"] = split.get("ephemeral_5m_input_tokens") or 0
        counts["split_1h"] = split.get("ephemeral_1h_input_tokens") or 0
    return counts


class ReferenceChatTranslator:
    def __init__(self, model: str, completion_id: str, created: int, include_usage: bool, *,
                 json_tool: str | None = None, legacy_functions: bool = False) -> None:
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self.include_usage = include_usage
        self.json_tool = json_tool
        self.legacy = legacy_functions
        self.buffer = b""
        self.event_name = ""
        self.data_lines: list[str] = []
        self.started = False
        self.done = False
        self.blocks: dict[int, dict[str, Any]] = {}
        self.tool_calls = 0
        self.function_called = False
        self.content_sent = False
        self.break_pending = False
        self.reasoning: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.start_usage: dict[str, int | None] = {}
        self.delta_usage: dict[str, int | None] = {}

    # ---- SSE ------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        self.buffer += chunk
        out: list[str] = []
        lines = self.buffer.splitlines(keepends=True)  # bytes split on \n, \r\n and \r only
        # the last line is kept when unterminated, or when it ends in \r (its \n may follow)
        keep = 1 if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")) else 0
        for raw in lines[:len(lines) - keep]:
            self._line(raw.rstrip(b"\r\n").decode("utf-8", "replace"), out)
        self.buffer = lines[-1] if keep else b""
        return "".join(out).encode()

    def _line(self, line: str, out: list[str]) -> None:
        if line == "":
            if self.data_lines:
                self._event(self.event_name, "\n".join(self.data_lines), out)
            self.event_name, self.data_lines = "", []
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self.data_lines.append(value)
        elif field == "event":
            self.event_name = value

    def finish(self) -> bytes:
        if self.buffer.endswith(b"\r"):
            self.buffer = self.buffer[:-1]
            out: list[str] = []
            self._line(self.buffer.decode("utf-8", "replace"), out)
        self.buffer = b""
        if self.done:
            return b""
        return self._error("api_error",
                           "the upstream connection was interrupted before the response was complete").encode()

    # ---- output ---------------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        chunk = dict(self.base)
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        return "data: " + _dumps(chunk) + "\n\n"

    def _open(self, out: list[str]) -> None:
        if not self.started:
            self.started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))

    def _emit(self, out: list[str], delta: dict[str, Any]) -> None:
        self._open(out)
        out.append(self._chunk(delta))

    def _content(self, out: list[str], text: str) -> None:
        if text:
            if self.break_pending:
                text = "\n\n" + text
                self.break_pending = False
            self._emit(out, {"content": text})
            self.content_sent = True

    def _args(self, out: list[str], block: dict[str, Any], args: str) -> None:
        kind = block["kind"]
        if kind == "tool":
            self._emit(out, {"tool_calls": [{"index": block["index"], "function": {"arguments": args}}]})
        elif kind == "json":
            self._content(out, args)
        elif kind == "function":
            self._emit(out, {"function_call": {"arguments": args}})

    def _error(self, kind: str, message: str) -> str:
        oa_type, code = _OPENAI_ERRORS.get(kind, ("server_error", None))
        self.done = True
        return "data: " + _dumps({"error": {"message": message, "type": oa_type, "param": None,
                                            "code": code}}) + "\n\n"

    # ---- events ---------------------------------------------------------------------------

    def _event(self, name: str, data: str, out: list[str]) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type", name)
        if kind == "message_start":
            usage = (event.get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self._merge(self.start_usage, usage)
        elif kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            if isinstance(event.get("usage"), dict):
                self._merge(self.delta_usage, event["usage"])
        if self.done:
            return
        if kind == "message_start":
            self._open(out)
        elif kind == "content_block_start":
            self._block_start(event.get("index", 0), event.get("content_block") or {}, out)
        elif kind == "content_block_delta":
            self._block_delta(event.get("index", 0), event.get("delta") or {}, out)
        elif kind == "content_block_stop":
            block = self.blocks.get(event.get("index", 0))
            if block is not None and block["kind"] in ("tool", "json", "function") and not block["sent"]:
                block["sent"] = True
                self._args(out, block, block["input"] if block["input"] is not None else "{}")
        elif kind == "message_stop":
            self._message_stop(out)
        elif kind == "error":
            err = event.get("error") or {}
            out.append(self._error(err.get("type") or "api_error", err.get("message") or "upstream error"))

    def _merge(self, into: dict[str, int | None], usage: dict[str, Any]) -> None:
        for name, value in _usage_counts(usage).items():
            if value is not None:
                into[name] = max(into.get(name) or 0, value) if into.get(name) is not None else value

    def _block_start(self, index: int, block: dict[str, Any], out: list[str]) -> None:
        kind = block.get("type")
        if self.content_sent and kind != "text":
            self.break_pending = True
        entry: dict[str, Any] = {"kind": "ignored", "sent": False, "input": None}
        if kind == "text":
            entry["kind"] = "text"
            self._content(out, block.get("text") or "")
        elif kind == "thinking":
            text = block.get("thinking") or ""
            if text:
                self._emit(out, {"reasoning_content": text})
            self.reasoning.append({"type": "thinking", "chars": len(text), "signature": block.get("signature") or ""})
            entry = {"kind": "thinking", "reasoning": len(self.reasoning) - 1}
        elif kind == "redacted_thinking":
            self.reasoning.append({"type": "redacted", "data": block.get("data") or ""})
        elif kind == "tool_use":
            name = block.get("name") or ""
            entry["input"] = _dumps(block["input"]) if "input" in block else None
            if self.json_tool is not None and name == self.json_tool:
                entry["kind"] = "json"
            elif self.legacy:
                if not self.function_called:
                    self.function_called = True
                    entry["kind"] = "function"
                    self._emit(out, {"function_call": {"name": name, "arguments": ""}})
            else:
                entry["kind"] = "tool"
                entry["index"] = self.tool_calls
                self.tool_calls += 1
                self._emit(out, {"tool_calls": [{"index": entry["index"], "id": block.get("id") or "",
                                                 "type": "function",
                                                 "function": {"name": name, "arguments": ""}}]})
        self.blocks[index] = entry

    def _block_delta(self, index: int, delta: dict[str, Any], out: list[str]) -> None:
        block = self.blocks.get(index)
        if block is None:
            return
        kind = delta.get("type")
        if block["kind"] == "text" and kind == "text_delta":
            self._content(out, delta.get("text") or "")
        elif block["kind"] == "thinking" and kind == "thinking_delta":
            text = delta.get("thinking") or ""
            self.reasoning[block["reasoning"]]["chars"] += len(text)
            if text:
                self._emit(out, {"reasoning_content": text})
        elif block["kind"] == "thinking" and kind == "signature_delta":
            self.reasoning[block["reasoning"]]["signature"] += delta.get("signature") or ""
        elif block["kind"] in ("tool", "json", "function") and kind == "input_json_delta":
            part = delta.get("partial_json") or ""
            if part:
                block["sent"] = True
                self._args(out, block, part)

    def _signature(self) -> str | None:
        if not self.reasoning:
            return None
        if len(self.reasoning) == 1 and self.reasoning[0]["type"] == "thinking":
            return self.reasoning[0]["signature"] or None
        entries = []
        for r in self.reasoning:
            if r["type"] == "thinking":
                entries.append(f"t{r['chars']}:{r['signature']}")
            else:
                entries.append(f"r:{r['data']}")
        return SIGNATURE_PREFIX + "~".join(entries)

    def _latest(self, name: str) -> int:
        value = self.delta_usage.get(name)
        if value is None:
            value = self.start_usage.get(name)
        return value or 0

    def usage(self) -> dict[str, Any]:
        writes = max(self._latest("cache_creation_input_tokens"), self._latest("split_5m") + self._latest("split_1h"))
        reads = self._latest("cache_read_input_tokens")
        prompt = self._latest("input_tokens") + writes + reads
        output = self._latest("output_tokens")
        return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
                "prompt_tokens_details": {"cached_tokens": reads, "cache_write_tokens": writes}}

    def _message_stop(self, out: list[str]) -> None:
        called = self.tool_calls > 0 or self.function_called
        if self.stop_reason == "tool_use" and called:
            reason = "function_call" if self.legacy else "tool_calls"
        else:
            reason = _FINISH.get(self.stop_reason or "", "stop")
        signature = self._signature()
        self._open(out)
        out.append(self._chunk({"reasoning_signature": signature} if signature else {}, reason))
        if self.include_usage:
            chunk = dict(self.base)
            chunk["choices"] = []
            chunk["usage"] = self.usage()
            out.append("data: " + _dumps(chunk) + "\n\n")
        out.append("data: [DONE]\n\n")
        self.done = True
