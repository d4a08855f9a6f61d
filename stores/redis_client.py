"""Connections to Redis, a single server or a cluster, as the settings say.

Everything but the scoring path uses redis-py (``client``); the scoring path uses one
pipelined connection per server (``scoring_mux``, see ``stores.redis_mux``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from model.config import Settings
from stores.redis_mux import ClusterMux, Mux, RedisMux, raise_first


def password(settings: Settings) -> str | None:
    return settings.redis_password.get_secret_value() if settings.redis_password else None


def client(settings: Settings, pool_size: int | None = None) -> Redis:
    """redis-py's client. On a cluster, a ``RedisCluster``: the same commands, each sent to
    the node serving its key (the scripts and pipelines here keep each call's keys in one
    slot). With ``pool_size``, calls queue for a connection beyond that many."""
    if settings.redis_cluster:
        # Connections per node: concurrent calls beyond it fail, they do not queue.
        return RedisCluster.from_url(  # type: ignore[return-value]
            settings.redis_url, password=password(settings), socket_timeout=0.5,
            socket_connect_timeout=0.25, max_connections=max(pool_size or 0, 128))
    if pool_size:
        return Redis(connection_pool=BlockingConnectionPool.from_url(
            settings.redis_url, password=password(settings), max_connections=pool_size,
            timeout=1.0, socket_timeout=0.5, socket_connect_timeout=0.25))
    return Redis.from_url(settings.redis_url, password=password(settings))


def scoring_mux(settings: Settings) -> Mux:
    if settings.redis_cluster:
        return ClusterMux(settings.redis_url, password=password(settings))
    return RedisMux(settings.redis_url, password=password(settings))


# Concurrent calls of one batch on a cluster (below the client's connections per node).
CLUSTER_CONCURRENCY = 64


async def ready(redis: Redis) -> None:
    """Read a cluster's slot map before the first concurrent calls: redis-py's cluster
    client, used from many tasks at once before that, has failed some of them."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()


async def run_script_batch(
    redis: Redis, script: AsyncScript, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
    mux: Mux | None = None,
) -> list[Any]:
    """Run ``script`` once per (keys, args): through ``mux`` if given (one write per
    server; a batch's worth of redis-py's command packing and reply parsing was most of
    what the stream worker spent per payment), else in one pipeline on a single server
    and, on a cluster, whose pipelines refuse scripts, as concurrent calls."""
    if mux is not None:
        return await mux.evalsha_many(script.script.encode() if isinstance(
            script.script, str) else script.script, calls)
    if isinstance(redis, RedisCluster):
        await ready(redis)
        replies: list[Any] = []
        for i in range(0, len(calls), CLUSTER_CONCURRENCY):
            replies += await asyncio.gather(*(
                script(keys=k, args=a) for k, a in calls[i:i + CLUSTER_CONCURRENCY]))
        return replies
    pipe = redis.pipeline(transaction=False)
    for keys, args in calls:
        await script(keys=keys, args=args, client=pipe)
    return list(await pipe.execute())


async def run_commands(redis: Redis, commands: Sequence[Sequence[Any]],
                       mux: Mux | None = None) -> list[Any]:
    """Plain commands, each naming its key first, in one write (``mux``) or one pipeline;
    raises the first error."""
    if mux is not None:
        return raise_first(await mux.execute_many(commands))
    pipe = redis.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(await pipe.execute())
