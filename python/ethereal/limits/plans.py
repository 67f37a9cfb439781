"""Plans: named limit envelopes (requests and tokens per rolling window) on top of a key's own caps.

The defaults approximate Claude's consumer tiers (Pro, Max 5x, Max 20x): a rolling
5-hour window and a rolling week, each with a request and a token ceiling. Override
or add plans in the TOML config::

    [plans.pro]
    requests_per_5h = 45
    tokens_per_5h = 1500000
    requests_per_week = 540
    tokens_per_week = 18000000

    [plans.team]                      # any other window lengths
    windows = [{ seconds = 3600, requests = 100, tokens = 2000000 }]

or as JSON in ``ETHEREAL_PLANS``. A key names its plan (``plan = "max5x"``); names are
matched case- and punctuation-insensitively (``"Max 5x"``, ``"max-5x"``, ``"max5"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FIVE_HOURS = 5 * 3600
WEEK = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Window:
    """A rolling window of ``seconds`` split into ``buckets`` sub-windows; None = no ceiling."""

    name: str
    seconds: float
    requests: int | None = None
    tokens: int | None = None
    buckets: int = 60

    @property
    def window_ms(self) -> int:
        return max(1, round(self.seconds * 1000))

    @property
    def bucket_ms(self) -> int:
        return max(1, self.window_ms // self.buckets)


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    windows: tuple[Window, ...]


def _envelope(name: str, requests_5h: int, tokens_5h: int, requests_week: int, tokens_week: int) -> Plan:
    return Plan(
        name,
        (
            Window("5h", FIVE_HOURS, requests_5h, tokens_5h, buckets=60),  # 5-minute buckets
            Window("week", WEEK, requests_week, tokens_week, buckets=168),  # 1-hour buckets
        ),
    )


DEFAULT_PLANS: dict[str, Plan] = {
    "pro": _envelope("pro", 45, 1_500_000, 540, 18_000_000),
    "max5x": _envelope("max5x", 225, 7_500_000, 2_700, 90_000_000),
    "max20x": _envelope("max20x", 900, 30_000_000, 10_800, 360_000_000),
}
_ALIASES = {"max5": "max5x", "max20": "max20x"}


def normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("×", "x"))


def _opt_int(plan: str, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"plans.{plan}.{field} must be a non-negative integer, got {value!r}")
    return value


def _plan_from_config(name: str, spec: Any) -> Plan:
    if not isinstance(spec, dict):
        raise ValueError(f"plans.{name} must be a table")  # a config error (not TypeError), as all here
    windows: list[Window] = []
    base = DEFAULT_PLANS.get(normalize(name))
    defaults = {w.name: w for w in base.windows} if base else {}
    for label, seconds, buckets in (("5h", FIVE_HOURS, 60), ("week", WEEK, 168)):
        req_key, tok_key = f"requests_per_{label}", f"tokens_per_{label}"
        if req_key in spec or tok_key in spec or label in defaults:
            old = defaults.get(label)
            requests = (
                _opt_int(name, req_key, spec[req_key]) if req_key in spec else (old.requests if old else None)
            )
            tokens = (
                _opt_int(name, tok_key, spec[tok_key]) if tok_key in spec else (old.tokens if old else None)
            )
            windows.append(Window(label, seconds, requests, tokens, buckets))
    for i, entry in enumerate(spec.get("windows") or []):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("seconds"), (int, float))
            or entry["seconds"] <= 0
        ):
            raise ValueError(f"plans.{name}.windows[{i}] needs seconds > 0")
        windows.append(
            Window(
                str(entry.get("name") or f"{entry['seconds']}s"),
                float(entry["seconds"]),
                _opt_int(name, f"windows[{i}].requests", entry.get("requests")),
                _opt_int(name, f"windows[{i}].tokens", entry.get("tokens")),
                int(entry.get("buckets", 60)),
            )
        )
    unknown = set(spec) - {
        "requests_per_5h",
        "tokens_per_5h",
        "requests_per_week",
        "tokens_per_week",
        "windows",
    }
    if unknown:
        raise ValueError(f"plans.{name}: unknown field(s) {sorted(unknown)}")
    return Plan(normalize(name), tuple(windows))


class Plans:
    """The plan table: defaults, then the config's entries (replacing or adding by name)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.plans: dict[str, Plan] = dict(DEFAULT_PLANS)
        for name, spec in (config or {}).items():
            plan = _plan_from_config(name, spec)
            self.plans[plan.name] = plan

    def get(self, name: str | None) -> Plan | None:
        if not name:
            return None
        key = normalize(name)
        return self.plans.get(key) or self.plans.get(_ALIASES.get(key, ""))

    def names(self) -> list[str]:
        return sorted(self.plans)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": p.name,
                "windows": [
                    {"name": w.name, "seconds": w.seconds, "requests": w.requests, "tokens": w.tokens}
                    for w in p.windows
                ],
            }
            for p in self.plans.values()
        ]
