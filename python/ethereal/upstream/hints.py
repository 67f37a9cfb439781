"""The wait an upstream asked for, as the pool's cooldown (``errors.upstream_error`` passes the
headers themselves on as sent).

The anthropic and openai SDKs wait ``retry-after-ms`` (else ``retry-after``) when it is at most
a minute; the credential's 429 wall must end when theirs does, so both are read here.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait the upstream asked for, in seconds: ``retry-after-ms`` first (the finer one),
    then ``retry-after`` as seconds or an HTTP date; None when absent or unreadable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = -1.0
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        return max(0.0, when.timestamp() - time.time())
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
