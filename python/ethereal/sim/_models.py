"""The sim's own small model list (independent of the gateway's catalogue on purpose:
the sim stands in for the upstream, which has its own idea of what exists)."""

from __future__ import annotations

# id, display name, created_at, max_input_tokens, max_tokens (output cap), aliases
_MODELS: tuple[tuple[str, str, str, int, int, tuple[str, ...]], ...] = (
    ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z", 200_000, 128_000, ()),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z", 200_000, 64_000, ()),
    ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24T00:00:00Z", 200_000, 64_000,
     ("claude-opus-4-5",)),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z", 200_000, 64_000,
     ("claude-haiku-4-5",)),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z", 200_000, 64_000,
     ("claude-sonnet-4-5",)),
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z", 200_000, 32_000,
     ("claude-opus-4-1",)),
    ("claude-opus-4-20250514", "Claude Opus 4", "2025-05-22T00:00:00Z", 200_000, 32_000,
     ("claude-opus-4-0",)),
    ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z", 200_000, 64_000,
     ("claude-sonnet-4-0",)),
    ("claude-3-7-sonnet-20250219", "Claude Sonnet 3.7", "2025-02-24T00:00:00Z", 200_000, 64_000,
     ("claude-3-7-sonnet-latest",)),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z", 200_000, 8_192,
     ("claude-3-5-haiku-latest",)),
    ("claude-3-5-sonnet-20241022", "Claude Sonnet 3.5 (New)", "2024-10-22T00:00:00Z", 200_000, 8_192,
     ("claude-3-5-sonnet-latest",)),
)

# Newest first, the order /v1/models lists them in.
MODEL_INFOS: list[dict[str, object]] = [
    {
        "type": "model",
        "id": mid,
        "display_name": name,
        "created_at": created,
        "max_input_tokens": max_in,
        "max_tokens": max_out,
        "lifecycle": "active",
        "deprecated_at": None,
        "retires_at": None,
    }
    for (mid, name, created, max_in, max_out, _aliases) in sorted(_MODELS, key=lambda m: m[2], reverse=True)
]

# name -> (canonical id, max output tokens)
RESOLVE: dict[str, tuple[str, int]] = {}
for _mid, _name, _created, _max_in, _max_out, _aliases in _MODELS:
    RESOLVE[_mid] = (_mid, _max_out)
    for _a in _aliases:
        RESOLVE[_a] = (_mid, _max_out)

INFO_BY_NAME: dict[str, dict[str, object]] = {}
for _info in MODEL_INFOS:
    INFO_BY_NAME[str(_info["id"])] = _info
for _a, (_mid, _mo) in RESOLVE.items():
    INFO_BY_NAME.setdefault(_a, INFO_BY_NAME[_mid])


def resolve_model(name: str) -> tuple[str, int] | None:
    """(model id to report, output cap or 0 when unknown) or None for a model that does not exist.

    Known ids and aliases resolve to the dated id; any other ``claude-*`` name is accepted and
    echoed back unchanged (the real API grows new models faster than this list)."""
    hit = RESOLVE.get(name)
    if hit is not None:
        return hit
    if name.startswith("claude-"):
        return (name, 0)
    return None
