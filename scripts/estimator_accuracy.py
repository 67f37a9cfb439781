#!/usr/bin/env python3
"""Measures the input-token estimator (``_native.estimate_tokens``) against real counts.

Every recorded request in the fixture cassettes (``fixtures/anthropic/recorded/pydantic-ai-*``)
whose recorded answer carries Anthropic's own count (a ``count_tokens`` answer, or a message's
``usage``: input + cache writes + cache reads, streamed or not) is estimated and compared.
Writes ``python/ethereal/dashboard/accuracy.json``, which the estimator page shows;
``tests/console/test_estimator.py`` re-measures and checks the committed file still matches.

    .venv/bin/python scripts/estimator_accuracy.py [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml
from ethereal import _native

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "python" / "ethereal" / "dashboard" / "accuracy.json"


def _real_from_sse(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("data:") and '"message_start"' in line:
            try:
                usage = orjson.loads(line[5:].strip())["message"]["usage"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return None
            return _total(usage)
    return None


def _total(usage: Any) -> int | None:
    if not isinstance(usage, dict) or "input_tokens" not in usage:
        return None
    return int(usage.get("input_tokens") or 0) + int(usage.get("cache_creation_input_tokens") or 0) \
        + int(usage.get("cache_read_input_tokens") or 0)


KINDS = {
    "text": "text only (system, messages, thinking)",
    "client_tools": "with tool definitions (Anthropic adds a tool-use system prompt the request does not show)",
    "media": "with images or documents",
    "server_tools": "with server tools or MCP servers (their definitions and results are added upstream)",
}


def kind_of(body: dict[str, Any]) -> str:
    tools = body.get("tools") or []
    if body.get("mcp_servers") or any(isinstance(t, dict) and t.get("type") not in (None, "custom")
                                      for t in tools):
        return "server_tools"
    blob = orjson.dumps(body.get("messages") or [])
    if b'"type":"image"' in blob or b'"type":"document"' in blob:
        return "media"
    if tools:
        return "client_tools"
    return "text"


def samples(fixtures: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((fixtures / "anthropic" / "recorded").glob("pydantic-ai-cassettes*/*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for i, item in enumerate(data.get("interactions") or []):
            req, resp = item.get("request") or {}, item.get("response") or {}
            uri = str(req.get("uri", ""))
            body = req.get("parsed_body")
            raw_status = resp.get("status")
            status = raw_status.get("code") if isinstance(raw_status, dict) else raw_status
            if "/v1/messages" not in uri or not isinstance(body, dict) or status != 200:
                continue
            parsed = resp.get("parsed_body")
            real: int | None
            if isinstance(parsed, dict):
                real = int(parsed["input_tokens"]) if "count_tokens" in uri and "input_tokens" in parsed \
                    else _total(parsed.get("usage"))
            elif isinstance(parsed, str):
                real = _real_from_sse(parsed)
            else:
                body_text = (resp.get("body") or {}).get("string") if isinstance(resp.get("body"), dict) else None
                real = _real_from_sse(body_text) if isinstance(body_text, str) else None
            if not real:
                continue
            estimate = _native.estimate_tokens(orjson.dumps(body))
            out.append({"fixture": f"{path.parent.name}/{path.name}#{i}", "kind": kind_of(body), "real": real,
                        "estimate": estimate})
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "source": "fixtures/anthropic/recorded/pydantic-ai-cassettes*: requests with Anthropic's own input count",
        "overall": distribution(rows),
        "by_kind": [{"kind": kind, "label": label, **distribution([r for r in rows if r["kind"] == kind])}
                    for kind, label in KINDS.items() if any(r["kind"] == kind for r in rows)],
        "rows": rows,
    }


def distribution(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errors = sorted((r["estimate"] - r["real"]) / r["real"] * 100.0 for r in rows)
    absolute = sorted(abs(e) for e in errors)

    def q(values: list[float], p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 1)

    bands = [5, 10, 25, 50]
    return {
        "samples": len(rows),
        "signed_error_pct": {"min": round(errors[0], 1), "p10": q(errors, 0.1), "median": q(errors, 0.5),
                             "p90": q(errors, 0.9), "max": round(errors[-1], 1),
                             "mean": round(statistics.fmean(errors), 1)},
        "abs_error_pct": {"median": q(absolute, 0.5), "p90": q(absolute, 0.9), "max": round(absolute[-1], 1)},
        "within_pct": {str(b): round(sum(1 for a in absolute if a <= b) / len(absolute) * 100.0, 1) for b in bands},
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail when accuracy.json is out of date")
    args = parser.parse_args()
    fixtures = Path(os.environ.get("ETHEREAL_FIXTURES", REPO / "fixtures"))
    result = summarize(samples(fixtures))
    text = json.dumps(result, indent=1) + "\n"
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print("accuracy.json is out of date: run scripts/estimator_accuracy.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
