"""Strict validation of key attributes, shared by the admin API and the CLI.

A bad value is a 400 ``invalid_request_error`` whose message starts with the field's
name (``rpm: must be an integer from 1 to 2147483647``); unknown fields are refused, not ignored.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from ethereal.errors import invalid_request
from ethereal.limits.plans import Plans
from ethereal.models import Registry
from ethereal.storage.base import KEY_COLUMNS, MAX_INT4, MAX_INT8

MAX_BATCH = 500
_TEXT_MAX = 200
_METADATA_MAX_BYTES = 16 * 1024

# fields a mint or a PATCH may set (``revoked`` only through PATCH / revoke)
KEY_FIELDS = tuple(c for c in KEY_COLUMNS[3:-2] if c != "revoked")


_METADATA_MAX_DEPTH = 32
MAX_TEAMS = 32
TEAM_MAX = 100


def team_name(field: str, value: Any) -> str:
    """A team (an rbac_group id of spend limits): 1 to 100 printable characters, no comma (usage
    records keep a key's teams joined by commas)."""
    if not isinstance(value, str) or not value.strip():
        raise invalid_request(f"{field}: must be a non-empty string", param=field)
    value = value.strip()
    if len(value) > TEAM_MAX or "," in value or not value.isprintable():
        raise invalid_request(f"{field}: at most {TEAM_MAX} printable characters, no comma", param=field)
    return value


def owner_name(field: str, value: Any) -> str:
    """A key's owner (a person: the user id of spend limits); "" for none."""
    if value is None:
        return ""
    text = _text(field, value).strip()
    if text and not text.isprintable():
        raise invalid_request(f"{field}: must be printable characters", param=field)
    return text


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (the input may be 1,024 levels deep)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _int(field: str, value: Any, minimum: int, maximum: int = MAX_INT8) -> int | None:
    """An integer field within what both stores keep (``maximum``: its column's bound)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request(
            f"{field}: must be an integer from {minimum} to {maximum}, or null", param=field
        )
    if value < minimum or value > maximum:
        raise invalid_request(
            f"{field}: must be an integer from {minimum} to {maximum}, got {value}", param=field
        )
    return value


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise invalid_request(f"{field}: must be a string", param=field)
    if len(value) > _TEXT_MAX:
        raise invalid_request(f"{field}: at most {_TEXT_MAX} characters", param=field)
    return value


def parse_time(field: str, value: Any) -> float | None:
    """Unix seconds, or an RFC 3339 / ISO 8601 timestamp (UTC when no offset is given)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise invalid_request(f"{field}: must be unix seconds or an RFC 3339 timestamp", param=field)
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise invalid_request(f"{field}: must be a positive unix time", param=field)
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)  # Python 3.11+ accepts a trailing Z
        except ValueError:
            raise invalid_request(
                f"{field}: not an RFC 3339 timestamp: {value[:40]!r}", param=field
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise invalid_request(f"{field}: must be unix seconds or an RFC 3339 timestamp", param=field)


def parse_key_fields(
    data: Any, *, registry: Registry, plans: Plans, allow: tuple[str, ...] = KEY_FIELDS, prefix: str = ""
) -> dict[str, Any]:
    """The validated attributes of ``data`` (a JSON object): only the fields present."""
    if not isinstance(data, dict):
        raise invalid_request(f"{prefix or 'body'}: must be a JSON object")
    out: dict[str, Any] = {}
    extra_fields = {"budget_usd", "expires_in_days"}
    for field in data:
        if field not in allow and field not in extra_fields:
            raise invalid_request(f"{prefix}{field}: unknown field", param=f"{prefix}{field}")
    for field, value in data.items():
        name = f"{prefix}{field}"
        if field == "name":
            out[field] = "" if value is None else _text(name, value)
        elif field == "owner":
            out[field] = owner_name(name, value)
        elif field == "teams":
            if value is None:
                value = []
            if isinstance(value, str):  # one team
                value = [value]
            if not isinstance(value, list) or len(value) > MAX_TEAMS:
                raise invalid_request(
                    f"{name}: must be an array of at most {MAX_TEAMS} team names", param=name
                )
            out[field] = sorted(dict.fromkeys(team_name(f"{name}.{i}", t) for i, t in enumerate(value)))
        elif field == "plan":
            if value is not None:
                _text(name, value)
                plan = plans.get(value)
                if plan is None:
                    raise invalid_request(
                        f"{name}: unknown plan {value!r} (known: {', '.join(plans.names())})", param=name
                    )
                value = plan.name
            out[field] = value
        elif field in ("budget_tokens", "budget_micro_usd"):
            out[field] = _int(name, value, 0)
        elif field in ("rpm", "max_concurrency"):
            out[field] = _int(name, value, 1, MAX_INT4)
        elif field == "tpm":
            out[field] = _int(name, value, 1)
        elif field == "budget_usd":
            if value is None:
                out["budget_micro_usd"] = None
            elif (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise invalid_request(f"{name}: must be a non-negative number of US dollars", param=name)
            else:
                out["budget_micro_usd"] = round(value * 1_000_000)
        elif field == "allowed_models":
            if value is not None:
                if not isinstance(value, list) or not value:
                    raise invalid_request(
                        f"{name}: must be a non-empty array of model ids or families, or null", param=name
                    )
                families = {g for m in registry.models for g in (m.family, m.series) if g}
                for i, model in enumerate(value):
                    if not isinstance(model, str) or not model:
                        raise invalid_request(f"{name}.{i}: must be a non-empty string", param=f"{name}.{i}")
                    if model not in families and registry.resolve(model) is None:
                        raise invalid_request(
                            f"{name}.{i}: unknown model or family {model!r}", param=f"{name}.{i}"
                        )
                value = list(dict.fromkeys(value))
            out[field] = value
        elif field == "expires_at":
            out[field] = parse_time(name, value)
        elif field == "expires_in_days":
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise invalid_request(f"{name}: must be a positive number of days", param=name)
            out["expires_at"] = time.time() + value * 86400
        elif field == "metadata":
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise invalid_request(f"{name}: must be a JSON object", param=name)
            if (
                json_depth(value) > _METADATA_MAX_DEPTH
            ):  # before orjson.dumps, whose limit is lower than loads'
                raise invalid_request(f"{name}: nested more than {_METADATA_MAX_DEPTH} levels", param=name)
            if len(orjson.dumps(value)) > _METADATA_MAX_BYTES:
                raise invalid_request(f"{name}: at most {_METADATA_MAX_BYTES} bytes of JSON", param=name)
            out[field] = value
        elif field == "revoked":
            if not isinstance(value, bool):
                raise invalid_request(f"{name}: must be true or false", param=name)
            out[field] = value
    if "budget_usd" in data and "budget_micro_usd" in data:
        raise invalid_request(
            f"{prefix}budget_usd: give budget_usd or budget_micro_usd, not both", param=f"{prefix}budget_usd"
        )
    if "expires_in_days" in data and "expires_at" in data:
        raise invalid_request(
            f"{prefix}expires_in_days: give expires_at or expires_in_days, not both",
            param=f"{prefix}expires_in_days",
        )
    return out


def key_state(record: Any, now: float | None = None) -> str:
    if record.revoked:
        return "revoked"
    return "expired" if record.is_expired(now) else "active"


def key_json(record: Any, spend: dict[str, int] | None = None) -> dict[str, Any]:
    data = record.public()
    data["type"] = "api_key"
    data["state"] = key_state(record)
    data["spend"] = {"tokens": 0, "cost_micro": 0, "requests": 0, **(spend or {})}
    return data
