"""The Kafka topics: created with the replication the settings ask for, and ready when a
consumer can read every partition of ours.

Shared by the production stream worker (which waits here for Kafka before faust starts)
and by the local launcher (which waits here for the brokers it started).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

from model.config import Settings


class TopicsNotReady(RuntimeError):
    """Kafka answered, but not yet as a consumer of our topics needs."""


async def ensure_topics(settings: Settings, min_brokers: int = 1) -> None:
    """Create the topics missing (partitions and copies as the settings say), then check
    that every partition of the scored and label topics has a leader that listens.

    Raises ``TopicsNotReady`` (or aiokafka's errors while Kafka does not answer)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                request_timeout_ms=5000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        factor, min_isr = settings.kafka_replication
        wanted = [
            NewTopic(name=t, num_partitions=settings.kafka_partitions,
                     replication_factor=factor,
                     topic_configs={"min.insync.replicas": str(min_isr)})
            for t in (settings.topic_scored, settings.topic_labels,
                      settings.topic_dead_letters)
            if t not in existing
        ]
        brokers = (await admin.describe_cluster())["brokers"]
        # Topics created with fewer brokers than copies would stay short of copies. Once
        # they exist, a broker down must not keep a stream worker from starting.
        if len(brokers) < max(min_brokers, factor if wanted else 1):
            raise TopicsNotReady("not every broker has joined the cluster yet")
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
        described = await admin.describe_topics([settings.topic_scored, settings.topic_labels])
        unready = unready_partitions(described)
        if unready:
            raise TopicsNotReady(f"no leader yet: {', '.join(unready[:6])}")
    finally:
        await admin.close()
    # A consumer talks to each partition's leader: a leader named in the metadata but not
    # listening yet (brokers restarting together) ended a stream worker's start with
    # NodeNotReadyError. Brokers that lead nothing of ours may be down.
    leaders = {p["leader"] for t in described for p in t["partitions"]}
    live = {b["node_id"]: (b["host"], b["port"]) for b in brokers}
    for leader in sorted(leaders):
        try:
            socket.create_connection(live[leader], timeout=2).close()
        except (KeyError, OSError) as exc:
            raise TopicsNotReady(f"broker {leader} leads partitions but is not listening "
                                 "yet") from exc


def unready_partitions(described: list[dict[str, Any]]) -> list[str]:
    """The topics and partitions (``topic[n]``) of a metadata answer that a consumer cannot
    read yet: an error, or no leader."""
    unready = []
    for topic in described:
        if topic.get("error_code", 0) != 0 or not topic.get("partitions"):
            unready.append(str(topic.get("topic")))
            continue
        unready += [f"{topic['topic']}[{p['partition']}]" for p in topic["partitions"]
                    if p.get("error_code", 0) != 0 or p.get("leader", -1) < 0]
    return unready


def kafka_answers(settings: Settings, brokers: int = 1) -> bool:
    """One synchronous try of ``ensure_topics``, bounded: True once the topics are ready."""
    try:
        asyncio.run(asyncio.wait_for(ensure_topics(settings, brokers), timeout=10))
        return True
    except Exception:
        return False


@contextlib.contextmanager
def quiet_kafka_client() -> Iterator[None]:
    """aiokafka's logger silenced: refused connections are expected while Kafka starts."""
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        quiet.setLevel(level)
