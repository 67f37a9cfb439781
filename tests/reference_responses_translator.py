"""A straightforward pure-Python Anthropic SSE → Responses API stream translator.

The reference the native ``ResponsesTranslator`` (rust/ethereal-core/src/responses.rs) is
checked against, byte for byte, and the baseline of ``loadtest/bench_translate.py``. Written
the way one would write it in Python without thinking about speed: a line splitter,
``json.loads`` per event, a dict per output event and ``json.dumps`` for it.

Two simplifications, as in the chat reference: output tokens are not estimated when a stream
never reports them (a failed stream then carries no usage, in both), and the thinking
text's token estimate (``reasoning_tokens``) comes from ``_native.estimate_text_tokens``.

The SSE splitter, event parsing, usage bookkeeping and stream end are
``tests/reference_sse_driver.py``, shared with the chat reference.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ethereal import _native

from tests.reference_sse_driver import ReferenceSseDriver, dumps

REASONING_PREFIX = "eth1r."


def _custom_final(raw: str) -> str:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return raw


class _CustomInput:
    """The string value of ``{"input": "…"}`` decoded as fragments arrive (the Rust state machine)."""

    def __init__(self) -> None:
        self.state = "key"
        self.key = ""
        self.escape = ""
        self.decoded = ""

    def feed(self, fragment: str) -> None:
        for c in fragment:
            self._step(c)

    def _step(self, c: str) -> None:
        s = self.state
        if s == "key":
            if c == '"':
                self.state, self.key = "key_str", ""
            elif c == ":":
                self.state = "colon" if self.key == "input" else "failed"
        elif s in ("key_str", "key_str_esc"):
            if s == "key_str_esc":
                self.state = "key_str"
                self.key += c
            elif c == "\\":
                self.state = "key_str_esc"
            elif c == '"':
                self.state = "key"
            else:
                self.key += c
        elif s == "colon":
            if c == '"':
                self.state = "value"
            elif c not in " \t\n\r":
                self.state = "failed"
        elif s == "value":
            if c == '"':
                self.state = "closed"
            elif c == "\\":
                self.state, self.escape = "escape", "\\"
            else:
                self.decoded += c
        elif s == "escape":
            self.escape += c
            e = self.escape
            if e[1] == "u":
                n = len(e)
                if n == 6:
                    try:
                        high = 0xD800 <= int(e[2:6], 16) < 0xDC00
                    except ValueError:
                        high = False
                    complete = not high
                elif n == 7:
                    complete = e[6] != "\\"
                elif n == 8:
                    complete = e[7] != "u"
                else:
                    complete = n == 12
            else:
                complete = True
            if complete:
                try:
                    text = json.loads('"' + e + '"')
                except ValueError:
                    self.state = "failed"
                    return
                # serde refuses lone surrogates, which Python's json accepts
                if any(0xD800 <= ord(ch) < 0xE000 for ch in text):
                    self.state = "failed"
                    return
                self.decoded += text
                self.state = "value"


class ReferenceResponsesTranslator(ReferenceSseDriver):
    def __init__(
        self,
        response_id: str,
        head: str,
        *,
        custom_tools: list[str] | None = None,
        namespaced: list[tuple[str, str, str]] | None = None,
        json_tool: str | None = None,
    ) -> None:
        super().__init__()
        self.suffix = response_id.removeprefix("resp_")
        self.head = head or f'"id":{dumps(response_id)},"object":"response"'
        self.custom_tools = custom_tools or []
        self.namespaced = {flat: (ns, name) for flat, ns, name in namespaced or []}
        self.json_tool = json_tool
        self.seq = 0
        self.started = False
        self.items: list[dict[str, Any]] = []
        self.output: list[str] = []
        self.open_message: int | None = None
        self.blocks: dict[int, tuple[str, int | None]] = {}
        self.reasoning_tokens = 0

    # ---- output ---------------------------------------------------------------------------

    def _emit(self, out: list[str], kind: str, **fields: Any) -> None:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        out.append(f"event: {kind}\ndata: {dumps(event)}\n\n")

    def _usage(self) -> dict[str, Any]:
        inp, reads, writes, output = self._totals()
        return {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": reads, "cache_write_tokens": writes},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": min(self.reasoning_tokens, output)},
            "total_tokens": inp + output,
        }

    def _response(
        self,
        status: str,
        *,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
        usage: bool = False,
    ) -> str:
        # the head is spliced in as given (it is already JSON members), like the native side does
        rest: dict[str, Any] = {
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
        }
        body = dumps(rest)[1:-1] + ',"output":[' + ",".join(self.output) + "]"
        if usage:
            body += ',"usage":' + dumps(self._usage())
        return "{" + self.head + "," + body + "}"

    def _emit_response(self, out: list[str], kind: str, response: str) -> None:
        out.append(
            f'event: {kind}\ndata: {{"type":"{kind}","sequence_number":{self.seq},"response":{response}}}\n\n'
        )
        self.seq += 1

    def _start(self, out: list[str]) -> None:
        if not self.started:
            self.started = True
            for kind in ("response.created", "response.in_progress"):
                self._emit_response(out, kind, self._response("in_progress"))

    def _fail(self, out: list[str], code: str, message: str) -> None:
        self._start(out)
        self._emit_response(
            out,
            "response.failed",
            self._response("failed", error={"code": code, "message": message}, usage=self.saw_delta),
        )

    def _new_item(self, kind: str, prefix: str) -> int:
        i = len(self.items)
        self.items.append(
            {
                "kind": kind,
                "id": f"{prefix}_{self.suffix}_{i}",
                "parts": [],
                "raw": "",
                "signature": "",
                "start_input": None,
                "custom": _CustomInput(),
            }
        )
        return i

    def _ref(self, i: int) -> dict[str, Any]:
        return {"item_id": self.items[i]["id"], "output_index": i}

    def _added(self, out: list[str], i: int, item: dict[str, Any]) -> None:
        self._emit(out, "response.output_item.added", output_index=i, item=item)

    def _done(self, out: list[str], i: int, item: dict[str, Any]) -> None:
        self._emit(out, "response.output_item.done", output_index=i, item=item)
        self.output.append(dumps(item))

    # messages

    def _message(self, out: list[str]) -> int:
        if self.open_message is None:
            i = self._new_item("message", "msg")
            self._added(
                out,
                i,
                {
                    "id": self.items[i]["id"],
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            )
            self.open_message = i
        return self.open_message

    def _open_part(self, out: list[str]) -> None:
        i = self._message(out)
        parts = self.items[i]["parts"]
        parts.append("")
        self._emit(
            out,
            "response.content_part.added",
            **self._ref(i),
            content_index=len(parts) - 1,
            part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        )

    def _text(self, out: list[str], text: str) -> None:
        i = self.open_message
        if i is None or not text or not self.items[i]["parts"]:
            return
        parts = self.items[i]["parts"]
        parts[-1] += text
        self._emit(
            out,
            "response.output_text.delta",
            **self._ref(i),
            content_index=len(parts) - 1,
            delta=text,
            logprobs=[],
        )

    def _close_part(self, out: list[str]) -> None:
        i = self.open_message
        if i is None or not self.items[i]["parts"]:
            return
        parts = self.items[i]["parts"]
        self._emit(
            out,
            "response.output_text.done",
            **self._ref(i),
            content_index=len(parts) - 1,
            text=parts[-1],
            logprobs=[],
        )
        self._emit(
            out,
            "response.content_part.done",
            **self._ref(i),
            content_index=len(parts) - 1,
            part={"type": "output_text", "text": parts[-1], "annotations": [], "logprobs": []},
        )

    def _close_message(self, out: list[str]) -> None:
        i = self.open_message
        if i is None:
            return
        self.open_message = None
        content = [
            {"type": "output_text", "text": t, "annotations": [], "logprobs": []}
            for t in self.items[i]["parts"]
        ]
        self._done(
            out,
            i,
            {
                "id": self.items[i]["id"],
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": content,
            },
        )

    # reasoning

    def _reasoning_start(self, out: list[str], text: str, signature: str) -> int:
        self._close_message(out)
        i = self._new_item("reasoning", "rs")
        self.items[i]["parts"].append("")
        self.items[i]["signature"] = signature
        self._added(out, i, {"id": self.items[i]["id"], "type": "reasoning", "summary": []})
        self._emit(
            out,
            "response.reasoning_summary_part.added",
            **self._ref(i),
            summary_index=0,
            part={"type": "summary_text", "text": ""},
        )
        self._reasoning_delta(out, i, text)
        return i

    def _reasoning_delta(self, out: list[str], i: int, text: str) -> None:
        if text:
            self.items[i]["parts"][0] += text
            self._emit(
                out, "response.reasoning_summary_text.delta", **self._ref(i), summary_index=0, delta=text
            )

    def _reasoning_done(self, out: list[str], i: int) -> None:
        item = self.items[i]
        text = item["parts"][0]
        self.reasoning_tokens += _native.estimate_text_tokens(text)
        payload = dumps({"type": "thinking", "thinking": text, "signature": item["signature"]}).encode()
        self._emit(out, "response.reasoning_summary_text.done", **self._ref(i), summary_index=0, text=text)
        self._emit(
            out,
            "response.reasoning_summary_part.done",
            **self._ref(i),
            summary_index=0,
            part={"type": "summary_text", "text": text},
        )
        self._done(
            out,
            i,
            {
                "id": item["id"],
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": text}],
                "encrypted_content": REASONING_PREFIX + base64.b64encode(payload).decode(),
            },
        )

    def _redacted(self, out: list[str], data: str) -> None:
        self._close_message(out)
        i = self._new_item("reasoning", "rs")
        item_id = self.items[i]["id"]
        self._added(out, i, {"id": item_id, "type": "reasoning", "summary": []})
        payload = dumps({"type": "redacted_thinking", "data": data}).encode()
        self._done(
            out,
            i,
            {
                "id": item_id,
                "type": "reasoning",
                "summary": [],
                "encrypted_content": REASONING_PREFIX + base64.b64encode(payload).decode(),
            },
        )

    # tool calls

    def _call_item(self, i: int, status: str, payload: str) -> dict[str, Any]:
        item = self.items[i]
        out: dict[str, Any] = {"id": item["id"]}
        if item["kind"] == "custom":
            out["type"] = "custom_tool_call"
        else:
            out["type"] = "function_call"
            out["status"] = status
        out["call_id"] = item["call_id"]
        if item["namespace"] is not None:
            out["namespace"] = item["namespace"]
        out["name"] = item["name"]
        out["input" if item["kind"] == "custom" else "arguments"] = payload
        return out

    def _tool_start(self, out: list[str], block: dict[str, Any]) -> tuple[str, int | None]:
        name = block.get("name") or ""
        if self.json_tool is not None and name == self.json_tool:
            self._open_part(out)
            return "json", None
        self._close_message(out)
        custom = name in self.custom_tools
        i = self._new_item("custom" if custom else "function", "ctc" if custom else "fc")
        item = self.items[i]
        ns, inner = self.namespaced.get(name, (None, name))
        item.update(
            name=inner,
            namespace=ns,
            call_id=block.get("id") or "",
            start_input=dumps(block["input"]) if "input" in block else None,
        )
        self._added(out, i, self._call_item(i, "in_progress", ""))
        return ("custom" if custom else "function"), i

    def _function_done(self, out: list[str], i: int) -> None:
        item = self.items[i]
        if not item["raw"]:
            args = item["start_input"] if item["start_input"] is not None else "{}"
            self._emit(out, "response.function_call_arguments.delta", **self._ref(i), delta=args)
            item["raw"] = args
        self._emit(
            out,
            "response.function_call_arguments.done",
            **self._ref(i),
            name=item["name"],
            arguments=item["raw"],
        )
        self._done(out, i, self._call_item(i, "completed", item["raw"]))

    def _custom_done(self, out: list[str], i: int) -> None:
        item = self.items[i]
        raw = item["raw"] or item["start_input"] or ""
        final = _custom_final(raw)
        streamed = item["custom"].decoded
        if len(final) > len(streamed) and final.startswith(streamed):
            self._emit(
                out, "response.custom_tool_call_input.delta", **self._ref(i), delta=final[len(streamed) :]
            )
        self._emit(out, "response.custom_tool_call_input.done", **self._ref(i), input=final)
        self._done(out, i, self._call_item(i, "completed", final))

    def _web_search_item(self, i: int, status: str, query: str) -> dict[str, Any]:
        return {
            "id": self.items[i]["id"],
            "type": "web_search_call",
            "status": status,
            "action": {"type": "search", "query": query},
        }

    def _web_search_start(self, out: list[str]) -> int:
        self._close_message(out)
        i = self._new_item("web_search", "ws")
        self._added(out, i, self._web_search_item(i, "in_progress", ""))
        for kind in ("response.web_search_call.in_progress", "response.web_search_call.searching"):
            self._emit(out, kind, output_index=i, item_id=self.items[i]["id"])
        return i

    def _web_search_done(self, out: list[str], i: int) -> None:
        try:
            query = json.loads(self.items[i]["raw"]).get("query")
        except (ValueError, AttributeError):
            query = None
        self._emit(out, "response.web_search_call.completed", output_index=i, item_id=self.items[i]["id"])
        self._done(out, i, self._web_search_item(i, "completed", query if isinstance(query, str) else ""))

    # ---- events ---------------------------------------------------------------------------

    def _message_start(self, out: list[str]) -> None:
        self._start(out)

    def _message_stop(self, out: list[str]) -> None:
        self._start(out)
        self._close_message(out)
        reason = {
            "max_tokens": "max_output_tokens",
            "model_context_window_exceeded": "max_output_tokens",
            "refusal": "content_filter",
        }.get(self.stop_reason or "")
        kind, status = (
            ("response.incomplete", "incomplete") if reason else ("response.completed", "completed")
        )
        self._emit_response(out, kind, self._response(status, incomplete=reason, usage=True))

    def _error(self, out: list[str], kind: str, message: str) -> None:
        code = {"rate_limit_error": "rate_limit_exceeded", "invalid_request_error": "invalid_prompt"}.get(
            kind, "server_error"
        )
        self._fail(out, code, message)

    def _block_start(self, index: int, block: dict[str, Any], out: list[str]) -> None:
        self._start(out)
        kind = block.get("type")
        entry: tuple[str, int | None] = ("ignored", None)
        if kind == "text":
            self._open_part(out)
            self._text(out, block.get("text") or "")
            entry = ("text", None)
        elif kind == "thinking":
            entry = (
                "reasoning",
                self._reasoning_start(out, block.get("thinking") or "", block.get("signature") or ""),
            )
        elif kind == "redacted_thinking":
            self._redacted(out, block.get("data") or "")
        elif kind == "tool_use":
            entry = self._tool_start(out, block)
        elif kind == "server_tool_use" and block.get("name") == "web_search":
            entry = ("web_search", self._web_search_start(out))
        self.blocks[index] = entry

    def _block_delta(self, index: int, delta: dict[str, Any], out: list[str]) -> None:
        kind, i = self.blocks.get(index, ("ignored", None))
        dtype = delta.get("type")
        if kind == "text" and dtype == "text_delta":
            self._text(out, delta.get("text") or "")
        elif kind == "json" and dtype == "input_json_delta":
            self._text(out, delta.get("partial_json") or "")
        elif kind == "reasoning" and i is not None and dtype == "thinking_delta":
            self._reasoning_delta(out, i, delta.get("thinking") or "")
        elif kind == "reasoning" and i is not None and dtype == "signature_delta":
            self.items[i]["signature"] += delta.get("signature") or ""
        elif kind == "function" and i is not None and dtype == "input_json_delta":
            part = delta.get("partial_json") or ""
            if part:
                self.items[i]["raw"] += part
                self._emit(out, "response.function_call_arguments.delta", **self._ref(i), delta=part)
        elif kind == "custom" and i is not None and dtype == "input_json_delta":
            part = delta.get("partial_json") or ""
            item = self.items[i]
            item["raw"] += part
            before = item["custom"].decoded
            item["custom"].feed(part)
            new = item["custom"].decoded[len(before) :]
            if new:
                self._emit(out, "response.custom_tool_call_input.delta", **self._ref(i), delta=new)
        elif kind == "web_search" and i is not None and dtype == "input_json_delta":
            self.items[i]["raw"] += delta.get("partial_json") or ""

    def _block_stop(self, index: int, out: list[str]) -> None:
        kind, i = self.blocks.get(index, ("ignored", None))
        if kind in ("text", "json"):
            self._close_part(out)
        elif i is None:
            return
        elif kind == "reasoning":
            self._reasoning_done(out, i)
        elif kind == "function":
            self._function_done(out, i)
        elif kind == "custom":
            self._custom_done(out, i)
        elif kind == "web_search":
            self._web_search_done(out, i)
