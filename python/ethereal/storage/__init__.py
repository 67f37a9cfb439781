"""Storage behind one interface: SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

from ethereal.storage.base import Store


async def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open (and migrate) the store that ``url`` names."""
    if url.startswith(("postgres://", "postgresql://")):
        from ethereal.storage.postgres import PostgresStore

        store: Store = await PostgresStore.open(url)
    elif url.startswith("sqlite:///"):
        from ethereal.storage.sqlite import SQLiteStore

        store = await SQLiteStore.open(url.removeprefix("sqlite:///"))
    else:
        raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")
    if migrate:
        await store.migrate()
    return store
