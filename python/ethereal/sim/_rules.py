"""The per-model request rules the real API enforces, read from the model registry.

Every refusal is ``400 invalid_request_error`` with the registry's own error text
(``[errors]`` in ``models.toml``, ``Registry.error_text``), checked in this order:

1. ``thinking.type`` accepted by the model (``rules.thinking_types``): ``enabled`` (with
   ``budget_tokens``) where budget thinking exists, ``adaptive`` where adaptive thinking exists,
   ``disabled`` where ``thinking_off = "disabled"`` (else the text naming ``adaptive`` or
   ``between_tools``), ``between_tools`` where listed;
2. ``output_config.effort``: a level the model has (none on a model without effort);
3. turning thinking off (``disabled``/``between_tools``) only at an effort at or below
   ``thinking_off_max_effort`` (the requested effort, else the model's default);
4. ``thinking.display``: a value the model has (``updates`` only with its beta,
   ``thinking-display-updates-2026-08-18``);
5. sampling: ``default_only`` refuses ``temperature`` ≠ 1, ``top_p`` ≠ 1 and any ``top_k``
   (named in that order; 1 is their default, so an explicit 1 is accepted); ``one_of`` refuses
   ``temperature`` and ``top_p`` together;
6. forced ``tool_choice`` (``any``/``tool``): refused outright where ``forced_tool_choice`` is
   false; with thinking on, refused where ``forced_tool_with_thinking`` is false. Thinking left
   out counts as on where the model thinks by default (``thinking_default = "adaptive"``):
   the sources do not settle whether the API turns thinking off for a forced tool on Opus 5,
   Sonnet 5 and Haiku 5.5, so the sim takes the strict reading and a client must say
   ``thinking: {"type": "disabled"}`` to force a tool there. A model on which thinking cannot be
   off (``thinking_off = "none"``) and that accepts forced tools (Fable 5 / Mythos 5) takes them
   with its thinking;
7. a trailing ``assistant`` message (a prefill) where ``prefill`` is false;
8. ``speed: "fast"`` where the card in force has no fast rate, or without the model's
   ``fast_beta`` in ``anthropic-beta`` (Opus 5's preview), or in a Message Batch;
9. ``inference_geo`` where the model does not accept it.

``count_tokens`` applies the same rules (the real endpoint validates like Messages) except
those about ``max_tokens``. A ``role: "system"`` message inside ``messages`` is accepted only
with the ``per-turn-control-2026-07-01`` beta (Claude Code sends it on 5.x models).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ethereal.models import Model, Registry

from ._gen import invalid

PER_TURN_CONTROL = "per-turn-control-2026-07-01"
DISPLAY_UPDATES = "thinking-display-updates-2026-08-18"  # display "updates" is a beta value
_THINKING_TAGS = "'adaptive', 'disabled', 'enabled'"


@dataclass(slots=True)
class Shape:
    """What the accepted request asks for, with the model's defaults filled in."""

    thinking_on: bool = False
    display: str = "summarized"
    budget: int | None = None
    speed: str = "standard"
    inference_geo: str = "global"
    web_search: bool = False  # a web_search server tool is offered
    web_fetch: bool = False
    advisor: str | None = None  # the advisor tool's model, when offered


def betas(headers: dict[bytes, bytes]) -> frozenset[str]:
    raw = headers.get(b"anthropic-beta", b"")
    return frozenset(b.strip() for b in raw.decode("latin-1").split(",") if b.strip())


def check_roles(messages: list[Any], beta: frozenset[str]) -> None:
    system_ok = PER_TURN_CONTROL in beta
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"messages.{i}: Input should be a valid dictionary")
        role = m.get("role")
        if role not in ("user", "assistant") and not (role == "system" and system_ok):
            raise invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in m:
            raise invalid(f"messages.{i}.content: Field required")


def _effort(req: dict[str, Any]) -> Any:
    oc = req.get("output_config")
    return oc.get("effort") if isinstance(oc, dict) else None


def _present(req: dict[str, Any], name: str) -> bool:
    return req.get(name) is not None


