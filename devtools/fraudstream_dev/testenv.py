"""What tests and benchmarks need beside a running stack: settings for a stack of its own,
and a synchronous Redis client to look into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fraudstream_dev.launcher import free_port
from model.config import Settings


def isolated_env(home: Path, stream_id: str, kafka_brokers: int | None = None
                 ) -> dict[str, str]:
    """Settings (as FRAUDSTREAM_* variables) for a whole stack of its own: its own home
    and free ports, so it runs beside any other (tests, benchmarks). Of the shape the
    environment asks for: as many brokers as its ``FRAUDSTREAM_KAFKA_BOOTSTRAP`` lists, a
    Redis Cluster if ``FRAUDSTREAM_REDIS_CLUSTER`` says so (read by the stack itself)."""
    api_port = free_port()
    brokers = kafka_brokers or len(Settings().kafka_brokers)
    return {
        "FRAUDSTREAM_HOME": str(home),
        "FRAUDSTREAM_KAFKA_BOOTSTRAP": ",".join(f"127.0.0.1:{free_port()}"
                                                for _ in range(brokers)),
        "FRAUDSTREAM_KAFKA_CONTROLLER_PORT": str(free_port()),
        "FRAUDSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "FRAUDSTREAM_STREAM_WEB_PORT": str(free_port()),
        "FRAUDSTREAM_STREAM_ID": stream_id,
        "FRAUDSTREAM_API_PORT": str(api_port),
        "FRAUDSTREAM_API_URL": f"http://127.0.0.1:{api_port}",
    }


def redis_client(settings: Settings) -> Any:
    """A synchronous client (a ``RedisCluster`` on a cluster), to look into the store."""
    import redis

    from stores.redis_client import password as configured_password

    password = configured_password(settings)
    # Bounded: a server that accepts and never answers (stopped, or hung) fails the call
    # instead of holding a test or a status check forever.
    timeouts: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5}
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.redis_url, password=password, **timeouts)
    return redis.Redis.from_url(settings.redis_url, password=password, **timeouts)
