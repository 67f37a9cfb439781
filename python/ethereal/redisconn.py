"""``ETHEREAL_REDIS_URL``: one Redis server or a Redis Cluster, and the clients for either.

A single server is any URL redis-py accepts (``redis://``, ``rediss://``, ``unix://``).
A cluster is named by its scheme, with one or more seed nodes (the rest is discovered)::

    redis+cluster://[user:password@]host:port[,host:port...][/]
    rediss+cluster://...                      (TLS)

An explicit scheme rather than a separate on/off flag keeps the whole connection in one
variable, and a cluster URL can never be mistaken for a single server (commands sent to
the wrong node of a cluster would only fail later, with MOVED).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool

    def node_url(self, host: str, port: int) -> str:
        """A plain URL for one node (a pub/sub connection: cluster pub/sub reaches every node)."""
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{self.password}@"
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{port}/0"

    def options(self, node: Callable[[str, int], Any]) -> dict[str, Any]:
        """``RedisCluster``'s arguments for this cluster; ``node`` is the ``ClusterNode`` class of the
        same flavour (blocking or asyncio)."""
        return {
            "startup_nodes": [node(h, p) for h, p in self.nodes],
            "username": self.username,
            "password": self.password,
            "ssl": self.tls,
        }

    def pipe_params(self) -> dict[str, Any]:
        """Connection parameters in the shape ``redis.asyncio.connection.parse_url`` gives (for ``Pipe``)."""
        from redis.asyncio.connection import SSLConnection

        params: dict[str, Any] = {}
        if self.password is not None:
            params["password"] = self.password
            if self.username:
                params["username"] = self.username
        if self.tls:
            params["connection_class"] = SSLConnection
        return params


def validate(url: str) -> None:
    """Raise ``ValueError`` with a message naming what is wrong."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(
            "must be a redis://, rediss:// or unix:// URL, or redis+cluster://host:port[,host:port...] "
            "for a Redis Cluster"
        )
    if scheme in CLUSTER_SCHEMES:
        cluster(url)


def cluster(url: str) -> ClusterTarget | None:
    """The cluster named by ``url``, or None for a single-server URL."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in CLUSTER_SCHEMES:
        return None
    parts = urlsplit(f"redis://{rest}")
    netloc = parts.netloc
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username, password = (unquote(user) or None, unquote(pw)) if sep else (None, unquote(user))
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"cluster node {item!r} must be host:port")
        nodes.append((host.strip("[]"), int(port)))
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0")
    return ClusterTarget(tuple(nodes), username, password, scheme.lower() == "rediss+cluster")


def async_client(url: str, **kwargs: Any) -> Any:
    """A ``redis.asyncio`` client: ``RedisCluster`` for a cluster URL, else ``Redis``."""
    target = cluster(url)
    if target is None:
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(url, **kwargs)
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    return RedisCluster(**target.options(ClusterNode), **kwargs)


def sync_client(url: str, **kwargs: Any) -> Any:
    """A blocking client (the CLI): ``RedisCluster`` for a cluster URL, else ``Redis``."""
    target = cluster(url)
    if target is None:
        import redis

        return redis.Redis.from_url(url, **kwargs)
    from redis.cluster import ClusterNode, RedisCluster

    return RedisCluster(**target.options(ClusterNode), **kwargs)


def pubsub_urls(url: str) -> list[str]:
    """Where to SUBSCRIBE: the server itself, or each seed node of a cluster in turn (a PUBLISH on
    any node of a cluster reaches subscribers on every node)."""
    target = cluster(url)
    if target is None:
        return [url]
    return [target.node_url(h, p) for h, p in target.nodes]
