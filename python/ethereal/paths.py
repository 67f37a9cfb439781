"""The paths a user types, served where the routes live: a thin ASGI-level rewrite.

Routes are registered once, at their Anthropic paths. Two ways users reach them otherwise:

- ``/v1/v1/...``: some vendors' docs tell users to set the anthropic SDK's ``base_url`` to
  ``https://host/v1``, and the SDK appends ``/v1/messages`` itself. Served as ``/v1/...``.
- ``ETHEREAL_BASE_PATH=/api/proxy``: the operator mounts the gateway under a prefix (behind a
  reverse proxy that keeps the path). Every route, ``HEAD /`` included, answers under it; paths
  without the prefix still work, so a proxy that strips it needs no other setting.

Rewriting ``path``/``raw_path`` in the ASGI scope (``app.Ethereal``, before BlackSheep routes) keeps every route,
the fallback 404 and the upstream path (``/v1/messages?beta=true``) unaware of either.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def normalize_base_path(raw: str | None) -> str:
    """``""`` or ``/a/b`` (leading slash, no trailing one); ValueError for anything else."""
    if not raw or raw.strip() in ("", "/"):
        return ""
    path = "/" + raw.strip().strip("/")
    if any(part in ("", ".", "..") for part in path[1:].split("/")) or any(c in path for c in "?#% \t"):
        raise ValueError(f"ETHEREAL_BASE_PATH must be a plain path such as /api/proxy, got {raw!r}")
    return path


def rewrite(path: str, base: str) -> str:
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base) :] or "/"
    while path.startswith("/v1/v1/") or path == "/v1/v1":
        path = path[3:]
    return path


def rewrite_scope(scope: MutableMapping[str, Any], base: str) -> MutableMapping[str, Any]:
    """The HTTP scope with its path served where the routes live (a copy when it changes)."""
    path = scope["path"]
    new = rewrite(path, base)
    if new == path:
        return scope
    scope = {**scope}
    scope["path"] = new
    scope["raw_path"] = new.encode("utf-8")
    return scope
