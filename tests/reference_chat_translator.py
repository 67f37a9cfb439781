"""A straightforward pure-Python Anthropic SSE → ``chat.completion.chunk`` translator.

The reference the native ``ChatTranslator`` (rust/ethereal-core/src/openai_chat.rs) is
checked against, byte for byte, and the baseline of ``loadtest/bench_translate.py``. It
is written the way one would write it in Python without thinking about speed: a line
splitter, ``json.loads`` per event, a dict per output chunk and ``json.dumps`` for it.

One simplification: the native translator estimates output tokens when a stream never
reports them; the reference does not (it only matters for the usage chunk of a stream
whose ``message_delta`` lacks ``output_tokens``).

The SSE splitter, event parsing, usage bookkeeping and stream end are
``tests/reference_sse_driver.py``, shared with the Responses reference.
"""

from __future__ import annotations

from typing import Any

from ethereal.errors import OPENAI_TYPES  # the one vocabulary: what the gateway answers with

from tests.reference_sse_driver import ReferenceSseDriver, dumps

SIGNATURE_PREFIX = "eth1~"
_FINISH = {"max_tokens": "length", "model_context_window_exceeded": "length", "refusal": "content_filter"}


class ReferenceChatTranslator(ReferenceSseDriver):
    def __init__(
        self,
        model: str,
        completion_id: str,
        created: int,
        include_usage: bool,
        *,
        json_tool: str | None = None,
        legacy_functions: bool = False,
    ) -> None:
        super().__init__()
        self.base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self.include_usage = include_usage
        self.json_tool = json_tool
        self.legacy = legacy_functions
        self.started = False
        self.blocks: dict[int, dict[str, Any]] = {}
        self.tool_calls = 0
        self.function_called = False
        self.content_sent = False
        self.break_pending = False
        self.reasoning: list[dict[str, Any]] = []

    # ---- output ---------------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        chunk = dict(self.base)
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        return "data: " + dumps(chunk) + "\n\n"

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

    def _error(self, out: list[str], kind: str, message: str) -> None:
        oa_type, code = OPENAI_TYPES.get(kind, ("server_error", None))
        out.append(
            "data: "
            + dumps({"error": {"message": message, "type": oa_type, "param": None, "code": code}})
            + "\n\n"
        )

    # ---- events ---------------------------------------------------------------------------

    def _message_start(self, out: list[str]) -> None:
        self._open(out)

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
            self.reasoning.append(
                {"type": "thinking", "chars": len(text), "signature": block.get("signature") or ""}
            )
            entry = {"kind": "thinking", "reasoning": len(self.reasoning) - 1}
        elif kind == "redacted_thinking":
            self.reasoning.append({"type": "redacted", "data": block.get("data") or ""})
        elif kind == "tool_use":
            name = block.get("name") or ""
            entry["input"] = dumps(block["input"]) if "input" in block else None
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
                self._emit(
                    out,
                    {
                        "tool_calls": [
                            {
                                "index": entry["index"],
                                "id": block.get("id") or "",
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    },
                )
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

    def _block_stop(self, index: int, out: list[str]) -> None:
        block = self.blocks.get(index)
        if block is not None and block["kind"] in ("tool", "json", "function") and not block["sent"]:
            block["sent"] = True
            self._args(out, block, block["input"] if block["input"] is not None else "{}")

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

    def usage(self) -> dict[str, Any]:
        prompt, reads, writes, output = self._totals()
        return {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": reads, "cache_write_tokens": writes},
        }

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
            out.append("data: " + dumps(chunk) + "\n\n")
        out.append("data: [DONE]\n\n")
