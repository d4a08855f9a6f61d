"""Redis, a single server or a cluster, as every store sees it: ``RedisClient``.

Every call a payment or a stream event makes (scripts by digest, commands, batches of
them in one write) goes through the pipelined connection of ``stores.redis_mux``, one per
server, the same on one Redis as on a Redis Cluster (where it follows MOVED, ASK and
TRYAGAIN). redis-py (``admin``) remains for what only it does: SCAN over a cluster's
nodes, pipelines of back-fills and transactions, the audit streams. The store classes
take a ``RedisClient`` and choose between the two themselves; their callers never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from model.config import Settings
from stores.redis_mux import Arg, Call, ClusterMux, Mux, RedisMux, Step, raise_first

# What a call raises when Redis is away, restarting or still loading its data (the
# pipelined connection raises the socket's own errors; redis-py its own; a cluster's client
# RedisClusterException when no node answers): the caller is told to come back, not given
# an error of its own.
UNAVAILABLE: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError,
                                             TimeoutError)


def password(settings: Settings) -> str | None:
    return settings.redis_password.get_secret_value() if settings.redis_password else None


def client(settings: Settings, pool_size: int | None = None) -> Redis:
    """redis-py's client (``RedisClient.admin``). On a cluster, a ``RedisCluster``: the
    same commands, each sent to the node serving its key (the pipelines here keep each
    call's keys in one slot). With ``pool_size``, calls queue for a connection beyond that
    many."""
    if settings.redis_cluster:
        # Connections per node: concurrent calls beyond it fail, they do not queue. The
        # stores call only the commands RedisCluster shares with Redis; redis-py types the
        # two as unrelated classes.
        return RedisCluster.from_url(  # type: ignore[return-value]
            settings.redis_url, password=password(settings), socket_timeout=0.5,
            socket_connect_timeout=0.25, max_connections=max(pool_size or 0, 128))
    if pool_size:
        return Redis(connection_pool=BlockingConnectionPool.from_url(
            settings.redis_url, password=password(settings), max_connections=pool_size,
            timeout=1.0, socket_timeout=0.5, socket_connect_timeout=0.25))
    return Redis.from_url(settings.redis_url, password=password(settings))


def scoring_mux(settings: Settings) -> Mux:
    """The pipelined connection alone (``RedisClient.mux``)."""
    if settings.redis_cluster:
        return ClusterMux(settings.redis_url, password=password(settings))
    return RedisMux(settings.redis_url, password=password(settings))


class RedisClient:
    """One Redis for the stores: ``mux`` for every call on a payment's or an event's
    path, ``admin`` (redis-py) for scans, back-fill pipelines, transactions and streams.

    Neither connects until used: a process starts (degraded) with Redis away."""

    def __init__(self, mux: Mux, admin: Redis) -> None:
        self.mux = mux
        self.admin = admin

    async def run(self, steps: Sequence[Step]) -> list[Any]:
        """Scripts and commands in one write (per node), their replies in order; raises
        the first error once all ran."""
        return raise_first(await self.mux.run_steps(steps))

    async def script(self, script: bytes, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        return await self.mux.evalsha(script, keys, args)

    async def scripts(self, script: bytes, calls: Sequence[Call]) -> list[Any]:
        """``script`` once per (keys, args), in one write; raises the first error."""
        return await self.mux.evalsha_many(script, calls) if calls else []

    async def command(self, *args: Arg) -> Any:
        return await self.mux.execute(*args)

    async def commands(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Commands, each naming its key first, in one write; raises the first error."""
        return raise_first(await self.mux.execute_many(commands)) if commands else []

    async def ready(self) -> None:
        """Read a cluster's slot maps before the first concurrent calls: redis-py's cluster
        client, used from many tasks at once before that, has failed some of them."""
        await self.mux.connect()
        if isinstance(self.admin, RedisCluster):
            await self.admin.initialize()

    async def aclose(self) -> None:
        await self.mux.close()
        await self.admin.aclose()


def connect(settings: Settings, pool_size: int | None = None) -> RedisClient:
    """The stores' Redis (``pool_size``: see ``client``)."""
    return RedisClient(scoring_mux(settings), client(settings, pool_size))
