"""What the simulated upstream serves: the model registry (``ethereal.models``), as the real API.

The sim stands in for Anthropic, so it serves exactly what the registry lists as servable
(every model not retired, deprecated ones included), by id or alias, plus ids added at
runtime through ``POST /_sim/models`` (a model the upstream serves and the gateway's registry
does not describe). A retired id, or any other name, answers 404 ``not_found_error``
``model: <name>``: the real API does not echo unknown names back.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ethereal.models import Model, Registry, load_registry

_SHARED: Registry | None = None


def shared_registry() -> Registry:
    """The shipped registry (one per process: it is read-only here)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = load_registry()
    return _SHARED


class SimModels:
    """The upstream's model world: the registry plus ids added at runtime."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or shared_registry()
        self.added: dict[str, Model] = {}

    def resolve(self, name: str) -> Model | None:
        """The model a request names (an id or an alias, exactly), or None: not served (404)."""
        hit = self.added.get(name)
        if hit is not None:
            return hit
        model = self.registry.get(name)
        if model is None or model.retired or model.provisional:
            return None
        return model

    def not_found(self, name: str) -> str:
        return self.registry.error_text("not_found", model=name)

    def listed(self) -> list[Model]:
        """What ``GET /v1/models`` lists, newest first."""
        out = [m for m in self.registry.listed() if not m.provisional and m.id not in self.added]
        return sorted([*out, *self.added.values()], key=lambda m: m.released, reverse=True)

    def add(self, spec: dict[str, Any]) -> Model:
        """``POST /_sim/models`` ``{"id": "claude-nova-6", "like": "claude-sonnet-5-5",
        "display_name": …, "max_tokens": …, "max_input_tokens": …}``: served and listed from now
        on. Without ``like`` its rules and limits are the ones the gateway's registry assumes for
        a name it does not describe (``Registry.provisional``: its family's dearest model)."""
        mid = spec.get("id")
        if not isinstance(mid, str) or not mid or len(mid) > 256:
            raise ValueError("id: a model id is required")
        like = spec.get("like")
        if like is not None:
            base = self.resolve(str(like))
            if base is None:
                raise ValueError(f"like: {like!r} is not a model the sim serves")
        else:
            base = self.registry.provisional(mid)
        today = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%d")
        model = replace(
            base,
            id=mid,
            display_name=str(spec.get("display_name") or mid),
            aliases=(),
            released=str(spec.get("released") or today),
            status="active",
            deprecated_on=None,
            retires_on=None,
            provisional=False,
        )
        if spec.get("max_tokens") is not None:
            out = int(spec["max_tokens"])
            model = replace(model, max_output=out, batch_max_output=out)
        if spec.get("max_input_tokens") is not None:
            model = replace(model, context_window=int(spec["max_input_tokens"]))
        self.added[mid] = model
        return model

    def remove(self, mid: str) -> bool:
        return self.added.pop(mid, None) is not None

    def info(self, name: str) -> dict[str, Any] | None:
        model = self.resolve(name)
        return None if model is None else model.to_anthropic()
