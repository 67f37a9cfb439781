"""Request rules learnt from the upstream's own refusals, for models the registry does not describe.

A model the upstream serves before ``models.toml`` knows it is translated with the rules of the
model it is billed like (``Registry.provisional``). When that guess is wrong, the upstream says
so with one of the API's documented refusal texts (``[errors]`` in models.toml). On the
translated routes only (``/v1/chat/completions``, ``/v1/responses``) the gateway reads that
text, corrects the rule it names, retries the request once with the corrected shape and keeps
the correction for the model (bounded: ``MAX_LEARNT`` models per registry, the first ones
kept). The native ``/v1/messages`` never does this: there the upstream's error goes to the
client unmodified.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import replace

from ethereal.models.registry import EFFORTS, Registry, Rules

MAX_LEARNT = 256

_learnt: weakref.WeakKeyDictionary[Registry, dict[str, Rules]] = weakref.WeakKeyDictionary()
_patterns: weakref.WeakKeyDictionary[Registry, list[tuple[str, re.Pattern[str]]]] = (
    weakref.WeakKeyDictionary()
)


def learnt_rules(registry: Registry, model_id: str, base: Rules) -> Rules:
    """The rules learnt for ``model_id``, else ``base``."""
    return _learnt.get(registry, {}).get(model_id, base)


def _compiled(registry: Registry) -> list[tuple[str, re.Pattern[str]]]:
    found = _patterns.get(registry)
    if found is None:
        found = []
        for key, text in registry.errors.items():
            pattern = re.escape(text)
            pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>.+?)", pattern)
            found.append((key, re.compile(pattern)))
        _patterns[registry] = found
    return found


def refusal_key(registry: Registry, message: str) -> tuple[str, dict[str, str]] | None:
    """Which documented refusal ``message`` is (its key in ``[errors]``) and the values it names."""
    for key, pattern in _compiled(registry):
        match = pattern.search(message)
        if match is not None:
            return key, match.groupdict()
    return None


def corrected(rules: Rules, key: str, fields: dict[str, str]) -> Rules:
    """``rules`` as the refusal ``key`` says they are."""
    types = rules.thinking_types
    if key == "thinking_enabled":
        return replace(
            rules,
            thinking_types=tuple(t for t in types if t != "enabled")
            + (() if "adaptive" in types else ("adaptive",)),
            effort_levels=rules.effort_levels or ("low", "medium", "high", "max"),
        )
    if key == "thinking_adaptive":
        return replace(
            rules,
            thinking_types=tuple(t for t in types if t != "adaptive")
            + (() if "enabled" in types else ("enabled",)),
        )
    if key == "thinking_disabled":
        return replace(rules, thinking_off="none", thinking_default="adaptive")
    if key == "thinking_disabled_between_tools":
        return replace(
            rules,
            thinking_off="between_tools",
            thinking_types=tuple(t for t in types if t != "disabled")
            + (() if "between_tools" in types else ("between_tools",)),
        )
    if key == "thinking_between_tools":
        return replace(
            rules, thinking_off="disabled", thinking_types=tuple(t for t in types if t != "between_tools")
        )
    if key == "thinking_off_effort":
        return replace(rules, thinking_off_max_effort="high")
    if key == "sampling_deprecated":
        return replace(rules, sampling="default_only")
    if key == "sampling_one_of":
        return replace(rules, sampling="one_of") if rules.sampling == "any" else rules
    if key == "forced_tool_choice":
        return replace(rules, forced_tool_choice=False, forced_tool_with_thinking=False)
    if key == "forced_tool_with_thinking":
        return replace(rules, forced_tool_with_thinking=False)
    if key == "prefill":
        return replace(rules, prefill=False)
    if key == "effort_level":
        levels = tuple(e for e in re.split(r"[,\s]+", fields.get("levels", "")) if e.strip(".") in EFFORTS)
        return replace(rules, effort_levels=tuple(e.strip(".") for e in levels))
    if key == "effort_unsupported":
        return replace(rules, effort_levels=())
    if key == "display":
        return replace(
            rules, display_values=tuple(d for d in rules.display_values if d != fields.get("display"))
        )
    return rules


def learn(registry: Registry, model_id: str, base: Rules, message: str) -> tuple[str, Rules] | None:
    """The correction a refusal ``message`` calls for, remembered for ``model_id``: (the refusal's
    key, the corrected rules), or None when the message is not a documented refusal or changes
    nothing (the request is then answered with the upstream's error as it came)."""
    found = refusal_key(registry, message)
    if found is None:
        return None
    key, fields = found
    current = learnt_rules(registry, model_id, base)
    fixed = corrected(current, key, fields)
    if fixed == current:
        return None
    table = _learnt.setdefault(registry, {})
    if model_id not in table and len(table) >= MAX_LEARNT:
        return None  # full: the retry would translate as before, so the upstream's answer stands
    table[model_id] = fixed
    return key, fixed
