"""The estimator page's arithmetic: the native token estimate and the metering price table.

The prompt becomes a Messages request body and goes through ``_native.estimate_tokens`` for each
model, with that model's tokenizer generation and image tier from the registry (the newer
tokenizer: text × 1.3, Anthropic's documented "approximately 30 percent more tokens"; the few
recorded requests of such models ran nearer 1.15×). It is the count ``count_tokens`` falls back to; admission reserves it plus
a margin. The models are the registry's listed ones (today's active models first, then the
legacy ones and the ones the upstreams serve, never retired ones), each priced by
``metering.pricing.price`` at the card in force now, the function that bills usage records; a
model the registry does not describe shows its provisional card, flagged.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Any

import orjson

from ethereal import _native
from ethereal.errors import GatewayError
from ethereal.guards import estimate_args
from ethereal.metering.pricing import price
from ethereal.models import Model, Registry
from ethereal.usage import Usage

_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.invalid/image.png"}}
# a 1x1 PNG's header: the estimator sizes an image from its header alone
_PIXEL = {
    "type": "image",
    "source": {
        "type": "base64",
        "media_type": "image/png",
        "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ",
    },
}
MAX_IMAGES = 100
MAX_OUTPUT = 1_000_000


def _usd(micro: float) -> str:
    return f"{micro / 1_000_000:.6f}"


def _int_field(name: str, value: Any, maximum: int, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise GatewayError(400, f"{name}: must be a whole number") from None
    if not 0 <= number <= maximum:
        raise GatewayError(400, f"{name}: must be between 0 and {maximum}")
    return number


def _order(models: list[Model]) -> list[Model]:
    """Today's models first (active, newest first), then the limited, legacy and deprecated ones,
    then the ones only the upstreams know."""
    rank = {"active": 0, "limited": 1, "legacy": 2, "deprecated": 3}
    return sorted(models, key=lambda m: (m.provisional, rank.get(m.status, 4), _neg_date(m.released)))


def _neg_date(day: str) -> tuple[int, ...]:
    return tuple(-int(p) for p in day.split("-") if p.isdigit())


class Estimator:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @staticmethod
    def _image_tokens(**args: Any) -> int:
        """What the estimator charges an image of unknown size for these estimate arguments: the
        image tier's cap (an image by URL, less the same request with a 1x1 image: the same block
        framing, and 1 token for the pixel)."""

        def with_image(image: dict[str, Any]) -> int:
            body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, image]}]}
            return _native.estimate_tokens(orjson.dumps(body), **args)

        return with_image(_IMAGE) - with_image(_PIXEL) + 1

    @property
    def image_tokens(self) -> int:
        return self._image_tokens()

    def estimate(self, form: dict[str, Any]) -> dict[str, Any]:
        prompt = form.get("prompt")
        system = form.get("system") or ""
        if not isinstance(prompt, str) or not prompt.strip():
            raise GatewayError(400, "prompt: paste the prompt to estimate")
        if not isinstance(system, str):
            raise GatewayError(400, "system: must be text")
        output_tokens = _int_field("output_tokens", form.get("output_tokens"), MAX_OUTPUT, 500)
        images = _int_field("images", form.get("images"), MAX_IMAGES, 0)
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        content.extend([_IMAGE] * images)
        body: dict[str, Any] = {
            "model": "estimate",
            "max_tokens": max(1, output_tokens),
            "messages": [{"role": "user", "content": content}],
        }
        if system:
            body["system"] = system
        raw = orjson.dumps(body)
        by_args: dict[tuple[Any, ...], int] = {}

        def tokens_for(model: Model | None) -> int:
            args = estimate_args(model)
            key = tuple(sorted(args.items()))
            if key not in by_args:
                by_args[key] = _native.estimate_tokens(raw, **args)
            return by_args[key]

        input_tokens = tokens_for(None)
        newer = _native.estimate_tokens(raw, tokenizer=2, image_tier=2)
        models = []
        now = time.time()
        for model in _order(self.registry.listed()):

            def cost(
                *,
                input_tokens: int = 0,
                output_tokens: int = 0,
                cache_5m: int = 0,
                cache_1h: int = 0,
                cache_read: int = 0,
                batch: bool = False,
            ) -> int:
                usage = Usage(
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cache_5m=cache_5m,
                    cache_1h=cache_1h,
                    cache_read=cache_read,
                )
                return price(self.registry, model, usage, at=now, batch=batch).cost_micro  # noqa: B023

            card = model.card_at(now)
            n = tokens_for(model)
            models.append(
                {
                    "id": model.id,
                    "display_name": model.display_name,
                    "status": model.status,
                    "provisional": model.provisional,
                    "card": card.id.removeprefix("provisional:"),
                    "input_price": card.rates.usd("input"),
                    "output_price": card.rates.usd("output"),
                    "input_tokens": n,
                    "tokenizer": model.rules.tokenizer,
                    "image_tier": model.rules.image_tier,
                    "input": _usd(cost(input_tokens=n)),
                    "output": _usd(cost(output_tokens=output_tokens)),
                    "total": _usd(cost(input_tokens=n, output_tokens=output_tokens)),
                    "cache_write_5m": _usd(cost(cache_5m=n, output_tokens=output_tokens)),
                    "cache_write_1h": _usd(cost(cache_1h=n, output_tokens=output_tokens)),
                    "cache_read": _usd(cost(cache_read=n, output_tokens=output_tokens)),
                    "batch": _usd(cost(input_tokens=n, output_tokens=output_tokens, batch=True)),
                    "total_micro": cost(input_tokens=n, output_tokens=output_tokens),
                }
            )
        return {
            "input_tokens": input_tokens,
            "input_tokens_newer": newer,
            "output_tokens": output_tokens,
            "images": images,
            "image_tokens": self._image_tokens(),
            "image_tokens_newer": self._image_tokens(image_tier=2),
            "models": models,
        }


class RateLimiter:
    """At most ``limit`` estimates per ``window`` seconds per client address, in this process.

    Memory is bounded: at most ``max_clients`` addresses are tracked (the least recently
    seen are forgotten first). With several workers each keeps its own count.
    """

    def __init__(
        self, limit: int, window: float, max_clients: int = 10_000, clock: Any = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def take(self, client: str) -> float:
        """0 when admitted (and counted); else the seconds until the next estimate is allowed."""
        now = self.clock()
        hits = self._hits.get(client)
        if hits is None:
            hits = deque()
            self._hits[client] = hits
            while len(self._hits) > self.max_clients:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(client)
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(0.001, hits[0] + self.window - now)
        hits.append(now)
        return 0.0
