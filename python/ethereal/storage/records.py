"""Rows the stores keep besides keys and usage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class StoredCredential:
    """An upstream credential as stored: the API key only in encrypted form."""

    name: str
    base_url: str
    api_key_enc: str
    weight: float = 1.0
    models: list[str] | None = None
    rpm: int | None = None
    spend_cap_micro: int | None = None
    enabled: bool = True
    disabled_reason: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


CREDENTIAL_COLUMNS = (
    "name", "base_url", "api_key_enc", "weight", "models", "rpm", "spend_cap_micro", "enabled",
    "disabled_reason", "created_at", "updated_at",
)