def check(
    req: dict[str, Any],
    model: Model,
    registry: Registry,
    beta: frozenset[str],
    *,
    batch: bool = False,
    at: float | None = None,
) -> Shape:
    """Refuses (``RequestError``) a shape the model does not accept; returns the request's shape."""
    r = model.rules
    err = registry.error_text
    shape = Shape()

    # 1. thinking types
    thinking = req.get("thinking")
    ttype: Any = None
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise invalid("thinking: Input should be a valid dictionary")
        ttype = thinking.get("type")
        if ttype not in ("enabled", "adaptive", "disabled", "between_tools"):
            raise invalid(
                f"thinking: Input tag '{ttype}' found using 'type' does not match any of the expected "
                f"tags: {_THINKING_TAGS}"
            )
        if ttype == "enabled" and "enabled" not in r.thinking_types:
            raise invalid(err("thinking_enabled"))
        if ttype == "adaptive" and "adaptive" not in r.thinking_types:
            raise invalid(err("thinking_adaptive"))
        if ttype == "disabled" and r.thinking_off != "disabled":
            raise invalid(
                err(
                    "thinking_disabled_between_tools"
                    if r.thinking_off == "between_tools"
                    else "thinking_disabled"
                )
            )
        if ttype == "between_tools" and "between_tools" not in r.thinking_types:
            raise invalid(err("thinking_between_tools"))

    # 2. effort
    effort = _effort(req)
    if effort is not None:
        if not r.effort_levels:
            raise invalid(err("effort_unsupported"))
        if effort not in r.effort_levels:
            raise invalid(
                err("effort_level", effort=effort, levels=", ".join(f'"{e}"' for e in r.effort_levels))
            )

    # 3. thinking off only up to an effort
    if (
        ttype in ("disabled", "between_tools")
        and r.thinking_off_max_effort is not None
        and not r.effort_at_most(effort, r.thinking_off_max_effort)
    ):
        level = effort or r.effort_default or "high"
        raise invalid(err("thinking_off_effort", type=ttype, effort=level))

    # 4. display
    display = thinking.get("display") if isinstance(thinking, dict) else None
    if (
        display is not None
        and r.display_values
        and (display not in r.display_values or (display == "updates" and DISPLAY_UPDATES not in beta))
    ):
        raise invalid(err("display", display=display))
    shape.display = display or r.display_default or "summarized"
    shape.thinking_on = ttype in ("enabled", "adaptive") or (
        ttype is None and r.thinking_default == "adaptive"
    )
    if ttype == "enabled" and isinstance(thinking, dict):
        bt = thinking.get("budget_tokens")
        shape.budget = bt if isinstance(bt, int) and not isinstance(bt, bool) else None

    # 5. sampling
    if r.sampling == "default_only":
        for name in ("temperature", "top_p"):
            value = req.get(name)
            if value is not None and value != 1:
                raise invalid(err("sampling_deprecated", param=name))
        if _present(req, "top_k"):
            raise invalid(err("sampling_deprecated", param="top_k"))
    elif r.sampling == "one_of" and _present(req, "temperature") and _present(req, "top_p"):
        raise invalid(err("sampling_one_of"))

    # 6. forced tool_choice
    tc = req.get("tool_choice")
    if isinstance(tc, dict) and tc.get("type") in ("any", "tool"):
        if not r.forced_tool_choice:
            raise invalid(err("forced_tool_choice"))
        if shape.thinking_on and not r.forced_tool_with_thinking and r.thinking_off != "none":
            raise invalid(err("forced_tool_with_thinking"))

    # 7. prefill
    if not r.prefill:
        turns = [m for m in req.get("messages") or () if isinstance(m, dict) and m.get("role") != "system"]
        if turns and turns[-1].get("role") == "assistant":
            raise invalid(err("prefill"))

    # 8. fast mode
    speed = req.get("speed")
    if speed is not None:
        if speed not in ("standard", "fast"):
            raise invalid("speed: Input should be 'standard' or 'fast'")
        if speed == "fast":
            card = model.card_at(time.time() if at is None else at)
            if card.fast is None or batch or (r.fast_beta is not None and r.fast_beta not in beta):
                raise invalid(err("speed_fast"))
        shape.speed = speed

    # 9. data residency
    geo = req.get("inference_geo")
    if geo is not None:
        if not r.inference_geo:
            raise invalid(err("inference_geo"))
        if not isinstance(geo, str) or not geo:
            raise invalid("inference_geo: Input should be a valid string")
        shape.inference_geo = geo

    tools = req.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str):
                continue
            if kind.startswith("web_search_"):
                shape.web_search = True
            elif kind.startswith("web_fetch_"):
                shape.web_fetch = True
            elif kind.startswith("advisor_"):
                adv = tool.get("model")
                shape.advisor = adv if isinstance(adv, str) and adv else model.id
    return shape


def check_max_tokens(max_tokens: int, model: Model, registry: Registry, *, batch: bool = False) -> None:
    limit = model.batch_max_output if batch else model.max_output
    if max_tokens > limit:
        raise invalid(registry.error_text("max_tokens", max_tokens=max_tokens, limit=limit, model=model.id))


def check_budget(req: dict[str, Any], max_tokens: int) -> None:
    """``thinking.type: enabled`` needs a ``budget_tokens`` of at least 1024, below ``max_tokens``."""
    thinking = req.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return
    bt = thinking.get("budget_tokens")
    if not isinstance(bt, int) or isinstance(bt, bool):
        raise invalid("thinking.enabled.budget_tokens: Field required")
    if bt < 1024:
        raise invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    if max_tokens <= bt:
        raise invalid(THINKING_BUDGET_MSG)


THINKING_BUDGET_MSG = (
    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size"
)

__all__ = ["PER_TURN_CONTROL", "Shape", "betas", "check", "check_budget", "check_max_tokens", "check_roles"]
