"""``POST /v1/chat/completions``: the upstream's OpenAI SDK compatibility endpoint, minimal.

Enough for an OpenAI SDK to be run against the sim directly (text answers, streamed or not,
with ``usage``), so a fault script can be played to it once directly and once through the
gateway and the two compared. Tools, images and the rest of the compat surface are left out.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from . import _gen
from ._gen import RequestError, invalid


def _anthropic_request(req: dict[str, Any], model_id: str) -> dict[str, Any]:
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: at least one message is required")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise invalid(f"messages.{i}: each message needs a role of system, user or assistant")
        if m["role"] in ("system", "developer"):
            continue
        content = m.get("content")
        text = (
            content
            if isinstance(content, str)
            else " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, list)
            else ""
        )
        turns.append({"role": m["role"], "content": text})
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or 1024
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise invalid("max_tokens: Input should be a positive integer")
    return {"model": model_id, "max_tokens": max_tokens, "messages": turns}


def chat_action(req: dict[str, Any], model_id: str, seed: int, timing: tuple[float, float, float]) -> tuple:
    """The sim's action (see ``_server._finish``) answering one chat completion."""
    areq = _anthropic_request(req, model_id)
    usage = (max(1, (_gen.count_input_chars(areq) + 3) // 4), 0, 0, 0)
    text, _ = _gen.last_user_text(areq["messages"])
    plan = _gen.plan_response(areq, model_id, seed, _gen.parse_directives(text), False, usage)
    pieces = [piece for blk in plan.blocks if blk[0] == _gen.TEXT for piece in blk[1]]
    finish = "length" if plan.stop_reason == "max_tokens" else "stop"
    cid = "chatcmpl-" + _gen.message_id()[4:]
    created = int(time.time())
    usage_obj = {
        "prompt_tokens": plan.input_tokens,
        "completion_tokens": plan.output_tokens,
        "total_tokens": plan.input_tokens + plan.output_tokens,
    }
    if req.get("stream") is True:

        def chunk(
            delta: dict[str, Any], reason: str | None = None, extra: dict[str, Any] | None = None
        ) -> bytes:
            body = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                **(extra or {}),
            }
            return b"data: " + orjson.dumps(body) + b"\n\n"

        frames = [chunk({"role": "assistant", "content": ""})]
        frames += [chunk({"content": piece}) for piece in pieces]
        frames.append(chunk({}, finish, {"usage": usage_obj}))
        frames.append(b"data: [DONE]\n\n")
        return ("sse", frames, None, timing)
    body = orjson.dumps(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces)},
                    "finish_reason": finish,
                }
            ],
            "usage": usage_obj,
        }
    )
    return ("json", 200, body, b"", _gen.reply_delay(timing, plan.output_tokens))


def check_model(model: Any) -> None:
    if not isinstance(model, str) or not model:
        raise RequestError(400, "invalid_request_error", "model: Field required")
